"""How fast a crossed stop becomes an exit order, and whether the monitor daemon's memory stays flat.

Latency: the position monitor runs its pass every POLL seconds (wall time) on embedded PostgreSQL and the paper
broker, over 15 and then 500 open positions. At random instants a position's price is made to cross its stop
(its stop is raised above the last price); we time from that instant to the exit order's write-ahead row.
The floor is the poll interval itself (a crossing just after a pass waits a whole interval), so the target is
p99 <= POLL + 50 ms and the ratio printed is p99 / POLL.

Memory: the daemon (position_monitor_service.py) runs as its own process over a simulated eight-hour day
(09:00-17:00 HKT, lunch included) on a clock 2,000x faster than real time, with 15 positions and the default
30-second poll; its RSS is sampled from /proc. Targets: peak <= 150 MB and no upward trend (the mean RSS of the
last quarter of the run within 5% of the second quarter's). The baseline printed is the RSS right after start.

Run: ./run.sh bench monitor
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402
from runtime.wiring import build_services  # noqa: E402
from tests.agent_fixtures import OPEN_AT, agent_settings  # noqa: E402

POLL = 1.0
SAMPLES = {15: 30, 500: 30}
TARGET_MARGIN = 0.050
RSS_LIMIT_MB = 150


class WallClock:
    """The simulated market's 10:30 HKT, moving with the wall clock (the paper broker fills at 'now')."""

    def __init__(self, start: datetime) -> None:
        self.start, self.t0 = start, time.perf_counter()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.perf_counter() - self.t0)


async def open_positions(services, symbols: list[str]) -> None:
    """Bench setup (not measured): positions as if bought at the last price, stops 20% below."""
    now = services.clock.now()
    for symbol in symbols:
        q = services.universe.quote(symbol, now)
        lot = services.universe.instrument(symbol).lot_size
        await services.pool.execute("INSERT INTO paper_positions (agent_id, symbol, quantity, avg_price) "
                                    "VALUES ($1, $2, $3, $4)", services.agent_id, symbol, lot, q.last)
        await services.pool.execute(
            "INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, stop_loss, high_water_mark, "
            "opened_at) VALUES ($1, $2, $3, $4, $5, $4, $6)", services.agent_id, symbol, lot, q.last,
            (q.last * Decimal("0.8")).quantize(Decimal("0.01")), now)


