"""execution/order_path.py: the write-ahead row numbers the next client order id with an index probe, and agents
whose ids start alike still each get an orders row for every order; a broker's answer is recorded once, its fills
becoming one position, in few statements."""
from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from decimal import Decimal

from core.clock import SimulatedClock
from core.orders import Fill, OrderResult, OrderSide, OrderStatus, OrderType, client_id_prefix
from execution.order_path import _WRITE_AHEAD, OrderPath
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings, cheap_symbol


async def test_the_next_order_number_is_found_by_an_index_not_by_reading_every_order(pool, agent_id):
    """Numbering an order must not read every order ever written (all agents, every replay): that grows without
    bound on a database kept for years. With sequential scans disabled the plan still holds none on orders."""
    prefix = client_id_prefix(agent_id) + "nocycle-S0001-b"
    args = (agent_id, None, None, "S0001", "buy", "market", "entry", 100, None, None, None, OPEN_AT, None, prefix)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + _WRITE_AHEAD, *args))
    assert "Seq Scan on orders" not in plan, plan
    assert re.search(r"Index Cond: \(+agent_id = ", plan), plan     # a probe by agent, not a full index read


async def test_agents_whose_ids_start_alike_each_write_their_order_ahead(pool, agent_id):
    """Client order ids start with 12 characters of the agent id: two agents sharing them number the same id;
    the second is numbered again over every agent, and its order is written ahead and recorded as usual."""
    base = (re.sub(r"[^A-Za-z0-9]", "", agent_id) + "x" * 12)[:12]
    first, second = f"{base}-a", f"{base}-b"
    assert client_id_prefix(first) == client_id_prefix(second)
    outcomes = []
    for agent in (first, second):
        s = await build_services(agent_settings(agent, market_data={"universe_size": 100}), pool,
                                 SimulatedClock(OPEN_AT))
        symbol = cheap_symbol(s)
        outcomes.append(await s.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.BUY,
                                              quantity=s.universe.instrument(symbol).lot_size,
                                              order_type=OrderType.MARKET, intent="entry"))
    ids = [o.client_order_id for o in outcomes]
    assert ids[0] != ids[1] and ids[1].endswith("2"), ids
    assert [o.status for o in outcomes] == ["filled", "filled"], outcomes
    for agent, coid in zip((first, second), ids):
        assert await pool.fetchval("SELECT agent_id FROM orders WHERE client_order_id = $1", coid) == agent


# ---------------------------------------------------------------- recording the broker's answer

class _CountingPool:
    """The pool, with every statement counted: those sent on a connection it lends (BEGIN and COMMIT included) and
    single statements sent through it."""

    def __init__(self, pool) -> None:
        self.pool, self.sent = pool, []

    async def fetchrow(self, query, *args):
        self.sent.append(query)
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query, *args):
        self.sent.append(query)
        return await self.pool.fetchval(query, *args)

    def acquire(self):
        outer = self

        class _Lend:
            async def __aenter__(self):
                self.conn = await outer.pool.acquire()
                self.log = lambda record: outer.sent.append(record.query)
                self.conn.add_query_logger(self.log)
                return self.conn

            async def __aexit__(self, *exc):
                self.conn.remove_query_logger(self.log)
                await outer.pool.release(self.conn)

        return _Lend()


async def _written_ahead(pool, agent_id: str, coid: str, side: OrderSide, quantity: int, intent: str = "entry"):
    await pool.execute(
        """INSERT INTO orders (agent_id, client_order_id, position_id, symbol, side, order_type, intent, quantity,
               status, created_at, updated_at)
           VALUES ($1, $2, (SELECT position_id FROM positions WHERE agent_id = $1 AND symbol = 'S0001'
                            AND status = 'open' AND $3 = 'sell'), 'S0001', $3, 'market', $4, $5, 'pending_submit',
                   $6, $6)""", agent_id, coid, side.value, intent, quantity, OPEN_AT)


