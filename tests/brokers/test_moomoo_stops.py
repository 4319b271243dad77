"""Protective stop orders at moomoo, through the real moomoo-api SDK against the fake OpenD: which accounts hold them
(REAL, not paper), how one rests (a GTC stop-market order, its trigger in aux_price), fires on a price move and
fills like a market sell, is cancelled, and how the oversell guard counts the shares a working stop holds."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.moomoo import MoomooBroker, load_sdk, to_moomoo_code
from brokers.moomoo.mapping import order_view
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.config_model import MoomooConfig
from core.errors import OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.ticks import round_to_tick
from tests.fakes.movable import MovableMarket
from tests.fakes.opend_server import FakeOpenD
from tests.fakes.opend_wire import PAPER_DAY_ONLY, PAPER_ORDER_TYPES, SIM_STOCK_ACC
from tests.venues import OPEN_AT, liquid_symbols, paper_config, shared_market

PASSWORD = "fake-trade-pw-1234"
CALENDAR = MarketCalendar("HKEX")
P_PLACE_ORDER, P_ORDER_PUSH = 2202, 2208
ORDER_STOP, TIF_GTC = 10, 1                       # Trd_Common.OrderType_Stop, TimeInForce_GTC
PATIENCE = 10.0                                   # seconds a test waits, at most, for the fake to act on a move


@dataclass
class World:
    fake: FakeOpenD
    market: MovableMarket
    clock: SimulatedClock
    log_dir: Path
    agent_id: str
    brokers: list[MoomooBroker] = field(default_factory=list)

    async def connect(self, trade_env: str = "real") -> MoomooBroker:
        config = MoomooConfig(host=self.fake.host, port=self.fake.port, trade_env=trade_env,
                              connect_timeout_seconds=5)
        broker = MoomooBroker(config, log_dir=self.log_dir, clock=self.clock, calendar=CALENDAR,
                              trade_password=PASSWORD, request_timeout_seconds=5, reconnect_interval_seconds=0.3)
        self.brokers.append(broker)
        await broker.connect()
        return broker

    def coid(self, label: str) -> str:
        return f"{self.agent_id}-{label}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def world(pool, pg_url, agent_id, tmp_path):
    log_dir = tmp_path / "logs"
    load_sdk(log_dir)
    clock = SimulatedClock(OPEN_AT)
    market = MovableMarket(shared_market(), clock)
    fake = FakeOpenD(pg_url=pg_url, market=market, clock=clock, account_id=agent_id, paper_config=paper_config(),
                     calendar=CALENDAR, trade_password=PASSWORD)
    await asyncio.to_thread(fake.start)
    w = World(fake, market, clock, log_dir, agent_id)
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)


def symbol() -> str:
    return liquid_symbols(shared_market(), OPEN_AT)[0]


async def bought(broker: MoomooBroker, world: World, lots: int) -> OrderResult:
    lot = (await broker.get_instrument(symbol())).lot_size
    order = await broker.place_order(OrderRequest(world.coid("buy"), symbol(), OrderSide.BUY, lot * lots,
                                                  OrderType.MARKET))
    assert order.status is OrderStatus.FILLED
    return order


async def stop_below(broker: MoomooBroker, world: World, quantity: int, ticks: int = 3) -> OrderResult:
    last = (await broker.get_quote(symbol())).last
    level = last
    for _ in range(ticks):
        level = round_to_tick(level - Decimal("0.0001"), "hkex", "down")
    return await broker.place_order(OrderRequest(world.coid("stop"), symbol(), OrderSide.SELL, quantity,
                                                 OrderType.STOP, stop_price=level))


async def until(broker: MoomooBroker, coid: str, done) -> OrderResult:
    """The order read again (bounded) until `done(order)`; as it stands when patience runs out."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    order = await broker.get_order_by_client_id(coid)
    while not done(order) and loop.time() < give_up:
        await asyncio.sleep(0.05)
        order = await broker.get_order_by_client_id(coid)
    return order


def sent_stops(world: World, coid: str) -> list[dict]:
    return [r.body["c2s"] for r in world.fake.requests_for(P_PLACE_ORDER) if r.body["c2s"].get("remark") == coid]


# ---------------------------------------------------------------- which accounts hold stops

