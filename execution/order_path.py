"""The one order path, used by Claude's tools, the rules engine, the position monitor and replay.

1. A write-ahead `orders` row (status pending_submit) with a deterministic client_order_id is committed
   before the broker is called.
2. The broker's answer updates that row; a broker that cannot be reached leaves it pending_submit, and
   reconciliation later asks the broker by client_order_id instead of sending it again.
3. Positions change only from fills (`fills` rows, unique per broker fill id), in the same transaction.
   `positions.realized_pnl` is net of every fee, entry fees included (they are charged when the buy fills).

Safety is not here: callers obtain a `safety` verdict first (execute_trade always does, itself).
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Callable

import asyncpg

from brokers.base import BrokerClient
from core.errors import BrokerError, BrokerUnavailable, InvalidRequest, OrderRejected
from core.orders import (OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType, can_transition,
                         make_client_order_id)
from core.clock import Clock
from core.faults import kill_point
from execution.store import WORKING, cycle_start_cte

log = logging.getLogger("catalyst.orders")

PRICE_Q = Decimal("0.000001")


@dataclass(frozen=True)
class OrderOutcome:
    """What happened to one order, compact enough to hand to the model."""
    client_order_id: str
    status: str
    symbol: str
    side: str
    quantity: int
    filled_quantity: int = 0
    avg_fill_price: Decimal | None = None
    fees: Decimal = Decimal(0)
    reason: str | None = None
    position_id: int | None = None

    @property
    def accepted(self) -> bool:
        return self.status not in {"rejected", "pending_submit"}

    def to_dict(self) -> dict:
        d = {"client_order_id": self.client_order_id, "status": self.status, "symbol": self.symbol,
             "side": self.side, "quantity": self.quantity, "filled_quantity": self.filled_quantity}
        if self.avg_fill_price is not None:
            d["avg_fill_price"] = str(self.avg_fill_price)
        if self.fees:
            d["fees"] = str(self.fees)
        if self.reason:
            d["reason"] = self.reason
        return d


# The write-ahead row; $2 the client order id, or NULL to number the next one after prefix $14 (the count of this
# agent's ids made with it, plus one: an index probe by agent and symbol, never a read of every order ever written).
# Returns the id written (NULL: that id exists already: see submit).
# A held cycle start row ($15 cycle_id, $16 agent_id, $17 mode, $18 started_at), written with the write-ahead row
# that refers to it (the foreign key is checked at the statement's end).
_WITH_CYCLE_START = "WITH " + cycle_start_cte(15) + "\n"

_WRITE_AHEAD = """INSERT INTO orders (agent_id, client_order_id, cycle_id, position_id, symbol, side, order_type, intent,
        quantity, limit_price, stop_loss, take_profit, status, created_at, updated_at, stop_price)
    VALUES ($1, coalesce($2, $14 || ((SELECT count(*) FROM orders WHERE agent_id = $1 AND symbol = $4
                                      AND client_order_id LIKE $14 || '%') + 1)),
            $3, CASE WHEN $5 = 'sell' THEN (SELECT position_id FROM positions WHERE agent_id = $1
                                           AND symbol = $4 AND status = 'open') END,
            $4, $5, $6, $7, $8, $9, $10, $11, 'pending_submit', $12, $12, $13)
    ON CONFLICT (client_order_id) DO NOTHING RETURNING client_order_id"""


# The order row locked, and with it (when the broker reported fills) its first fill recorded once (unique per broker
# fill id) and the symbol's open position locked for it, in one statement. `inserted` is NULL for a fill recorded
# before; the open_* columns are NULL when no position is open. No row: no such order.
# NOWAIT: the statement reads positions from a snapshot taken when it starts, so it must not wait for the order's
# lock (a position another process opens while it waits would be invisible to it); when another process holds the
# order, record_result locks it alone (_LOCK_ORDER, waiting) and records every fill after the wait.
_LOCK_ORDER = "SELECT * FROM orders WHERE client_order_id = $1 FOR UPDATE"
_LOCK_ORDER_RECORD_FILL = """WITH o AS (SELECT * FROM orders WHERE client_order_id = $1 FOR UPDATE NOWAIT),
    f AS (
        INSERT INTO fills (agent_id, order_id, broker_fill_id, symbol, side, quantity, price, fee, filled_at)
        SELECT $2, o.order_id, $3, $4, $5, $6, $7, $8, $9 FROM o ON CONFLICT (agent_id, broker_fill_id) DO NOTHING
        RETURNING fill_row_id),
    p AS (SELECT position_id, quantity, avg_entry_price FROM positions
          WHERE agent_id = $2 AND symbol = (SELECT symbol FROM o) AND status = 'open' FOR UPDATE)
    SELECT o.*, (SELECT fill_row_id FROM f) AS inserted, p.position_id AS open_position_id,
           p.quantity AS open_quantity, p.avg_entry_price AS open_avg_entry_price
    FROM o LEFT JOIN p ON true"""

# A later fill of the same answer: recorded once, the open position locked for it (columns as above).
_RECORD_FILL = """WITH f AS (
        INSERT INTO fills (agent_id, order_id, broker_fill_id, symbol, side, quantity, price, fee, filled_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (agent_id, broker_fill_id) DO NOTHING
        RETURNING fill_row_id),
    p AS (SELECT position_id, quantity, avg_entry_price FROM positions
          WHERE agent_id = $1 AND symbol = $10 AND status = 'open' FOR UPDATE)
    SELECT (SELECT fill_row_id FROM f) AS inserted, p.position_id AS open_position_id, p.quantity AS open_quantity,
           p.avg_entry_price AS open_avg_entry_price
    FROM (SELECT 1) AS one LEFT JOIN p ON true"""

# The order's row as the broker answered ($10: the position its fills went to, when known).
_SET_ORDER = """UPDATE orders SET status = $2, broker_order_id = $3, filled_quantity = $4, avg_fill_price = $5,
        fees = $6, reason = coalesce($7, reason), submitted_at = coalesce(submitted_at, $8), updated_at = $9,
        position_id = coalesce({attached}, position_id) WHERE order_id = $1
    RETURNING position_id"""
_SET_ORDER_ARGS = 10

# A new fill's change to our positions, each RETURNING the position it went to: (sql, args) made by _position_change.
_OPEN = """INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, stop_loss, take_profit,
        high_water_mark, fees, realized_pnl, opened_at)
    VALUES ($1, $2, $3, $4, $5, $6, $4, $7, -$7::numeric, $8)
    RETURNING position_id"""
_ADD = """UPDATE positions SET quantity = $2, avg_entry_price = $3, fees = fees + $4, realized_pnl = realized_pnl - $4,
        stop_loss = coalesce($5, stop_loss), take_profit = coalesce($6, take_profit)
    WHERE position_id = $1 RETURNING position_id"""
_REDUCE = """UPDATE positions SET quantity = $2, realized_pnl = realized_pnl + $3, fees = fees + $4
    WHERE position_id = $1 RETURNING position_id"""
_CLOSE = """UPDATE positions SET quantity = 0, status = 'closed', closed_at = $2, realized_pnl = realized_pnl + $3,
        fees = fees + $4, exit_reason = $5 WHERE position_id = $1 RETURNING position_id"""


def _shifted(sql: str, by: int) -> str:
    """`sql` with its parameters $n renumbered $(n + by) (to follow another statement's)."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql)


# A position change (CTE `a`, its parameters after the order's) and the order's row, in one statement; per change.
_WITH_SET_ORDER = {change: f"WITH a AS ({_shifted(change, _SET_ORDER_ARGS)})\n"
                           + _SET_ORDER.format(attached="(SELECT position_id FROM a), $10")
                   for change in (_OPEN, _ADD, _REDUCE, _CLOSE)}
_SET_ORDER_ALONE = _SET_ORDER.format(attached="$10")


# The common answer (one fill, no fee beyond it) recorded in one statement, without BEGIN and COMMIT around it: the
# order locked (NOWAIT, as _LOCK_ORDER_RECORD_FILL), the symbol's open position locked, the change the fill makes
# (`change`: a buy with no position opens one; a sell reduces or closes the position), the fill recorded once, the
# position changed as _OPEN / _REDUCE / _CLOSE change it and the order's row set as _SET_ORDER sets it. `change` is
# NULL, and nothing is written, when the answer needs the general path: a buy adding to an open position (its average
# price is rounded in Python), a sell with no open position (_late_sell_fill), order-level fees booked before. The
# P&L is exact either way (numeric arithmetic: (price - average) x quantity sold - fee). No row: no such order.
# $1 client order id, $2 agent, $3-$9 the fill (id, symbol, side, quantity, price, fee, time), $10-$17 the order's
# row (status, broker order id, filled quantity, average fill price, fees, reason, submitted at, updated at).
_RECORD_ONE = """WITH o AS (SELECT order_id, symbol, status, stop_loss, take_profit, intent, fees_booked FROM orders
                 WHERE client_order_id = $1 FOR UPDATE NOWAIT),
    p AS (SELECT position_id, quantity, avg_entry_price FROM positions
          WHERE agent_id = $2 AND symbol = (SELECT symbol FROM o) AND status = 'open' FOR UPDATE),
    k AS (SELECT o.*, p.position_id, p.quantity, p.avg_entry_price,
                 CASE WHEN $14::numeric <> 0 AND o.fees_booked <> 0 THEN NULL
                      WHEN $5 = 'buy' THEN CASE WHEN p.position_id IS NULL THEN 'open' END
                      WHEN p.position_id IS NULL THEN NULL
                      WHEN p.quantity > $6 THEN 'reduce' ELSE 'close' END AS change
          FROM o LEFT JOIN p ON true),
    f AS (INSERT INTO fills (agent_id, order_id, broker_fill_id, symbol, side, quantity, price, fee, filled_at)
          SELECT $2, k.order_id, $3, $4, $5, $6, $7, $8, $9 FROM k WHERE k.change IS NOT NULL
          ON CONFLICT (agent_id, broker_fill_id) DO NOTHING RETURNING fill_row_id),
    opened AS (INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, stop_loss, take_profit,
                   high_water_mark, fees, realized_pnl, opened_at)
               SELECT $2, k.symbol, $6, $7, k.stop_loss, k.take_profit, $7, $8, -$8::numeric, $9 FROM k
               WHERE k.change = 'open' AND EXISTS (SELECT FROM f) RETURNING position_id),
    changed AS (UPDATE positions SET quantity = CASE WHEN k.change = 'reduce' THEN k.quantity - $6 ELSE 0 END,
                    realized_pnl = realized_pnl + ($7 - k.avg_entry_price) * least($6, k.quantity) - $8,
                    fees = fees + $8,
                    status = CASE WHEN k.change = 'close' THEN 'closed' ELSE positions.status END,
                    closed_at = CASE WHEN k.change = 'close' THEN $9 ELSE positions.closed_at END,
                    exit_reason = CASE WHEN k.change = 'close' THEN k.intent ELSE positions.exit_reason END
                FROM k WHERE positions.position_id = k.position_id AND k.change IN ('reduce', 'close')
                  AND EXISTS (SELECT FROM f) RETURNING positions.position_id),
    s AS (UPDATE orders SET status = $10, broker_order_id = $11, filled_quantity = $12, avg_fill_price = $13,
              fees = $14, reason = coalesce($15, reason), submitted_at = coalesce(submitted_at, $16), updated_at = $17,
              position_id = coalesce((SELECT position_id FROM opened), (SELECT position_id FROM changed),
                                    orders.position_id)
          FROM k WHERE orders.order_id = k.order_id AND k.change IS NOT NULL RETURNING orders.position_id)
    SELECT k.status, k.change, EXISTS (SELECT FROM f) AS inserted, (SELECT position_id FROM s) AS position_id FROM k"""


def _fees_beyond_fills(order, order_fees: Decimal | None, fills) -> bool:
    """Whether the broker reports fees for the order beyond what its fills carry (booked on the position apart)."""
    return bool(order_fees) and not (order["fees_booked"] == 0 and
                                     order_fees <= sum((f.fee for f in fills), Decimal(0)))


def _open_position(found) -> dict | None:
    """The open position a _RECORD_FILL / _LOCK_ORDER_RECORD_FILL row locked, or None."""
    if found["open_position_id"] is None:
        return None
    return {"position_id": found["open_position_id"], "quantity": found["open_quantity"],
            "avg_entry_price": found["open_avg_entry_price"]}


class OrderPath:
    def __init__(self, pool: "asyncpg.Pool", broker: BrokerClient, clock: Clock, agent_id: str, *,
                 held_cycle_start: "Callable[[], tuple | None] | None" = None) -> None:
        self.pool = pool
        # the cycle's start row when it is held still (Store.take_cycle_start): written by the write-ahead
        # statement itself, ahead of the order row that refers to it
        self.held_cycle_start = held_cycle_start
        self.broker = broker
        self.clock = clock
        self.agent_id = agent_id
        self.fills_recorded = 0          # fills this process has written (reconciliation reports its share)
        # write-ahead rows of this process not yet settled by the broker's answer (an unreachable broker, an
        # exception, a cancelled task): reconciliation looks them up by client_order_id
        self.unsettled: set[str] = set()

    async def next_client_order_id(self, cycle_id: uuid.UUID | None, symbol: str, side: OrderSide) -> str:
        prefix = make_client_order_id(self.agent_id, cycle_id, symbol, side, 0)[:-1]
        n = await self.pool.fetchval("SELECT count(*) FROM orders WHERE client_order_id LIKE $1 || '%'", prefix)
        return f"{prefix}{n + 1}"

    async def submit(self, *, cycle_id: uuid.UUID | None, symbol: str, side: OrderSide, quantity: int,
                     order_type: OrderType, intent: str, limit_price: Decimal | None = None,
                     stop_loss: Decimal | None = None, take_profit: Decimal | None = None,
                     client_order_id: str | None = None, stop_price: Decimal | None = None) -> OrderOutcome:
        # the next client order id is numbered in the write-ahead statement itself (one round trip, not two); its
        # form (at most 36 characters before the number) is checked with the first number
        prefix = None if client_order_id else make_client_order_id(self.agent_id, cycle_id, symbol, side, 0)[:-1]
        try:
            request = OrderRequest(client_order_id=client_order_id or f"{prefix}1", symbol=symbol, side=side,
                                   quantity=quantity, order_type=order_type, limit_price=limit_price,
                                   stop_price=stop_price)
        except InvalidRequest as exc:
            coid = client_order_id or await self.next_client_order_id(cycle_id, symbol, side)
            return OrderOutcome(coid, "rejected", symbol, side.value, quantity, reason=f"invalid order: {exc}")
        # 1. write-ahead (a sell names the open position it sells, looked up in the same statement)
        kill_point("before_write_ahead")
        start = self.held_cycle_start() if self.held_cycle_start is not None else None
        args = (self.agent_id, client_order_id, cycle_id, symbol, side.value, order_type.value, intent, quantity,
                limit_price, stop_loss, take_profit, self.clock.now(), stop_price, prefix)
        if start is None:
            coid = await self.pool.fetchval(_WRITE_AHEAD, *args)
        else:
            coid = await self.pool.fetchval(_WITH_CYCLE_START + _WRITE_AHEAD, *args, *start)
        if coid is None and client_order_id is None:
            # the number is taken: another process of this agent numbered the same id first, or another agent whose
            # id starts alike (client ids keep 12 characters of it) has one: numbered again over every agent
            for _ in range(3):
                explicit = await self.next_client_order_id(cycle_id, symbol, side)
                coid = await self.pool.fetchval(_WRITE_AHEAD, args[0], explicit, *args[2:])
                if coid is not None:
                    break
            else:
                raise RuntimeError(f"could not number an order after {prefix}: every id tried was taken")
        coid = coid or client_order_id         # an id given and already written: the broker answers for it
        if coid != request.client_order_id:
            request = replace(request, client_order_id=coid)
        self.unsettled.add(coid)
        log.info("order %s written ahead: %s %d %s %s", coid, side.value, quantity, symbol, order_type.value,
                 extra={})
        kill_point("after_write_ahead")
        # 2. the broker
        try:
            result = await self.broker.place_order(request)
            kill_point("after_broker_call")
        except OrderRejected as exc:
            await self._set_status(coid, "rejected", reason=exc.reason)
            log.warning("order %s rejected by broker: %s", coid, exc.reason)
            return OrderOutcome(coid, "rejected", symbol, side.value, quantity, reason=exc.reason)
        except BrokerUnavailable as exc:
            log.error("order %s: broker unavailable (%s); left pending for reconciliation", coid, exc)
            return OrderOutcome(coid, "pending_submit", symbol, side.value, quantity,
                                reason=f"broker unavailable: {exc}; the order will be reconciled by client id")
        except InvalidRequest as exc:
            await self._set_status(coid, "rejected", reason=f"invalid request: {exc}")
            log.error("order %s invalid: %s", coid, exc)
            return OrderOutcome(coid, "rejected", symbol, side.value, quantity, reason=str(exc))
        # 3. the answer, and any fills
        outcome = await self.record_result(result)
        kill_point("after_fills_recorded")
        return outcome

    async def sync(self, client_order_id: str) -> OrderOutcome | None:
        """Ask the broker about an order we know and record what changed (status, new fills)."""
        try:
            result = await self.broker.get_order_by_client_id(client_order_id)
        except BrokerError as exc:
            log.warning("sync %s: %s", client_order_id, exc)
            return None
        if result is None:
            return None
        return await self.record_result(result)

    async def sync_open_orders(self, working=None) -> list[OrderOutcome]:
        """Record what changed at the broker for our working orders ((client_order_id, status, filled_quantity)
        rows, oldest first: `working` when the caller has just read them); the outcomes of those recorded."""
        rows = working if working is not None else await self.pool.fetch(
            f"SELECT client_order_id, status, filled_quantity FROM orders WHERE agent_id = $1 AND status IN {WORKING} "
            f"ORDER BY order_id", self.agent_id)
        out = []
        if not rows:
            return out
        try:
            at_broker = {o.client_order_id: o for o in await self.broker.get_orders(open_only=True)}
        except BrokerError:
            at_broker = {}
        for coid, status, filled in rows:
            b = at_broker.get(coid)
            if b is not None and b.status.value == status and b.filled_quantity == filled:
                continue                       # open at the broker as we have it: nothing to record
            o = await self.sync(coid)
            if o is not None:
                out.append(o)
        return out

    async def cancel(self, client_order_id: str) -> bool:
        ok = await self.broker.cancel_order(client_order_id)
        await self.sync(client_order_id)
        return ok

    async def record_result(self, result: OrderResult) -> OrderOutcome:
        """Bring our orders row and positions in line with the broker's view of one order.

        In the common case (one fill, no fee beyond what it carries, opening, reducing or closing a position) that is
        one statement (_RECORD_ONE). Otherwise four or more between BEGIN and COMMIT: the order locked with its
        first fill recorded and the open position locked, then the position's change with the order's new row.
        When another process is recording the same order, this waits for it and records every fill after it
        (_LOCK_ORDER_RECORD_FILL)."""
        try:
            return await self._record(result, wait=False)
        except asyncpg.LockNotAvailableError:
            log.info("order %s is being recorded by another process: waiting for it", result.client_order_id)
            return await self._record(result, wait=True)

    async def _record(self, result: OrderResult, *, wait: bool) -> OrderOutcome:
        fills = result.fills
        if not wait and len(fills) == 1 and result.fees <= fills[0].fee:
            outcome = await self._record_one(result)
            if outcome is not None:
                return outcome
        async with self.pool.acquire() as conn, conn.transaction():
            if fills and not wait:
                f = fills[0]
                row = await conn.fetchrow(_LOCK_ORDER_RECORD_FILL, result.client_order_id, self.agent_id, f.fill_id,
                                          f.symbol, f.side.value, f.quantity, f.price, f.fee, f.timestamp)
            else:
                row = await conn.fetchrow(_LOCK_ORDER, result.client_order_id)
            if row is None:
                raise KeyError(f"no orders row for {result.client_order_id}")
            book_fees = _fees_beyond_fills(row, result.fees, fills)       # booked after the fills, apart
            attached = None                 # the position the fills went to (set on the order with its status)
            last: tuple[str, tuple] | None = None     # the last fill's position change, sent with the order's row
            for n, fill in enumerate(fills):
                if n or wait:
                    if last is not None:      # the earlier fill's change first: this fill's read sees it
                        attached = await conn.fetchval(last[0], *last[1]) or attached
                        last = None
                    found = await conn.fetchrow(_RECORD_FILL, self.agent_id, row["order_id"], fill.fill_id,
                                                fill.symbol, fill.side.value, fill.quantity, fill.price, fill.fee,
                                                fill.timestamp, row["symbol"])
                else:
                    found = row
                if found["inserted"] is None:
                    continue                  # recorded before
                self.fills_recorded += 1
                change = await self._position_change(conn, row, _open_position(found), fill.side, fill.quantity,
                                                     fill.price, fill.fee, fill.timestamp)
                if isinstance(change, tuple):
                    last = change
                else:
                    attached = change or attached
            if last is not None and book_fees:
                attached = await conn.fetchval(last[0], *last[1]) or attached
                last = None
            if book_fees:
                await self._book_order_level_fees(conn, row, result.fees, attached)
            old = OrderStatus(row["status"])
            new = result.status
            args = (row["order_id"], new.value, result.broker_order_id, result.filled_quantity, result.avg_fill_price,
                    result.fees, result.reason, result.submitted_at, self.clock.now(), attached)
            if last is None:
                position_id = await conn.fetchval(_SET_ORDER_ALONE, *args)
            else:                             # the last fill's position change and the order's row, one statement
                position_id = await conn.fetchval(_WITH_SET_ORDER[last[0]], *args, *last[1])
        return self._recorded(result, old, position_id)

    async def _record_one(self, result: OrderResult) -> OrderOutcome | None:
        """The common answer in one statement (_RECORD_ONE); None, with nothing written, when it needs the general
        path."""
        f = result.fills[0]
        new = result.status
        row = await self.pool.fetchrow(_RECORD_ONE, result.client_order_id, self.agent_id, f.fill_id, f.symbol,
                                       f.side.value, f.quantity, f.price, f.fee, f.timestamp, new.value,
                                       result.broker_order_id, result.filled_quantity, result.avg_fill_price,
                                       result.fees, result.reason, result.submitted_at, self.clock.now())
        if row is None:
            raise KeyError(f"no orders row for {result.client_order_id}")
        if row["change"] is None:
            return None
        if row["inserted"]:
            self.fills_recorded += 1
        return self._recorded(result, OrderStatus(row["status"]), row["position_id"])

    def _recorded(self, result: OrderResult, old: OrderStatus, position_id: int | None) -> OrderOutcome:
        """The answer recorded (the order's row was `old` before it): logged, settled, as an outcome."""
        new = result.status
        if not can_transition(old, new):
            log.error("order %s: broker reports %s after %s; keeping the broker's view", result.client_order_id,
                      new.value, old.value)
        self.unsettled.discard(result.client_order_id)
        if result.fills and result.filled_quantity:
            log.info("order %s %s: %d/%d filled at %s", result.client_order_id, new.value, result.filled_quantity,
                     result.quantity, result.avg_fill_price)
        return OrderOutcome(result.client_order_id, new.value, result.symbol, result.side.value, result.quantity,
                            result.filled_quantity, result.avg_fill_price, result.fees, result.reason, position_id)

    async def _book_order_level_fees(self, conn, order, order_fees: Decimal, attached: int | None) -> None:
        """Fees the broker reports for the whole order beyond what its fills carried (_fees_beyond_fills) go onto the
        position once (net P&L stays net of every fee even with brokers that have no per-fill fee)."""
        now = await conn.fetchrow("SELECT (SELECT coalesce(sum(fee), 0) FROM fills WHERE order_id = o.order_id) "
                                  "AS carried, fees_booked, position_id FROM orders o WHERE order_id = $1",
                                  order["order_id"])
        due = max(order_fees - now["carried"], Decimal(0))
        delta = due - now["fees_booked"]
        if delta == 0:
            return
        position_id = attached if attached is not None else now["position_id"]
        if position_id is None:
            return                            # no fill yet: nothing to charge it to; booked when one arrives
        await conn.execute("UPDATE positions SET fees = fees + $2, realized_pnl = realized_pnl - $2 "
                           "WHERE position_id = $1", position_id, delta)
        await conn.execute("UPDATE orders SET fees_booked = $2 WHERE order_id = $1", order["order_id"], due)

    async def _position_change(self, conn, order, pos, side: OrderSide, qty: int, price: Decimal, fee: Decimal,
                               at) -> tuple[str, tuple] | int | None:
        """What one new fill does to our positions (`pos`: the symbol's open position, locked, or None): a statement
        and its arguments, RETURNING the position it went to, for the caller to send; or, for a sell fill that found
        no open position, done here already: the position it went to, or None."""
        if side is OrderSide.BUY:
            if pos is None:
                return _OPEN, (self.agent_id, order["symbol"], qty, price, order["stop_loss"], order["take_profit"],
                               fee, at)
            new_qty = pos["quantity"] + qty
            avg = ((pos["avg_entry_price"] * pos["quantity"] + price * qty) / new_qty).quantize(PRICE_Q)
            return _ADD, (pos["position_id"], new_qty, avg, fee, order["stop_loss"], order["take_profit"])
        if pos is None:
            return await self._late_sell_fill(conn, order, qty, price, fee)
        sold = min(qty, pos["quantity"])
        remaining = pos["quantity"] - sold
        pnl = (price - pos["avg_entry_price"]) * sold - fee
        if remaining > 0:
            return _REDUCE, (pos["position_id"], remaining, pnl, fee)
        return _CLOSE, (pos["position_id"], at, pnl, fee, order["intent"])

    async def _late_sell_fill(self, conn, order, qty: int, price: Decimal, fee: Decimal) -> int | None:
        """A sell fill whose position reconciliation already closed (the broker had sold it before this fill was
        recorded here): its P&L goes onto that position, never lost."""
        closed = await conn.fetchrow(
            "SELECT position_id, avg_entry_price FROM positions WHERE agent_id = $1 AND symbol = $2 "
            "AND status = 'closed' AND exit_reason = 'closed_at_broker' ORDER BY closed_at DESC, position_id DESC "
            "LIMIT 1 FOR UPDATE", self.agent_id, order["symbol"])
        if closed is None:
            log.error("sell fill for %s with no open position recorded; reconciliation will correct positions",
                      order["symbol"])
            return None
        pnl = (price - closed["avg_entry_price"]) * qty - fee
        await conn.execute("UPDATE positions SET realized_pnl = realized_pnl + $2, fees = fees + $3, exit_reason = $4 "
                           "WHERE position_id = $1", closed["position_id"], pnl, fee, order["intent"])
        log.warning("sell fill for %s recorded after reconciliation closed the position: P&L %s booked on it",
                    order["symbol"], pnl)
        return closed["position_id"]

    async def _set_status(self, coid: str, status: str, *, reason: str | None = None) -> None:
        await self.pool.execute("UPDATE orders SET status = $2, reason = coalesce($3, reason), updated_at = $4 "
                                "WHERE client_order_id = $1", coid, status, reason, self.clock.now())
        self.unsettled.discard(coid)
