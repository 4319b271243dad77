"""data/scan.py: the filters drop what they say, the score ranks by its terms, and a day's scan is reused."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from core.clock import SimulatedClock
from core.config_model import ScanConfig
from data.scan import rank_universe
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings

BARS = 80


def frames(series: dict[str, np.ndarray], *, volume: float = 1_000_000.0, gap: float = 0.0) -> dict:
    """Daily frames from closes by symbol; open = previous close x (1 + gap) on the last bar."""
    index = pd.date_range("2026-01-02", periods=BARS, freq="B", tz="UTC")
    close = pd.DataFrame(series, index=index)
    open_ = close.shift(1).fillna(close)
    open_.iloc[-1] = close.iloc[-2] * (1 + gap)
    return {"open": open_, "high": close * 1.01, "low": close * 0.99, "close": close,
            "volume": pd.DataFrame(volume, index=index, columns=close.columns)}


def rising(start: float, daily: float) -> np.ndarray:
    """A steady climb with a small zigzag (RSI stays below 80)."""
    steps = np.where(np.arange(BARS) % 3 == 2, -daily * 1.5, daily)
    return start * np.cumprod(1 + steps)


CFG = ScanConfig(min_turnover=0, min_history_bars=60)


def test_stronger_momentum_ranks_first_with_its_reasons():
    out = rank_universe(frames({"SLOW": rising(10, 0.002), "FAST": rising(10, 0.006)}), CFG)
    assert [c.symbol for c in out] == ["FAST", "SLOW"]
    assert [c.rank for c in out] == [1, 2] and out[0].score > out[1].score
    assert out[0].reasons[0].startswith("20-day return +") and out[0].reasons[-1].startswith("RSI(14) ")
    assert abs(out[0].price - rising(10, 0.006)[-1]) < 1e-9


def test_each_filter_drops_its_symbol():
    data = {"OK": rising(10, 0.003), "CHEAP": rising(0.5, 0.003), "DEAR": rising(900, 0.003),
            "SHORT": np.r_[np.full(30, np.nan), rising(10, 0.003)[30:]],
            "HOT": 10 * np.cumprod(np.full(BARS, 1.02))}            # straight up: RSI 100
    out = rank_universe(frames(data), ScanConfig(min_turnover=0, min_price=1, max_price=500, min_history_bars=60))
    assert [c.symbol for c in out] == ["OK"]
    thin = rank_universe(frames({"OK": rising(10, 0.003)}, volume=10.0), ScanConfig(min_turnover=1_000_000))
    assert thin == []                                             # turnover ~ 10 x 10 HKD a day


def test_a_board_lot_dearer_than_the_position_limit_is_not_a_candidate():
    data = {"SMALL_LOT": rising(20, 0.003), "BIG_LOT": rising(20, 0.003)}
    lots = pd.Series({"SMALL_LOT": 100.0, "BIG_LOT": 2000.0})
    out = rank_universe(frames(data), CFG, lot_sizes=lots, max_lot_value=10_000)
    assert [c.symbol for c in out] == ["SMALL_LOT"]               # 2,000 x ~20 = ~40,000 > 10,000


def test_an_opening_gap_moves_the_score_and_is_named():
    base = {"A": rising(10, 0.003)}
    up, flat, down = (rank_universe(frames(base, gap=g), CFG)[0] for g in (0.02, 0.0, -0.02))
    assert abs(up.score - flat.score - 0.1) < 1e-9
    assert abs(flat.score - down.score - 0.1) < 1e-9
    assert any(r.startswith("opening gap +2.0%") for r in up.reasons)
    assert not any(r.startswith("opening gap") for r in flat.reasons)


def test_ties_keep_the_universe_order_and_top_n_cuts():
    data = {f"S{k}": rising(10, 0.003) for k in range(5)}          # identical: equal scores
    out = rank_universe(frames(data), ScanConfig(min_turnover=0, top_n=3))
    assert [c.symbol for c in out] == ["S0", "S1", "S2"]


async def test_the_days_scan_is_reused_until_the_next_day(pool, agent_id):
    s = await build_services(agent_settings(agent_id, market_data={"universe_size": 60}), pool,
                             SimulatedClock(OPEN_AT))
    first = await s.scanner.latest_or_run(cycle_id=None)
    assert first, "the simulated universe should give candidates"
    rows = await pool.fetchval("SELECT count(*) FROM scan_results WHERE agent_id = $1", agent_id)
    s.clock.advance(timedelta(hours=2))
    again = await s.scanner.latest_or_run(cycle_id=None)
    assert [c.symbol for c in again] == [c.symbol for c in first]
    assert [c.symbol for c in await s.scanner.latest_or_run(cycle_id=None, limit=3)] == [c.symbol for c in first[:3]]
    assert await pool.fetchval("SELECT count(*) FROM scan_results WHERE agent_id = $1", agent_id) == rows
    s.clock.advance(timedelta(days=1))
    await s.scanner.latest_or_run(cycle_id=None)                     # a new day: a new scan is recorded
    assert await pool.fetchval("SELECT count(*) FROM scan_results WHERE agent_id = $1", agent_id) > rows


async def test_the_scan_served_again_is_the_one_the_database_holds_and_a_new_scan_replaces_it(pool, agent_id):
    """The scan read last is kept in memory for the cycles after it: it must equal a fresh read of the database,
    and after this scanner records a new scan the next call reads that one (here marked in the database)."""
    s = await build_services(agent_settings(agent_id, market_data={"universe_size": 60}), pool,
                             SimulatedClock(OPEN_AT))
    await s.scanner.run(cycle_id=None)
    s.clock.advance(timedelta(minutes=30))
    read = await s.scanner.latest_or_run(cycle_id=None)           # from the database
    s.clock.advance(timedelta(minutes=30))
    kept = await s.scanner.latest_or_run(cycle_id=None, limit=5)  # from memory
    assert kept == read[:5]
    s.clock.advance(timedelta(minutes=1))
    await s.scanner.run(cycle_id=None)
    await pool.execute("UPDATE scan_results SET price = price + 1000 WHERE agent_id = $1 AND scanned_at = $2",
                       agent_id, s.clock.now())                     # the new scan's rows, told apart
    s.clock.advance(timedelta(minutes=1))
    served = await s.scanner.latest_or_run(cycle_id=None)
    assert [(c.symbol, c.price) for c in served] == [(c.symbol, c.price + 1000) for c in read]


async def test_a_scan_its_reads_and_its_rows_are_no_change_to_what_sole_reads_serve_again(pool, agent_id):
    """scan_results and bars are read by no SoleReads query (runtime/lane_pool.py): recording a scan, reading the
    day's scan back and asking for the newest bar leave the pool's count of changes where it was, so a replay's
    account and position reads are served again across them."""
    s = await build_services(agent_settings(agent_id, market_data={"universe_size": 60}), pool,
                             SimulatedClock(OPEN_AT))
    await s.scanner.latest_or_run(cycle_id=None)          # the bar store synced, the first scan recorded
    before = pool.changes
    await s.scanner.run(cycle_id=None)                    # another scan recorded
    s.clock.advance(timedelta(minutes=30))
    assert await s.scanner.latest_or_run(cycle_id=None)   # read back from the database
    assert await s.bar_store.last_bar_end("1d") is not None
    assert pool.changes == before
