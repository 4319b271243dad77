"""The paper broker: the conformance suite, plus what only a simulated exchange can show (fees, expiry, processes)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from core.errors import InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType
from brokers.paper.broker import PaperBroker
from brokers.paper.ledger import sql_literal
from brokers.paper.fees import fill_fees
from core.clock import SimulatedClock
from core.calendar import MarketCalendar
from tests.brokers.conformance import BrokerConformance, Venue
from tests.conftest import PYTHON, ROOT

from tests.venues import OPEN_AT, advance_trading_minutes, liquid_symbols, make_broker, paper_config, shared_market


class TestPaperConformance(BrokerConformance):
    @pytest.fixture
    async def venue(self, pool, agent_id):
        clock = SimulatedClock(OPEN_AT)
        calendar = MarketCalendar("HKEX")
        broker = await make_broker(pool, agent_id, clock)

        async def advance(minutes: int) -> None:
            await advance_trading_minutes(clock, calendar, minutes)

        async def reopen():
            return await make_broker(pool, agent_id, clock)

        return Venue(broker=broker, advance=advance, reopen=reopen, symbols=liquid_symbols(shared_market(), OPEN_AT),
                     coid=lambda label: f"{agent_id}-{label}-{uuid.uuid4().hex[:6]}")


async def test_fees_follow_the_hkex_schedule():
    fees = paper_config().fees
    # 100,000 HKD buy: commission 30, stamp duty 100, trading fee 5.65, SFC 2.7, AFRC 0.15, settlement 2
    assert fill_fees(fees, value=Decimal("100000"), is_sell=False) == Decimal("140.50")
    # small trade: commission minimum 3, stamp duty rounded up to 1, settlement minimum 2
    assert fill_fees(fees, value=Decimal("500"), is_sell=True) == Decimal("6.04")


async def test_quotes_in_a_batch_are_the_quotes_asked_one_by_one_and_unknown_symbols_are_left_out(pool, agent_id):
    clock = SimulatedClock(OPEN_AT + timedelta(minutes=7))
    broker = await make_broker(pool, agent_id, clock)
    symbols = liquid_symbols(shared_market(), OPEN_AT)[:4]
    batch = await broker.get_quotes([*symbols, "NOSUCH"])
    assert list(batch) == symbols
    assert batch == {s: await broker.get_quote(s) for s in symbols}


async def test_cash_moves_by_value_plus_fees(pool, agent_id):
    clock = SimulatedClock(OPEN_AT)
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await broker.get_instrument(symbol)
    before = (await broker.get_account()).cash
    r = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-1", symbol=symbol, side=OrderSide.BUY,
                                              quantity=inst.lot_size, order_type=OrderType.MARKET))
    after = (await broker.get_account()).cash
    assert before - after == r.avg_fill_price * r.filled_quantity + r.fees


async def test_market_order_outside_hours_is_rejected_with_next_open(pool, agent_id):
    from core.errors import OrderRejected
    lunch = datetime(2026, 11, 24, 4, 30, tzinfo=timezone.utc)   # 12:30 HKT
    broker = await make_broker(pool, agent_id, SimulatedClock(lunch))
    symbol = liquid_symbols(shared_market(), lunch)[0]
    inst = await broker.get_instrument(symbol)
    with pytest.raises(OrderRejected, match="market closed.*next open 2026-11-24T05:00"):
        await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-l", symbol=symbol, side=OrderSide.BUY,
                                              quantity=inst.lot_size, order_type=OrderType.MARKET))


async def test_unfilled_day_order_expires_at_the_close(pool, agent_id):
    clock = SimulatedClock(OPEN_AT)
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await broker.get_instrument(symbol)
    q = await broker.get_quote(symbol)
    from core.ticks import round_to_tick
    far = round_to_tick(q.bid * Decimal("0.5"), inst.tick_scheme, "down")
    await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-far", symbol=symbol, side=OrderSide.BUY,
                                          quantity=inst.lot_size, order_type=OrderType.LIMIT, limit_price=far))
    assert (await broker.get_account()).buying_power < (await broker.get_account()).cash   # cash reserved
    clock.set(datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc))                           # 17:00 HKT
    r = await broker.get_order_by_client_id(f"{agent_id}-far")
    assert r.status is OrderStatus.EXPIRED and "expired" in r.reason
    acct = await broker.get_account()
    assert acct.buying_power == acct.cash


async def test_account_is_shared_with_another_process(pool, pg_url, agent_id, tmp_path):
    clock = SimulatedClock(OPEN_AT)
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await broker.get_instrument(symbol)
    await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-x", symbol=symbol, side=OrderSide.BUY,
                                          quantity=inst.lot_size * 2, order_type=OrderType.MARKET))
    script = f"""