def _answer(coid: str, side: OrderSide, quantity: int, fills: list[tuple[int, str, str]],
            fees: str | None = None) -> OrderResult:
    """The broker's answer: `fills` as (quantity, price, fee); order-level `fees` (the fills' sum when None)."""
    made = tuple(Fill(f"{coid}-F{n}", coid, "S0001", side, q, Decimal(p), Decimal(fee),
                      OPEN_AT + timedelta(minutes=n)) for n, (q, p, fee) in enumerate(fills, 1))
    filled = sum(f.quantity for f in made)
    avg = (sum(f.price * f.quantity for f in made) / filled).quantize(Decimal("0.000001")) if filled else None
    return OrderResult(coid, f"B-{coid}", "S0001", side, OrderType.MARKET, quantity, None,
                       OrderStatus.FILLED if filled == quantity else OrderStatus.SUBMITTED, filled, avg,
                       Decimal(fees) if fees is not None else sum((f.fee for f in made), Decimal(0)),
                       submitted_at=OPEN_AT, updated_at=OPEN_AT, fills=made)


async def _position(pool, agent_id: str):
    rows = await pool.fetch("SELECT position_id, quantity, avg_entry_price, fees, realized_pnl, status, exit_reason "
                            "FROM positions WHERE agent_id = $1 ORDER BY position_id", agent_id)
    assert len(rows) == 1, rows                         # every fill of the symbol went to one position
    return rows[0]


async def test_one_new_fill_is_recorded_in_one_statement_and_becomes_the_position(pool, agent_id):
    """The order locked, its fill recorded, the position opened and the order's row set: one statement (it was four:
    BEGIN, the lock with the fill, the position's change with the order's row, COMMIT; six before that)."""
    counting = _CountingPool(pool)
    path = OrderPath(counting, None, SimulatedClock(OPEN_AT), agent_id)
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 100)
    outcome = await path.record_result(_answer(f"{agent_id}-b1", OrderSide.BUY, 100, [(100, "10.00", "1.50")]))
    assert len(counting.sent) == 1, counting.sent
    pos = await _position(pool, agent_id)
    assert (pos["quantity"], pos["avg_entry_price"], pos["fees"], pos["realized_pnl"], pos["status"]) == \
        (100, Decimal("10.00"), Decimal("1.50"), Decimal("-1.50"), "open")
    order = await pool.fetchrow("SELECT status, filled_quantity, position_id FROM orders WHERE client_order_id = $1",
                                f"{agent_id}-b1")
    assert (order["status"], order["filled_quantity"], order["position_id"]) == ("filled", 100, pos["position_id"])
    assert outcome.position_id == pos["position_id"] and path.fills_recorded == 1


async def test_a_sell_fill_reduces_then_closes_the_position_each_in_one_statement(pool, agent_id):
    """A one-fill sell of part of the position reduces it, the next closes it with the exit's intent, each in one
    statement, the P&L net of every fee: -1 on entry, (11 - 10) x 40 - 1, then (12 - 10) x 60 - 1. Recorded again,
    an answer changes nothing."""
    counting = _CountingPool(pool)
    path = OrderPath(counting, None, SimulatedClock(OPEN_AT), agent_id)
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 100)
    await path.record_result(_answer(f"{agent_id}-b1", OrderSide.BUY, 100, [(100, "10.00", "1")]))
    await _written_ahead(pool, agent_id, f"{agent_id}-s1", OrderSide.SELL, 40, intent="exit")
    counting.sent.clear()
    partial = _answer(f"{agent_id}-s1", OrderSide.SELL, 40, [(40, "11.00", "1")])
    await path.record_result(partial)
    assert len(counting.sent) == 1, counting.sent
    pos = await _position(pool, agent_id)
    assert (pos["quantity"], pos["status"], pos["realized_pnl"], pos["fees"]) == (60, "open", Decimal("38"),
                                                                                  Decimal("2"))
    await _written_ahead(pool, agent_id, f"{agent_id}-s2", OrderSide.SELL, 60, intent="take_profit")
    counting.sent.clear()
    rest = _answer(f"{agent_id}-s2", OrderSide.SELL, 60, [(60, "12.00", "1")])
    outcome = await path.record_result(rest)
    assert len(counting.sent) == 1, counting.sent
    for answer in (partial, rest):
        await path.record_result(answer)
    pos = await _position(pool, agent_id)
    assert (pos["quantity"], pos["status"], pos["exit_reason"], pos["realized_pnl"], pos["fees"]) == \
        (0, "closed", "take_profit", Decimal("157"), Decimal("3"))
    assert outcome.position_id == pos["position_id"] and outcome.status == "filled" and path.fills_recorded == 3
    orders = await pool.fetch("SELECT status, filled_quantity, position_id FROM orders WHERE agent_id = $1 "
                              "ORDER BY order_id", agent_id)
    assert [(o["status"], o["filled_quantity"], o["position_id"]) for o in orders] == \
        [("filled", 100, pos["position_id"]), ("filled", 40, pos["position_id"]), ("filled", 60, pos["position_id"])]


