"""Tokens and USD of a realistic 8-turn trade cycle, with and without prompt caching.

The cycle is replayed through the real anthropic SDK, our own ClaudeEngine loop and tool_executor against the
fake Messages API (tests/fakes/anthropic_server.py), on embedded PostgreSQL, the paper broker and the simulated
market at a fixed instant, so both runs see the same tool results. The model's turns are scripted: portfolio,
scan, technicals and patterns of two candidates, news, one entry, a summary.

The fake counts tokens as ceil(len(canonical JSON) / 4) and simulates the API's prompt cache (1,024-token
minimum, 5-minute TTL, prefix hashes at breakpoints). Absolute token counts are therefore approximate; the
comparison between the two runs is exact, since both are counted the same way.

Target: with caching, at least 60% of the input tokens of turns 2..8 are read from cache.
Run: ./run.sh bench cycle
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402
from engines.budget import AIBudget  # noqa: E402
from engines.claude import ClaudeEngine  # noqa: E402
from core.clock import SimulatedClock  # noqa: E402
from runtime.wiring import build_services  # noqa: E402
from tests.agent_fixtures import OPEN_AT, agent_settings  # noqa: E402
from tests.fakes.anthropic_server import FakeAnthropic, reply, tool_use  # noqa: E402

TARGET_CACHE_SHARE = 0.60


def script(first: str, second: str) -> list[dict]:
    return [
        reply("Starting with the account.", tool_use("get_portfolio", {})),
        reply(tool_use("scan_market", {"limit": 10})),
        reply(f"{first} ranks first; checking its indicators.", tool_use("get_technicals", {"symbol": first})),
        reply(tool_use("detect_patterns", {"symbol": first})),
        reply(tool_use("get_technicals", {"symbol": second})),
        reply(tool_use("get_news", {"symbol": first})),
        reply(tool_use("execute_trade", {"symbol": first, "value": 6000, "order_type": "market",
                                         "reasoning": "top scan rank, trend and momentum agree; no bearish pattern"})),
        reply("Entered one position; the second candidate is overbought, skipped. Summary: 1 entry, 0 exits."),
    ]


async def one_cycle(pool, caching: bool) -> dict:
    agent_id = f"bench_cycle_{uuid.uuid4().hex[:8]}"
    with FakeAnthropic() as fake:
        settings = agent_settings(agent_id, env={"ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": fake.base_url})
        services = await build_services(settings, pool, SimulatedClock(OPEN_AT))
        top = [c.symbol for c in await services.scanner.run(cycle_id=None)][:2]
        fake.add_turns(*script(*top))
        budget = AIBudget(pool, services.clock, agent_id, daily_limit=settings.config.ai.daily_budget_usd)
        engine = ClaudeEngine(settings, budget=budget, store=services.store, prompt_caching=caching)
        outcome = await services.run_cycle("trade", engine=engine)
        usages = [r.response["usage"] for r in fake.message_requests if r.status == 200]
    row = await pool.fetchrow("SELECT * FROM trading_cycles WHERE cycle_id = $1", outcome.cycle_id)
    later = usages[1:]
    total_later = sum(u["input_tokens"] + (u.get("cache_creation_input_tokens") or 0)
                      + (u.get("cache_read_input_tokens") or 0) for u in later)
    read_later = sum(u.get("cache_read_input_tokens") or 0 for u in later)
    return {"status": outcome.status, "turns": row["turns"], "orders": row["orders_placed"],
            "input": row["input_tokens"], "cache_write": row["cache_write_tokens"],
            "cache_read": row["cache_read_tokens"], "output": row["output_tokens"], "usd": row["cost_usd"],
            "share": read_later / total_later if total_later else 0.0}


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-cycle-"))
    try:
        url = database.start_embedded(tmp / "pgdata")
        pool = await database.create_pool(url)
        await database.ensure_schema(pool)
        try:
            plain = await one_cycle(pool, caching=False)
            cached = await one_cycle(pool, caching=True)
        finally:
            await pool.close()
    finally:
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'':14}{'turns':>6}{'orders':>7}{'input':>9}{'c.write':>9}{'c.read':>9}{'output':>8}{'USD':>11}"
          f"{'cache share t2..8':>19}")
    for name, r in (("no caching", plain), ("caching", cached)):
        print(f"{name:14}{r['turns']:>6}{r['orders']:>7}{r['input']:>9}{r['cache_write']:>9}{r['cache_read']:>9}"
              f"{r['output']:>8}{r['usd']:>11.6f}{r['share']:>18.1%}")
    ratio = cached["usd"] / plain["usd"] if plain["usd"] else Decimal(0)
    print(f"cost with caching / without: {ratio:.3f} ({(1 - ratio):.1%} saved per cycle)")
    ok = (cached["share"] >= TARGET_CACHE_SHARE and cached["turns"] == plain["turns"] == 8
          and cached["status"] == plain["status"] == "completed")
    print(f"target (>= {TARGET_CACHE_SHARE:.0%} of input tokens read from cache after turn one, 8 turns): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