import asyncio, json, sys
sys.path.insert(0, {str(ROOT)!r})
from datetime import datetime, timezone
from runtime import database
from tests.venues import make_broker, OPEN_AT
from core.clock import SimulatedClock
async def main():
    pool = await database.create_pool({pg_url!r})
    b = await make_broker(pool, {agent_id!r}, SimulatedClock(OPEN_AT))
    pos = await b.get_positions()
    acct = await b.get_account()
    print(json.dumps({{"positions": {{p.symbol: p.quantity for p in pos}}, "cash": str(acct.cash)}}))
    await pool.close()
asyncio.run(main())
"""
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["positions"] == {symbol: inst.lot_size * 2}
    assert Decimal(seen["cash"]) == (await broker.get_account()).cash


async def test_selling_most_of_a_position_keeps_the_rest(pool, agent_id):
    """Regression: a sell of more than half a position once deleted the whole position row."""
    broker = await make_broker(pool, agent_id, SimulatedClock(OPEN_AT), max_volume_participation=Decimal("1"))
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    lot = (await broker.get_instrument(symbol)).lot_size
    bought = await broker.place_order(OrderRequest(f"{agent_id}-b", symbol, OrderSide.BUY, 3 * lot, OrderType.MARKET))
    sold = await broker.place_order(OrderRequest(f"{agent_id}-s", symbol, OrderSide.SELL, 2 * lot, OrderType.MARKET))
    assert bought.status is OrderStatus.FILLED and sold.status is OrderStatus.FILLED
    assert {p.symbol: p.quantity for p in await broker.get_positions()} == {symbol: lot}


async def test_a_read_within_the_matched_minute_sees_what_another_process_did(pool, agent_id):
    """Reads skip matching within a minute already matched; they still see every change another process made,
    and a resting order that process placed is matched by this one once a bar completes."""
    clock = SimulatedClock(OPEN_AT)
    mine = await make_broker(pool, agent_id, clock)
    other = await make_broker(pool, agent_id, clock)           # a second process on the same account
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await mine.get_instrument(symbol)
    before = await mine.get_account()                           # this process has matched this minute
    await other.place_order(OrderRequest(client_order_id=f"{agent_id}-m", symbol=symbol, side=OrderSide.BUY,
                                         quantity=inst.lot_size, order_type=OrderType.MARKET))
    after = await mine.get_account()
    assert after.cash < before.cash
    assert [p.quantity for p in await mine.get_positions()] == [inst.lot_size]
    ask = (await mine.get_quote(symbol)).ask
    resting = OrderRequest(client_order_id=f"{agent_id}-r", symbol=symbol, side=OrderSide.BUY,
                           quantity=inst.lot_size, order_type=OrderType.LIMIT, limit_price=ask * 2)
    await other.place_order(resting)
    seen = await mine.get_order_by_client_id(resting.client_order_id)
    assert seen is not None and seen.status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED,
                                                OrderStatus.SUBMITTED)
    assert (await mine.get_account()).buying_power <= after.cash - (seen.quantity - seen.filled_quantity) * ask
    clock.advance(timedelta(minutes=30))                       # bars complete: this process matches the rest
    done = await mine.get_order_by_client_id(resting.client_order_id)
    assert done.status is OrderStatus.FILLED and sum(f.quantity for f in done.fills) == inst.lot_size
    assert [o.client_order_id for o in await mine.get_orders()] == [f"{agent_id}-m", resting.client_order_id]
    assert await mine.get_orders(open_only=True) == []


async def test_placing_an_order_first_matches_what_another_process_left_resting(pool, agent_id):
    """This process matched (nothing rested) in minute M; another process, its clock behind, then leaves an order
    resting that a bar completed by M fills further. Placing an order here matches it first, under the lock."""
    mine = await make_broker(pool, agent_id, SimulatedClock(OPEN_AT + timedelta(minutes=20)))
    other = await make_broker(pool, agent_id, SimulatedClock(OPEN_AT + timedelta(minutes=9)))
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await mine.get_instrument(symbol)
    await mine.get_account()                                    # matched minute M: nothing rests
    big = OrderRequest(client_order_id=f"{agent_id}-big", symbol=symbol, side=OrderSide.BUY,
                       quantity=inst.lot_size * 10, order_type=OrderType.MARKET)
    placed = await other.place_order(big)                       # more than the touch holds: the rest works on
    assert placed.status is OrderStatus.PARTIALLY_FILLED, placed
    small = OrderRequest(client_order_id=f"{agent_id}-small", symbol=symbol, side=OrderSide.SELL,
                         quantity=inst.lot_size, order_type=OrderType.MARKET)
    await mine.place_order(small)
    row = await pool.fetchrow("SELECT filled_quantity, matched_until FROM paper_orders WHERE client_order_id = $1",
                              big.client_order_id)
    assert row["matched_until"] == OPEN_AT + timedelta(minutes=20)    # matched through the bars completed by M
    assert row["filled_quantity"] > placed.filled_quantity


async def _rest_of_a_big_buy_working(pool, agent_id: str):
    """(clock, broker, symbol, the answer): a market buy of ten lots partly filled on arrival, the clock moved on
    30 minutes so its rest works on the bars completed since (matched by the next read)."""
    clock = SimulatedClock(OPEN_AT + timedelta(minutes=20))
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await broker.get_instrument(symbol)
    placed = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-big", symbol=symbol,
                                                   side=OrderSide.BUY, quantity=inst.lot_size * 10,
                                                   order_type=OrderType.MARKET))
    assert placed.status is OrderStatus.PARTIALLY_FILLED, placed
    clock.advance(timedelta(minutes=30))                        # bars complete: the rest works on them
    return clock, broker, symbol, placed


async def test_an_account_read_first_matches_what_rests_and_reads_once_when_nothing_does(pool, agent_id):
    """The account read asks in the same statement whether anything rests: an order left working is matched up to
    the clock before cash and holdings are read; with nothing resting, no other statement is sent."""
    clock, broker, symbol, placed = await _rest_of_a_big_buy_working(pool, agent_id)
    account, positions = await broker._get_account_and_positions()
    row = await pool.fetchrow("SELECT filled_quantity FROM paper_orders WHERE client_order_id = $1",
                              placed.client_order_id)
    assert row["filled_quantity"] > placed.filled_quantity      # matched before the read
    assert positions[0].quantity == row["filled_quantity"]      # and the read saw it
    sent: list[str] = []
    broker.reads = _Counting(broker.reads, sent)
    clock.advance(timedelta(minutes=1))
    await pool.execute("UPDATE paper_orders SET status = 'cancelled' WHERE client_order_id = $1",
                       placed.client_order_id)
    await broker._get_account_and_positions()
    assert len(sent) == 1                                       # nothing rests: the one read


async def test_a_position_read_first_matches_what_rests_and_reads_once_when_nothing_does(pool, agent_id):
    """The one-symbol read (an exit's) asks in the same statement whether anything rests, as the account read does:
    an order left working is matched up to the clock before the holding is read; with nothing resting, that read is
    the only statement (it was two: whether anything rests, then the holding)."""
    clock, broker, symbol, placed = await _rest_of_a_big_buy_working(pool, agent_id)
    other = liquid_symbols(shared_market(), OPEN_AT)[1]
    held = await broker.get_position(symbol)
    row = await pool.fetchrow("SELECT filled_quantity FROM paper_orders WHERE client_order_id = $1",
                              placed.client_order_id)
    assert row["filled_quantity"] > placed.filled_quantity      # matched before the read
    assert held.quantity == row["filled_quantity"]              # and the read saw it
    sent: list[str] = []
    broker.reads = _Counting(broker.reads, sent)
    clock.advance(timedelta(minutes=1))
    await pool.execute("UPDATE paper_orders SET status = 'cancelled' WHERE client_order_id = $1",
                       placed.client_order_id)
    assert (await broker.get_position(symbol)).quantity == row["filled_quantity"]
    assert await broker.get_position(other) is None           # nothing held: no position
    assert len(sent) == 2                                       # nothing rests: one read each
    missing = PaperBroker(pool, shared_market(), clock, MarketCalendar("HKEX"), account_id=agent_id + "-x",
                          currency="HKD", config=paper_config())           # never connected: no account
    with pytest.raises(InvalidRequest, match="does not exist"):
        await missing.get_position(symbol)


async def test_an_order_placed_is_written_with_what_it_took_on_arrival_in_one_statement(pool, agent_id):
    """Placing is BEGIN with the account lock (one message), the resting orders with the buying-power read (one
    statement: they were two), the order written with its fill and the books of it (one statement: it was three,
    the order, the fill and the status), COMMIT: four round trips, six before. The answer is what the venue reads
    back for that order afterwards, and the cash and holding moved by the fill."""
    clock = SimulatedClock(OPEN_AT + timedelta(minutes=20))
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    lot = (await broker.get_instrument(symbol)).lot_size
    counting = _CountingPool(pool)
    broker.pool = counting
    for side in (OrderSide.BUY, OrderSide.SELL):    # once first: the connection's statements prepared, types known
        await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-warm-{side.value}", symbol=symbol,
                                              side=side, quantity=lot, order_type=OrderType.MARKET))
    before = await broker.get_account()
    counting.sent.clear()
    placed = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-buy", symbol=symbol,
                                                   side=OrderSide.BUY, quantity=lot, order_type=OrderType.MARKET))
    assert placed.status is OrderStatus.FILLED and len(placed.fills) == 1, placed
    assert len(counting.sent) == 4, counting.sent
    assert placed == await broker.get_order_by_client_id(placed.client_order_id)
    fill = placed.fills[0]
    account, positions = await broker.get_account_and_positions()
    assert account.cash == before.cash - fill.price * fill.quantity - fill.fee
    assert [(p.symbol, p.quantity, p.avg_price) for p in positions] == [(symbol, lot, fill.price)]
    # a limit far below the bid rests: written as submitted, nothing taken, nothing moved
    counting.sent.clear()
    resting = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-low", symbol=symbol,
                                                    side=OrderSide.SELL, quantity=lot, order_type=OrderType.LIMIT,
                                                    limit_price=fill.price * 3))
    assert (resting.status, resting.filled_quantity, resting.fills) == (OrderStatus.SUBMITTED, 0, ())
    assert resting == await broker.get_order_by_client_id(resting.client_order_id)
    assert (await broker.get_account()).cash == account.cash
    await broker.cancel_order(resting.client_order_id)
    # a sell of the whole holding: the position goes, the proceeds less the fee come in
    sold = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-sell", symbol=symbol,
                                                 side=OrderSide.SELL, quantity=lot, order_type=OrderType.MARKET))
    assert sold.status is OrderStatus.FILLED and sold == await broker.get_order_by_client_id(sold.client_order_id)
    out = sold.fills[0]
    account, positions = await broker.get_account_and_positions()
    assert positions == [] and account.cash == before.cash - fill.price * lot - fill.fee + out.price * lot - out.fee


async def test_an_order_is_checked_against_the_books_as_changed_under_the_lock_it_waited_for(pool, agent_id):
    """The books an order is checked against are read in the statement after the account lock is granted, so what
    another process changed under the lock while the order waited for it is seen: here a sell it placed for the
    whole holding, so this sell of the same lot is refused (read in the lock's own statement, the books would be
    those of before the wait: no open sell, and the lot would be sold twice)."""
    clock = SimulatedClock(OPEN_AT + timedelta(minutes=20))
    broker = await make_broker(pool, agent_id, clock)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    lot = (await broker.get_instrument(symbol)).lot_size
    bought = await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-buy", symbol=symbol,
                                                   side=OrderSide.BUY, quantity=lot, order_type=OrderType.MARKET))
    assert bought.status is OrderStatus.FILLED
    other = await pool.acquire()
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM paper_accounts WHERE agent_id = $1 FOR UPDATE", agent_id)
            selling = asyncio.create_task(broker.place_order(OrderRequest(
                client_order_id=f"{agent_id}-sell", symbol=symbol, side=OrderSide.SELL, quantity=lot,
                order_type=OrderType.MARKET)))
            await asyncio.sleep(0.3)
            assert not selling.done()                    # waiting for the lock
            await other.execute(
                "INSERT INTO paper_orders (agent_id, client_order_id, broker_order_id, symbol, side, order_type, "
                "quantity, limit_price, status, submitted_at, matched_until, updated_at) VALUES ($1, $2, $2, $3, "
                "'sell', 'limit', $4, $5, 'submitted', $6, $6, $6)", agent_id, f"{agent_id}-other", symbol, lot,
                bought.avg_fill_price * 3, clock.now())
    finally:
        await pool.release(other)
    with pytest.raises(OrderRejected, match=f"cannot sell {lot} {symbol}: {lot} held, {lot} already in open sell"):
        await selling


async def test_a_missing_account_is_refused_and_leaves_no_transaction_open(pool, agent_id):
    clock = SimulatedClock(OPEN_AT + timedelta(minutes=20))
    broker = await make_broker(pool, agent_id, clock)
    await pool.execute("DELETE FROM paper_accounts WHERE agent_id = $1", agent_id)
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    with pytest.raises(InvalidRequest, match="paper account does not exist"):
        await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-x", symbol=symbol, side=OrderSide.BUY,
                                              quantity=(await broker.get_instrument(symbol)).lot_size,
                                              order_type=OrderType.MARKET))
    async with pool.acquire() as conn:                   # every connection went back to the pool idle
        assert not conn.is_in_transaction()
    assert await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND state LIKE 'idle in transaction%'") == 0


@pytest.mark.parametrize("text, literal", [("agent-1", "'agent-1'"), ("o'brien", "'o''brien'"),
                                           ("back\\slash", "'back\\slash'"), ("''", "''''''")])
async def test_an_account_id_is_locked_by_its_literal(pool, text, literal):
    """The lock's message quotes the account id as an SQL literal: PostgreSQL reads it back as the same text."""
    assert sql_literal(text) == literal
    assert await pool.fetchval("SELECT " + sql_literal(text)) == text


def test_text_with_a_nul_has_no_literal():
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")


class _CountingPool:
    """The pool, every statement sent on a connection it lends counted (BEGIN and COMMIT included)."""

    def __init__(self, pool) -> None:
        self.pool, self.sent = pool, []

    async def acquire(self):
        conn = await self.pool.acquire()
        conn.add_query_logger(self._log)
        return conn

    async def release(self, conn) -> None:
        conn.remove_query_logger(self._log)
        await self.pool.release(conn)

    def _log(self, record) -> None:
        self.sent.append(record.query)


class _Counting:
    def __init__(self, inner, sent: list) -> None:
        self.inner, self.sent = inner, sent

    async def fetch(self, query, *args):
        self.sent.append(query)
        return await self.inner.fetch(query, *args)


async def test_a_day_order_partly_filled_on_arrival_still_expires_at_the_close(pool, agent_id):
    """Regression: an order that took liquidity when placed (a marketable limit, partly filled at once) never
    expired: the quantity filled on arrival was read as "this is the placement", which skips expiry."""
    from brokers.paper.broker import PaperBroker
    from tests.fakes.movable import MovableMarket
    clock = SimulatedClock(OPEN_AT)
    market = MovableMarket(shared_market(), clock)
    broker = PaperBroker(pool, market, clock, MarketCalendar("HKEX"), account_id=agent_id, currency="HKD",
                         config=paper_config())
    await broker.connect()
    symbol = liquid_symbols(shared_market(), OPEN_AT)[0]
    inst = await broker.get_instrument(symbol)
    ask = (await broker.get_quote(symbol)).ask
    placed = await broker.place_order(OrderRequest(f"{agent_id}-big", symbol, OrderSide.BUY, inst.lot_size * 40,
                                                   OrderType.LIMIT, limit_price=ask))
    assert placed.status is OrderStatus.PARTIALLY_FILLED, placed
    market.move(symbol, ask * 2)                                # the market leaves the limit behind for good
    clock.set(datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc))  # 17:00 HKT
    done = await broker.get_order_by_client_id(placed.client_order_id)
    assert done.status is OrderStatus.EXPIRED and done.filled_quantity == placed.filled_quantity, done
    acct = await broker.get_account()
    assert acct.buying_power == acct.cash                       # nothing held back for it any more


