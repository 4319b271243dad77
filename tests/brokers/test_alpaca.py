"""The Alpaca adapter with the real alpaca-py SDK against a fake Alpaca REST server backed by the paper exchange:
the conformance suite, the network's failure modes, and what only Alpaca's wire shows (status table, fill ids)."""
from __future__ import annotations

import ast
import asyncio
import json
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.alpaca import STATUS_MAP, AlpacaBroker, map_status
from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType
from core.clock import SimulatedClock
from core.errors import ConfigError
from core.environment import Environment
from core.settings import Settings, load_settings
from core.ticks import round_to_tick
from tests.brokers.conformance import BrokerConformance, Venue, settled
from tests.fakes.alpaca_server import FakeAlpaca
from tests.venues import advance_trading_minutes, paper_config

from tests.venues import NY_OPEN_AT as OPEN_AT, NYSE as CALENDAR, US_FEES, us_market, us_settings, us_symbols


@dataclass
class World:
    fake: FakeAlpaca
    clock: SimulatedClock
    agent_id: str
    brokers: list[AlpacaBroker] = field(default_factory=list)

    async def connect(self, *, timeout_seconds: float = 5) -> AlpacaBroker:
        """A broker as from_settings builds it (keys and both URLs from the environment), pointed at the fake."""
        broker = AlpacaBroker.from_settings(us_settings(self.fake, timeout_seconds=timeout_seconds), clock=self.clock,
                                            calendar=CALENDAR)
        self.brokers.append(broker)
        await broker.connect()
        return broker

    def coid(self, label: str) -> str:
        return f"{self.agent_id}-{label}-{uuid.uuid4().hex[:6]}"

    async def advance(self, minutes: int) -> None:
        await advance_trading_minutes(self.clock, CALENDAR, minutes)

    def posts(self) -> list:
        return self.fake.requests_for("POST", "/v2/orders")


@pytest.fixture
async def world(pool, pg_url, agent_id):
    clock = SimulatedClock(OPEN_AT)
    fake = FakeAlpaca(pg_url=pg_url, market=us_market(), clock=clock, account_id=agent_id, calendar=CALENDAR,
                      paper_config=paper_config(fees=US_FEES))
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, agent_id)
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)
    assert fake.errors == [], fake.errors


def market_buy(world: World, symbol: str, qty: int, label: str) -> OrderRequest:
    return OrderRequest(world.coid(label), symbol, OrderSide.BUY, qty, OrderType.MARKET)


# ---------------------------------------------------------------- the conformance suite

class TestAlpacaConformance(BrokerConformance):
    """A margin account (multiplier 2) whose market orders fill before the order's answer."""
    fill_delay: float | None = None

    @pytest.fixture
    async def venue(self, world):
        world.fake.fill_delay = self.fill_delay
        return Venue(broker=await world.connect(), advance=world.advance, reopen=world.connect,
                     symbols=us_symbols(), coid=world.coid)

    async def test_market_order_fills_near_the_quote(self, venue: Venue):
        """As the suite's, except fees: Alpaca is commission-free and reports no fee on an order, so 0."""
        symbol = venue.symbols[0]
        q = await venue.broker.get_quote(symbol)
        result = await settled(venue, await venue.broker.place_order(OrderRequest(venue.coid("mkt"), symbol,
                                                                                  OrderSide.BUY, 1, OrderType.MARKET)))
        assert result.status is OrderStatus.FILLED
        assert q.ask <= result.avg_fill_price <= q.ask * Decimal("1.01")
        assert result.fees == 0
        assert sum(f.quantity for f in result.fills) == result.filled_quantity == 1
        positions = {p.symbol: p for p in await venue.broker.get_positions()}
        assert positions[symbol].quantity == result.quantity


class TestAlpacaConformanceWithLateFills(TestAlpacaConformance):
    """As live Alpaca does at times: a market order answered "accepted", filled a moment later."""
    fill_delay = 0.3


def raw_account(fake: FakeAlpaca) -> dict:
    """GET /v2/account as Alpaca answers it, past the adapter."""
    request = urllib.request.Request(f"{fake.base_url}/v2/account", headers={
        "APCA-API-KEY-ID": fake.api_key, "APCA-API-SECRET-KEY": fake.secret_key})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


