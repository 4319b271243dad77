"""Protective STOP orders at Alpaca: the adapter with the real alpaca-py SDK against the fake Alpaca, whose feed a
test moves (tests/fakes/movable.py). A sell stop rests good till cancelled holding its shares, is elected when the
market trades at or below it (at once on a move, or by the venue's own matching as the market path crosses it),
fills like a market sell, and can be cancelled; a raw SDK client shows what Alpaca answers past the adapter."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest

from brokers.alpaca import AlpacaBroker
from brokers.alpaca import mapping
from core.clock import SimulatedClock
from core.errors import OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.ticks import round_to_tick
from tests.fakes.alpaca_server import FakeAlpaca
from tests.fakes.movable import MovableMarket
from tests.venues import NY_OPEN_AT as OPEN_AT, NYSE as CALENDAR, US_FEES, paper_config, us_market, us_settings, \
    us_symbols


@dataclass
class World:
    fake: FakeAlpaca
    clock: SimulatedClock
    market: MovableMarket
    agent_id: str
    brokers: list[AlpacaBroker] = field(default_factory=list)

    async def connect(self) -> AlpacaBroker:
        broker = AlpacaBroker.from_settings(us_settings(self.fake), clock=self.clock, calendar=CALENDAR)
        self.brokers.append(broker)
        await broker.connect()
        return broker

    def coid(self, label: str) -> str:
        return f"{self.agent_id}-{label}-{uuid.uuid4().hex[:6]}"

    def posts(self) -> list:
        return self.fake.requests_for("POST", "/v2/orders")

    def sdk(self):
        """alpaca-py's own TradingClient on the fake: what Alpaca answers past the adapter."""
        from alpaca.trading.client import TradingClient
        return TradingClient(api_key=self.fake.api_key, secret_key=self.fake.secret_key, paper=True,
                             url_override=self.fake.base_url)


@pytest.fixture
async def world(pool, pg_url, agent_id):
    clock = SimulatedClock(OPEN_AT)
    market = MovableMarket(us_market(), clock)
    fake = FakeAlpaca(pg_url=pg_url, market=market, clock=clock, account_id=agent_id, calendar=CALENDAR,
                      paper_config=paper_config(fees=US_FEES))
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, market, agent_id)
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)
    assert fake.errors == [], fake.errors


async def hold(world: World, broker: AlpacaBroker, symbol: str, qty: int) -> OrderResult:
    bought = await broker.place_order(OrderRequest(world.coid("buy"), symbol, OrderSide.BUY, qty, OrderType.MARKET))
    assert bought.status is OrderStatus.FILLED and bought.filled_quantity == qty, bought
    return bought


def stop_request(world: World, symbol: str, qty: int, level: Decimal, label: str = "stop") -> OrderRequest:
    return OrderRequest(world.coid(label), symbol, OrderSide.SELL, qty, OrderType.STOP, stop_price=level)


async def a_stop_under_the_market(world: World, broker: AlpacaBroker, qty: int = 10,
                                  below: str = "0.95") -> tuple[str, Decimal, OrderResult]:
    symbol = us_symbols()[0]
    await hold(world, broker, symbol, qty)
    level = round_to_tick((await broker.get_quote(symbol)).last * Decimal(below), "us", "down")
    return symbol, level, await broker.place_order(stop_request(world, symbol, qty, level))


# ---------------------------------------------------------------- resting

async def test_a_sell_stop_rests_at_alpaca_good_till_cancelled_and_reads_back_as_a_stop(world):
    broker = await world.connect()
    assert broker.supports_stop_orders() is True
    symbol, level, placed = await a_stop_under_the_market(world, broker)
    assert (placed.order_type, placed.stop_price, placed.status) == (OrderType.STOP, level, OrderStatus.SUBMITTED)
    assert (placed.side, placed.quantity, placed.filled_quantity, placed.limit_price) == (OrderSide.SELL, 10, 0, None)
    sent = world.posts()[-1].body
    assert (sent["type"], sent["time_in_force"], sent["side"], sent["qty"]) == ("stop", "gtc", "sell", 10)
    assert Decimal(str(sent["stop_price"])) == level and sent.get("limit_price") is None
    again = await broker.get_order_by_client_id(placed.client_order_id)
    assert again == placed
    open_orders = await broker.get_orders(open_only=True)
    assert [(o.client_order_id, o.order_type, o.stop_price, o.status) for o in open_orders] == [
        (placed.client_order_id, OrderType.STOP, level, OrderStatus.SUBMITTED)]
    raw = await asyncio.to_thread(world.sdk().get_order_by_client_id, placed.client_order_id)
    created = raw.created_at.astimezone(CALENDAR.tz)
    assert (mapping.value(raw.time_in_force), mapping.value(raw.status)) == ("gtc", "new")
    # Alpaca's aged order policy: a GTC order is cancelled at 16:15 New York, 90 days after it was created
    assert raw.expires_at == datetime.combine((created + timedelta(days=90)).date(), time(16, 15), CALENDAR.tz)


