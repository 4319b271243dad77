"""The SQL of orders, positions, decisions and the trading state, in one place.

`WORKING` is the one "working order" status set (an order that may still change the account); every query that
asks for working orders embeds it. `LATEST_STATE` is the one rule for the recorded trading state.
"""
from __future__ import annotations

import asyncio
import json
import logging
import operator
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from core.clock import Clock
from core.orders import WORKING_STATUSES
from core.state import TradingState

log = logging.getLogger("catalyst.store")

# The working statuses as an SQL list, for `status IN (...)`.
WORKING = "(" + ", ".join(f"'{s.value}'" for s in sorted(WORKING_STATUSES, key=lambda s: s.value)) + ")"

# The latest state recorded for agent $1 (NULL when none): a scalar subquery other statements embed.
LATEST_STATE = "SELECT state FROM agent_state WHERE agent_id = $1 ORDER BY set_at DESC, state_id DESC LIMIT 1"


# Realised P&L (net of fees) since $2, the trading day's start: positions closed since, and positions opened since
# (their entry fees, any partial sells). The safety gate's daily loss and the live report both count it this way.
# (Two sums, one per status: each reads only its own rows through its own index, whatever the plan; one OR'd filter
# read every position the agent ever had under a generic plan.)
REALIZED_SINCE = """SELECT (SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1 AND status = 'closed'
                               AND closed_at >= $2)
                     + (SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1 AND status = 'open'
                               AND opened_at >= $2)"""


def state_from(stored: str | None) -> TradingState:
    """The state a LATEST_STATE value means: ACTIVE until something else is recorded."""
    return TradingState[stored] if stored else TradingState.ACTIVE


# orjson's options for to_json: datetimes and dataclasses through _default (ISO text; a to_dict where there is one),
# keys that are not text written as text, as json does.
_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def to_json(data: Any) -> str:
    """Compact JSON with Decimal as strings and datetimes as ISO text (what the model and jsonb columns get).

    orjson writes it (~5x faster than json here, on every tool result and audit row): text as UTF-8 rather than
    \\u escapes, and a float that is not a number (NaN, infinity) as null, which JSON and jsonb accept (json wrote
    `NaN`, which neither does). Text that is not valid Unicode (an unpaired surrogate) cannot be UTF-8: such data is
    written by json, escaped."""
    try:
        return orjson.dumps(data, default=_default, option=_ORJSON).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, default=_default, separators=(",", ":"))


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


# The audit rows a Store holds until its next flush, as the CTEs of one statement (parameters from $n on).
def _decisions_cte(n: int) -> str:
    return f"""d AS (INSERT INTO decisions (decision_id, agent_id, cycle_id, symbol, action, engine, reasoning,
                   verdict, details, model, input_tokens, output_tokens, cost_usd, created_at) OVERRIDING SYSTEM VALUE
               SELECT i, a, c, s, act, e, r, v::jsonb, dt::jsonb, m, it, ot, cost, at
               FROM unnest(${n}::bigint[], ${n + 1}::text[], ${n + 2}::uuid[], ${n + 3}::text[], ${n + 4}::text[],
                           ${n + 5}::text[], ${n + 6}::text[], ${n + 7}::text[], ${n + 8}::text[], ${n + 9}::text[],
                           ${n + 10}::bigint[], ${n + 11}::bigint[], ${n + 12}::numeric[], ${n + 13}::timestamptz[])
                    AS u(i, a, c, s, act, e, r, v, dt, m, it, ot, cost, at))"""


def _patterns_cte(n: int) -> str:
    return f"""p AS (INSERT INTO patterns (agent_id, cycle_id, symbol, pattern, direction, confidence, levels,
                   bar_start, bar_end, detected_at)
               SELECT a, c, s, pat, dir, conf, lv::jsonb, bs, be, at
               FROM unnest(${n}::text[], ${n + 1}::uuid[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::text[],
                           ${n + 5}::numeric[], ${n + 6}::text[], ${n + 7}::timestamptz[], ${n + 8}::timestamptz[],
                           ${n + 9}::timestamptz[]) AS u(a, c, s, pat, dir, conf, lv, bs, be, at))"""


