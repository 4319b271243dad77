"""The agent's side of the crash test (tests/execution/test_stops_survive_crash.py), as a process the test SIGKILLs.

python -m tests.workers.protected_entries CONFIG SYMBOLS

One trade cycle as the agent runs it: reconciliation, a market entry (execute_trade, value 3000) in each of SYMBOLS
through the tools, then the monitor pass a cycle runs after placing orders (which places each position's
protective stop at the broker). Prints READY and then waits to be killed. The environment names the database,
the agent, the venue's keys and endpoints, and the market clock (CATALYST_SIMULATED_NOW).
"""
from __future__ import annotations

import asyncio
import sys


class Entries:
    name = "rules"

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols

    async def run(self, mode, ex):
        from engines.base import EngineResult
        for symbol in self.symbols:
            await ex.execute("execute_trade", {"symbol": symbol, "value": 3000, "order_type": "market",
                                               "reasoning": "an entry the broker-side stop must protect"})
        return EngineResult(engine=self.name)


async def main(config: str, symbols: str) -> None:
    from core.clock import process_clock
    from core.settings import load_settings
    from runtime import database
    from runtime.wiring import build_services

    settings = load_settings(config)
    target = database.resolve_target(settings)
    pool = await database.create_pool(target.url, max_size=3)
    services = await build_services(settings, pool, process_clock())
    await services.run_cycle("trade", engine=Entries(symbols.split(",")))
    for _ in range(100):                      # a venue may fill a moment after it accepts
        if not await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND side = 'buy' AND status "
                                   "IN ('pending_submit', 'submitted', 'partially_filled')", settings.agent_id):
            break
        await services.orders.sync_open_orders()
        await asyncio.sleep(0.05)
    await services.monitor().run_pass()       # the cycle's own pass: the protective stops go to the broker
    print("READY", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
