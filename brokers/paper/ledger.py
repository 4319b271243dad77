"""The paper account's books in SQL: the transaction holding the account lock (AccountLock); a new order placed with
what it took on arrival, and a later fill written into its order, the cash and the position, each in one statement
(in that transaction); the account read in one statement; an order read back with its fills in one statement."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from core.errors import BrokerUnavailable
from core.orders import Fill, OrderResult, OrderSide, OrderStatus, OrderType

# The account's open buy orders as (symbol, quantity left, limit price) rows: the cash they hold back
# (PaperBroker._reserve). A select-list item over `paper_accounts a`.
OPEN_BUYS = """ARRAY(SELECT (symbol, quantity - filled_quantity, limit_price) FROM paper_orders
                      WHERE agent_id = a.agent_id AND side = 'buy'
                        AND status IN ('submitted', 'partially_filled')) AS buys"""


# Whether any order of the account rests (to be matched first): a select-list item over `paper_accounts a`.
RESTING = ("EXISTS (SELECT 1 FROM paper_orders WHERE agent_id = a.agent_id AND status IN ('submitted', "
           "'partially_filled')) AS resting")

# Cash, open buys and holdings in one read (one snapshot), and whether any order rests (to be matched first).
ACCOUNT = ("SELECT a.cash, " + OPEN_BUYS + ", ARRAY(SELECT (symbol, quantity, avg_price) FROM paper_positions "
           "WHERE agent_id = a.agent_id ORDER BY symbol) AS positions, " + RESTING + " "
           "FROM paper_accounts a WHERE a.agent_id = $1")


# One holding ($2) with whether any order rests, in one read: quantity and avg_price NULL when none is held.
POSITION = ("SELECT " + RESTING + ", p.quantity, p.avg_price FROM paper_accounts a LEFT JOIN paper_positions p "
            "ON p.agent_id = a.agent_id AND p.symbol = $2 WHERE a.agent_id = $1")


# Whether client order id $2 is known to the account $1 already (a resubmission): a select-list item.
KNOWN = ("EXISTS (SELECT 1 FROM paper_orders WHERE agent_id = $1 AND client_order_id = $2) AS known")


def books_for(order) -> tuple[str, tuple]:
    """What the venue reads of the books before accepting `order` (PaperBroker._rejection): select-list items over
    `paper_accounts a` ($1 the account) and their arguments from $2. A buy: the cash, the open buys and whether the
    order is known; a sell: the holding, what open sells already hold, and whether it is known."""
    if order.side is OrderSide.BUY:
        return "a.cash, " + OPEN_BUYS + ", " + KNOWN, (order.client_order_id,)
    return ("""(SELECT coalesce(sum(quantity), 0) FROM paper_positions WHERE agent_id = $1 AND symbol = $2) AS held,
               (SELECT coalesce(sum(quantity - filled_quantity), 0) FROM paper_orders WHERE agent_id = $1
                 AND symbol = $2 AND side = 'sell' AND status IN ('submitted', 'partially_filled')) AS pending, """
            + KNOWN.replace("$2", "$3"), (order.symbol, order.client_order_id))


async def read_books(conn, account_id: str, order):
    """`books_for(order)` read alone."""
    items, args = books_for(order)
    return await conn.fetchrow("SELECT " + items + " FROM paper_accounts a WHERE a.agent_id = $1", account_id, *args)


def sql_literal(text: str) -> str:
    """`text` as an SQL string literal (standard_conforming_strings, on since PostgreSQL 9.1: only ' is special)."""
    if "\x00" in text:
        raise ValueError("text with a NUL character has no SQL literal")
    return "'" + text.replace("'", "''") + "'"


class AccountLock:
    """A transaction holding the paper account's row lock, the venue's one way to change the books: BEGIN and the
    lock in one message (the simple protocol, the account id as a literal), then `after_lock(conn)`, the first
    statement to start once the lock is granted (so it sees every change made under the lock before); `async with`
    gives (connection, what after_lock returned). COMMIT on a clean exit, else ROLLBACK; the connection is released
    either way."""

    def __init__(self, pool, account_id: str, after_lock) -> None:
        self.pool, self.after_lock = pool, after_lock
        self.begin = "BEGIN; SELECT 1 FROM paper_accounts WHERE agent_id = " + sql_literal(account_id) + " FOR UPDATE"

    async def __aenter__(self):
        try:                               # LanePool.take: its lane when free (no acquire and release around it)
            self.conn = await (self.pool.take() if hasattr(self.pool, "take") else self.pool.acquire())
        except OSError as exc:
            raise BrokerUnavailable(f"paper broker: database unavailable: {exc}") from exc
        try:
            await self.conn.execute(self.begin)
            return self.conn, await self.after_lock(self.conn)
        except BaseException:
            await self._end("ROLLBACK")
            raise

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        await self._end("COMMIT" if exc_type is None else "ROLLBACK")
        return False

    async def _end(self, how: str) -> None:
        try:
            if self.conn.is_in_transaction():
                await self.conn.execute(how)
        finally:
            await (self.pool.give(self.conn) if hasattr(self.pool, "give") else self.pool.release(self.conn))


# An order's fills as arrays, joined to the order row `o`.
_FILLS_OF = """CROSS JOIN LATERAL (SELECT array_agg(fill_id ORDER BY filled_at, fill_id) AS fill_ids,
                               array_agg(quantity ORDER BY filled_at, fill_id) AS fill_quantities,
                               array_agg(price ORDER BY filled_at, fill_id) AS fill_prices,
                               array_agg(fee ORDER BY filled_at, fill_id) AS fill_fees,
                               array_agg(filled_at ORDER BY filled_at, fill_id) AS fill_times
                        FROM paper_fills pf
                        WHERE pf.agent_id = o.agent_id AND pf.client_order_id = o.client_order_id) f"""
_WITH_FILLS = "SELECT o.*, f.fill_ids, f.fill_quantities, f.fill_prices, f.fill_fees, f.fill_times"

# An order with its fills in one statement (one snapshot): append "AND ..." conditions and an ORDER BY.
RESULTS = f"""{_WITH_FILLS}
    FROM paper_orders o
    {_FILLS_OF}
    WHERE o.agent_id = $1 """

# An order's status after a match.
SET_STATUS = """UPDATE paper_orders SET status = $3, matched_until = $4, reason = $5, updated_at = $6, triggered_at = $7
    WHERE agent_id = $1 AND client_order_id = $2"""


@dataclass
class PaperFill:
    quantity: int
    price: Decimal
    at: datetime


# A fill's books in one statement: the fill (numbered after the order's earlier ones), the order's totals, the
# cash, and the position ({position}: a buy adds to it at the averaged price; a sell takes from it, deleting it when
# nothing is left; each CTE sees the same snapshot, so exactly one of the sell's two applies).
_FILL = """WITH fill AS (
        INSERT INTO paper_fills (fill_id, agent_id, client_order_id, symbol, side, quantity, price, fee, filled_at)
        SELECT $3 || '-F' || (count(*) + 1), $1, $2, $4, $5, $6, $7, $8, $9
        FROM paper_fills WHERE agent_id = $1 AND client_order_id = $2),
    ord AS (
        UPDATE paper_orders SET filled_quantity = filled_quantity + $6, fees = fees + $8,
            avg_fill_price = round(((coalesce(avg_fill_price, 0) * filled_quantity) + $7::numeric * $6)
                                   / (filled_quantity + $6), 6)
        WHERE agent_id = $1 AND client_order_id = $2),
    {position},
    cash AS (UPDATE paper_accounts SET cash = cash + $10, updated_at = now() WHERE agent_id = $1)
    SELECT 1"""
# ($1 account, $4 symbol, $6 quantity, $7 price, in both statements that take them)
_BUY_POSITION = """pos AS (
        INSERT INTO paper_positions (agent_id, symbol, quantity, avg_price) VALUES ($1, $4, $6, $7)
        ON CONFLICT (agent_id, symbol) DO UPDATE SET
            avg_price = round((paper_positions.avg_price * paper_positions.quantity + $7 * $6)
                              / (paper_positions.quantity + $6), 6),
            quantity = paper_positions.quantity + $6)"""
_SELL_POSITION = """gone AS (
        DELETE FROM paper_positions WHERE agent_id = $1 AND symbol = $4 AND quantity <= $6),
    pos AS (
        UPDATE paper_positions SET quantity = quantity - $6 WHERE agent_id = $1 AND symbol = $4 AND quantity > $6)"""
_BUY = _FILL.format(position=_BUY_POSITION)
_SELL = _FILL.format(position=_SELL_POSITION)


# A new order placed, with what it took on arrival, in one statement: the next broker order number and the cash in
# one update of the account, the order row as it stands after arrival ($6 filled, $8 its fee, $7 the price), and with
# a fill ({fill}: _ARRIVAL_FILL) the fill and the position; the order comes back with its fills as RESULTS reads them.
# $1 account, $2 client order id, $3 order type, $4 symbol, $5 side, $9 now, $10 cash change, $11 quantity,
# $12 limit price, $13 stop price, $14 status, $15 matched until.
_PLACE = """WITH seq AS (UPDATE paper_accounts SET order_seq = order_seq + 1, cash = cash + $10, updated_at = now()
                 WHERE agent_id = $1 RETURNING order_seq),
    o AS (INSERT INTO paper_orders (agent_id, client_order_id, broker_order_id, symbol, side, order_type, quantity,
              limit_price, stop_price, status, submitted_at, matched_until, updated_at, filled_quantity, fees,
              avg_fill_price)
          SELECT $1, $2, 'PAPER-' || $1 || '-' || seq.order_seq, $4, $5, $3, $11, $12, $13, $14, $9, $15, $9, $6, $8,
                 CASE WHEN $6 > 0 THEN round($7::numeric, 6) END
          FROM seq RETURNING *){fill}
    SELECT o.*{arrays} FROM o"""
_ARRIVAL_FILL = """,
    fill AS (
        INSERT INTO paper_fills (fill_id, agent_id, client_order_id, symbol, side, quantity, price, fee, filled_at)
        SELECT o.broker_order_id || '-F1', $1, $2, $4, $5, $6, $7, $8, $9 FROM o RETURNING *),
    {position}"""
_ARRIVAL_ARRAYS = """, (SELECT array_agg(fill_id) FROM fill) AS fill_ids,
        (SELECT array_agg(quantity) FROM fill) AS fill_quantities, (SELECT array_agg(price) FROM fill) AS fill_prices,
        (SELECT array_agg(fee) FROM fill) AS fill_fees, (SELECT array_agg(filled_at) FROM fill) AS fill_times"""
_PLACE_RESTING = _PLACE.format(fill="", arrays="")
_PLACE_FILLED = {side: _PLACE.format(fill=_ARRIVAL_FILL.format(position=position), arrays=_ARRIVAL_ARRAYS)
                 for side, position in (("buy", _BUY_POSITION), ("sell", _SELL_POSITION))}


def _cash_change(side: str, fill: PaperFill, fee: Decimal) -> Decimal:
    """What a fill does to the cash: a buy pays its value and fee, a sell receives its value less the fee."""
    value = fill.price * fill.quantity
    return -(value + fee) if side == "buy" else value - fee


async def place(conn, account_id: str, order, now: datetime, fill: PaperFill | None, fee: Decimal, status: str,
                matched_until: datetime):
    """Insert `order` (an OrderRequest the venue accepted) as it stands after arrival (`fill`: what it took at once,
    with its `fee`), with the books of that fill, in one statement (one round trip); returns the order's row with
    its fills, for to_result."""
    side = order.side.value
    if fill is None:
        sql, qty, price, fee, cash_delta = _PLACE_RESTING, 0, None, Decimal(0), Decimal(0)
    else:
        sql, qty, price, cash_delta = _PLACE_FILLED[side], fill.quantity, fill.price, _cash_change(side, fill, fee)
    return await conn.fetchrow(sql, account_id, order.client_order_id, order.order_type.value, order.symbol, side,
                               qty, price, fee, now, cash_delta, order.quantity, order.limit_price, order.stop_price,
                               status, matched_until)


async def record_fill(conn, account_id: str, row, fill: PaperFill, fee: Decimal) -> None:
    """The fill, the order's totals, the cash and the position, in one statement (one round trip)."""
    side = row["side"]
    await conn.execute(_BUY if side == "buy" else _SELL, account_id, row["client_order_id"], row["broker_order_id"],
                       row["symbol"], side, fill.quantity, fill.price, fee, fill.at, _cash_change(side, fill, fee))


def to_result(row) -> OrderResult:
    """A `RESULTS` or `place` row (or an order row with no fills) as the port's `OrderResult`."""
    side = OrderSide(row["side"])
    coid = row["client_order_id"]
    fills = zip(row.get("fill_ids") or (), row.get("fill_quantities") or (), row.get("fill_prices") or (),
                row.get("fill_fees") or (), row.get("fill_times") or ())       # none on a row just inserted
    return OrderResult(
        client_order_id=coid, broker_order_id=row["broker_order_id"], symbol=row["symbol"],
        side=side, order_type=OrderType(row["order_type"]), quantity=row["quantity"],
        limit_price=row["limit_price"], status=OrderStatus(row["status"]), filled_quantity=row["filled_quantity"],
        avg_fill_price=row["avg_fill_price"], fees=row["fees"], reason=row["reason"],
        submitted_at=row["submitted_at"], updated_at=row["updated_at"], stop_price=row["stop_price"],
        fills=tuple(Fill(fill_id=fid, client_order_id=coid, symbol=row["symbol"], side=side, quantity=qty,
                         price=price, fee=fee, timestamp=at) for fid, qty, price, fee, at in fills))