async def test_buying_power_is_the_cash_not_alpacas_margin_buying_power(world):
    broker = await world.connect()
    acct = await broker.get_account()
    raw = await asyncio.to_thread(raw_account, world.fake)
    assert Decimal(raw["buying_power"]) > Decimal(raw["cash"]) and raw["multiplier"] == "2"    # what Alpaca offers
    assert acct.buying_power == acct.cash == Decimal(raw["cash"])                              # what we take


async def test_a_market_order_accepted_now_fills_a_moment_later_and_is_read_until_it_has(world):
    world.fake.fill_delay = 1.0
    broker = await world.connect()
    placed = await broker.place_order(market_buy(world, us_symbols()[0], 3, "late"))
    assert placed.status is OrderStatus.SUBMITTED and placed.filled_quantity == 0
    venue = Venue(broker=broker, advance=world.advance, reopen=world.connect, symbols=us_symbols(), coid=world.coid)
    filled = await settled(venue, placed)
    assert filled.status is OrderStatus.FILLED and filled.broker_order_id == placed.broker_order_id
    assert sum(f.quantity for f in filled.fills) == 3
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {us_symbols()[0]: 3}


# ---------------------------------------------------------------- the network's failure modes

async def test_a_read_whose_connection_dropped_is_resent_once(world):
    broker = await world.connect()
    world.fake.drop_connections(1, match="GET /v2/account")
    acct = await broker.get_account()
    assert acct.cash > 0
    answers = [r.status for r in world.fake.requests_for("GET", "/v2/account")]
    assert answers == [200, None, 200]                       # connect, the dropped one, the resend


async def test_a_server_that_keeps_dropping_connections_is_broker_unavailable(world):
    broker = await world.connect()
    world.fake.drop_connections(5, match="GET /v2/positions")
    with pytest.raises(BrokerUnavailable, match=r"positions: connection to 127\.0\.0\.1:\d+ failed"):
        await broker.get_positions()
    assert [r.status for r in world.fake.requests_for("GET", "/v2/positions")] == [None, None]   # sent, resent once


async def test_rate_limit_with_retry_after_is_retried_then_succeeds(world, caplog):
    broker = await world.connect()
    world.fake.fail_next(429, {"code": 42910000, "message": "rate limit exceeded"}, headers={"Retry-After": "1"},
                         match="GET /v2/positions")
    with caplog.at_level("INFO", logger="brokers.alpaca"):
        assert await broker.get_positions() == []
    assert [r.status for r in world.fake.requests_for("GET", "/v2/positions")] == [429, 200]
    retries = [r.getMessage() for r in caplog.records if "rate limited, retry" in r.getMessage()]
    assert retries == ["alpaca positions: rate limited, retry 1 in 1.00 s"]      # the wait Retry-After asked for


async def test_rate_limit_that_does_not_clear_is_broker_unavailable_after_the_retries(world):
    broker = await world.connect()
    world.fake.fail_next(429, {"code": 42910000, "message": "rate limit exceeded"}, times=10,
                         headers={"Retry-After": "0"}, match="GET /v2/account")
    with pytest.raises(BrokerUnavailable, match="rate limited .* after 3 retries: rate limit exceeded"):
        await broker.get_account()
    assert len(world.fake.requests_for("GET", "/v2/account")) == 1 + 1 + 3


async def test_a_retry_after_longer_than_we_wait_is_not_waited_for(world, caplog):
    broker = await world.connect()
    world.fake.fail_next(429, {"code": 42910000, "message": "rate limit exceeded"}, headers={"Retry-After": "120"},
                         match="GET /v2/account")
    with caplog.at_level("INFO", logger="brokers.alpaca"), \
            pytest.raises(BrokerUnavailable, match=r"rate limited \(HTTP 429\) after 0 retries"):
        await broker.get_account()
    assert [r.status for r in world.fake.requests_for("GET", "/v2/account")] == [200, 429]   # connect, no resend
    assert not [r for r in caplog.records if "rate limited, retry" in r.getMessage()]       # no wait scheduled


async def test_a_server_error_is_broker_unavailable(world):
    broker = await world.connect()
    world.fake.fail_next(500, {"code": 50010000, "message": "internal server error"}, match="GET /v2/account")
    with pytest.raises(BrokerUnavailable, match=r"server error \(HTTP 500\): internal server error"):
        await broker.get_account()


