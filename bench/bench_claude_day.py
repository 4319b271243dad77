"""What a whole HKEX day decided by Claude costs: tokens and USD at the configured prices, and per decision.

`run_day` (replay/day.py: the scan, every trade cycle of config/cron.d, the close, the position monitor's passes
with its advisor) on embedded PostgreSQL, the paper broker and the simulated market, with Claude reached through
the real anthropic SDK and our engine, with prompt caching, against the fake Messages API. The fake's "model" is
tests/fakes/claude_policy.py (portfolio, scan, one entry when there is room, a summary) and its token counts are
ceil(len(canonical JSON) / 4) with the API's prompt-cache rules; the prices are config/trading_config.yaml's.
Baseline in the same run: the same day without prompt caching.

Target: <= 1.00 USD a day with the default model and limits. Run: ./run.sh bench claude_day
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replay.day import run_day  # noqa: E402
from runtime import database  # noqa: E402
from runtime.wiring import builder  # noqa: E402
from tests.agent_fixtures import agent_settings  # noqa: E402
from tests.fakes.anthropic_server import FakeAnthropic  # noqa: E402
from tests.fakes.claude_policy import policy  # noqa: E402

SESSION = date(2026, 11, 24)
TARGET_USD = Decimal("1.00")


async def one_day(pool, caching: bool) -> dict:
    agent = f"bench_day_{uuid.uuid4().hex[:6]}"
    with FakeAnthropic(default=policy) as fake:
        settings = agent_settings(agent, env={"ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": fake.base_url},
                                  ai={"prompt_caching": caching})
        summary = await run_day(settings, pool, build=builder(pool), session=SESSION)
    day_agent = summary["agent_id"]
    usage = await pool.fetchrow(
        "SELECT count(*) AS calls, coalesce(sum(cost_usd), 0) AS usd, coalesce(sum(input_tokens), 0) AS input, "
        "coalesce(sum(output_tokens), 0) AS output, coalesce(sum(cache_write_tokens), 0) AS cw, "
        "coalesce(sum(cache_read_tokens), 0) AS cr FROM ai_usage WHERE agent_id = $1 AND status = 'settled'",
        day_agent)
    by_purpose = {r["purpose"]: r["usd"] for r in await pool.fetch(
        "SELECT purpose, sum(cost_usd) AS usd FROM ai_usage WHERE agent_id = $1 AND status = 'settled' "
        "GROUP BY purpose", day_agent)}
    decisions = await pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND engine IN "
                                    "('claude', 'monitor') AND action <> 'model_turn'", day_agent)
    cycles = await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND engine = 'claude'",
                                 day_agent)
    return {"calls": usage["calls"], "usd": usage["usd"], "input": usage["input"], "output": usage["output"],
            "cw": usage["cw"], "cr": usage["cr"], "decisions": decisions, "cycles": cycles,
            "trade": by_purpose.get("trade", Decimal(0)), "monitor": by_purpose.get("monitor", Decimal(0))}


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-claude-day-"))
    try:
        pool = await database.create_pool(database.start_embedded(tmp / "pgdata"), max_size=6)
        await database.ensure_schema(pool)
        try:
            plain = await one_day(pool, caching=False)
            cached = await one_day(pool, caching=True)
        finally:
            await pool.close()
    finally:
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'':12}{'cycles':>7}{'calls':>7}{'input':>9}{'c.write':>9}{'c.read':>9}{'output':>8}{'USD':>10}"
          f"{'trade':>9}{'monitor':>9}{'decisions':>10}{'USD/dec':>9}")
    for name, r in (("no caching", plain), ("caching", cached)):
        per = r["usd"] / r["decisions"] if r["decisions"] else Decimal(0)
        print(f"{name:12}{r['cycles']:>7}{r['calls']:>7}{r['input']:>9}{r['cw']:>9}{r['cr']:>9}{r['output']:>8}"
              f"{r['usd']:>10.4f}{r['trade']:>9.4f}{r['monitor']:>9.4f}{r['decisions']:>10}{per:>9.4f}")
    ratio = cached["usd"] / plain["usd"] if plain["usd"] else Decimal(0)
    print(f"a day with caching costs {ratio:.2f}x the day without")
    ok = cached["usd"] <= TARGET_USD and cached["cycles"] >= 10
    print(f"target (a whole HKEX day <= {TARGET_USD} USD with the default model {'claude-sonnet-4-6'}): "
          f"{cached['usd']:.4f} USD — {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
