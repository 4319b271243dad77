"""Benchmark the scan's indicators: `universe_indicators` over the whole universe against a per-symbol pandas-ta loop.

Universe: 2,700 symbols x 250 daily bars, a deterministic random walk (seed 20261124) where 8% of the symbols list
during the year (leading NaN) and 6% are suspended for 1 to 15 sessions (interior NaN).
1. Vectorised: universe_indicators(close, high, low, volume), best of 5 after one warm-up call.
2. Baseline: data.technicals.symbol_indicators (pandas-ta, talib=False) for EVERY symbol, each result put back on the
   full date index, timed once over all 2,700 symbols after a warm-up (pandas-ta compiles its numba SMA once).
3. Agreement: the largest absolute difference per indicator between the two over every bar, and whether NaN-ness
   matches. targets: ratio >= 100x, vectorised <= 0.15 s, every max difference <= 1e-9, NaN-ness identical.

Run: cd /work/main && .venv/bin/python bench/bench_scan.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data.technicals import UNIVERSE_KEYS, symbol_indicators, universe_indicators  # noqa: E402

SYMBOLS, BARS, SEED = 2_700, 250, 20261124
TARGET_RATIO, TARGET_SECONDS, TARGET_DIFF = 100.0, 0.15, 1e-9


def universe() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(SEED)
    index = pd.date_range("2025-01-02", periods=BARS, freq="B", tz="UTC", name="date")
    close = rng.uniform(1, 300, SYMBOLS) * np.exp(np.cumsum(rng.normal(0, 0.02, (BARS, SYMBOLS)), axis=0))
    openp = close * np.exp(rng.normal(0, 0.01, (BARS, SYMBOLS)))
    high = np.maximum(close, openp) * (1 + rng.uniform(0, 0.03, (BARS, SYMBOLS)))
    low = np.minimum(close, openp) * (1 - rng.uniform(0, 0.03, (BARS, SYMBOLS)))
    volume = rng.lognormal(12, 1, (BARS, SYMBOLS)).round()
    missing = np.zeros((BARS, SYMBOLS), dtype=bool)
    for j in rng.choice(SYMBOLS, int(0.08 * SYMBOLS), replace=False):
        missing[:rng.integers(1, BARS - 10), j] = True
    for j in rng.choice(SYMBOLS, int(0.06 * SYMBOLS), replace=False):
        start = rng.integers(0, BARS - 15)
        missing[start:start + rng.integers(1, 16), j] = True
    columns = [f"{j:05d}.HK" for j in range(SYMBOLS)]
    frames = {}
    for name, values in (("open", openp), ("high", high), ("low", low), ("close", close), ("volume", volume)):
        values[missing] = np.nan
        frames[name] = pd.DataFrame(values, index=index, columns=columns)
    return frames


def vectorised(frames: dict[str, pd.DataFrame]) -> tuple[float, dict[str, pd.DataFrame]]:
    args = (frames["close"], frames["high"], frames["low"], frames["volume"])
    result = universe_indicators(*args)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        result = universe_indicators(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def per_symbol(frames: dict[str, pd.DataFrame]) -> tuple[float, dict[str, np.ndarray]]:
    index, columns = frames["close"].index, frames["close"].columns
    first = columns[0]
    symbol_indicators(*(frames[f][first] for f in ("close", "high", "low", "volume")))     # warm-up
    out = {k: np.full((len(index), len(columns)), np.nan) for k in UNIVERSE_KEYS}
    t0 = time.perf_counter()
    for j, symbol in enumerate(columns):
        series = symbol_indicators(*(frames[f][symbol] for f in ("close", "high", "low", "volume")))
        rows = index.get_indexer(series["rsi14"].index)
        for key in UNIVERSE_KEYS:
            out[key][rows, j] = series[key].to_numpy()
    return time.perf_counter() - t0, out


def main() -> int:
    frames = universe()
    fast, ours = vectorised(frames)
    slow, ref = per_symbol(frames)
    ratio = slow / fast
    print(f"indicators for {SYMBOLS:,} symbols x {BARS} bars   universe_indicators (best of 5): {fast * 1e3:8.1f} ms   "
          f"per-symbol pandas-ta loop (all {SYMBOLS:,} symbols, once): {slow:7.2f} s   ratio {ratio:,.0f}x")
    worst, nan_ok = 0.0, True
    for key in UNIVERSE_KEYS:
        got, want = ours[key].to_numpy(), ref[key]
        same_nan = bool((np.isnan(got) == np.isnan(want)).all())
        both = ~np.isnan(got) & ~np.isnan(want)
        diff = float(np.abs(got[both] - want[both]).max()) if both.any() else 0.0
        worst, nan_ok = max(worst, diff), nan_ok and same_nan
        print(f"  {key:<15} max |difference| {diff:.3e}   values compared {int(both.sum()):>8,}   "
              f"NaN-ness {'identical' if same_nan else 'DIFFERS'}")
    ok = ratio >= TARGET_RATIO and fast <= TARGET_SECONDS and worst <= TARGET_DIFF and nan_ok
    print(f"targets (>= {TARGET_RATIO:.0f}x the loop, <= {TARGET_SECONDS} s, every max difference <= {TARGET_DIFF:g}, "
          f"NaN-ness identical): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