async def test_wrong_keys_fail_connect_with_a_clear_message(world):
    settings = us_settings(world.fake, ALPACA_SECRET_KEY="not-the-secret")
    broker = AlpacaBroker.from_settings(settings, clock=world.clock, calendar=CALENDAR)
    world.brokers.append(broker)
    with pytest.raises(BrokerUnavailable, match="not authorized .*ALPACA_API_KEY / ALPACA_SECRET_KEY") as err:
        await broker.connect()
    assert "not-the-secret" not in str(err.value)
    assert world.fake.requests_for("GET", "/v2/account")[-1].status == 401


# ---------------------------------------------------------------- orders: refusals and lost answers

@pytest.mark.parametrize("refusal", ["buying_power", "injected_422"])
async def test_a_refused_order_carries_alpacas_reason(world, refusal):
    broker = await world.connect()
    symbol = us_symbols()[0]
    q = await broker.get_quote(symbol)
    if refusal == "buying_power":
        qty, expected = int((await broker.get_account()).buying_power / q.bid) + 10, "insufficient buying power"
    else:
        qty, expected = 1, "qty must be <= 10000"
        world.fake.fail_next(422, {"code": 40010001, "message": expected}, match="POST /v2/orders")
    with pytest.raises(OrderRejected) as err:
        await broker.place_order(OrderRequest(world.coid("no"), symbol, OrderSide.BUY, qty, OrderType.LIMIT, q.bid))
    assert expected in err.value.reason and "Alpaca HTTP" in err.value.reason
    assert err.value.client_order_id is not None
    assert await broker.get_order_by_client_id(err.value.client_order_id) is None


async def test_a_timed_out_order_is_found_by_client_id_not_sent_again(world, caplog):
    broker = await world.connect(timeout_seconds=0.5)
    symbol = us_symbols()[0]
    world.fake.delay_next(1.5, match="POST /v2/orders")     # the order is placed at once; the answer waits
    request = market_buy(world, symbol, 3, "slow")
    with caplog.at_level("WARNING", logger="brokers.alpaca"):
        result = await broker.place_order(request)
    # it gave up on the answer at the configured timeout and found the order instead of waiting or resending
    assert f"order {request.client_order_id}: no answer within 0.5 s" in caplog.text
    assert "but the order is at Alpaca: filled" in caplog.text
    assert result.status is OrderStatus.FILLED and result.filled_quantity == 3
    assert len(world.posts()) == 1
    lookups = world.fake.requests_for("GET", "/v2/orders:by_client_order_id")
    assert [r.query["client_order_id"] for r in lookups] == [request.client_order_id]
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {symbol: 3}


async def test_an_order_whose_answer_was_lost_after_placing_is_found_not_sent_again(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    world.fake.drop_connections(1, match="POST /v2/orders", after_processing=True)
    result = await broker.place_order(market_buy(world, symbol, 2, "dropped"))
    assert result.status is OrderStatus.FILLED
    assert [r.status for r in world.posts()] == [None]       # sent once; its answer never came
    assert await broker.cancel_order(result.client_order_id) is False          # filled: nothing to cancel
    assert await broker.cancel_order(world.coid("never-sent")) is False
    assert world.fake.requests_for("DELETE") == []
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {symbol: 2}


async def test_an_order_lost_before_reaching_alpaca_is_unavailable_and_a_resend_places_it_once(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    request = market_buy(world, symbol, 2, "lost")
    world.fake.drop_connections(1, match="POST /v2/orders")
    with pytest.raises(BrokerUnavailable, match="has no order .*treat it as not placed"):
        await broker.place_order(request)
    assert await broker.get_positions() == []
    again = await broker.place_order(request)
    assert again.status is OrderStatus.FILLED
    assert [o.client_order_id for o in await broker.get_orders()] == [request.client_order_id]


async def test_an_exit_reads_its_position_once_before_its_sell(world):
    """An exit reads the position (get_position) and sells at once: the sell's check of the shares free to sell
    takes that read instead of asking Alpaca again (one round trip before the order, not two). It serves one sell
    only, and only while fresh: a second sell asks again and sees the shares the first one holds."""
    broker = await world.connect()
    symbol = us_symbols()[0]
    await broker.place_order(market_buy(world, symbol, 10, "long"))
    reads = lambda: len(world.fake.requests_for("GET", f"/v2/positions/{symbol}"))  # noqa: E731
    before = reads()
    held = await broker.get_position(symbol)
    far = round_to_tick((await broker.get_quote(symbol)).ask * Decimal("1.2"), "us", "up")
    await broker.place_order(OrderRequest(world.coid("rest"), symbol, OrderSide.SELL, 5, OrderType.LIMIT, far))
    assert reads() == before + 1
    with pytest.raises(OrderRejected, match=r"10 held, 5 already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("again"), symbol, OrderSide.SELL, held.quantity,
                                              OrderType.MARKET))
    assert reads() == before + 2
    broker.sell_checks.fresh = 0.0
    await broker.get_position(symbol)
    with pytest.raises(OrderRejected, match=r"10 held, 5 already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("stale"), symbol, OrderSide.SELL, held.quantity,
                                              OrderType.MARKET))
    assert reads() == before + 4


