"""Benchmark the bar store's whole-universe read against the scan's indicator time, in the same run.

Universe: 2,700 HKEX symbols x 250 daily bars (the simulated market, seed 20261124), synced into the bar store of an
embedded PostgreSQL through the same Sync the agent uses.
1. Read: BarStore.daily_frame(every symbol, now, 250) — the scan's frames (open, high, low, close, volume, session
   date x symbol) straight from PostgreSQL; best of 5 after one warm-up.
2. Baseline: universe_indicators(close, high, low, volume) on those frames (what the scan computes next); best of 5.
3. The frames equal the simulated market's own daily_frame (so the read is the real thing).
Target: read time <= 3x the indicator time.

Run: ./run.sh bench store
"""
from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from brokers.paper.simulated import SimulatedMarket  # noqa: E402
from core.calendar import MarketCalendar  # noqa: E402
from core.clock import SimulatedClock  # noqa: E402
from core.feeds import UniverseSpec  # noqa: E402
from data.store import BarStore  # noqa: E402
from data.sync import Sync  # noqa: E402
from data.technicals import universe_indicators  # noqa: E402
from runtime import database  # noqa: E402

SYMBOLS, BARS, SEED, TARGET = 2_700, 250, 20261124, 3.0
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


class History:
    def __init__(self, market: SimulatedMarket, calendar: MarketCalendar) -> None:
        self.market, self.calendar = market, calendar

    async def list_securities(self, spec):
        from core.feeds import Listing
        return [Listing(i) for i in self.market.instruments()]

    async def daily_history(self, wanted, end):
        hi = self.calendar.session_bounds(end)[-1][1]
        for i in range(0, len(wanted), 300):
            out = {}
            for symbol, start in wanted[i:i + 300]:
                lo = datetime.combine(start, datetime.min.time(), tzinfo=self.calendar.tz)
                out[symbol] = list(self.market.bars(symbol, "1d", lo, hi))
            yield out


def best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    url = database.start_embedded(root / "pg")
    pool = await database.create_pool(url, max_size=4)
    try:
        await database.ensure_schema(pool)
        calendar = MarketCalendar("HKEX")
        market = SimulatedMarket(seed=SEED, exchange="HKEX", n_symbols=SYMBOLS, calendar=calendar)
        store = BarStore(pool, dataset=f"bench:{uuid.uuid4().hex[:8]}", exchange="HKEX", calendar=calendar)
        sync = Sync(store=store, history=History(market, calendar), spec=UniverseSpec(kind="board"),
                    history_days=370, clock=SimulatedClock(NOW), source="bench")
        t0 = time.perf_counter()
        summary = await sync.run()
        print(f"sync: {summary.universe} symbols, {summary.bars_added:,} bars in {time.perf_counter() - t0:.1f} s")
        symbols = [i.symbol for i in await store.instruments()]
        frames = await store.daily_frame(symbols, NOW, BARS)            # warm-up
        reads = []
        for _ in range(5):
            store.forget_cached()                        # every read from PostgreSQL, none from the process cache
            t0 = time.perf_counter()
            frames = await store.daily_frame(symbols, NOW, BARS)
            reads.append(time.perf_counter() - t0)
        read = min(reads)
        args = (frames["close"], frames["high"], frames["low"], frames["volume"])
        universe_indicators(*args)
        indicators = best_of(5, lambda: universe_indicators(*args))
        reference = market.daily_frame(symbols, NOW, BARS)
        same = all(np.array_equal(frames[f].to_numpy(), reference[f].to_numpy(), equal_nan=True)
                   for f in ("open", "high", "low", "close", "volume"))
        ratio = read / indicators
        print(f"read {len(symbols)} symbols x {frames['close'].shape[0]} sessions from the store: {read * 1000:.0f} ms "
              f"(best of 5; all: {', '.join(f'{r * 1000:.0f}' for r in reads)} ms)")
        print(f"scan indicators on those frames: {indicators * 1000:.0f} ms (best of 5)")
        print(f"frames equal the simulated market's own: {same}")
        ok = ratio <= TARGET and same
        print(f"ratio read / indicators = {ratio:.2f}x (target <= {TARGET:.0f}x): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        await pool.close()
        database.stop_embedded(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