async def test_a_one_fill_buy_adding_to_an_open_position_takes_the_general_path(pool, agent_id):
    """A buy whose symbol has a position open already: its average price is rounded in Python (to 6 places, half to
    even), so the one-statement path writes nothing and the answer is recorded in a transaction."""
    counting = _CountingPool(pool)
    path = OrderPath(counting, None, SimulatedClock(OPEN_AT), agent_id)
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 300)
    await path.record_result(_answer(f"{agent_id}-b1", OrderSide.BUY, 300, [(300, "10.00", "1")]))
    await _written_ahead(pool, agent_id, f"{agent_id}-b2", OrderSide.BUY, 700)
    counting.sent.clear()
    outcome = await path.record_result(_answer(f"{agent_id}-b2", OrderSide.BUY, 700, [(700, "10.01", "2")]))
    assert counting.sent[1].strip().startswith("BEGIN"), counting.sent      # tried in one statement first
    pos = await _position(pool, agent_id)
    # (10 x 300 + 10.01 x 700) / 1000 = 10.007
    assert (pos["quantity"], pos["avg_entry_price"], pos["fees"], pos["realized_pnl"]) == \
        (1000, Decimal("10.007000"), Decimal("3"), Decimal("-3"))
    assert outcome.position_id == pos["position_id"] and path.fills_recorded == 2
    assert await pool.fetchval("SELECT count(*) FROM fills WHERE agent_id = $1", agent_id) == 2


async def test_fills_of_one_answer_go_to_one_position_and_an_answer_recorded_again_changes_nothing(pool, agent_id):
    """A buy answered with two fills opens one position at their average, the fees of both on it; the sell's two
    fills close it with the P&L of both; each answer recorded a second time (reconciliation after the process
    that placed it) writes nothing more."""
    path = OrderPath(pool, None, SimulatedClock(OPEN_AT), agent_id)
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 200)
    buy = _answer(f"{agent_id}-b1", OrderSide.BUY, 200, [(100, "10.00", "1"), (100, "10.50", "1")])
    for _ in range(2):
        await path.record_result(buy)
        pos = await _position(pool, agent_id)
        assert (pos["quantity"], pos["avg_entry_price"], pos["fees"], pos["realized_pnl"]) == \
            (200, Decimal("10.25"), Decimal("2"), Decimal("-2"))
    await _written_ahead(pool, agent_id, f"{agent_id}-s1", OrderSide.SELL, 200, intent="take_profit")
    sell = _answer(f"{agent_id}-s1", OrderSide.SELL, 200, [(100, "11.00", "1"), (100, "12.00", "1")])
    for _ in range(2):
        outcome = await path.record_result(sell)
        pos = await _position(pool, agent_id)
        # -2 on entry, then (11 - 10.25) x 100 - 1 and (12 - 10.25) x 100 - 1
        assert (pos["quantity"], pos["status"], pos["exit_reason"], pos["realized_pnl"], pos["fees"]) == \
            (0, "closed", "take_profit", Decimal("246"), Decimal("4"))
        assert outcome.position_id == pos["position_id"]
    assert path.fills_recorded == 4
    assert await pool.fetchval("SELECT count(*) FROM fills WHERE agent_id = $1", agent_id) == 4