async def test_sub_penny_limit_price_is_rejected_before_any_request(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    for price in (Decimal("5.005"), Decimal("0.50005")):
        with pytest.raises(OrderRejected, match=r"not on the US tick grid .*sub-penny") as err:
            await broker.place_order(OrderRequest(world.coid("penny"), symbol, OrderSide.BUY, 1, OrderType.LIMIT,
                                                  price))
        assert str(round_to_tick(price, "us", "down")) in err.value.reason
    assert world.posts() == []


async def test_a_market_order_outside_the_session_is_refused_before_any_request(world):
    broker = await world.connect()
    world.clock.set(datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))       # 17:00 New York
    with pytest.raises(OrderRejected, match="market closed .*next open 2026-11-25T14:30"):
        await broker.place_order(market_buy(world, us_symbols()[0], 1, "late"))
    assert world.posts() == []


# ---------------------------------------------------------------- what only Alpaca's wire shows

def test_status_table_covers_every_alpaca_order_status():
    from alpaca.trading.enums import OrderStatus as AlpacaStatus
    assert {s.value for s in AlpacaStatus} == set(STATUS_MAP)
    for status in AlpacaStatus:
        assert isinstance(map_status(status.value), OrderStatus)
    assert map_status("canceled") is OrderStatus.CANCELLED
    assert map_status("pending_cancel") is OrderStatus.CANCEL_PENDING
    assert map_status("accepted_for_bidding") is OrderStatus.SUBMITTED
    assert map_status("done_for_day", filled=40, quantity=100) is OrderStatus.PARTIALLY_FILLED
    assert map_status("calculated", filled=100, quantity=100) is OrderStatus.FILLED
    with pytest.raises(BrokerUnavailable, match="unknown order status"):
        map_status("teleported")


async def test_fill_ids_are_the_same_in_every_process_and_add_up(world):
    """The order path records each Fill by id once: a second process must see the same ids and quantities."""
    broker = await world.connect()
    symbol = us_symbols()[0]
    q = await broker.get_quote(symbol)
    qty = int((await broker.get_account()).buying_power * Decimal("0.5") / (q.ask * Decimal("1.01")))
    first = await broker.place_order(market_buy(world, symbol, qty, "big"))
    assert first.status is OrderStatus.PARTIALLY_FILLED
    await world.advance(20)
    other = await world.connect()
    later = await other.get_order_by_client_id(first.client_order_id)
    early = {f.fill_id: f.quantity for f in first.fills}
    seen = {f.fill_id: f.quantity for f in later.fills}
    assert early.items() <= seen.items() and len(seen) > len(early)
    assert sum(seen.values()) == later.filled_quantity > first.filled_quantity
    assert all(f.fee == 0 and "::" in f.fill_id for f in later.fills)
    assert [o.fills for o in await broker.get_orders() if o.client_order_id == first.client_order_id] == [later.fills]