async def test_a_real_account_holds_stop_orders_and_a_paper_account_refuses_them_before_opend(world):
    real, paper = await world.connect("real"), await world.connect("simulate")
    assert real.supports_stop_orders() is True
    assert paper.supports_stop_orders() is False
    coid = world.coid("paper-stop")
    with pytest.raises(OrderRejected, match="paper trading supports limit and market orders only") as err:
        await paper.place_order(OrderRequest(coid, symbol(), OrderSide.SELL, 100, OrderType.STOP,
                                             stop_price=Decimal("1")))
    assert err.value.client_order_id == coid
    assert sent_stops(world, coid) == []


async def test_the_fake_refuses_stop_and_gtc_orders_on_a_paper_account_as_the_docs_say(world):
    """Paper trading: "Order Types: limit order and market order", "only supports good for day order"."""
    sdk = load_sdk(world.log_dir)
    code = to_moomoo_code(symbol())

    def place(**kw) -> tuple[int, object]:
        ctx = sdk.OpenSecTradeContext(filter_trdmarket=sdk.TrdMarket.HK, host=world.fake.host, port=world.fake.port,
                                      security_firm=sdk.SecurityFirm.FUTUSECURITIES)
        try:
            return ctx.place_order(qty=100, code=code, trd_side=sdk.TrdSide.SELL, trd_env="SIMULATE",
                                   acc_id=SIM_STOCK_ACC, **kw)
        finally:
            ctx.close()

    ret, msg = await asyncio.to_thread(place, price=1.0, order_type=sdk.OrderType.STOP, aux_price=1.0)
    assert ret != sdk.RET_OK and PAPER_ORDER_TYPES in msg
    ret, msg = await asyncio.to_thread(place, price=1.0, order_type=sdk.OrderType.NORMAL,
                                       time_in_force=sdk.TimeInForce.GTC)
    assert ret != sdk.RET_OK and PAPER_DAY_ONLY in msg


# ---------------------------------------------------------------- a stop rests, fires, fills

async def test_a_protective_stop_rests_at_opend_as_a_gtc_stop_with_its_trigger(world):
    broker = await world.connect()
    position = await bought(broker, world, 1)
    stop = await stop_below(broker, world, position.filled_quantity)
    assert (stop.status, stop.order_type, stop.filled_quantity) == (OrderStatus.SUBMITTED, OrderType.STOP, 0)
    assert stop.stop_price is not None and stop.limit_price is None
    [wire] = sent_stops(world, stop.client_order_id)
    assert (wire["orderType"], wire["timeInForce"]) == (ORDER_STOP, TIF_GTC)
    assert Decimal(repr(wire["auxPrice"])) == stop.stop_price
    assert await broker.get_order_by_client_id(stop.client_order_id) == stop
    working = {o.client_order_id: o for o in await broker.get_orders(open_only=True)}
    assert working[stop.client_order_id].stop_price == stop.stop_price
    again = await broker.place_order(OrderRequest(stop.client_order_id, symbol(), OrderSide.SELL,
                                                  position.filled_quantity, OrderType.STOP,
                                                  stop_price=stop.stop_price))
    assert again.broker_order_id == stop.broker_order_id and len(sent_stops(world, stop.client_order_id)) == 1


