"""Replay on real history no one here wrote: GOOG daily (shipped with backtesting.py, 2010 H1) under the NYSE calendar. The
replay trades, and every fill is inside its day's bar (a slipped market order never fills below the low or above
the high) and on the US tick grid; an hourly series trades on its own bars."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from core.calendar import MarketCalendar
from core.config_model import PaperConfig
from core.ticks import is_on_tick
from replay.runner import run_replay
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings
from tests.venues import US_FEES, US_MARKET


@pytest.fixture(scope="module")
def goog_dir(tmp_path_factory):
    from backtesting.test import GOOG
    path = tmp_path_factory.mktemp("goog")
    frame = GOOG.rename(columns=str.lower)
    frame.index = frame.index.strftime("%Y-%m-%d")
    frame.index.name = "timestamp"
    frame.to_csv(path / "GOOG.csv")
    return path, {d: row for d, row in frame.iterrows()}


@pytest.mark.slow
async def test_a_goog_daily_replay_trades_and_every_fill_is_inside_its_bar(pool, agent_id, goog_dir, tmp_path):
    directory, by_day = goog_dir
    settings = agent_settings(agent_id, scan={"max_price": Decimal(2000), "min_history_bars": 60},
                              rules={"rsi_min": Decimal(30), "rsi_max": Decimal(80), "require_above_sma20": False})
    settings = settings.__class__(config=settings.config.model_copy(update={
        "market": US_MARKET, "paper": PaperConfig(initial_cash=Decimal(100_000), fees=US_FEES)}),
        env=settings.env, config_path=settings.config_path)
    result = await run_replay(settings, pool, build=builder(pool), start=date(2010, 1, 4), end=date(2010, 6, 30),
                              data=directory, progress=False, out_dir=tmp_path)
    assert result.failed is None
    fills = await pool.fetch("SELECT side, price, filled_at FROM fills WHERE agent_id = $1", result.agent_id)
    assert fills, "the replay placed no trade on real data"
    nyse = MarketCalendar("NYSE")
    for f in fills:
        bar = by_day[nyse.local_date(f["filled_at"]).isoformat()]
        assert Decimal(str(bar["low"])) <= f["price"] <= Decimal(str(bar["high"])), (f, dict(bar))
        assert is_on_tick(f["price"], "us"), f


@pytest.mark.slow
async def test_an_hourly_replay_on_real_data_trades_on_its_own_bars(pool, agent_id, tmp_path):
    """EURUSD hourly (backtesting.py) as a US symbol: the paper venue fills on the file's hourly bars (it used to ask
    for one-minute bars, which an hourly file cannot give, and no order ever filled); fills are stamped at the end
    of the bar they traded in, never before it completed."""
    from backtesting.test import EURUSD
    directory = tmp_path / "fx"
    directory.mkdir()
    frame = EURUSD.rename(columns=str.lower)
    frame.index = frame.index.tz_localize("UTC").strftime("%Y-%m-%dT%H:%M:%S+00:00")
    frame.index.name = "timestamp"
    frame.to_csv(directory / "EURUSD.csv")
    settings = agent_settings(agent_id, scan={"min_turnover": Decimal(0), "min_history_bars": 20},
                              rules={"rsi_min": Decimal(1), "rsi_max": Decimal(99), "require_above_sma20": False},
                              trading={"min_position_value": Decimal(100)})
    settings = settings.__class__(config=settings.config.model_copy(update={
        "market": US_MARKET, "paper": PaperConfig(initial_cash=Decimal(100_000), fees=US_FEES)}),
        env=settings.env, config_path=settings.config_path)
    result = await run_replay(settings, pool, build=builder(pool), start=date(2017, 6, 1), end=date(2017, 7, 31),
                              data=directory, progress=False, out_dir=tmp_path)
    assert result.failed is None, result.failed
    fills = await pool.fetch("SELECT price, filled_at FROM fills WHERE agent_id = $1", result.agent_id)
    assert fills, await pool.fetch("SELECT status, reason FROM orders WHERE agent_id = $1", result.agent_id)
    hourly = {ts: row for ts, row in frame.iterrows()}
    worked = [f for f in fills if f["filled_at"].minute == 0 and f["filled_at"].second == 0]
    for f in worked:                       # a working order's fill: at the end of the hourly bar it traded in
        start = (f["filled_at"] - __import__("datetime").timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        assert start in hourly, f