def _statuses_cte(n: int) -> str:
    # every position's status row, high-water marks raised with them (positions still open)
    return f"""st AS (
               INSERT INTO position_monitor_status (position_id, agent_id, symbol, last_price, unrealized_pnl,
                   pnl_pct, high_water_mark, signal, signal_strength, recommendation, reason, checked_at)
               SELECT * FROM unnest(${n}::bigint[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::numeric[],
                                    ${n + 4}::numeric[], ${n + 5}::numeric[], ${n + 6}::numeric[], ${n + 7}::text[],
                                    ${n + 8}::text[], ${n + 9}::text[], ${n + 10}::text[], ${n + 11}::timestamptz[])
               ON CONFLICT (position_id) DO UPDATE SET last_price = EXCLUDED.last_price,
                   unrealized_pnl = EXCLUDED.unrealized_pnl, pnl_pct = EXCLUDED.pnl_pct,
                   high_water_mark = EXCLUDED.high_water_mark, signal = EXCLUDED.signal,
                   signal_strength = EXCLUDED.signal_strength, recommendation = EXCLUDED.recommendation,
                   reason = EXCLUDED.reason, checked_at = EXCLUDED.checked_at
               RETURNING position_id, high_water_mark),
           hwm AS (
               UPDATE positions p SET high_water_mark = st.high_water_mark FROM st
               WHERE p.position_id = st.position_id AND p.status = 'open'
                 AND (p.high_water_mark IS NULL OR st.high_water_mark > p.high_water_mark))"""


def _raises_cte(n: int) -> str:
    # held high-water marks ($n ids, $n+1 marks), each from a pass that saw its position open: raised even if
    # the position has closed since, as a write at the end of that pass would have
    return f"""hwm_held AS (
               UPDATE positions p SET high_water_mark = u.mark
               FROM unnest(${n}::bigint[], ${n + 1}::numeric[]) AS u(id, mark)
               WHERE p.position_id = u.id AND (p.high_water_mark IS NULL OR u.mark > p.high_water_mark))"""


def _held_statuses_cte(n: int) -> str:
    # held status rows: the table keeps each position's latest (its high-water marks go in hwm_held)
    cte = _statuses_cte(n)
    return cte[:cte.index("RETURNING position_id, high_water_mark)")] + "RETURNING position_id)"


_CYCLE_START = "INSERT INTO trading_cycles (cycle_id, agent_id, mode, started_at) VALUES ($1, $2, $3, $4)"


def cycle_start_cte(n: int) -> str:
    return (f"cs AS (INSERT INTO trading_cycles (cycle_id, agent_id, mode, started_at) "
            f"VALUES (${n}, ${n + 1}, ${n + 2}, ${n + 3}) ON CONFLICT (cycle_id) DO NOTHING)")


def _cycle_ends_cte(n: int) -> str:
    # held cycle end rows, each the whole row (its start row may never have been written): upserts
    cols = ", ".join(f"${n + i}::{t}[]" for i, t in enumerate(_CYCLE_END_TYPES))
    return f"""ce AS (
               INSERT INTO trading_cycles (cycle_id, status, engine, finished_at, turns, input_tokens, output_tokens,
                   cache_write_tokens, cache_read_tokens, cost_usd, orders_placed, summary, error, agent_id, mode,
                   started_at)
               SELECT c, st, e, f, t, it, ot, cw, cr, cost, o, sm::jsonb, er, a, m, sa
               FROM unnest({cols}) AS u(c, st, e, f, t, it, ot, cw, cr, cost, o, sm, er, a, m, sa)
               ON CONFLICT (cycle_id) DO UPDATE SET status = EXCLUDED.status, engine = EXCLUDED.engine,
                   finished_at = EXCLUDED.finished_at, turns = EXCLUDED.turns, input_tokens = EXCLUDED.input_tokens,
                   output_tokens = EXCLUDED.output_tokens, cache_write_tokens = EXCLUDED.cache_write_tokens,
                   cache_read_tokens = EXCLUDED.cache_read_tokens, cost_usd = EXCLUDED.cost_usd,
                   orders_placed = EXCLUDED.orders_placed, summary = EXCLUDED.summary, error = EXCLUDED.error)"""


_CYCLE_END_TYPES = ("uuid", "text", "text", "timestamptz", "integer", "bigint", "bigint", "bigint", "bigint", "numeric",
                    "integer", "text", "text", "text", "text", "timestamptz")

DECISION_IDS = 64           # decision ids taken from the sequence at a time
# A sole writer's cycle end rows held before they are written (with the audit rows held meanwhile): about two
# sessions of the cron schedule's cycles in one statement rather than one statement a cycle.
CYCLE_ENDS_HELD = 32


