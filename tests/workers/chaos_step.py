"""One step of the chaos run (bench/bench_chaos.py), as a separate process the bench SIGKILLs at random moments.

python -m tests.workers.chaos_step AGENT_ID DATABASE_URL SECONDS_AFTER_OPEN LOCK_DIR trade|monitor SYMBOLS

trade:   under the agent's run lock (as a cron run holds it), one trade cycle (reconciliation first) whose engine
         closes the held symbols among SYMBOLS and buys the others (market, value 6000).
monitor: one pass of the position monitor after moving every open position's stop above the price, so each
         position is exited through the order path (the daemon's exits).
"""
from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path


class ChaosEngine:
    name = "rules"

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols

    async def run(self, mode, ex):
        from engines.base import EngineResult
        portfolio = (await ex.execute("get_portfolio", {})).data
        held = {p["symbol"] for p in portfolio.get("positions", [])}
        for symbol in self.symbols:
            if symbol in held:
                await ex.execute("close_position", {"symbol": symbol, "reason": "chaos exit"})
            else:
                await ex.execute("execute_trade", {"symbol": symbol, "value": 6000, "order_type": "market",
                                                   "reasoning": "chaos entry"})
        return EngineResult(engine=self.name)


async def main(agent_id: str, dsn: str, seconds: str, lock_dir: str, action: str, symbols: str) -> None:
    from core.clock import SimulatedClock
    from runtime import database
    from runtime.lock import AgentLock
    from runtime.wiring import build_services
    from tests.agent_fixtures import OPEN_AT, agent_settings

    settings = agent_settings(agent_id, env={"CATALYST_VAR_DIR": str(Path(lock_dir).parent)},
                              trading={"max_positions": 50, "daily_loss_limit": 10 ** 6})
    lock = AgentLock(settings.var_dir / "locks", agent_id if action == "trade" else f"{agent_id}-monitor")
    lock.acquire(action)
    pool = await database.create_pool(dsn, max_size=3)
    try:
        services = await build_services(settings, pool, SimulatedClock(OPEN_AT + timedelta(seconds=int(seconds))))
        if action == "trade":
            await services.run_cycle("trade", engine=ChaosEngine(symbols.split(",")))
        else:
            await pool.execute("UPDATE positions SET stop_loss = avg_entry_price * 2 WHERE agent_id = $1 "
                               "AND status = 'open'", agent_id)
            await services.monitor().run_pass()
    finally:
        await pool.close()
        lock.release()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