async def test_the_shares_a_stop_holds_cannot_be_sold_again(world):
    broker = await world.connect()
    symbol, level, placed = await a_stop_under_the_market(world, broker)
    posts = len(world.posts())
    with pytest.raises(OrderRejected, match=r"10 held, 10 already in open sell orders"):
        await broker.place_order(OrderRequest(world.coid("dup"), symbol, OrderSide.SELL, 1, OrderType.MARKET))
    assert len(world.posts()) == posts                          # refused before the network
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {symbol: 10}
    sdk = world.sdk()
    position = await asyncio.to_thread(sdk.get_open_position, symbol)
    assert (position.qty, position.qty_available) == ("10", "0")
    from alpaca.common.exceptions import APIError
    from alpaca.trading.requests import MarketOrderRequest
    with pytest.raises(APIError) as err:                        # what Alpaca answers past the adapter
        await asyncio.to_thread(sdk.submit_order, MarketOrderRequest(symbol=symbol, qty=1, side="sell",
                                                                      time_in_force="day"))
    assert err.value.status_code == 403
    body = err.value.response.json()
    assert body["message"] == "insufficient qty available for order (requested: 1, available: 0)"
    assert (body["code"], body["held_for_orders"], body["existing_qty"]) == (40310000, "10", "10")
    assert body["related_orders"] == [placed.broker_order_id]


# ---------------------------------------------------------------- elected

async def test_a_move_through_the_stop_elects_it_at_once_and_it_fills_like_a_market_sell(world):
    broker = await world.connect()
    symbol, level, placed = await a_stop_under_the_market(world, broker)
    crossed = world.market.move(symbol, level - Decimal("0.05"))
    # elected by the move itself, before any request reached the fake
    assert world.fake.elections == [(placed.client_order_id, "move", world.clock.now())]
    done = await broker.get_order_by_client_id(placed.client_order_id)
    assert (done.status, done.order_type, done.stop_price) == (OrderStatus.FILLED, OrderType.STOP, level)
    assert done.broker_order_id == placed.broker_order_id and done.filled_quantity == 10
    assert sum(f.quantity for f in done.fills) == 10 and all("::" in f.fill_id and f.fee == 0 for f in done.fills)
    assert crossed.bid * Decimal("0.99") <= done.avg_fill_price <= crossed.bid < level     # a market sell at the bid
    assert await broker.get_positions() == []
    assert await broker.get_orders(open_only=True) == []
    assert [o.client_order_id for o in await broker.get_orders() if o.order_type is OrderType.STOP] == [
        placed.client_order_id]


async def test_a_move_that_stays_above_the_stop_elects_nothing(world):
    broker = await world.connect()
    symbol, level, placed = await a_stop_under_the_market(world, broker)
    world.market.move(symbol, level + Decimal("0.01"))
    assert world.fake.elections == []
    assert (await broker.get_order_by_client_id(placed.client_order_id)).status is OrderStatus.SUBMITTED