class Store:
    """One agent's rows: orders, positions, decisions, trading state.

    Audit rows (decisions, patterns, position_monitor_status) are held and written together, in one statement,
    at the next flush: a cycle's with its end row (runtime/cycle.py), the monitor's with its pass's status rows,
    or (`hold_monitor`) with the next cycle's start row. `buffering` is set while a cycle runs; outside one, a
    decision is written at once. Each decision's id is taken from the sequence in advance (DECISION_IDS at a time),
    so a caller gets it before the row is written. Money-path rows (orders, fills, positions, cash) are never held.

    `reads`: where the agent's own rows are read (the pool, or runtime.lane_pool.SoleReads when this process is
    their only writer). `hold_monitor`: the monitor's status rows wait for the next flush (a process that is
    the only writer of its agent's rows: the rows read back are the held ones' high-water marks applied, see
    positions_to_monitor), and flushes are sent behind (`write_behind`, see flush; `settle` waits for them)."""

    def __init__(self, pool: "asyncpg.Pool", clock: Clock, agent_id: str, *, reads=None,
                 hold_monitor: bool = False) -> None:
        self.pool = pool
        self.reads = reads if reads is not None else pool
        self.clock = clock
        self.agent_id = agent_id
        self.hold_monitor = hold_monitor
        self.buffering = hold_monitor
        self._decisions: list[tuple] = []
        self._patterns: list[tuple] = []
        self._statuses: dict[int, tuple] = {}        # position_id -> its latest status row (held)
        self._ids: list[int] = []
        # position_id -> the highest high-water mark this store has held or written for it: the status rows'
        # write raises positions.high_water_mark to it (when higher), so a read from before that write, with this
        # applied, is what the database holds after it (and the write need not make `reads` ask again)
        self._high_water: dict[int, Decimal] = {}
        self._raises: dict[int, Decimal] = {}        # position_id -> held high-water mark to raise it to
        self._high_water_changes = 0                 # counts changes of _high_water
        # positions_to_monitor's last answer: (the rows read, _high_water_changes then, the rows with marks applied)
        self._monitored: tuple | None = None
        self._cycle_start: tuple | None = None       # a held trading_cycles start row (hold_cycle_start)
        self._cycle_ends: list[tuple] = []            # held whole cycle rows, ended (hold_cycle_end)
        # a sole writer's flushes are sent behind (see flush): the last one sent, and the statements of any that
        # failed, sent again by the next flush
        self.write_behind = hold_monitor
        self._behind: asyncio.Task | None = None
        self._unsent: list[tuple] = []

    # ------------------------------------------------------------------ the audit buffer
    @property
    def pending(self) -> int:
        """Audit rows held, not yet written."""
        return len(self._decisions) + len(self._patterns) + len(self._statuses) + len(self._cycle_ends)

    def held_high_water(self, position_id: int):
        """The high-water mark this store's status rows raise (or have raised) this position to (None: none)."""
        return self._high_water.get(position_id)

    def hold_cycle_start(self, cycle_id: uuid.UUID, mode: str, started_at) -> None:
        """Hold a cycle's start row until something needs it (write_cycle_start: a row that refers to the cycle)
        or the cycle's end row, an upsert, writes the whole row (a cycle that changes nothing costs one statement).
        Only where nobody else looks for running cycles of this agent (`hold_monitor`)."""
        self._cycle_start = (cycle_id, self.agent_id, mode, started_at)

    def hold_cycle_end(self, row: tuple) -> bool:
        """Hold an ended cycle's whole row (runtime/cycle.py's _END_UPSERT columns; its summary a dict) for a later
        flush, which writes it with the audit rows held meanwhile, in the same statement (their cycle ids refer to
        it). Its start row, held still, goes with it. Only where nobody else reads this agent's cycles while the
        process runs (`hold_monitor`: `settle` writes what is held). True: flush now (CYCLE_ENDS_HELD are held)."""
        if self._cycle_start is not None and self._cycle_start[0] == row[0]:
            self._cycle_start = None
        summary = row[11]
        self._cycle_ends.append((*row[:11], json.dumps(summary) if summary is not None else "{}", *row[12:]))
        return len(self._cycle_ends) >= CYCLE_ENDS_HELD

    def take_cycle_start(self) -> tuple | None:
        """The held cycle start row (cycle_id, agent_id, mode, started_at), no longer held: the caller writes it
        in its own statement, ahead of the row that refers to it (the order path's write-ahead)."""
        start, self._cycle_start = self._cycle_start, None
        return start

    async def write_cycle_start(self) -> None:
        """The held cycle start row, now (before an order or a scan result that refers to the cycle)."""
        if self._cycle_start is not None:
            start, self._cycle_start = self._cycle_start, None
            await self.write_apart(_CYCLE_START, *start)

    async def write_apart(self, sql: str, *args) -> None:
        """`sql` (it writes audit rows only, such as trading_cycles) alone, the held rows left held."""
        await getattr(self.pool, "execute_apart", self.pool.execute)(sql, *args)

    async def flush(self, sql: str | None = None, *args, ends_cycle: bool = False, wait: bool = False) -> None:
        """Write every held audit row, with `sql` ($1.. are `args`; "SELECT 1" when None; it writes audit rows
        only, such as trading_cycles) in the same statement; `ends_cycle`: `sql` is the held cycle's end row (an
        upsert, so it writes the start too). The rows are taken out of the buffer before the statement is sent, so
        a row recorded meanwhile (an exit beside the monitor's pass) waits for the next flush and none is sent twice;
        on a connection failure the rows taken go back to the buffer, ahead of any recorded meanwhile.

        With `write_behind` (a sole writer: nothing but this store reads what it holds) the statement is sent
        behind, unless `wait`: it runs on a connection of its own while the caller goes on (PostgreSQL writes the
        rows on one core while this process works on the other), each one after the one before; `settle` waits
        for them. A write sent behind that fails puts its rows back and keeps its statement for the next flush,
        which sends it first and raises if it fails again."""
        if self._unsent:
            await self._resend()
        parts, params = [], list(args)
        start = self._cycle_start
        taken = (self._decisions, self._patterns, self._statuses, self._raises, self._cycle_ends)
        self._decisions, self._patterns, self._statuses, self._raises, self._cycle_ends = [], [], {}, {}, []
        self._cycle_start = None
        if start is not None and not ends_cycle:
            parts.append(cycle_start_cte(len(params) + 1))
            params.extend(start)
        decisions, patterns, statuses, raises, ends = taken
        for rows, make in ((ends, _cycle_ends_cte), (decisions, _decisions_cte), (patterns, _patterns_cte),
                           (list(statuses.values()), _held_statuses_cte if self.hold_monitor else _statuses_cte),
                           (list(raises.items()), _raises_cte)):
            if rows:
                parts.append(make(len(params) + 1))
                params.extend(list(c) for c in zip(*rows))
        if not parts and sql is None:
            return
        if self.write_behind and not wait:
            before = self._behind
            self._behind = asyncio.get_running_loop().create_task(
                self._send_behind(before, parts, params, taken, start, sql, args, ends_cycle))
            return
        await self._send(parts, params, taken, start, sql, args, ends_cycle)

    async def _send(self, parts: list, params: list, taken: tuple, start: tuple | None, sql: str | None,
                    args: tuple, ends_cycle: bool, behind: bool = False) -> None:
        decisions, patterns, statuses, _, ends = taken
        # audit rows change nothing a SoleReads query reads; status rows raise positions' high-water marks, which
        # the readers of those take from held_high_water as well
        run = getattr(self.pool, "execute_behind" if behind else "execute_apart", self.pool.execute)
        try:
            if not parts:
                await run(sql, *args)
                return
            await run("WITH " + ",\n".join(parts) + "\n" + (sql if sql is not None else "SELECT 1"), *params)
        except asyncpg.PostgresError as exc:
            if not parts:                  # the caller's statement alone: its error is the caller's
                self._put_back(taken, start)
                raise
            # a row the server refuses would refuse every later flush too: the rows of this statement are dropped
            # (said so, loudly), the statement they rode with runs on its own
            held = len(decisions) + len(patterns) + len(statuses)
            log.error("%d audit rows of %s could not be written and are dropped: %s: %s", held, self.agent_id,
                      type(exc).__name__, exc)
            if start is not None and not ends_cycle:
                self._cycle_start = self._cycle_start or start
                await self.write_cycle_start()
            if ends:                       # the cycles themselves are recorded, alone
                await run("WITH " + _cycle_ends_cte(1) + "\nSELECT 1", *(list(c) for c in zip(*ends)))
            if sql is not None:
                await self.pool.execute(sql, *args)
        except BaseException:
            self._put_back(taken, start)
            raise

    async def _send_behind(self, before: "asyncio.Task | None", parts: list, params: list, taken: tuple,
                           start: tuple | None, sql: str | None, args: tuple, ends_cycle: bool) -> None:
        if before is not None:
            await asyncio.wait([before])           # in order; its failure is its own (kept, see below)
        try:
            await self._send(parts, params, taken, start, sql, args, ends_cycle, behind=True)
        except asyncpg.PostgresError as exc:       # the server refused the statement: it would refuse it again
            log.error("a statement of %s sent behind was refused and is dropped: %s: %s", self.agent_id,
                      type(exc).__name__, exc)
        except Exception as exc:                   # its rows are back in the buffer; its statement waits here
            if sql is not None:
                self._unsent.append((sql, args))
            log.error("audit rows of %s sent behind were not written (%s: %s); the next flush sends them again",
                      self.agent_id, type(exc).__name__, exc)

    async def _resend(self) -> None:
        """The statements of writes sent behind that failed (their rows went back to the buffer), in order."""
        while self._unsent:
            sql, args = self._unsent[0]
            try:
                await self.write_apart(sql, *args)
            except asyncpg.PostgresError:
                self._unsent.pop(0)                # refused: sending it again would be refused again
                raise
            self._unsent.pop(0)

    async def settle(self) -> None:
        """Every held row written and every write sent behind finished (or the failure raised): before this
        process reads the audit rows it wrote, and before its pool closes."""
        while self._behind is not None:
            task = self._behind
            await asyncio.wait([task])
            if self._behind is task:
                self._behind = None
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        await self.flush(wait=True)

    def _put_back(self, taken: tuple, start: tuple | None) -> None:
        """Rows a failed write had taken, back in the buffer ahead of those recorded since (a status row recorded
        since is the newer one; a high-water mark keeps the higher)."""
        decisions, patterns, statuses, raises, ends = taken
        self._cycle_ends = ends + self._cycle_ends
        self._decisions = decisions + self._decisions
        self._patterns = patterns + self._patterns
        self._statuses = {**statuses, **self._statuses}
        for pid, mark in raises.items():
            if pid not in self._raises or mark > self._raises[pid]:
                self._raises[pid] = mark
        self._cycle_start = self._cycle_start or start

    async def _decision_id(self) -> int:
        if not self._ids:
            sql = ("SELECT array_agg(nextval(pg_get_serial_sequence('decisions', 'decision_id'))) "
                   "FROM generate_series(1, $1)")
            apart = getattr(self.pool, "read", None)        # a sequence: nothing a SoleReads query reads
            self._ids = list(await (apart("fetchval", sql, DECISION_IDS) if apart else
                                    self.pool.fetchval(sql, DECISION_IDS)))
            self._ids.sort(reverse=True)
        return self._ids.pop()

    async def _decision(self, row: tuple) -> int:
        decision_id = await self._decision_id()
        self._decisions.append((decision_id, self.agent_id, *row))
        if not self.buffering:
            await self.flush()
        return decision_id

    # ------------------------------------------------------------------ trading state
    async def trading_state(self) -> TradingState:
        return state_from(await self.reads.fetchval(LATEST_STATE, self.agent_id))

    async def set_trading_state(self, state: TradingState, reason: str, set_by: str) -> None:
        await self.pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                                "VALUES ($1, $2, $3, $4, $5)", self.agent_id, state.name, reason, set_by,
                                self.clock.now())

    async def last_beat(self, service: str = "position_monitor"):
        """When `service` of this agent last wrote service_health (None: never)."""
        return await self.pool.fetchval("SELECT max(checked_at) FROM service_health WHERE agent_id = $1 "
                                        "AND service = $2", self.agent_id, service)

    # ------------------------------------------------------------------ decisions
    async def record_decision(self, *, cycle_id: uuid.UUID | None, engine: str, symbol: str | None, action: str,
                              reasoning: str, verdict: dict | None = None, details: dict | None = None) -> int:
        return await self._decision((cycle_id, symbol, action, engine, reasoning,
                                     to_json(verdict) if verdict is not None else None, to_json(details or {}),
                                     None, 0, 0, Decimal(0), self.clock.now()))

    async def record_patterns(self, cycle_id: uuid.UUID | None, symbol: str, patterns: list) -> None:
        now = self.clock.now()
        self._patterns.extend(
            (self.agent_id, cycle_id, symbol, p.name, p.direction, Decimal(str(round(p.confidence, 4))),
             to_json({k: float(v) for k, v in p.levels.items()}), p.start, p.end, now) for p in patterns)
        if not self.buffering:
            await self.flush()

    async def record_model_turn(self, *, cycle_id: uuid.UUID | None, turn: int, text: str, model: str,
                                input_tokens: int, output_tokens: int, cost: Decimal) -> None:
        await self._decision((cycle_id, None, "model_turn", "claude", text[:4000], None, to_json({"turn": turn}),
                              model, input_tokens, output_tokens, cost, self.clock.now()))

    async def audit(self, symbol: str | None, action: str, reasoning: str, details: dict,
                    engine: str = "reconcile") -> None:
        """A correction's audit row (reconciliation)."""
        await self._decision((None, symbol, action, engine, reasoning, None, to_json(details), None, 0, 0,
                              Decimal(0), self.clock.now()))

    # ------------------------------------------------------------------ orders
    async def working_orders(self, symbol: str | None = None) -> list:
        """Working orders (oldest first), of one symbol or all: client_order_id, symbol, side, quantity, filled,
        intent ('protective_stop' for a stop held at the broker), stop_price."""
        return await self.reads.fetch(
            "SELECT client_order_id, symbol, side, quantity, filled_quantity, intent, stop_price, status "
            "FROM orders WHERE agent_id = $1 "
            f"AND ($2::text IS NULL OR symbol = $2) AND status IN {WORKING} ORDER BY order_id",
            self.agent_id, symbol)

    # ------------------------------------------------------------------ positions (the monitor's)
    async def positions_to_monitor(self) -> list:
        """Open positions with their stops, high-water marks and whether an exit is already working (a protective
        stop resting at the broker is not an exit in progress). Held status rows' high-water marks are applied
        as their write will apply them."""
        rows = await self.reads.fetch(
            """SELECT p.position_id, p.symbol, p.quantity, p.avg_entry_price, p.stop_loss, p.take_profit,
                      p.high_water_mark, p.opened_at,
                      EXISTS (SELECT 1 FROM orders o WHERE o.agent_id = p.agent_id AND o.symbol = p.symbol
                              AND o.side = 'sell' AND o.intent <> 'protective_stop'
                              AND o.status IN """ + WORKING + """) AS exit_working
               FROM positions p WHERE p.agent_id = $1 AND p.status = 'open' ORDER BY p.position_id""",
            self.agent_id)
        if not self._high_water:
            return rows
        last = self._monitored            # the same rows (a read served again) and marks: the same answer
        if (last is not None and last[1] == self._high_water_changes and len(last[0]) == len(rows)
                and all(map(operator.is_, last[0], rows))):
            return list(last[2])
        out = []
        for r in rows:
            known = self._high_water.get(r["position_id"])
            if known is not None and (r["high_water_mark"] is None or known > r["high_water_mark"]):
                r = {**dict(r), "high_water_mark": known}
            out.append(r)
        self._monitored = (rows, self._high_water_changes, out)
        return list(out)

    async def working_stops(self) -> dict[str, list]:
        """Protective stops still working, by symbol (oldest first): client_order_id, quantity, stop_price, status."""
        out: dict[str, list] = {}
        for r in await self.reads.fetch(
                "SELECT client_order_id, symbol, quantity, filled_quantity, stop_price, status FROM orders "
                "WHERE agent_id = $1 AND intent = 'protective_stop' AND status IN " + WORKING + " ORDER BY order_id",
                self.agent_id):
            out.setdefault(r["symbol"], []).append(r)
        return out

    async def write_monitor_statuses(self, rows: list[tuple]) -> None:
        """One position_monitor_status row per position, high-water marks raised with them, and any held audit
        rows, in one statement (held for the next flush with `hold_monitor`)."""
        still_open = None
        if self.hold_monitor and rows:
            # the write at the end of this pass raises the high-water marks of the positions open now; held, it
            # must raise the same ones (an exit in this pass may have closed one: it is read again then)
            still_open = {r["position_id"] for r in await self.positions_to_monitor()}
        for row in rows:
            self._statuses[row[0]] = row
            if row[6] is None or (still_open is not None and row[0] not in still_open):
                continue
            known = self._high_water.get(row[0])
            if known is None or row[6] > known:
                self._high_water[row[0]] = row[6]
                self._high_water_changes += 1
            if still_open is not None and (row[0] not in self._raises or row[6] > self._raises[row[0]]):
                self._raises[row[0]] = row[6]
        if not self.hold_monitor:
            await self.flush()
