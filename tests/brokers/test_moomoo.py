"""The moomoo adapter with the real moomoo-api SDK against a fake OpenD backed by the paper exchange: the conformance
suite (REAL and paper accounts), the gateway's failure modes, and what the SDK does that we had to contain."""
from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType
from brokers.moomoo import (NOT_RUNNING, STATUS_MAP, MoomooBroker, from_moomoo_code, load_sdk, map_status,
                            to_moomoo_code)
from core.clock import SimulatedClock
from core.errors import ConfigError
from core.config_model import MoomooConfig
from core.settings import Settings
from core.calendar import MarketCalendar
from core.ticks import round_to_tick
from tests.brokers.conformance import BrokerConformance, Venue, settled
from tests.conftest import PYTHON, ROOT
from tests.fakes.opend_server import FakeOpenD
from tests.fakes.opend_wire import REAL_ACC, SIM_STOCK_ACC
from tests.venues import OPEN_AT, advance_trading_minutes, liquid_symbols, paper_config, shared_market

PASSWORD = "fake-trade-pw-1234"
CALENDAR = MarketCalendar("HKEX")
P_PLACE_ORDER, P_INIT_CONNECT, P_ORDER_PUSH, P_SUB_ACC_PUSH = 2202, 1001, 2208, 2008   # moomoo ProtoId
P_GET_FUNDS, P_POSITIONS, P_ORDER_LIST, P_ACC_LIST = 2101, 2102, 2201, 2001


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class World:
    """A fake OpenD on a simulated clock, and the brokers a test opened against it."""
    fake: FakeOpenD
    clock: SimulatedClock
    log_dir: Path
    agent_id: str
    brokers: list[MoomooBroker] = field(default_factory=list)

    def broker(self, trade_env: str = "simulate", *, password: str | None = PASSWORD, connect_timeout: float = 5,
               request_timeout: float = 5, allow_margin: bool = False) -> MoomooBroker:
        config = MoomooConfig(host=self.fake.host, port=self.fake.port, trade_env=trade_env,
                              connect_timeout_seconds=connect_timeout)
        broker = MoomooBroker(config, log_dir=self.log_dir, clock=self.clock, calendar=CALENDAR,
                              trade_password=password, request_timeout_seconds=request_timeout,
                              reconnect_interval_seconds=0.3, allow_margin=allow_margin)
        self.brokers.append(broker)
        return broker

    async def connect(self, trade_env: str = "simulate", **kw) -> MoomooBroker:
        broker = self.broker(trade_env, **kw)
        await broker.connect()
        return broker

    def coid(self, label: str) -> str:
        return f"{self.agent_id}-{label}-{uuid.uuid4().hex[:6]}"

    async def advance(self, minutes: int) -> None:
        await advance_trading_minutes(self.clock, CALENDAR, minutes)


@pytest.fixture
async def world(pool, pg_url, agent_id, tmp_path):
    log_dir = tmp_path / "logs"
    load_sdk(log_dir)            # the fake builds its messages with the SDK's own protobuf classes
    clock = SimulatedClock(OPEN_AT)
    fake = FakeOpenD(pg_url=pg_url, market=shared_market(), clock=clock, account_id=agent_id,
                     paper_config=paper_config(), calendar=CALENDAR, trade_password=PASSWORD)
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, log_dir, agent_id)
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)


def symbols() -> list[str]:
    return liquid_symbols(shared_market(), OPEN_AT)


async def buy(broker: MoomooBroker, world: World, symbol: str, lots: int, label: str):
    inst = await broker.get_instrument(symbol)
    return await broker.place_order(OrderRequest(world.coid(label), symbol, OrderSide.BUY, inst.lot_size * lots,
                                                 OrderType.MARKET))


# ---------------------------------------------------------------- the conformance suite

class TestMoomooConformance(BrokerConformance):
    """A REAL margin account at the fake: trade unlocked with the password, fills are OpenD deals, fees from OpenD,
    OpenD's `power` above the cash, and market orders accepted at once but filled a moment later."""
    trade_env = "real"
    fill_delay: float | None = 0.3

    @pytest.fixture
    async def venue(self, world):
        world.fake.fill_delay = self.fill_delay
        broker = await world.connect(self.trade_env)
        return Venue(broker=broker, advance=world.advance, reopen=lambda: world.connect(self.trade_env),
                     symbols=symbols(), coid=world.coid)


