"""The broker conformance suite: behaviour every `BrokerClient` must show, written against the contract only.

A test module opts in by subclassing `BrokerConformance` and providing a `venue` fixture (a `Venue`):
the broker under test plus the few controls a test needs over the world it trades in (advance time, open a
second client as another process would). The paper broker runs it in tests/test_paper_broker.py; the live
adapters run it against their wire-level fakes, and can run it against the real services: nothing here assumes
a market order is filled when `place_order` returns. A live venue may answer "accepted" and fill a moment later,
so the suite reads the order again (`settled`: every `poll_seconds`, for at most `settle_seconds`) before it
asserts a fill; the fakes' late-fill switch (`fill_delay`) makes them do the same.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Awaitable, Callable

import pytest

from brokers.base import BrokerClient
from core.errors import OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.ticks import round_to_tick

WAITING = (OrderStatus.PENDING_SUBMIT, OrderStatus.SUBMITTED)


@dataclass
class Venue:
    broker: BrokerClient
    advance: Callable[[int], Awaitable[None]]          # move the market forward N trading minutes
    reopen: Callable[[], Awaitable[BrokerClient]]       # a fresh client on the same account ("new process")
    symbols: list[str]                                  # liquid symbols to trade, cheapest first
    coid: Callable[[str], str]                          # unique client_order_id for a label
    settle_seconds: float = 15.0                        # how long an accepted market order may take to fill
    poll_seconds: float = 0.1                           # how often it is read meanwhile


async def settled(venue: Venue, order: OrderResult) -> OrderResult:
    """The order once it is no longer waiting to fill (or as it stands after `venue.settle_seconds`): a market
    order a venue accepted fills a moment later there, not necessarily before `place_order` returns."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + venue.settle_seconds
    while order.status in WAITING and loop.time() < give_up:
        await asyncio.sleep(venue.poll_seconds)
        order = await venue.broker.get_order_by_client_id(order.client_order_id) or order
    return order


async def _buy_lots(venue: Venue, symbol: str, lots: int, label: str) -> OrderResult:
    """A market buy of `lots` board lots, read again until it has filled (or the venue's patience ran out)."""
    inst = await venue.broker.get_instrument(symbol)
    return await settled(venue, await venue.broker.place_order(OrderRequest(
        client_order_id=venue.coid(label), symbol=symbol, side=OrderSide.BUY, quantity=inst.lot_size * lots,
        order_type=OrderType.MARKET)))


