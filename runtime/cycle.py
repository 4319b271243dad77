"""One run of the agent (scan, trade or close) as one `trading_cycles` row.

start row -> bring open orders up to date from the broker -> market-hours check -> choose the engine (Claude when a
key is set and the budget allows, otherwise the rules engine) -> engine.run(mode, executor) -> end row with status,
engine, turns, tokens, cost and orders placed.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from db_logger import log_context
from engines.base import EngineResult
from engines.rules import RulesEngine
from tool_executor import ToolExecutor

if TYPE_CHECKING:
    from runtime.wiring import Services

log = logging.getLogger("catalyst.cycle")


@dataclass
class CycleOutcome:
    cycle_id: uuid.UUID
    mode: str
    status: str
    engine: str | None
    orders_placed: int
    summary: dict[str, Any]
    message: str


async def choose_engine(services: "Services", mode: str):
    """Claude when configured and within budget; otherwise the rules engine, with the reason."""
    key = services.settings.env.get("ANTHROPIC_API_KEY")
    if not key:
        return RulesEngine(services.settings), "no ANTHROPIC_API_KEY: the offline rules engine decides"
    from engines.claude import ClaudeEngine
    from engines.budget import AIBudget
    budget = AIBudget(services.pool, services.clock, services.agent_id,
                      daily_limit=services.settings.config.ai.daily_budget_usd, purpose="trade")
    engine = ClaudeEngine(services.settings, budget=budget)
    remaining = await budget.remaining()
    if remaining < engine.first_call_estimate(mode):
        return RulesEngine(services.settings), (f"AI budget for today is spent ({remaining:.4f} USD left of "
                                                f"{budget.daily_limit}): the offline rules engine decides")
    return engine, f"Claude ({services.settings.config.ai.model}) decides"


async def run_cycle(services: "Services", mode: str, *, engine=None) -> CycleOutcome:
    cycle_id = uuid.uuid4()
    now = services.clock.now()
    await services.pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode, started_at) "
                                "VALUES ($1, $2, $3, $4)", cycle_id, services.agent_id, mode, now)
    with log_context(cycle_id=str(cycle_id), mode=mode):
        log.info("%s cycle started at %s", mode, now.isoformat())
        try:
            from execution.reconcile import reconcile
            recon = await reconcile(services)
            if not recon.clean or recon.corrections or recon.resolved:
                log.warning(recon.render())
            state = services.calendar.state(now)
            if mode == "trade" and state.status != "open":
                local = state.next_open.astimezone(services.calendar.tz)
                message = (f"market closed ({state.status}); next session opens {local:%a %Y-%m-%d %H:%M} "
                           f"{services.settings.config.market.timezone}")
                log.info(message)
                await _finish(services, cycle_id, EngineResult(engine="rules", status="market_closed",
                                                               summary={"next_open": state.next_open.isoformat()}), 0)
                return CycleOutcome(cycle_id, mode, "market_closed", None, 0, {}, message)
            reason = "engine given by caller"
            if engine is None:
                engine, reason = await choose_engine(services, mode)
            log.info("engine: %s", reason)
            executor = ToolExecutor(services, mode=mode, cycle_id=cycle_id, engine=engine.name)
            result = await engine.run(mode, executor)
            result.summary.setdefault("engine_reason", reason)
            if recon.corrections or recon.resolved or recon.ambiguous:
                result.summary["reconciliation"] = recon.to_dict()
            if mode == "trade" and executor.orders_placed:
                from execution.monitor import monitor_once  # trade-triggered monitoring of what was just entered
                await monitor_once(services)
            await _finish(services, cycle_id, result, executor.orders_placed)
            message = f"{mode} cycle {result.status} with the {engine.name} engine: {executor.orders_placed} orders"
            log.info(message)
            return CycleOutcome(cycle_id, mode, result.status, engine.name, executor.orders_placed, result.summary,
                                message)
        except Exception as exc:
            log.exception("%s cycle failed", mode)
            await _finish(services, cycle_id, EngineResult(engine=getattr(engine, "name", "rules"), status="failed",
                                                           error=f"{type(exc).__name__}: {exc}"), 0)
            raise


async def _finish(services: "Services", cycle_id: uuid.UUID, result: EngineResult, orders_placed: int) -> None:
    await services.pool.execute(
        """UPDATE trading_cycles SET status = $2, engine = $3, finished_at = $4, turns = $5, input_tokens = $6,
               output_tokens = $7, cache_write_tokens = $8, cache_read_tokens = $9, cost_usd = $10,
               orders_placed = $11, summary = $12, error = $13 WHERE cycle_id = $1""",
        cycle_id, result.status, result.engine, services.clock.now(), result.turns, result.input_tokens,
        result.output_tokens, result.cache_write_tokens, result.cache_read_tokens,
        Decimal(result.cost_usd), orders_placed, _jsonable(result.summary), result.error)


def _jsonable(value: Any) -> Any:
    import json
    return json.loads(json.dumps(value, default=str))
