"""One run of the agent (scan, trade or close) as one `trading_cycles` row.

start row -> reconciliation (our in-flight orders, fills while nothing ran, positions against the broker) ->
market-hours check -> the engine (Claude when a key is set and the budget allows, otherwise the rules engine) ->
engine.run(mode, executor) -> a monitor pass when the cycle placed orders -> end row with status, engine, turns,
tokens, cost and orders placed.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from core.calendar import MarketCalendar
from core.clock import Clock
from core.logcontext import log_context
from engines.base import EngineResult
from runtime.lock import holder_gone

if TYPE_CHECKING:
    import asyncpg

    from execution.reconcile import Reconciler
    from execution.store import Store
    from tool_executor import ToolExecutor

log = logging.getLogger("catalyst.cycle")


async def mark_interrupted(pool: "asyncpg.Pool", lock_dir: Path, now, *, found_by: str) -> list[uuid.UUID]:
    """Cycles left `running` by a process that is gone (its agent's lock is free: killed, or the machine restarted)
    become `interrupted`, with what they had done (their orders by status). Any run can do it for any agent id of
    this installation, day and replay runs included (their ids never run again)."""
    rows = await pool.fetch("SELECT cycle_id, agent_id, mode, started_at FROM trading_cycles WHERE status = 'running'")
    gone = {a for a in {r["agent_id"] for r in rows} if holder_gone(lock_dir, a)}
    marked = []
    for r in rows:
        if r["agent_id"] not in gone:
            continue
        orders = {o["status"]: o["n"] for o in await pool.fetch(
            "SELECT status, count(*) AS n FROM orders WHERE cycle_id = $1 GROUP BY status", r["cycle_id"])}
        found = ", ".join(f"{n} {status}" for status, n in sorted(orders.items())) or "no orders"
        done = await pool.fetchval(
            "UPDATE trading_cycles SET status = 'interrupted', finished_at = $2, error = $3 WHERE cycle_id = $1 "
            "AND status = 'running' RETURNING cycle_id", r["cycle_id"], now,
            f"interrupted: its process was gone (the lock of {r['agent_id']} was free) when {found_by} started at "
            f"{now.isoformat()}; it had written {found}; reconciliation settles its orders")
        if done:
            marked.append(done)
            log.warning("%s cycle %s of %s (started %s) marked interrupted: its process is gone; %s", r["mode"],
                        r["cycle_id"], r["agent_id"], r["started_at"].isoformat(), found)
    return marked


_END = """UPDATE trading_cycles SET status = $2, engine = $3, finished_at = $4, turns = $5, input_tokens = $6,
               output_tokens = $7, cache_write_tokens = $8, cache_read_tokens = $9, cost_usd = $10,
               orders_placed = $11, summary = $12, error = $13 WHERE cycle_id = $1"""
# The same, when the start row may not have been written yet ($14 agent_id, $15 mode, $16 started_at).
_END_UPSERT = """INSERT INTO trading_cycles (cycle_id, status, engine, finished_at, turns, input_tokens, output_tokens,
               cache_write_tokens, cache_read_tokens, cost_usd, orders_placed, summary, error, agent_id, mode,
               started_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
           ON CONFLICT (cycle_id) DO UPDATE SET status = $2, engine = $3, finished_at = $4, turns = $5,
               input_tokens = $6, output_tokens = $7, cache_write_tokens = $8, cache_read_tokens = $9,
               cost_usd = $10, orders_placed = $11, summary = $12, error = $13"""


@dataclass
class CycleOutcome:
    cycle_id: uuid.UUID
    mode: str
    status: str
    engine: str | None
    orders_placed: int
    summary: dict[str, Any]
    message: str


class CycleRunner:
    def __init__(self, *, pool: "asyncpg.Pool", clock: Clock, calendar: MarketCalendar, agent_id: str,
                 timezone: str, reconciler: "Reconciler",
                 executor: Callable[..., "ToolExecutor"],
                 choose_engine: Callable[[str], Awaitable[tuple[Any, str]]],
                 after_trade: Callable[[], Awaitable[Any]], lock_dir: Path | None = None,
                 store: "Store | None" = None) -> None:
        self.pool = pool
        self.store = store             # its audit rows are held through the cycle, written with the end row
        self.clock = clock
        self.calendar = calendar
        self.agent_id = agent_id
        self.timezone = timezone
        self.reconciler = reconciler
        self.executor = executor
        self.choose_engine = choose_engine
        self.after_trade = after_trade
        self.lock_dir = lock_dir

    async def run(self, mode: str, *, engine=None) -> CycleOutcome:
        cycle_id = uuid.uuid4()
        now = self.clock.now()
        if self.lock_dir is not None:
            await mark_interrupted(self.pool, self.lock_dir, now, found_by=f"{self.agent_id} {mode}")
        start = ("INSERT INTO trading_cycles (cycle_id, agent_id, mode, started_at) VALUES ($1, $2, $3, $4)",
                 cycle_id, self.agent_id, mode, now)
        if self.store is None:
            await self.pool.execute(*start)
        elif self.store.hold_monitor:  # nobody else looks for this agent's running cycles: the row waits
            self.store.hold_cycle_start(cycle_id, mode, now)
        else:                          # what the store holds is written with the end row
            await self.store.write_apart(*start)
        self._started = (mode, now)
        store, held = self.store, None
        if store is not None:
            held, store.buffering = store.buffering, True
        try:
            return await self._run(mode, engine, cycle_id, now)
        finally:
            if store is not None:
                store.buffering = held
                if store.pending and not held:       # the end row was not written (cancelled, or it failed)
                    try:
                        await store.flush()
                    except Exception as exc:
                        log.error("%d audit rows of the %s cycle could not be written: %s", store.pending, mode, exc)


    async def _run(self, mode: str, engine, cycle_id: uuid.UUID, now) -> CycleOutcome:
        with log_context(cycle_id=str(cycle_id), mode=mode):
            log.info("%s cycle started at %s", mode, now.isoformat())
            try:
                recon = await self.reconciler.run()
                if not recon.clean or recon.corrections or recon.resolved:
                    log.warning(recon.render())
                state = self.calendar.state(now)
                if mode == "trade" and state.status != "open":
                    local = state.next_open.astimezone(self.calendar.tz)
                    message = (f"market closed ({state.status}); next session opens {local:%a %Y-%m-%d %H:%M} "
                               f"{self.timezone}")
                    log.info(message)
                    await self._finish(cycle_id, EngineResult(engine="rules", status="market_closed",
                                                              summary={"next_open": state.next_open.isoformat()}), 0)
                    return CycleOutcome(cycle_id, mode, "market_closed", None, 0, {}, message)
                reason = "engine given by caller"
                if engine is None:
                    engine, reason = await self.choose_engine(mode)
                log.info("engine: %s", reason)
                executor = self.executor(mode=mode, cycle_id=cycle_id, engine=engine.name)
                result = await engine.run(mode, executor)
                result.summary.setdefault("engine_reason", reason)
                if recon.corrections or recon.resolved or recon.ambiguous:
                    result.summary["reconciliation"] = recon.to_dict()
                placed = executor.orders_placed
                if mode == "trade" and placed:
                    checked = await self.after_trade()     # trade-triggered monitoring of what was just entered
                    exits = list(getattr(checked, "exits", None) or [])
                    if exits:
                        result.summary["monitor_exits"] = exits
                        placed += len(exits)
                await self._finish(cycle_id, result, placed)
                message = f"{mode} cycle {result.status} with the {engine.name} engine: {placed} orders"
                log.info(message)
                return CycleOutcome(cycle_id, mode, result.status, engine.name, placed, result.summary, message)
            except Exception as exc:
                log.exception("%s cycle failed", mode)
                await self._finish(cycle_id, EngineResult(engine=getattr(engine, "name", "rules"), status="failed",
                                                          error=f"{type(exc).__name__}: {exc}"), 0)
                raise

    async def _finish(self, cycle_id: uuid.UUID, result: EngineResult, orders_placed: int) -> None:
        from core.redaction import redact_row
        args = (cycle_id, result.status, result.engine, self.clock.now(), result.turns, result.input_tokens,
                result.output_tokens, result.cache_write_tokens, result.cache_read_tokens, Decimal(result.cost_usd),
                orders_placed, redact_row(json.loads(json.dumps(result.summary, default=str))),
                redact_row(result.error))
        if self.store is None:
            await self.pool.execute(_END, *args)
        elif self.store.hold_monitor:  # held, the whole row (its start may be held still), for a later flush
            if self.store.hold_cycle_end((*args, self.agent_id, *self._started)):
                await self.store.flush()
        else:                          # with the audit rows the cycle held
            await self.store.flush(_END, *args)