class TestMoomooPaperAccountConformance(TestMoomooConformance):
    """A moomoo paper (SIMULATE) account: OpenD answers no deals and no fees there, so fills come from the filled
    quantity and fees are 0; everything else the suite asks holds. Market orders fill before the reply here."""
    trade_env = "simulate"
    fill_delay = None

    async def test_market_order_fills_near_the_quote(self, venue: Venue):
        symbol = venue.symbols[0]
        q = await venue.broker.get_quote(symbol)
        inst = await venue.broker.get_instrument(symbol)
        result = await settled(venue, await venue.broker.place_order(OrderRequest(
            venue.coid("mkt"), symbol, OrderSide.BUY, inst.lot_size, OrderType.MARKET)))
        assert result.status is OrderStatus.FILLED
        assert q.ask <= result.avg_fill_price <= q.ask * Decimal("1.01")
        assert result.fees == 0                      # the one difference: paper accounts report no fees
        assert sum(f.quantity for f in result.fills) == result.filled_quantity
        positions = {p.symbol: p for p in await venue.broker.get_positions()}
        assert positions[symbol].quantity == result.quantity


# ---------------------------------------------------------------- the gateway's failure modes

async def test_connect_without_opend_fails_with_the_seed_message(tmp_path):
    """How long it takes (within connect_timeout_seconds) is measured by bench/bench_broker_timeouts.py."""
    broker = MoomooBroker(MoomooConfig(port=closed_port(), connect_timeout_seconds=1), log_dir=tmp_path,
                          clock=SimulatedClock(OPEN_AT), calendar=CALENDAR)
    with pytest.raises(BrokerUnavailable) as err:
        await broker.connect()
    assert str(err.value).startswith(NOT_RUNNING)
    assert f"127.0.0.1:{broker.config.port}" in str(err.value)
    stuck = [t for t in threading.enumerate() if t.name.startswith("moomoo-connect") and not t.daemon]
    assert stuck == []


def test_a_process_that_found_no_opend_exits_and_logs_only_under_our_log_dir(tmp_path):
    """The SDK's constructor retries forever and its logger writes under $HOME and to the console: none of it may
    leak out. Its warnings ("Connect fail") belong in logs/moomoo, not on stdout or stderr (with its console
    handler gone, Python's last-resort handler printed them to stderr)."""
    home, logs = tmp_path / "home", tmp_path / "logs"
    home.mkdir()
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from core.errors import BrokerUnavailable
from brokers.moomoo import MoomooBroker
from core.clock import RealClock
from core.config_model import MoomooConfig
from core.calendar import MarketCalendar
async def main():
    b = MoomooBroker(MoomooConfig(port={closed_port()}, connect_timeout_seconds=1), log_dir={str(logs)!r},
                     clock=RealClock(), calendar=MarketCalendar("HKEX"))
    try:
        await b.connect()
    except BrokerUnavailable as exc:
        print("UNAVAILABLE", exc)
