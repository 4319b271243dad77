"""A separate process that runs one cycle acting on fixed intents through the real tools and order path.

python -m tests.workers.trade_intents AGENT_ID DATABASE_URL MINUTES_AFTER_OPEN buy|sell SYMBOL[,SYMBOL...]

buy: execute_trade (market, value 9500) for each symbol; sell: close_position for each. Used by the
fault-injection tests, which set CATALYST_KILL_AT to SIGKILL it at a chosen point of the order path.
"""
from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta


class IntentEngine:
    name = "rules"

    def __init__(self, action: str, symbols: list[str]) -> None:
        self.action, self.symbols = action, symbols

    async def run(self, mode, ex):
        from engines.base import EngineResult
        results = {}
        for symbol in self.symbols:
            if self.action == "buy":
                r = await ex.execute("execute_trade", {"symbol": symbol, "value": 9500, "order_type": "market",
                                                       "reasoning": "fault-injection intent"})
            else:
                r = await ex.execute("close_position", {"symbol": symbol, "reason": "fault-injection exit"})
            results[symbol] = r.data
        return EngineResult(engine=self.name, summary={"results": results})


async def main(agent_id: str, dsn: str, minutes: str, action: str, symbols: str) -> None:
    from runtime import database
    from core.clock import SimulatedClock
    from runtime.wiring import build_services
    from tests.agent_fixtures import OPEN_AT, agent_settings

    pool = await database.create_pool(dsn, max_size=4)
    try:
        services = await build_services(agent_settings(agent_id), pool,
                                        SimulatedClock(OPEN_AT + timedelta(minutes=int(minutes))))
        outcome = await services.run_cycle("trade", engine=IntentEngine(action, symbols.split(",")))
        print(json.dumps({"status": outcome.status, "summary": outcome.summary}, default=str))
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