async def test_a_move_through_the_stop_fills_it_like_a_market_sell(world):
    broker = await world.connect()
    position = await bought(broker, world, 2)
    stop = await stop_below(broker, world, position.filled_quantity)
    above = round_to_tick(stop.stop_price + Decimal("0.0001"), "hkex", "up")
    world.market.move(symbol(), above)                      # down, but not to the trigger: still resting
    assert (await broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.SUBMITTED
    world.market.move(symbol(), stop.stop_price)            # trades at the trigger: fires
    filled = await until(broker, stop.client_order_id, lambda o: o.status is OrderStatus.FILLED)
    assert filled.status is OrderStatus.FILLED and filled.filled_quantity == position.filled_quantity
    assert (filled.order_type, filled.stop_price) == (OrderType.STOP, stop.stop_price)
    assert filled.avg_fill_price <= stop.stop_price                   # a market sell at the moved bid
    assert sum(f.quantity for f in filled.fills) == filled.quantity and len({f.fill_id for f in filled.fills}) > 0
    assert filled.fees > 0
    assert await asyncio.to_thread(world.fake.positions, "REAL") == {}
    assert stop.client_order_id not in {o.client_order_id for o in await broker.get_orders(open_only=True)}


async def test_a_triggered_stop_is_pushed_to_the_adapter(world):
    """The fill reaches us by push: the order book has it before anyone asks OpenD again."""
    broker = await world.connect()
    position = await bought(broker, world, 1)
    stop = await stop_below(broker, world, position.filled_quantity)
    pushes = len([p for p, _ in world.fake.sent if p == P_ORDER_PUSH])
    world.market.move(symbol(), stop.stop_price)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    while broker._book.by_remark(stop.client_order_id).status is not OrderStatus.FILLED and loop.time() < give_up:
        await asyncio.sleep(0.02)
    assert broker._book.by_remark(stop.client_order_id).status is OrderStatus.FILLED
    assert len([p for p, _ in world.fake.sent if p == P_ORDER_PUSH]) > pushes


async def test_a_sell_stop_at_or_above_the_price_is_refused_by_opend(world):
    broker = await world.connect()
    position = await bought(broker, world, 1)
    last = (await broker.get_quote(symbol())).last
    with pytest.raises(OrderRejected, match="must be below the current price"):
        await broker.place_order(OrderRequest(world.coid("high"), symbol(), OrderSide.SELL,
                                              position.filled_quantity, OrderType.STOP, stop_price=last))


async def test_a_stop_price_off_the_tick_grid_is_refused_before_opend(world):
    broker = await world.connect()
    coid, lot = world.coid("offtick"), (await broker.get_instrument(symbol())).lot_size
    with pytest.raises(OrderRejected, match="stop price .* is not on the HKEX tick grid"):
        await broker.place_order(OrderRequest(coid, symbol(), OrderSide.SELL, lot, OrderType.STOP,
                                              stop_price=Decimal("5.0001")))
    assert sent_stops(world, coid) == []


# ---------------------------------------------------------------- cancel, and the oversell guard

async def test_a_working_stop_holds_its_shares_and_a_market_sell_passes_once_it_is_cancelled(world):
    """OpenD's can_sell_qty does not count an untriggered stop (a conditional order freezes no position): without
    the adapter's own count a second sell would go out, and the stop, once fired, would sell shares already sold."""
    broker = await world.connect()
    position = await bought(broker, world, 1)
    stop = await stop_below(broker, world, position.filled_quantity)
    with pytest.raises(OrderRejected, match=r"already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("exit"), symbol(), OrderSide.SELL,
                                              position.filled_quantity, OrderType.MARKET))
    assert await broker.cancel_order(stop.client_order_id) is True
    assert (await broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.CANCELLED
    sold = await broker.place_order(OrderRequest(world.coid("exit"), symbol(), OrderSide.SELL,
                                                 position.filled_quantity, OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED
    world.market.move(symbol(), stop.stop_price)            # a cancelled stop never fires
    assert (await broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.CANCELLED
    assert await asyncio.to_thread(world.fake.positions, "REAL") == {}


async def test_a_stop_on_part_of_a_position_leaves_the_rest_free_to_sell_counted_once(world):
    broker = await world.connect()
    position = await bought(broker, world, 2)
    lot = position.filled_quantity // 2
    await stop_below(broker, world, lot)
    with pytest.raises(OrderRejected, match=rf"{2 * lot} held, {lot} already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("all"), symbol(), OrderSide.SELL, 2 * lot,
                                              OrderType.MARKET))
    half = await broker.place_order(OrderRequest(world.coid("half"), symbol(), OrderSide.SELL, lot,
                                                 OrderType.MARKET))
    assert half.status is OrderStatus.FILLED


# ---------------------------------------------------------------- mapping

def test_an_untriggered_stop_listed_as_waiting_submit_is_working_at_the_venue():
    row = {"order_id": "1", "remark": "a-stop", "code": "HK.00700", "trd_side": "SELL", "order_type": "STOP",
           "qty": 100.0, "price": 300.0, "aux_price": 300.0, "order_status": "WAITING_SUBMIT", "dealt_qty": 0.0,
           "dealt_avg_price": 0.0, "last_err_msg": "", "create_time": "2026-11-24 10:30:00",
           "updated_time": "2026-11-24 10:30:00"}
    view = order_view(row)
    assert (view.order_type, view.status, view.stop_price, view.limit_price) == (
        OrderType.STOP, OrderStatus.SUBMITTED, Decimal("300.0"), None)
    assert order_view({**row, "order_type": "NORMAL"}).status is OrderStatus.PENDING_SUBMIT