async def test_an_order_level_fee_beyond_its_fills_is_booked_on_the_position_once(pool, agent_id):
    """A broker that reports the order's fee apart from its fills (none on the fill): the fee goes onto the
    position the fill opened, once however often the answer is recorded."""
    path = OrderPath(pool, None, SimulatedClock(OPEN_AT), agent_id)
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 100)
    answer = _answer(f"{agent_id}-b1", OrderSide.BUY, 100, [(100, "10.00", "0")], fees="5")
    for _ in range(2):
        await path.record_result(answer)
        pos = await _position(pool, agent_id)
        assert (pos["quantity"], pos["fees"], pos["realized_pnl"]) == (100, Decimal("5"), Decimal("-5"))
    assert await pool.fetchval("SELECT position_id FROM orders WHERE client_order_id = $1",
                               f"{agent_id}-b1") == pos["position_id"]


async def _holding_the_order(pool, coid: str):
    """Another process recording order `coid`: its transaction open, the order's row locked."""
    conn = await pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.fetchrow("SELECT * FROM orders WHERE client_order_id = $1 FOR UPDATE", coid)
    return conn, tx


async def test_an_answer_recorded_while_another_process_opens_the_position_adds_to_it(pool, agent_id):
    """Another process holds the order and, recording a partial answer whose one fill the broker listed late, opens
    the position; this process waits for it and adds the answer's other fill to that position (one position at the
    average of both). Reading positions from a snapshot taken before the wait saw no position and failed on the
    one-open-position-per-symbol rule."""
    coid = f"{agent_id}-b1"
    await _written_ahead(pool, agent_id, coid, OrderSide.BUY, 200)
    full = _answer(coid, OrderSide.BUY, 200, [(100, "10.00", "1"), (100, "10.50", "1")])
    conn, tx = await _holding_the_order(pool, coid)
    try:
        order_id = await conn.fetchval("SELECT order_id FROM orders WHERE client_order_id = $1", coid)
        late = full.fills[1]
        await conn.execute("INSERT INTO fills (agent_id, order_id, broker_fill_id, symbol, side, quantity, price, fee, "
                           "filled_at) VALUES ($1, $2, $3, 'S0001', 'buy', 100, 10.50, 1, $4)", agent_id, order_id,
                           late.fill_id, late.timestamp)
        await conn.execute("INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, fees, realized_pnl, "
                           "opened_at) VALUES ($1, 'S0001', 100, 10.50, 1, -1, $2)", agent_id, OPEN_AT)
        recording = asyncio.create_task(OrderPath(pool, None, SimulatedClock(OPEN_AT), agent_id).record_result(full))
        await asyncio.sleep(0.3)
        assert not recording.done()                       # it waits for the other process
        await tx.commit()
    finally:
        await pool.release(conn)
    await recording
    pos = await _position(pool, agent_id)
    assert (pos["quantity"], pos["avg_entry_price"], pos["fees"], pos["status"]) == \
        (200, Decimal("10.25"), Decimal("2"), "open")


async def test_a_position_opened_by_another_order_while_waiting_is_added_to(pool, agent_id):
    """While this process waits for its order's lock, another order of the same symbol opens the position: this
    order's fill goes onto that position."""
    await _written_ahead(pool, agent_id, f"{agent_id}-b1", OrderSide.BUY, 100)
    await _written_ahead(pool, agent_id, f"{agent_id}-b2", OrderSide.BUY, 100)
    conn, tx = await _holding_the_order(pool, f"{agent_id}-b1")
    try:
        waiting = asyncio.create_task(OrderPath(pool, None, SimulatedClock(OPEN_AT), agent_id).record_result(
            _answer(f"{agent_id}-b1", OrderSide.BUY, 100, [(100, "10.00", "1")])))
        await asyncio.sleep(0.3)
        await OrderPath(pool, None, SimulatedClock(OPEN_AT), agent_id).record_result(
            _answer(f"{agent_id}-b2", OrderSide.BUY, 100, [(100, "11.00", "1")]))
        await tx.commit()
    finally:
        await pool.release(conn)
    await waiting
    pos = await _position(pool, agent_id)
    assert (pos["quantity"], pos["avg_entry_price"], pos["fees"]) == (200, Decimal("10.50"), Decimal("2"))