async def test_a_stop_the_market_path_crosses_is_elected_by_the_venues_own_matching(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    await hold(world, broker, symbol, 10)
    hour = us_market().bars(symbol, "1m", OPEN_AT, OPEN_AT + timedelta(hours=1))
    level = round_to_tick(min(b.low for b in hour), "us", "up")
    cross = next(b for b in hour if b.low <= level)               # the first minute that trades at or below it
    assert level < us_market().quote(symbol, OPEN_AT).last and cross.start > OPEN_AT, "the data no longer fits"
    placed = await broker.place_order(stop_request(world, symbol, 10, level))
    assert placed.status is OrderStatus.SUBMITTED
    seen = placed
    while seen.status is OrderStatus.SUBMITTED and world.clock.now() <= cross.start + timedelta(minutes=1):
        world.clock.advance(timedelta(minutes=1))
        seen = await broker.get_order_by_client_id(placed.client_order_id)
    assert seen.status is OrderStatus.FILLED and seen.order_type is OrderType.STOP, seen
    [(coid, source, at)] = world.fake.elections
    assert (coid, source) == (placed.client_order_id, "matching")
    assert cross.start <= at <= cross.start + timedelta(minutes=1)
    assert await broker.get_positions() == []


async def test_a_stop_outlives_the_session_and_is_elected_in_the_next_one(world):
    broker = await world.connect()
    symbol, level, placed = await a_stop_under_the_market(world, broker)
    world.clock.set(CALENDAR.state(OPEN_AT).next_close + timedelta(hours=1))          # 17:00 New York
    world.market.move(symbol, round_to_tick(level * Decimal("0.9"), "us", "down"))     # trades below it after hours
    assert world.fake.elections == []                                                 # stops elect in the session
    waiting = await broker.get_order_by_client_id(placed.client_order_id)
    assert waiting.status is OrderStatus.SUBMITTED                                    # GTC: not expired at the close
    opens = CALENDAR.state(world.clock.now()).next_open
    world.clock.set(opens)
    elected = await broker.get_order_by_client_id(placed.client_order_id)
    assert world.fake.elections == [(placed.client_order_id, "matching", opens)]
    assert elected.order_type is OrderType.STOP
    for _ in range(5):              # a market sell at the open fills as the first minutes trade (the paper exchange)
        if elected.status is OrderStatus.FILLED:
            break
        world.clock.advance(timedelta(minutes=1))
        elected = await broker.get_order_by_client_id(placed.client_order_id)
    assert elected.status is OrderStatus.FILLED and elected.filled_quantity == 10


async def test_a_stop_placed_outside_the_session_is_accepted_and_rests_until_the_open(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    await hold(world, broker, symbol, 10)
    level = round_to_tick((await broker.get_quote(symbol)).last * Decimal("0.95"), "us", "down")
    world.clock.set(CALENDAR.state(OPEN_AT).next_close + timedelta(hours=2))
    placed = await broker.place_order(stop_request(world, symbol, 10, level))
    assert placed.status is OrderStatus.SUBMITTED
    raw = await asyncio.to_thread(world.sdk().get_order_by_client_id, placed.client_order_id)
    assert mapping.value(raw.status) == "accepted"                  # received, not yet routed
    world.clock.set(CALENDAR.state(world.clock.now()).next_open)
    raw = await asyncio.to_thread(world.sdk().get_order_by_client_id, placed.client_order_id)
    assert mapping.value(raw.status) == "new"


# ---------------------------------------------------------------- cancelled, raised

async def test_cancelling_a_stop_frees_its_shares_and_a_higher_one_replaces_it(world):
    broker = await world.connect()
    symbol, level, first = await a_stop_under_the_market(world, broker)
    assert await broker.cancel_order(first.client_order_id) is True
    cancelled = await broker.get_order_by_client_id(first.client_order_id)
    assert (cancelled.status, cancelled.order_type, cancelled.stop_price) == (OrderStatus.CANCELLED, OrderType.STOP,
                                                                              level)
    assert await broker.get_orders(open_only=True) == []
    raised = round_to_tick(level * Decimal("1.02"), "us", "down")
    second = await broker.place_order(stop_request(world, symbol, 10, raised, "raised"))
    assert (second.status, second.stop_price) == (OrderStatus.SUBMITTED, raised)
    world.market.move(symbol, (level + raised) / 2)                 # under the raised stop, over the cancelled one
    assert [c for c, _, _ in world.fake.elections] == [second.client_order_id]
    assert (await broker.get_order_by_client_id(first.client_order_id)).status is OrderStatus.CANCELLED
    assert (await broker.get_order_by_client_id(second.client_order_id)).status is OrderStatus.FILLED
    assert await broker.cancel_order(second.client_order_id) is False                 # filled: nothing to cancel


async def test_the_monitors_own_exit_cancels_the_stop_then_sells(world):
    broker = await world.connect()
    symbol, level, stop = await a_stop_under_the_market(world, broker)
    assert await broker.cancel_order(stop.client_order_id) is True
    sold = await broker.place_order(OrderRequest(world.coid("exit"), symbol, OrderSide.SELL, 10, OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED and sold.filled_quantity == 10
    world.market.move(symbol, level - Decimal("0.05"))
    assert world.fake.elections == []
    assert await broker.get_positions() == []


async def test_a_sell_right_after_cancelling_the_stop_waits_out_alpacas_pending_cancel(world):
    """Alpaca cancels asynchronously: until the stop is "canceled" its shares stay held and a sell is refused."""
    world.fake.cancel_delay = 0.5
    broker = await world.connect()
    symbol, level, stop = await a_stop_under_the_market(world, broker)
    assert await broker.cancel_order(stop.client_order_id) is True
    assert (await broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.CANCEL_PENDING
    from alpaca.common.exceptions import APIError
    from alpaca.trading.requests import MarketOrderRequest
    with pytest.raises(APIError) as err:                        # what Alpaca answers a sell sent right away
        await asyncio.to_thread(world.sdk().submit_order, MarketOrderRequest(symbol=symbol, qty=10, side="sell",
                                                                              time_in_force="day"))
    assert (err.value.status_code, err.value.response.json()["held_for_orders"]) == (403, "10")
    sold = await broker.place_order(OrderRequest(world.coid("exit"), symbol, OrderSide.SELL, 10, OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED and sold.filled_quantity == 10
    assert (await broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.CANCELLED
    assert await broker.get_positions() == []


# ---------------------------------------------------------------- refused

async def test_stop_prices_off_the_us_tick_grid_are_refused_before_any_request_and_by_alpaca(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    await hold(world, broker, symbol, 10)
    posts = len(world.posts())
    with pytest.raises(OrderRejected, match=r"stop price 5\.005 is not on the US tick grid .*5\.00 or 5\.01"):
        await broker.place_order(stop_request(world, symbol, 10, Decimal("5.005")))
    assert len(world.posts()) == posts
    from alpaca.common.exceptions import APIError
    from alpaca.trading.requests import StopOrderRequest
    sdk = world.sdk()
    for price, refused in ((5.005, True), (0.12345, True), (0.1234, False)):
        request = StopOrderRequest(symbol=symbol, qty=1, side="sell", time_in_force="gtc", stop_price=price)
        if refused:
            with pytest.raises(APIError) as err:
                await asyncio.to_thread(sdk.submit_order, request)
            assert err.value.status_code == 422
            assert err.value.response.json() == {
                "code": 42210000,
                "message": f"invalid stop_price {price}. sub-penny increment does not fulfill minimum pricing criteria"}
        else:
            order = await asyncio.to_thread(sdk.submit_order, request)
            assert (mapping.value(order.type), order.stop_price) == ("stop", "0.1234")


async def test_a_buy_stop_is_refused_before_any_request(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    with pytest.raises(OrderRejected, match="buy stop orders are not sent to Alpaca: .*stop-limit"):
        await broker.place_order(OrderRequest(world.coid("bstop"), symbol, OrderSide.BUY, 1, OrderType.STOP,
                                              stop_price=Decimal("99.00")))
    assert world.posts() == []


async def test_a_stop_for_more_than_is_held_is_refused(world):
    broker = await world.connect()
    symbol = us_symbols()[0]
    await hold(world, broker, symbol, 10)
    with pytest.raises(OrderRejected, match="cannot sell 11 .*10 held"):
        await broker.place_order(stop_request(world, symbol, 11, Decimal("1.00")))
    assert [r.body["side"] for r in world.posts()] == ["buy"]


# ---------------------------------------------------------------- the wire

def test_an_alpaca_stop_order_maps_to_our_stop_and_a_stop_limit_to_a_limit():
    from alpaca.trading.models import Order
    base = {"id": str(uuid.uuid4()), "client_order_id": "c1", "created_at": "2026-11-24T15:30:00Z",
            "updated_at": "2026-11-24T15:30:00Z", "submitted_at": "2026-11-24T15:30:00Z", "asset_id": str(uuid.uuid4()),
            "symbol": "SIMA", "asset_class": "us_equity", "qty": "10", "filled_qty": "0", "order_class": "simple",
            "side": "sell", "time_in_force": "gtc", "status": "new", "extended_hours": False}
    stop = mapping.order_result(Order(**{**base, "type": "stop", "order_type": "stop", "stop_price": "12.34"}), [])
    assert (stop.order_type, stop.stop_price, stop.limit_price, stop.status) == (
        OrderType.STOP, Decimal("12.34"), None, OrderStatus.SUBMITTED)
    limit = mapping.order_result(Order(**{**base, "type": "stop_limit", "order_type": "stop_limit",
                                          "stop_price": "12.34", "limit_price": "12.84"}), [])
    assert (limit.order_type, limit.stop_price, limit.limit_price) == (OrderType.LIMIT, None, Decimal("12.84"))
