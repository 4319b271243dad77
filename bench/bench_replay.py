"""How long a year of replay takes: every HKEX trading day of a year on a 100-symbol simulated market, the full
config/cron.d schedule (scan, 11 trade cycles, close), the position monitor every 5 minutes, the rules engine,
embedded PostgreSQL — the production path. Prints the wall time and the time per simulated trading day.

Baseline in the same run: one simulated day, so the ratio says how far the year is from 250 independent days.
Target: <= 60 s for the year.  Run: ./run.sh bench replay [--days N]   (N trading days instead of a year)
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402
from core.calendar import MarketCalendar  # noqa: E402
from replay.runner import run_replay  # noqa: E402
from runtime.wiring import builder  # noqa: E402
from tests.agent_fixtures import agent_settings  # noqa: E402

TARGET_S = 60.0
END = date(2026, 11, 20)


async def main() -> int:
    days_arg = int(sys.argv[sys.argv.index("--days") + 1]) if "--days" in sys.argv else None
    cal = MarketCalendar("HKEX")
    year = cal.trading_days(END - timedelta(days=365), END)
    days = year[-days_arg:] if days_arg else year
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-replay-"))
    try:
        url = database.start_embedded(tmp / "pgdata")
        pool = await database.create_pool(url, max_size=4, durable=False)     # as ./run.sh replay opens it
        await database.ensure_schema(pool)
        settings = agent_settings("bench_replay", market_data={"universe_size": 100})
        one = await run_replay(settings, pool, build=builder(pool), start=days[0], end=days[0], progress=False, out_dir=tmp,
                               run_id="baseline")
        result = await run_replay(settings, pool, build=builder(pool), start=days[0], end=days[-1], progress=True, out_dir=tmp)
        await pool.close()
    finally:
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
    per_day = result.wall_seconds / result.days
    print(result.table)
    print(f"one day alone: {one.wall_seconds:.2f} s   {result.days} days: {result.wall_seconds:.1f} s "
          f"({per_day:.2f} s per trading day, {per_day / one.wall_seconds:.2f}x the single day), "
          f"{result.cycles} cycles, {result.monitor_passes} monitor passes")
    scaled = per_day * len(year)
    ok = scaled <= TARGET_S
    print(f"a year ({len(year)} trading days) at this rate: {scaled:.0f} s; target <= {TARGET_S:.0f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
