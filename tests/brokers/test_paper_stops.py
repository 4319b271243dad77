"""Sell stop orders at the paper venue: held good till cancelled, triggered by a bar that trades at or below the stop,
then filled like a market sell inside that bar; shares a stop holds cannot be sold twice."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from brokers.paper import fill_prices
from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.errors import OrderRejected
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType
from core.ticks import is_on_tick, round_to_tick
from tests.fakes.movable import MovableMarket
from tests.venues import OPEN_AT, liquid_symbols, paper_config, shared_market

HKEX = MarketCalendar("HKEX")


class World:
    """A paper account on a market the test can move, with the clock at Tuesday 10:30 HKT."""

    def __init__(self, pool, agent_id: str, **config) -> None:
        self.clock = SimulatedClock(OPEN_AT)
        self.market = MovableMarket(shared_market(), self.clock)
        self.config = paper_config(**config)
        self.pool, self.agent_id = pool, agent_id
        self.symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
        self.inst = shared_market().instrument(self.symbol)
        self.scheme = self.inst.tick_scheme

    async def broker(self) -> PaperBroker:
        broker = PaperBroker(self.pool, self.market, self.clock, HKEX, account_id=self.agent_id, currency="HKD",
                             config=self.config)
        await broker.connect()
        return broker

    def coid(self, label: str) -> str:
        return f"{self.agent_id}-{label}"

    async def buy(self, broker: PaperBroker, lots: int) -> int:
        r = await broker.place_order(OrderRequest(self.coid("buy"), self.symbol, OrderSide.BUY,
                                                  lots * self.inst.lot_size, OrderType.MARKET))
        assert r.status is OrderStatus.FILLED, r
        return r.filled_quantity

    def below(self, fraction: str) -> Decimal:
        """A price `fraction` under the current bid, on the grid."""
        bid = self.market.quote(self.symbol, self.clock.now()).bid
        return round_to_tick(bid * (1 - Decimal(fraction)), self.scheme, "down")

    async def stop(self, broker: PaperBroker, label: str, quantity: int, stop: Decimal):
        return await broker.place_order(OrderRequest(self.coid(label), self.symbol, OrderSide.SELL, quantity,
                                                     OrderType.STOP, stop_price=stop))

    async def triggered_at(self, coid: str):
        return await self.pool.fetchval("SELECT triggered_at FROM paper_orders WHERE agent_id = $1 AND "
                                        "client_order_id = $2", self.agent_id, coid)

    def bar_ending(self, end) -> object:
        (bar,) = self.market.bars(self.symbol, "1m", end - timedelta(minutes=1), end)
        return bar


async def test_the_paper_venue_holds_stop_orders(pool, agent_id):
    broker = await World(pool, agent_id).broker()
    assert broker.supports_stop_orders() is True


async def test_a_stop_rests_then_fills_inside_the_bar_that_crosses_it(pool, agent_id):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 1)
    stop = w.below("0.03")
    placed = await w.stop(broker, "stop", held, stop)
    assert (placed.status, placed.order_type, placed.stop_price, placed.filled_quantity) == (
        OrderStatus.SUBMITTED, OrderType.STOP, stop, 0)
    w.clock.advance(timedelta(minutes=5))                    # the market has not come near it
    still = await broker.get_order_by_client_id(placed.client_order_id)
    assert still.status is OrderStatus.SUBMITTED and still.stop_price == stop
    assert [o.client_order_id for o in await broker.get_orders(open_only=True)] == [placed.client_order_id]
    assert await w.triggered_at(placed.client_order_id) is None

    w.clock.advance(timedelta(seconds=20))                   # 10:35:20: the price falls through the stop
    moved = w.market.move(w.symbol, stop * Decimal("0.97"))
    assert moved.last < stop
    w.clock.advance(timedelta(minutes=2))
    done = await broker.get_order_by_client_id(placed.client_order_id)
    assert done.status is OrderStatus.FILLED and done.order_type is OrderType.STOP, done
    triggered = await w.triggered_at(placed.client_order_id)
    assert triggered == OPEN_AT + timedelta(minutes=6)       # the end of the 10:35 bar that crossed it
    bar = w.bar_ending(triggered)
    (fill,) = done.fills
    assert fill.timestamp == triggered and fill.quantity == held
    assert fill.price == fill_prices.within(fill_prices.slipped(stop, w.config.slippage_bps, w.scheme,
                                                                OrderSide.SELL), bar, w.scheme)
    assert bar.low <= fill.price <= min(stop, bar.high) and is_on_tick(fill.price, w.scheme)
    assert await broker.get_positions() == []
    assert await broker.get_orders(open_only=True) == []


async def test_a_gap_through_the_stop_fills_at_the_open_and_the_stop_outlives_the_close(pool, agent_id):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 1)
    stop = w.below("0.02")
    coid = (await w.stop(broker, "stop", held, stop)).client_order_id
    far = w.below("0.5")
    day = await broker.place_order(OrderRequest(w.coid("day"), w.symbol, OrderSide.BUY, w.inst.lot_size,
                                                OrderType.LIMIT, limit_price=far))
    after_close = HKEX.state(OPEN_AT).next_close + timedelta(hours=1)
    w.clock.set(after_close)
    assert (await broker.get_order_by_client_id(day.client_order_id)).status is OrderStatus.EXPIRED
    resting = await broker.get_order_by_client_id(coid)
    assert resting.status is OrderStatus.SUBMITTED, resting          # good till cancelled
    assert [o.client_order_id for o in await broker.get_orders(open_only=True)] == [coid]

    next_open = HKEX.state(after_close).next_open
    w.market.move(w.symbol, stop * Decimal("0.95"), at=next_open)     # tomorrow opens well below the stop
    w.clock.set(next_open + timedelta(minutes=3))
    done = await broker.get_order_by_client_id(coid)
    assert done.status is OrderStatus.FILLED, done
    first = w.bar_ending(next_open + timedelta(minutes=1))
    assert first.open < stop
    (fill,) = done.fills
    assert fill.timestamp == next_open + timedelta(minutes=1) == await w.triggered_at(coid)
    assert fill.price == fill_prices.within(fill_prices.slipped(first.open, w.config.slippage_bps, w.scheme,
                                                                OrderSide.SELL), first, w.scheme)
    assert first.low <= fill.price <= first.open < stop and is_on_tick(fill.price, w.scheme)


async def test_a_cancelled_stop_never_fills_and_frees_its_shares(pool, agent_id):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 1)
    coid = (await w.stop(broker, "stop", held, w.below("0.03"))).client_order_id
    assert await broker.cancel_order(coid) is True
    assert (await broker.get_order_by_client_id(coid)).status is OrderStatus.CANCELLED
    w.clock.advance(timedelta(seconds=30))
    w.market.move(w.symbol, w.below("0.10"))
    w.clock.advance(timedelta(minutes=3))
    gone = await broker.get_order_by_client_id(coid)
    assert gone.status is OrderStatus.CANCELLED and gone.fills == ()
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {w.symbol: held}
    sold = await broker.place_order(OrderRequest(w.coid("exit"), w.symbol, OrderSide.SELL, held, OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED


async def test_a_triggered_stop_works_on_under_the_volume_cap_and_its_fills_are_recorded_once(pool, agent_id):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 4)
    coid = (await w.stop(broker, "stop", held, w.below("0.03"))).client_order_id
    w.config = paper_config(max_volume_participation=Decimal("0.02"))    # the stop may take 2% of each bar
    capped, other = await w.broker(), await w.broker()                    # two processes on the account
    w.clock.advance(timedelta(seconds=30))
    w.market.move(w.symbol, w.below("0.06"))
    seen = []
    for _ in range(60):
        w.clock.advance(timedelta(minutes=1))
        a = await capped.get_order_by_client_id(coid)
        b = await other.get_order_by_client_id(coid)
        again = await capped.get_order_by_client_id(coid)
        assert a == b == again                                             # reading twice adds nothing
        seen.append(a)
        if a.status is OrderStatus.FILLED:
            break
    partial = [o for o in seen if o.status is OrderStatus.PARTIALLY_FILLED]
    done = seen[-1]
    assert partial and done.status is OrderStatus.FILLED, seen[-1]
    assert len(done.fills) > 1 and sum(f.quantity for f in done.fills) == done.filled_quantity == held
    assert len({f.fill_id for f in done.fills}) == len(done.fills)
    triggered = await w.triggered_at(coid)
    for fill in done.fills:                                  # each inside the bar it traded in, on the grid
        assert fill.timestamp >= triggered
        bar = w.bar_ending(fill.timestamp)
        assert bar.low <= fill.price <= bar.high and is_on_tick(fill.price, w.scheme)
    rows = await pool.fetchval("SELECT count(*) FROM paper_fills WHERE agent_id = $1", agent_id)
    assert rows == 1 + len(done.fills)                       # the buy's one fill and the stop's
    assert await broker.get_positions() == []


async def test_shares_a_stop_holds_cannot_be_sold_again(pool, agent_id):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 2)
    lot = w.inst.lot_size
    with pytest.raises(OrderRejected, match="held"):                   # more than the position
        await w.stop(broker, "too-big", held + lot, w.below("0.03"))
    await w.stop(broker, "stop", held - lot, w.below("0.03"))
    with pytest.raises(OrderRejected, match=f"{held} held, {held - lot} already in open sell orders"):
        await broker.place_order(OrderRequest(w.coid("sell"), w.symbol, OrderSide.SELL, 2 * lot, OrderType.MARKET))
    with pytest.raises(OrderRejected, match="held"):
        await w.stop(broker, "second", 2 * lot, w.below("0.05"))
    rest = await broker.place_order(OrderRequest(w.coid("rest"), w.symbol, OrderSide.SELL, lot, OrderType.MARKET))
    assert rest.status is OrderStatus.FILLED                 # what the stop does not hold can be sold


@pytest.mark.parametrize("problem", ["above", "buy", "tick"])
async def test_a_stop_the_venue_cannot_hold_is_rejected_with_the_reason(pool, agent_id, problem):
    w = World(pool, agent_id, max_volume_participation=Decimal("1"))
    broker = await w.broker()
    held = await w.buy(broker, 1)
    bid = w.market.quote(w.symbol, w.clock.now()).bid
    side, stop, words = OrderSide.SELL, w.below("0.03"), ""
    if problem == "above":
        stop, words = bid, "below the market"                # at the bid it would trigger at once
    elif problem == "buy":
        side, words = OrderSide.BUY, "sell stop orders only"
    else:
        stop, words = stop + (round_to_tick(stop * Decimal("1.5"), w.scheme, "up") - stop) / 1000, "tick grid"
    with pytest.raises(OrderRejected, match=words):
        await broker.place_order(OrderRequest(w.coid(f"stop-{problem}"), w.symbol, side, held, OrderType.STOP,
                                              stop_price=stop))
    assert (await broker.get_order_by_client_id(w.coid(f"stop-{problem}"))).status is OrderStatus.REJECTED