asyncio.run(main())
"""
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr                # it exited by itself: no connect thread kept it alive
    assert f"UNAVAILABLE {NOT_RUNNING}" in out.stdout
    assert "Connect fail" not in out.stdout               # the SDK's console lines stay out of our stdout
    assert out.stderr == ""                               # ... and its warnings out of stderr
    assert list(home.rglob("*")) == []                    # nothing under $HOME
    assert "Connect fail" in (logs / "moomoo" / "moomoo-sdk.log").read_text()
    assert sorted(p.name for p in (logs / "moomoo").iterdir()) == ["moomoo-sdk.log"]


async def test_sdk_log_lines_land_in_the_log_dir_we_chose_without_the_trade_password(world):
    await world.connect("real")
    text = (world.log_dir / "moomoo" / "moomoo-sdk.log").read_text()
    assert f"proto={P_INIT_CONNECT}" in text and "New connect ready" in text
    assert PASSWORD not in text and hashlib.md5(PASSWORD.encode()).hexdigest() not in text


async def test_a_dropped_connection_is_survived_after_the_sdk_reconnects(world):
    broker = await world.connect()
    before = (await broker.get_account()).cash
    world.fake.drop_connections()
    for _ in range(5):                                            # a call may fail while the SDK reconnects
        try:
            acct = await broker.get_account()
            break
        except BrokerUnavailable as exc:
            assert f"({world.fake.host}:{world.fake.port})" in str(exc)
            await asyncio.sleep(0.2)
    else:
        pytest.fail("no recovery after the drop in 5 calls")
    assert acct.cash == before
    assert len(world.fake.requests_for(P_INIT_CONNECT)) >= 4       # both contexts connected twice
    # and order pushes were asked for again: the SDK's reconnect thread sends it after the connection is ready,
    # which a call on the new connection can overtake (a busy host): waited for, within 5 s
    for _ in range(50):
        if len(world.fake.requests_for(P_SUB_ACC_PUSH)) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(world.fake.requests_for(P_SUB_ACC_PUSH)) >= 2
    bought = await buy(broker, world, symbols()[0], 1, "after-drop")
    assert bought.status is OrderStatus.FILLED


async def test_an_opend_that_stays_down_gives_a_clear_broker_unavailable(world):
    broker = await world.connect(connect_timeout=1, request_timeout=3)
    await asyncio.to_thread(world.fake.stop)
    where = re.escape(f"({world.fake.host}:{world.fake.port})")
    with pytest.raises(BrokerUnavailable, match=rf"^moomoo accinfo_query: .+ {where}$"):   # the call and the gateway
        await broker.get_account()


# ---------------------------------------------------------------- money safety on a margin account

async def test_buying_power_is_the_cash_not_opends_margin_power_unless_margin_is_allowed(world):
    """OpenD's `power` on a margin account is about twice the cash (a 50% financing margin): we size on cash."""
    on_cash = await (await world.connect("real")).get_account()
    on_margin = await (await world.connect("real", allow_margin=True)).get_account()
    assert on_margin.cash == on_cash.cash and on_margin.buying_power > on_margin.cash     # the venue offers margin
    assert on_cash.buying_power == on_cash.cash                                           # and we decline it


def test_from_settings_allows_margin_only_when_trading_allow_margin_says_so(settings):
    assert MoomooBroker.from_settings(settings).allow_margin is False
    trading = settings.config.trading.model_copy(update={"allow_margin": True})
    config = settings.config.model_copy(update={"trading": trading})
    margin = MoomooBroker.from_settings(Settings(config=config, env=settings.env, config_path=settings.config_path))
    assert margin.allow_margin is True


async def test_a_sell_larger_than_the_position_is_refused_before_it_reaches_opend(world):
    """On a margin account OpenD would take it and go short (the fake does too): it must never be sent."""
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 1, "long")
    coid = world.coid("oversell")
    with pytest.raises(OrderRejected, match=rf"cannot sell {bought.filled_quantity * 3} {symbol}: "
                                            rf"{bought.filled_quantity} held") as err:
        await broker.place_order(OrderRequest(coid, symbol, OrderSide.SELL, bought.filled_quantity * 3,
                                              OrderType.MARKET))
    assert err.value.client_order_id == coid
    assert [r for r in world.fake.requests_for(P_PLACE_ORDER) if r.body["c2s"].get("remark") == coid] == []
    assert await asyncio.to_thread(world.fake.positions, "REAL") == {symbol: bought.filled_quantity}
    closed = await broker.place_order(OrderRequest(world.coid("close"), symbol, OrderSide.SELL,
                                                   bought.filled_quantity, OrderType.MARKET))
    assert closed.status is OrderStatus.FILLED


async def test_shares_already_in_an_open_sell_order_cannot_be_sold_again(world):
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 2, "long2")
    lot = bought.filled_quantity // 2
    far = round_to_tick((await broker.get_quote(symbol)).ask * Decimal("1.2"), "hkex", "up")
    await broker.place_order(OrderRequest(world.coid("rest"), symbol, OrderSide.SELL, lot, OrderType.LIMIT, far))
    with pytest.raises(OrderRejected, match=rf"{2 * lot} held, {lot} already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("again"), symbol, OrderSide.SELL, 2 * lot,
                                              OrderType.MARKET))