class BrokerConformance:
    async def test_quote_is_two_sided_and_on_tick(self, venue: Venue):
        q = await venue.broker.get_quote(venue.symbols[0])
        inst = await venue.broker.get_instrument(venue.symbols[0])
        assert Decimal(0) < q.bid < q.ask
        assert q.bid <= q.last <= q.ask
        for price in (q.bid, q.ask, q.last):
            assert round_to_tick(price, inst.tick_scheme, "nearest") == price

    async def test_account_reports_cash_buying_power_and_equity(self, venue: Venue):
        acct = await venue.broker.get_account()
        assert acct.cash > 0 and acct.buying_power <= acct.cash and acct.equity >= acct.cash
        assert isinstance(acct.cash, Decimal)

    async def test_market_order_fills_near_the_quote(self, venue: Venue):
        symbol = venue.symbols[0]
        q = await venue.broker.get_quote(symbol)
        result = await _buy_lots(venue, symbol, 1, "mkt")
        assert result.status is OrderStatus.FILLED
        assert result.avg_fill_price >= q.ask and result.avg_fill_price <= q.ask * Decimal("1.01")
        assert result.fees >= 0          # some venues (moomoo paper) report no fees; paper's are tested apart
        positions = {p.symbol: p for p in await venue.broker.get_positions()}
        assert positions[symbol].quantity == result.quantity

    async def test_limit_order_rests_then_fills_when_the_market_crosses_it(self, venue: Venue):
        symbol = venue.symbols[1]
        inst = await venue.broker.get_instrument(symbol)
        q = await venue.broker.get_quote(symbol)
        limit = round_to_tick(q.bid * Decimal("0.995"), inst.tick_scheme, "down")
        coid = venue.coid("lmt")
        placed = await venue.broker.place_order(OrderRequest(
            client_order_id=coid, symbol=symbol, side=OrderSide.BUY, quantity=inst.lot_size,
            order_type=OrderType.LIMIT, limit_price=limit))
        assert placed.status is OrderStatus.SUBMITTED and placed.filled_quantity == 0
        assert coid in {o.client_order_id for o in await venue.broker.get_orders(open_only=True)}
        for _ in range(40):
            await venue.advance(15)
            now = await venue.broker.get_order_by_client_id(coid)
            if now.status is not OrderStatus.SUBMITTED:
                break
        assert now.status is OrderStatus.FILLED, now
        assert now.avg_fill_price <= limit

    async def test_cancel_a_resting_order(self, venue: Venue):
        symbol = venue.symbols[0]
        inst = await venue.broker.get_instrument(symbol)
        q = await venue.broker.get_quote(symbol)
        far = round_to_tick(q.bid * Decimal("0.8"), inst.tick_scheme, "down")
        coid = venue.coid("cxl")
        await venue.broker.place_order(OrderRequest(client_order_id=coid, symbol=symbol, side=OrderSide.BUY,
                                                    quantity=inst.lot_size, order_type=OrderType.LIMIT,
                                                    limit_price=far))
        assert await venue.broker.cancel_order(coid) is True
        assert (await venue.broker.get_order_by_client_id(coid)).status is OrderStatus.CANCELLED
        assert coid not in {o.client_order_id for o in await venue.broker.get_orders(open_only=True)}

    async def test_partial_fill_when_order_exceeds_its_share_of_volume(self, venue: Venue):
        symbol = venue.symbols[0]
        inst = await venue.broker.get_instrument(symbol)
        acct = await venue.broker.get_account()
        q = await venue.broker.get_quote(symbol)
        lots = int(acct.buying_power * Decimal("0.5") / (q.ask * Decimal("1.01") * inst.lot_size))
        result = await _buy_lots(venue, symbol, lots, "big")     # read until something filled
        assert result.status is OrderStatus.PARTIALLY_FILLED, result
        assert 0 < result.filled_quantity < result.quantity
        await venue.advance(30)
        later = await venue.broker.get_order_by_client_id(result.client_order_id)
        assert later.filled_quantity > result.filled_quantity
        assert sum(f.quantity for f in later.fills) == later.filled_quantity

    @pytest.mark.parametrize("problem", ["lot", "tick", "cash"])
    async def test_rejection_carries_the_reason(self, venue: Venue, problem: str):
        symbol = venue.symbols[0]
        inst = await venue.broker.get_instrument(symbol)
        q = await venue.broker.get_quote(symbol)
        qty, price = inst.lot_size, round_to_tick(q.bid, inst.tick_scheme, "down")
        if problem == "lot":
            if inst.lot_size == 1:
                pytest.skip("no board lot on this market")
            qty = inst.lot_size + 1
        elif problem == "tick":
            price = price + (round_to_tick(price * Decimal("1.5"), inst.tick_scheme, "up") - price) / 1000
        else:
            acct = await venue.broker.get_account()
            qty = inst.lot_size * (int(acct.buying_power / (price * inst.lot_size)) + 10)
        coid = venue.coid(f"rej-{problem}")
        with pytest.raises(OrderRejected) as err:
            await venue.broker.place_order(OrderRequest(client_order_id=coid, symbol=symbol, side=OrderSide.BUY,
                                                        quantity=qty, order_type=OrderType.LIMIT, limit_price=price))
        words = {"lot": "lot", "tick": "tick", "cash": "buying power"}[problem]
        assert words in err.value.reason.lower()
        stored = await venue.broker.get_order_by_client_id(coid)
        assert stored is None or stored.status is OrderStatus.REJECTED

    async def test_resubmitting_a_client_order_id_never_makes_a_second_order(self, venue: Venue):
        symbol = venue.symbols[0]
        inst = await venue.broker.get_instrument(symbol)
        req = OrderRequest(client_order_id=venue.coid("idem"), symbol=symbol, side=OrderSide.BUY,
                           quantity=inst.lot_size, order_type=OrderType.MARKET)
        first = await venue.broker.place_order(req)
        second = await venue.broker.place_order(req)              # before it filled, where the venue fills later
        assert second.broker_order_id == first.broker_order_id
        first = await settled(venue, first)
        assert first.status is OrderStatus.FILLED, first
        mine = [o for o in await venue.broker.get_orders() if o.client_order_id == req.client_order_id]
        assert len(mine) == 1
        positions = {p.symbol: p for p in await venue.broker.get_positions()}
        assert positions[symbol].quantity == first.filled_quantity

    async def test_selling_more_than_held_is_rejected_and_a_full_sell_closes(self, venue: Venue):
        symbol = venue.symbols[0]
        bought = await _buy_lots(venue, symbol, 2, "pos")
        assert bought.status is OrderStatus.FILLED, bought
        with pytest.raises(OrderRejected, match="(?i)held|short|position"):
            await venue.broker.place_order(OrderRequest(client_order_id=venue.coid("oversell"), symbol=symbol,
                                                        side=OrderSide.SELL, quantity=bought.quantity * 3,
                                                        order_type=OrderType.MARKET))
        held = {p.symbol: p.quantity for p in await venue.broker.get_positions()}[symbol]
        assert held == bought.filled_quantity
        closed = await settled(venue, await venue.broker.place_order(OrderRequest(
            client_order_id=venue.coid("close"), symbol=symbol, side=OrderSide.SELL, quantity=held,
            order_type=OrderType.MARKET)))
        assert closed.status is OrderStatus.FILLED and closed.side is OrderSide.SELL
        assert closed.filled_quantity == held
        assert symbol not in {p.symbol for p in await venue.broker.get_positions()}

    async def test_account_and_positions_together_match_each_alone(self, venue: Venue):
        symbol = venue.symbols[0]
        await _buy_lots(venue, symbol, 1, "both")
        account, positions = await venue.broker.get_account_and_positions()
        assert account == await venue.broker.get_account()
        assert positions == await venue.broker.get_positions()
        assert symbol in {p.symbol for p in positions}

    async def test_one_position_matches_the_list_and_is_none_when_not_held(self, venue: Venue):
        held_symbol, other = venue.symbols[0], venue.symbols[1]
        await _buy_lots(venue, held_symbol, 1, "one")
        listed = {p.symbol: p for p in await venue.broker.get_positions()}
        one = await venue.broker.get_position(held_symbol)
        assert one is not None and other not in listed
        assert (one.symbol, one.quantity, one.avg_price) == (held_symbol, listed[held_symbol].quantity,
                                                              listed[held_symbol].avg_price)
        assert await venue.broker.get_position(other) is None

    async def test_state_survives_a_new_client(self, venue: Venue):
        symbol = venue.symbols[0]
        bought = await _buy_lots(venue, symbol, 1, "persist")
        cash = (await venue.broker.get_account()).cash
        other = await venue.reopen()
        try:
            positions = {p.symbol: p.quantity for p in await other.get_positions()}
            assert positions.get(symbol) == bought.filled_quantity
            assert (await other.get_account()).cash == cash
            again = await other.get_order_by_client_id(bought.client_order_id)
            assert again is not None and again.status is OrderStatus.FILLED
        finally:
            await other.disconnect()