async def test_bars_are_the_paper_exchanges_with_daily_bars_stamped_at_the_open(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    for timeframe, back in (("5m", timedelta(hours=3)), ("1d", timedelta(days=10))):
        start = OPEN_AT - back
        got = await broker.get_bars(symbol, timeframe, start, OPEN_AT + timedelta(hours=1))
        assert list(got) == us_market().bars(symbol, timeframe, start, OPEN_AT)
        assert got and got[-1].start < OPEN_AT
    daily = await broker.get_bars(symbol, "1d", OPEN_AT - timedelta(days=10), OPEN_AT)
    assert all(b.start.astimezone(CALENDAR.tz).strftime("%H:%M") == "09:30" for b in daily)


async def test_quotes_for_many_symbols_come_in_one_request_and_unknown_ones_are_left_out(world):
    broker = await world.connect()
    symbols = us_symbols()[:3]
    quotes = await broker.get_quotes([*symbols, "NOSUCH"])
    assert set(quotes) == set(symbols)
    assert quotes[symbols[0]] == us_market().quote(symbols[0], OPEN_AT)
    assert len(world.fake.requests_for("GET", "/v2/stocks/snapshots")) == 1
    with pytest.raises(InvalidRequest, match="unknown symbol"):
        await broker.get_quote("NOSUCH")
    with pytest.raises(InvalidRequest, match="unknown symbol"):
        await broker.get_instrument("NOSUCH")


async def test_an_order_whose_executions_lag_stays_open_until_they_are_visible(world):
    """A FILLED order with fewer visible executions than filled shares would close short in the order path."""
    broker = await world.connect()
    world.fake.lagging_activities = True
    placed = await broker.place_order(market_buy(world, us_symbols()[0], 2, "lag"))
    assert (placed.status, placed.filled_quantity, placed.fills) == (OrderStatus.PARTIALLY_FILLED, 2, ())
    world.fake.lagging_activities = False
    later = await broker.get_order_by_client_id(placed.client_order_id)
    assert later.status is OrderStatus.FILLED and sum(f.quantity for f in later.fills) == 2


async def test_a_batch_of_quotes_refused_for_one_symbol_is_asked_one_by_one(world):
    broker = await world.connect()
    symbols = us_symbols()[:2]
    world.fake.fail_next(422, {"code": 42210000, "message": "invalid symbol: BAD/SYM"},
                         match="GET /v2/stocks/snapshots")
    quotes = await broker.get_quotes([*symbols, "BAD/SYM"])
    assert set(quotes) == set(symbols)
    assert len(world.fake.requests_for("GET", "/v2/stocks/snapshots")) == 1 + 3


# ---------------------------------------------------------------- configuration

def test_from_settings_reads_keys_and_endpoints_from_the_environment():
    broker = AlpacaBroker.from_settings(us_settings(ALPACA_BASE_URL="http://127.0.0.1:9/v2/",
                                                    ALPACA_DATA_URL="http://127.0.0.1:10"))
    assert (broker.environment, broker.base_url, broker.data_url) == ("paper", "http://127.0.0.1:9",
                                                                      "http://127.0.0.1:10")
    default = AlpacaBroker.from_settings(us_settings())
    assert (default.base_url, default.data_url) == ("https://paper-api.alpaca.markets", None)
    live = AlpacaBroker.from_settings(us_settings(paper=False))
    assert (live.environment, live.base_url) == ("live", "https://api.alpaca.markets")
    assert "test-secret-key" not in repr(live)


def test_from_settings_names_the_missing_keys():
    with pytest.raises(ConfigError, match="ALPACA_API_KEY and ALPACA_SECRET_KEY"):
        AlpacaBroker.from_settings(us_settings(ALPACA_API_KEY=None, ALPACA_SECRET_KEY=None))
    with pytest.raises(ConfigError, match="ALPACA_SECRET_KEY in .env"):
        AlpacaBroker.from_settings(us_settings(ALPACA_SECRET_KEY=None))


def test_from_settings_refuses_a_live_endpoint_on_a_paper_config_and_a_non_us_market():
    with pytest.raises(ConfigError, match="live endpoint .*alpaca.paper is true"):
        AlpacaBroker.from_settings(us_settings(ALPACA_BASE_URL="https://api.alpaca.markets"))
    settings = us_settings()
    hk = Settings(config=settings.config.model_copy(update={"market": load_settings(env=Environment()).config.market}),
                  env=settings.env, config_path=settings.config_path)
    with pytest.raises(ConfigError, match="trades US equities, but market.exchange is HKEX"):
        AlpacaBroker.from_settings(hk)


def test_the_adapter_never_imports_from_tests_or_from_layers_above_brokers():
    package = Path(__file__).resolve().parents[2] / "brokers" / "alpaca"
    above = ("tests", "data", "execution", "engines", "runtime", "replay", "tool_executor", "safety")
    files = sorted(package.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "client.py", "mapping.py", "sdk.py"}
    for path in files:
        tree = ast.parse(path.read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.split(".")[0] in above], path.name