async def test_a_sell_asks_for_its_order_list_and_its_position_together(world):
    """The pre-send checks of a sell (today's orders of the code: the remark, the working sells; the code's
    position: the shares free) are asked at once, so an exit waits one round trip for them, not two: with the order
    list never answered, the position has been asked all the same, and nothing was sent."""
    broker = await world.connect("real", request_timeout=1)
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 1, "long")
    asked = len(world.fake.requests_for(P_POSITIONS))
    world.fake.silence(P_ORDER_LIST)
    coid = world.coid("exit")
    with pytest.raises(BrokerUnavailable, match="order_list_query"):
        await broker.place_order(OrderRequest(coid, symbol, OrderSide.SELL, bought.filled_quantity, OrderType.MARKET))
    assert len(world.fake.requests_for(P_POSITIONS)) == asked + 1
    assert [r for r in world.fake.requests_for(P_PLACE_ORDER) if r.body["c2s"].get("remark") == coid] == []


async def test_an_exit_reads_the_position_and_the_codes_orders_once_before_its_sell(world):
    """An exit reads the position (get_position) and sells at once: the sell's own checks take what that read brought
    (the code's position and today's orders, asked together) instead of asking OpenD again, so the exit waits two
    round trips before the order leaves, not three."""
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 1, "long")
    positions, orders = len(world.fake.requests_for(P_POSITIONS)), len(world.fake.requests_for(P_ORDER_LIST))
    held = await broker.get_position(symbol)
    sold = await broker.place_order(OrderRequest(world.coid("exit"), symbol, OrderSide.SELL, held.quantity,
                                                 OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED
    [sent] = [r for r in world.fake.requests_for(P_PLACE_ORDER) if r.body["c2s"].get("remark") == sold.client_order_id]
    before = lambda proto: [r for r in world.fake.requests_for(proto) if r.received < sent.received]  # noqa: E731
    assert len(before(P_POSITIONS)) == positions + 1
    assert len(before(P_ORDER_LIST)) == orders + 1           # (the SDK's own query after the order is not ours)


async def test_a_position_read_serves_one_sell_only_and_only_while_fresh(world):
    """What an exit read is used once: a second sell asks OpenD again and sees the first one working; a read older
    than SELL_CHECK_FRESH is not used at all."""
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 2, "long2")
    lot = bought.filled_quantity // 2
    far = round_to_tick((await broker.get_quote(symbol)).ask * Decimal("1.2"), "hkex", "up")
    await broker.get_position(symbol)
    await broker.place_order(OrderRequest(world.coid("rest"), symbol, OrderSide.SELL, lot, OrderType.LIMIT, far))
    with pytest.raises(OrderRejected, match=rf"{2 * lot} held, {lot} already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("again"), symbol, OrderSide.SELL, 2 * lot,
                                              OrderType.MARKET))
    broker.sell_checks.fresh = 0.0
    await broker.get_position(symbol)
    positions = len(world.fake.requests_for(P_POSITIONS))
    with pytest.raises(OrderRejected, match=rf"{2 * lot} held, {lot} already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("stale"), symbol, OrderSide.SELL, 2 * lot,
                                              OrderType.MARKET))
    assert len(world.fake.requests_for(P_POSITIONS)) == positions + 1


