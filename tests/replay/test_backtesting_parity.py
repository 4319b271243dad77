"""The rules engine against backtesting.py: the same entry and exit rules written as a backtesting.py Strategy
(bench/bench_replay_vs_backtesting.py) make exactly the trades our replay makes over real GOOG daily bars (shipped
with backtesting.py): same days, sides, prices and quantities. No timing here (the bench measures speed)."""
from __future__ import annotations

from datetime import date

import pytest

from bench.bench_replay_vs_backtesting import (backtest_trades, normalise, parity_settings, real_series,
                                               replay_trades, write_bar_file)


@pytest.mark.slow
async def test_a_goog_replay_trades_exactly_as_the_backtesting_py_strategy(pool, agent_id, tmp_path):
    start, end = date(2010, 1, 4), date(2010, 6, 30)
    daily = real_series()["GOOG"]
    daily = daily[daily.index.date <= end]
    directory = tmp_path / "bars"
    directory.mkdir()
    write_bar_file(directory, "GOOG", daily)
    settings = parity_settings(agent_id)
    ours, _ = await replay_trades(pool, settings, directory, start, end, tmp_path)
    theirs, _ = backtest_trades(settings, daily, start, end, "GOOG", directory)
    assert len(ours) >= 6, "the window should trade (entries and exits)"
    assert {t.side for t in ours} == {"buy", "sell"}
    assert normalise(ours) == normalise(theirs)
