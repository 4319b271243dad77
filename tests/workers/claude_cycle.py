"""A separate process running one Claude cycle against a fake API (for the two-process budget race).

python -m tests.workers.claude_cycle AGENT_ID DATABASE_URL FAKE_URL BUDGET_USD MODE  -> prints the outcome as JSON
"""
from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal


async def main(agent_id: str, dsn: str, fake_url: str, budget: str, mode: str) -> None:
    from runtime import database
    from core.clock import SimulatedClock
    from runtime.wiring import build_services
    from tests.agent_fixtures import OPEN_AT, agent_settings

    settings = agent_settings(agent_id, env={"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake_url},
                              ai={"daily_budget_usd": Decimal(budget), "max_turns": 200})
    pool = await database.create_pool(dsn, max_size=4)
    try:
        services = await build_services(settings, pool, SimulatedClock(OPEN_AT))
        outcome = await services.run_cycle(mode)
        print(json.dumps({"status": outcome.status, "engine": outcome.engine, "cycle_id": str(outcome.cycle_id)}))
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