async def test_trade_requests_do_not_each_ask_for_the_account_list_again(world):
    """The SDK checks the account of every trade request against a fresh account list (a round trip more before an
    order leaves); once accepted, an account is not checked again."""
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 1, "first")
    asked = len(world.fake.requests_for(P_ACC_LIST))
    await broker.get_position(symbol)
    await broker.get_orders()
    sold = await broker.place_order(OrderRequest(world.coid("sell"), symbol, OrderSide.SELL, bought.filled_quantity,
                                                 OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED
    assert len(world.fake.requests_for(P_ACC_LIST)) == asked


async def test_position_and_order_lists_filtered_by_code_answer_that_code_only(world):
    """Trd_GetPositionList / Trd_GetOrderList filterConditions.codeList, as the SDK sends `code=`."""
    sdk = load_sdk(world.log_dir)
    broker = await world.connect("real")
    a, b = symbols()[:2]
    for symbol in (a, b):
        await buy(broker, world, symbol, 1, f"hold-{symbol}")

    def lists(code: str):
        ctx = sdk.OpenSecTradeContext(filter_trdmarket=sdk.TrdMarket.HK, host=world.fake.host, port=world.fake.port,
                                      security_firm=sdk.SecurityFirm.FUTUSECURITIES)
        try:
            ctx.unlock_trade(password=PASSWORD)
            positions = ctx.position_list_query(code=code, trd_env="REAL", acc_id=REAL_ACC)
            orders = ctx.order_list_query(code=code, trd_env="REAL", acc_id=REAL_ACC)
            everything = ctx.position_list_query(trd_env="REAL", acc_id=REAL_ACC)
            return positions, orders, everything
        finally:
            ctx.close()

    (ret, positions), (ret2, orders), (ret3, everything) = await asyncio.to_thread(lists, to_moomoo_code(a))
    assert ret == ret2 == ret3 == sdk.RET_OK
    assert [r["code"] for r in positions.to_dict("records")] == [to_moomoo_code(a)]
    assert {r["code"] for r in orders.to_dict("records")} == {to_moomoo_code(a)}
    assert {r["code"] for r in everything.to_dict("records")} == {to_moomoo_code(a), to_moomoo_code(b)}


async def test_an_order_list_filtered_by_order_id_answers_that_order_only(world):
    """Trd_GetOrderList filterConditions.orderIDExList, as the SDK sends `order_id=` (and as its place_order reads
    back the order it just placed): that order, none for an id the account has not, every order without one."""
    sdk = load_sdk(world.log_dir)
    broker = await world.connect("real")
    a, b = symbols()[:2]
    for symbol in (a, b):
        await buy(broker, world, symbol, 1, f"hold-{symbol}")

    def lists():
        ctx = sdk.OpenSecTradeContext(filter_trdmarket=sdk.TrdMarket.HK, host=world.fake.host, port=world.fake.port,
                                      security_firm=sdk.SecurityFirm.FUTUSECURITIES)
        try:
            ctx.unlock_trade(password=PASSWORD)
            ret, everything = ctx.order_list_query(trd_env="REAL", acc_id=REAL_ACC)
            assert ret == sdk.RET_OK, everything
            rows = everything.to_dict("records")
            one = ctx.order_list_query(order_id=rows[0]["order_id"], trd_env="REAL", acc_id=REAL_ACC)
            none = ctx.order_list_query(order_id="FAKE999999", trd_env="REAL", acc_id=REAL_ACC)
            return rows, one, none
        finally:
            ctx.close()

    rows, (ret, one), (ret2, none) = await asyncio.to_thread(lists)
    assert ret == ret2 == sdk.RET_OK
    assert len(rows) == 2
    assert [r["order_id"] for r in one.to_dict("records")] == [rows[0]["order_id"]]
    assert none.empty


async def test_the_fake_takes_an_oversell_on_the_margin_account_as_opend_does_and_refuses_it_on_paper(world):
    """What the adapter guards against, at the venue: the SDK sends the oversell straight to the fake."""
    sdk = load_sdk(world.log_dir)
    code, lot = to_moomoo_code(symbols()[0]), shared_market().instrument(symbols()[0]).lot_size

    def oversell(env: str, acc_id: int) -> tuple[int, object]:
        ctx = sdk.OpenSecTradeContext(filter_trdmarket=sdk.TrdMarket.HK, host=world.fake.host, port=world.fake.port,
                                      security_firm=sdk.SecurityFirm.FUTUSECURITIES)
        try:
            if env == "REAL":
                ctx.unlock_trade(password=PASSWORD)
            return ctx.place_order(price=0, qty=lot, code=code, trd_side=sdk.TrdSide.SELL,
                                   order_type=sdk.OrderType.MARKET, trd_env=env, acc_id=acc_id)
        finally:
            ctx.close()

    ret, data = await asyncio.to_thread(oversell, "REAL", REAL_ACC)
    assert ret == sdk.RET_OK, data                        # accepted: a short, left working (the fake lends nothing)
    assert data.to_dict("records")[0]["order_status"] == "SUBMITTED"
    ret, data = await asyncio.to_thread(oversell, "SIMULATE", SIM_STOCK_ACC)
    assert ret != sdk.RET_OK and "short selling is not supported" in data


@pytest.mark.slow
async def test_a_silent_opend_is_given_the_configured_timeout_once_not_the_sdks_12_seconds_twice(world):
    """request_timeout_seconds above the SDK's own 12 s: one request, given up by our timeout (the SDK's fired first,
    was read as a lost connection and retried: 24 s at 15 and at 30). How long it takes: bench_broker_timeouts.py."""
    broker = await world.connect(request_timeout=14)
    world.fake.silence(P_GET_FUNDS)
    with pytest.raises(BrokerUnavailable, match=r"^moomoo accinfo_query: no answer from OpenD within 14s"):
        await broker.get_account()
    assert len(world.fake.requests_for(P_GET_FUNDS)) == 1


async def test_a_market_order_accepted_now_fills_a_moment_later_and_is_read_until_it_has(world):
    """The fake's late fills (the conformance suite's REAL account runs with them): what `settled` waits for."""
    world.fake.fill_delay = 1.0
    broker = await world.connect("real")
    placed = await buy(broker, world, symbols()[0], 1, "late")
    assert placed.status is OrderStatus.SUBMITTED and placed.filled_quantity == 0
    venue = Venue(broker=broker, advance=world.advance, reopen=world.connect, symbols=symbols(), coid=world.coid)
    filled = await settled(venue, placed)
    assert filled.status is OrderStatus.FILLED and sum(f.quantity for f in filled.fills) == filled.quantity
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {symbols()[0]: filled.quantity}


async def test_a_refused_order_carries_opends_reason(world):
    broker = await world.connect()
    reason = "Order rejected by risk control: too many orders today"
    world.fake.reject_next_order(reason)
    coid, symbol = world.coid("refused"), symbols()[0]
    lot = (await broker.get_instrument(symbol)).lot_size
    with pytest.raises(OrderRejected) as err:
        await broker.place_order(OrderRequest(coid, symbol, OrderSide.BUY, lot, OrderType.MARKET))
    assert err.value.reason == reason and err.value.client_order_id == coid
    assert await broker.get_order_by_client_id(coid) is None


async def test_a_place_order_timeout_is_resolved_by_remark_and_never_sent_twice(world, caplog):
    broker = await world.connect(request_timeout=1)
    world.fake.delay_next_place_order(2.5)          # the order is at the exchange; its reply comes too late
    symbol = symbols()[0]
    inst = await broker.get_instrument(symbol)
    req = OrderRequest(world.coid("slow"), symbol, OrderSide.BUY, inst.lot_size, OrderType.MARKET)
    with caplog.at_level("WARNING", logger="brokers.moomoo"):
        first = await broker.place_order(req)
    assert "reply lost, found the order by its remark" in caplog.text
    assert first.status is OrderStatus.FILLED and first.client_order_id == req.client_order_id
    found = await broker.get_order_by_client_id(req.client_order_id)
    again = await broker.place_order(req)
    assert found.broker_order_id == first.broker_order_id == again.broker_order_id
    sent = [r for r in world.fake.requests_for(P_PLACE_ORDER) if r.body["c2s"]["remark"] == req.client_order_id]
    assert len(sent) == 1


async def test_an_order_push_before_the_place_order_reply_wins_over_stale_lists_without_duplicates(world):
    broker = await world.connect()
    world.fake.pushes_before_reply = True
    world.fake.stale_order_lists = True            # only the push tells the truth
    result = await buy(broker, world, symbols()[0], 2, "pushed")
    assert result.status is OrderStatus.FILLED and result.filled_quantity == result.quantity
    assert sum(f.quantity for f in result.fills) == result.quantity
    assert len({f.fill_id for f in result.fills}) == len(result.fills)
    sent = [p for p, _ in world.fake.sent]
    assert sent.index(P_ORDER_PUSH) < sent.index(P_PLACE_ORDER)
    mine = [o for o in await broker.get_orders() if o.client_order_id == result.client_order_id]
    assert len(mine) == 1 and mine[0].status is OrderStatus.FILLED
    assert len(world.fake.requests_for(P_PLACE_ORDER)) == 1


@pytest.mark.parametrize("trade_env", ["simulate", "real"])
async def test_fill_ids_agree_between_processes_so_nothing_is_counted_twice(world, trade_env):
    first = await world.connect(trade_env)
    symbol = symbols()[0]
    inst = await first.get_instrument(symbol)
    acct = await first.get_account()
    q = await first.get_quote(symbol)
    lots = int(acct.buying_power * Decimal("0.5") / (q.ask * Decimal("1.01") * inst.lot_size))
    early = await first.place_order(OrderRequest(world.coid("split"), symbol, OrderSide.BUY, lots * inst.lot_size,
                                                 OrderType.MARKET))
    assert early.status is OrderStatus.PARTIALLY_FILLED
    await world.advance(30)
    later = await (await world.connect(trade_env)).get_order_by_client_id(early.client_order_id)
    recorded = {f.fill_id: f.quantity for f in early.fills}            # what an order path stored first
    recorded.update({f.fill_id: f.quantity for f in later.fills if f.fill_id not in recorded})
    assert sum(recorded.values()) == later.filled_quantity > early.filled_quantity
    assert {f.fill_id: f.quantity for f in early.fills}.items() <= {f.fill_id: f.quantity for f in later.fills}.items()


async def test_real_trading_with_a_wrong_password_is_refused_at_connect(world):
    broker = world.broker("real", password="not-the-password")
    with pytest.raises(BrokerUnavailable, match="MOOMOO_TRADE_PASSWORD"):
        await broker.connect()


async def test_the_paper_stock_account_is_used_not_the_option_account_listed_first(world):
    broker = await world.connect()
    bought = await buy(broker, world, symbols()[0], 1, "acct")
    assert await asyncio.to_thread(world.fake.positions, "SIMULATE") == {symbols()[0]: bought.filled_quantity}
    assert await asyncio.to_thread(world.fake.positions, "REAL") == {}


# ---------------------------------------------------------------- market data

@pytest.mark.parametrize("timeframe", ["1m", "5m", "15m", "30m", "1h", "1d"])
async def test_bars_match_the_simulated_market_for_every_timeframe(world, timeframe):
    broker = await world.connect()
    world.clock.set(datetime(2026, 11, 24, 7, 10, tzinfo=timezone.utc))          # 15:10 HKT
    symbol = symbols()[1]
    start = OPEN_AT - timedelta(days=6 if timeframe == "1d" else 0, hours=1)
    end = world.clock.now()
    got = await broker.get_bars(symbol, timeframe, start, end)
    assert list(got) == shared_market().bars(symbol, timeframe, start, end)
    assert got and all(start <= b.start < end for b in got)


async def test_unknown_symbols_are_invalid_requests(world):
    broker = await world.connect()
    with pytest.raises(InvalidRequest):
        await broker.get_instrument("S9999")
    with pytest.raises(InvalidRequest):
        await broker.get_quote("not a symbol")


async def test_quotes_in_one_batch_match_single_quotes(world):
    broker = await world.connect()
    names = symbols()[:3]
    batch = await broker.get_quotes(names + ["S9999"])
    assert set(batch) == set(names)
    for name in names:
        assert batch[name] == await broker.get_quote(name)


# ---------------------------------------------------------------- tables, mapping, config

def test_the_status_table_covers_every_moomoo_order_status(tmp_path):
    sdk = load_sdk(tmp_path)
    keys = sdk.OrderStatus.get_all_key_list()
    assert set(keys) == set(STATUS_MAP)
    assert {k: map_status(k) for k in ("SUBMITTED", "FILLED_PART", "FILLED_ALL", "CANCELLED_PART", "FAILED",
                                       "DISABLED", "CANCELLING_ALL", "WAITING_SUBMIT")} == {
        "SUBMITTED": OrderStatus.SUBMITTED, "FILLED_PART": OrderStatus.PARTIALLY_FILLED,
        "FILLED_ALL": OrderStatus.FILLED, "CANCELLED_PART": OrderStatus.CANCELLED, "FAILED": OrderStatus.REJECTED,
        "DISABLED": OrderStatus.EXPIRED, "CANCELLING_ALL": OrderStatus.CANCEL_PENDING,
        "WAITING_SUBMIT": OrderStatus.PENDING_SUBMIT}


@pytest.mark.parametrize("ours, code, back", [
    ("0700", "HK.00700", "0700"), ("00700", "HK.00700", "0700"), ("0700.HK", "HK.00700", "0700"),
    ("HK.00700", "HK.00700", "0700"), ("9988", "HK.09988", "9988"), ("S0142", "HK.S0142", "S0142"),
    ("s0142", "HK.S0142", "S0142"), ("80737", "HK.80737", "80737")])
def test_symbols_map_to_opend_codes_and_back(ours, code, back):
    assert to_moomoo_code(ours) == code
    assert from_moomoo_code(code) == back


@pytest.mark.parametrize("bad", ["", "123456", "AAPL.US", "S 01", "零"])
def test_malformed_symbols_are_invalid_requests(bad):
    with pytest.raises(InvalidRequest):
        to_moomoo_code(bad)


def test_from_settings_reads_config_environment_and_log_dir(settings, make_env):
    env = make_env(MOOMOO_PORT="11222", MOOMOO_HOST="10.0.0.5")
    settings = Settings(config=settings.config, env=env, config_path=settings.config_path)
    broker = MoomooBroker.from_settings(settings)
    assert (broker.config.host, broker.config.port, broker.environment) == ("10.0.0.5", 11222, "simulate")
    assert broker.log_dir == settings.log_dir


def test_real_trading_without_the_trade_password_is_a_config_error_naming_it(settings):
    config = settings.config.model_copy(update={"moomoo": MoomooConfig(trade_env="real")})
    with pytest.raises(ConfigError, match="MOOMOO_TRADE_PASSWORD"):
        MoomooBroker.from_settings(Settings(config=config, env=settings.env, config_path=settings.config_path))


async def test_order_level_fees_reach_the_position_once(world, pool):
    """OpenD reports fees per order, never per deal: the order path books them onto the position, once."""
    from execution.order_path import OrderPath
    broker = await world.connect("real")
    path = OrderPath(pool, broker, world.clock, world.agent_id)
    symbol = symbols()[0]
    lot = (await broker.get_instrument(symbol)).lot_size
    out = await path.submit(cycle_id=None, symbol=symbol, side=OrderSide.BUY, quantity=lot,
                            order_type=OrderType.MARKET, intent="entry")
    assert out.status == "filled" and out.fees > 0
    await path.sync(out.client_order_id)                 # a second sync must not book them again
    pos = await pool.fetchrow("SELECT fees, realized_pnl FROM positions WHERE agent_id = $1 AND symbol = $2",
                              world.agent_id, symbol)
    fill_fees = await pool.fetchval("SELECT coalesce(sum(fee), 0) FROM fills WHERE agent_id = $1", world.agent_id)
    assert fill_fees == 0 and pos["fees"] == out.fees and pos["realized_pnl"] == -out.fees


async def test_sdk_answers_reach_the_loop_as_rows_the_same_as_pandas_would_give(world):
    """The SDK's DataFrames are turned into row dicts in the worker thread (never on the event loop the pushed
    prices are judged on), and the rows are what DataFrame.to_dict("records") gives."""
    import numpy as np
    import pandas as pd
    from brokers.moomoo import mapping
    broker = await world.connect("real")
    raw = await asyncio.to_thread(broker._t().get_acc_list)
    rows = await broker._opend.call("get_acc_list", broker._t().get_acc_list)
    assert isinstance(rows, list) and rows == raw[1].to_dict("records")
    frame = pd.DataFrame([{"code": "HK.00700", "price": 1.5, "qty": 100.0, "flag": np.bool_(True), "none": None,
                           "nan": float("nan"), "text": "N/A", "n": 3},
                          {"code": "HK.00005", "price": 2.0, "qty": 0.0, "flag": np.bool_(False), "none": "x",
                           "nan": 1.0, "text": "ok", "n": 4}])
    mine, theirs = mapping.records(frame), frame.to_dict("records")
    assert [{k: v for k, v in r.items() if k != "nan"} for r in mine] == [
        {k: v for k, v in r.items() if k != "nan"} for r in theirs]
    assert [type(v) for v in mine[0].values()] == [type(v) for v in theirs[0].values()]
    assert np.isnan(mine[0]["nan"]) and mine[1]["nan"] == 1.0


async def test_an_order_this_process_knows_is_read_from_its_codes_list_only(world):
    """Reading an order again (a sync) asks for today's orders of its code, not the whole day's book; an order it
    has never seen (another process's) is looked for in the whole day's list."""
    broker = await world.connect("real")
    symbol = symbols()[0]
    bought = await buy(broker, world, symbol, 1, "known")
    before = len(world.fake.requests_for(P_ORDER_LIST))
    again = await broker.get_order_by_client_id(bought.client_order_id)
    assert again is not None and again.status is OrderStatus.FILLED
    asked = world.fake.requests_for(P_ORDER_LIST)[before:]
    assert [r.body["c2s"].get("filterConditions", {}).get("codeList") for r in asked] == [[to_moomoo_code(symbol).split(".", 1)[1]]]
    other = await world.connect("real")                      # a new process: it has seen nothing
    assert (await other.get_order_by_client_id(bought.client_order_id)).status is OrderStatus.FILLED