async def test_a_resting_order_is_not_rewritten_until_a_bar_completes(pool, agent_id):
    """Every order placed matches the book first; a resting order no new bar reaches is left alone (no statement
    per resting order per placement), and the next completed bar still works it."""
    from core.ticks import round_to_tick
    clock = SimulatedClock(OPEN_AT + timedelta(seconds=5))
    broker = await make_broker(pool, agent_id, clock)
    first, second = liquid_symbols(shared_market(), OPEN_AT)[:2]
    inst = await broker.get_instrument(first)
    far = round_to_tick((await broker.get_quote(first)).bid * Decimal("0.5"), inst.tick_scheme, "down")
    await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-rest", symbol=first, side=OrderSide.BUY,
                                          quantity=inst.lot_size, order_type=OrderType.LIMIT, limit_price=far))
    stamp = "SELECT updated_at, matched_until FROM paper_orders WHERE agent_id = $1 AND client_order_id = $2"
    before = await pool.fetchrow(stamp, agent_id, f"{agent_id}-rest")
    clock.advance(timedelta(seconds=20))                     # the same minute: no bar has completed since
    lot = (await broker.get_instrument(second)).lot_size
    await broker.place_order(OrderRequest(client_order_id=f"{agent_id}-other", symbol=second, side=OrderSide.BUY,
                                          quantity=lot, order_type=OrderType.MARKET))
    assert await pool.fetchrow(stamp, agent_id, f"{agent_id}-rest") == before
    clock.advance(timedelta(minutes=2))
    await broker.get_orders()                                  # a bar completed: it is matched on it
    assert (await pool.fetchrow(stamp, agent_id, f"{agent_id}-rest"))["matched_until"] > before["matched_until"]