async def latency(pool, n: int, samples: int) -> dict:
    agent = f"bench_mon_{n}_{random.randrange(1 << 30):x}"
    settings = agent_settings(agent, market_data={"universe_size": 700})
    clock = WallClock(OPEN_AT)
    services = await build_services(settings, pool, clock)
    universe = [i.symbol for i in services.universe.instruments()]
    [services.universe.quote(s, clock.now()) for s in universe]          # warm the market's price paths
    await open_positions(services, universe[:n])
    spare = iter(universe[n:])
    monitor = services.monitor()
    for s in universe[:n]:                                                     # indicators: cached, as in the daemon
        await monitor._indicators(s)
    stop = asyncio.Event()
    passes: list[float] = []

    async def run_monitor():
        while not stop.is_set():
            t = time.perf_counter()
            result = await monitor.run_pass()
            passes.append(result.seconds)
            await asyncio.sleep(max(POLL - (time.perf_counter() - t), 0))

    task = asyncio.create_task(run_monitor())
    waits: list[float] = []
    rng = random.Random(n)
    try:
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(0.2, POLL * 1.5))
            rows = await pool.fetch("SELECT symbol FROM positions WHERE agent_id = $1 AND status = 'open'", agent)
            symbol = rng.choice([r["symbol"] for r in rows])
            last = services.universe.quote(symbol, clock.now()).last
            t0 = time.perf_counter()
            await pool.execute("UPDATE positions SET stop_loss = $3 WHERE agent_id = $1 AND symbol = $2 AND "
                               "status = 'open'", agent, symbol, (last * Decimal("1.02")).quantize(Decimal("0.01")))
            while True:
                row = await pool.fetchrow("SELECT created_at FROM orders WHERE agent_id = $1 AND symbol = $2 AND "
                                          "side = 'sell'", agent, symbol)
                if row is not None:
                    break
                await asyncio.sleep(0.002)
            waits.append((row["created_at"] - clock.start).total_seconds() - (t0 - clock.t0))
            await open_positions(services, [next(spare)])                      # keep n positions open
    finally:
        stop.set()
        await task
    waits.sort()
    return {"n": n, "p50": statistics.median(waits), "p99": waits[min(len(waits) - 1, int(len(waits) * 0.99))],
            "max": waits[-1], "pass_ms": statistics.median(passes) * 1000, "samples": len(waits)}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def memory(url: str, tmp: Path) -> dict:
    agent = f"bench_rss_{random.randrange(1 << 30):x}"
    pool = await database.create_pool(url)
    start = datetime(2026, 11, 24, 1, 0, tzinfo=timezone.utc)               # 09:00 HKT
    settings = agent_settings(agent)
    services = await build_services(settings, pool, WallClock(start + timedelta(minutes=31)))
    await open_positions(services, [i.symbol for i in services.universe.instruments()][:15])
    await pool.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALYST_", "DATABASE_URL", "ANTHROPIC_"))}
    env.update(DATABASE_URL=url, AGENT_ID=agent, CATALYST_VAR_DIR=str(tmp / "var"), CATALYST_LOG_DIR=str(tmp / "logs"),
               CATALYST_ENV_FILE=str(tmp / "none.env"), CATALYST_SIMULATED_START=start.isoformat(),
               CATALYST_SIMULATED_SPEED="2000", LOG_LEVEL="WARNING")
    errors = open(tmp / "daemon.err", "w+")
    proc = subprocess.Popen([sys.executable, "position_monitor_service.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=errors)
    samples: list[float] = []
    wall = 8 * 3600 / 2000                                                     # eight simulated hours
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < wall + 3:
            value = rss_mb(proc.pid)
            if value is not None:
                samples.append(value)
            if proc.poll() is not None:
                errors.seek(0)
                raise SystemExit(f"the daemon exited early: {errors.read()[-2000:]}")
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    body = samples[len(samples) // 10:]                                        # after start-up
    q = len(body) // 4
    second, last = statistics.mean(body[q:2 * q]), statistics.mean(body[3 * q:])
    return {"baseline": samples[min(5, len(samples) - 1)], "peak": max(samples), "second_q": second, "last_q": last,
            "samples": len(samples)}


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-monitor-"))
    try:
        url = database.start_embedded(tmp / "pgdata")
        pool = await database.create_pool(url, max_size=6)
        await database.ensure_schema(pool)
        memory_only = "--memory-only" in sys.argv
        results = [] if memory_only else [await latency(pool, n, samples) for n, samples in SAMPLES.items()]
        await pool.close()
        mem = await memory(url, tmp)
    finally:
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
    ok = True
    print(f"poll interval {POLL:.1f} s (the floor: a crossing just after a pass waits one interval)")
    for r in results:
        good = r["p99"] <= POLL + TARGET_MARGIN
        ok &= good
        print(f"{r['n']:>4} positions: stop crossed -> exit order p50 {r['p50'] * 1000:6.0f} ms, "
              f"p99 {r['p99'] * 1000:6.0f} ms (p99 / poll = {r['p99'] / POLL:.2f}), max {r['max'] * 1000:.0f} ms, "
              f"median pass {r['pass_ms']:.1f} ms, {r['samples']} crossings  "
              f"{'PASS' if good else 'FAIL'} (<= {POLL * 1000 + TARGET_MARGIN * 1000:.0f} ms)")
    flat = mem["last_q"] <= mem["second_q"] * 1.05
    mem_ok = mem["peak"] <= RSS_LIMIT_MB and flat
    ok &= mem_ok
    print(f"daemon RSS over a simulated 8-hour day: baseline {mem['baseline']:.1f} MB, peak {mem['peak']:.1f} MB "
          f"({mem['peak'] / mem['baseline']:.2f}x baseline); 2nd-quarter mean {mem['second_q']:.1f} MB, last-quarter "
          f"mean {mem['last_q']:.1f} MB ({'flat' if flat else 'GROWING'})  "
          f"{'PASS' if mem_ok else 'FAIL'} (<= {RSS_LIMIT_MB} MB, no upward trend)")
    print(f"overall: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
