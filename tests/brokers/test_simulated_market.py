from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from core.calendar import MarketCalendar
from brokers.paper.simulated import SimulatedMarket
from brokers.paper.tick_grid import TickGrid
from core.feeds import MarketDataSource
from core.errors import UnknownSymbol
from core.ticks import is_on_tick, round_to_tick

ROOT = Path(__file__).resolve().parents[2]
HKT = ZoneInfo("Asia/Hong_Kong")
ET = ZoneInfo("America/New_York")
SEED = 7
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=HKT)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=SEED, exchange="HKEX", calendar=MarketCalendar("HKEX"))


def day_span(day: date, tz=HKT) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return start, start + timedelta(days=1)


_PROBE = """
import json, sys
from datetime import datetime
sys.path.insert(0, {root!r})
from brokers.paper.simulated import SimulatedMarket
m = SimulatedMarket(seed={seed}, exchange="HKEX", n_symbols={n})
at = datetime.fromisoformat({at!r})
for s in {warmup!r}:
    m.quote(s, at)
q = m.quote("S0042", at)
bars = m.bars("S0042", "5m", datetime.fromisoformat({start!r}), at)
print(json.dumps({{"quote": [str(q.bid), str(q.ask), str(q.last), q.volume, q.timestamp.isoformat()],
                  "bars": [[b.start.isoformat(), str(b.open), str(b.high), str(b.low), str(b.close), b.volume]
                           for b in bars]}}))
"""


def test_two_processes_agree_on_the_same_instant(market):
    at = datetime(2026, 11, 24, 10, 47, 31, tzinfo=HKT)
    start = datetime(2026, 11, 24, 9, 0, tzinfo=HKT)
    # different universe sizes and different call orders: neither may change S0042's prices
    scripts = [_PROBE.format(root=str(ROOT), seed=SEED, n=n, at=at.isoformat(), start=start.isoformat(), warmup=w)
               for n, w in ((50, ["S0001", "S0049"]), (300, ["S0299"]))]
    procs = [subprocess.Popen([sys.executable, "-c", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in scripts]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    q = market.quote("S0042", at)
    here = [str(q.bid), str(q.ask), str(q.last), q.volume, q.timestamp.isoformat()]
    assert outs[0] == outs[1]
    assert outs[0]["quote"] == here
    assert len(outs[0]["bars"]) == 15        # 09:30 .. 10:40, the 10:45 bar is still forming


def test_extending_the_horizon_never_rewrites_history():
    early = SimulatedMarket(seed=3, n_symbols=12)
    late = SimulatedMarket(seed=3, n_symbols=12)
    t_2016 = datetime(2016, 6, 1, 16, 30, tzinfo=HKT)
    before = early.daily_frame(["S0005"], t_2016, 60)["close"]           # computes only the first block
    late.quote("S0005", NOW)                                               # computes through 2026
    assert late.daily_frame(["S0005"], t_2016, 60)["close"].equals(before)
    early.quote("S0005", NOW)                                              # now extends its own path
    assert early.daily_frame(["S0005"], t_2016, 60)["close"].equals(before)


@pytest.mark.parametrize("symbol", ["S0001", "S0007", "S0100", "S0239"])
@pytest.mark.parametrize("day", [date(2026, 11, 24), date(2025, 12, 24), date(2020, 3, 16)])
def test_daily_bar_is_the_aggregate_of_its_minutes(market, symbol, day):
    a, b = day_span(day)
    (daily,) = market.bars(symbol, "1d", a, b)
    for tf in ("1m", "15m", "1h"):
        bars = market.bars(symbol, tf, a, b)
        assert (bars[0].open, max(x.high for x in bars), min(x.low for x in bars), bars[-1].close,
                sum(x.volume for x in bars)) == (daily.open, daily.high, daily.low, daily.close, daily.volume)
    minutes = market.bars(symbol, "1m", a, b)
    assert len(minutes) == len(market.calendar.minutes_open(day))
    assert all(m.low <= min(m.open, m.close) and m.high >= max(m.open, m.close) and m.volume > 0 for m in minutes)
    assert all(m2.open == m1.close for m1, m2 in zip(minutes, minutes[1:]))


@pytest.mark.parametrize("end", [
    datetime(2026, 11, 24, 10, 47, 31, tzinfo=HKT), datetime(2026, 11, 24, 10, 48, tzinfo=HKT),
    datetime(2026, 11, 24, 12, 30, tzinfo=HKT), datetime(2026, 11, 24, 13, 0, 5, tzinfo=HKT),
    datetime(2026, 11, 24, 16, 0, tzinfo=HKT), datetime(2026, 11, 24, 15, 59, 59, tzinfo=HKT),
    datetime(2026, 11, 28, 11, 0, tzinfo=HKT)])
def test_nothing_after_end_is_ever_returned(market, end):
    start = end - timedelta(days=6)
    for tf, minutes in (("1m", 1), ("5m", 5), ("30m", 30), ("1h", 60)):
        bars = market.bars("S0010", tf, start, end)
        assert bars, tf
        for bar in bars:
            assert start <= bar.start < end
            assert bar.start + timedelta(minutes=minutes) <= end or _interval_end(market, bar.start) <= end
    daily = market.bars("S0010", "1d", start, end)
    assert all(market.calendar.session_bounds(b.start.astimezone(HKT).date())[-1][1] <= end for b in daily)
    frame = market.daily_frame(["S0010", "S0011"], end, 30)["close"]
    last_day = frame.index[-1].date()
    assert market.calendar.session_bounds(last_day)[-1][1] <= end
    # the quote is exactly the close of the last minute bar that is out
    minutes = market.bars("S0010", "1m", start, end)
    q = market.quote("S0010", end)
    assert q.last == minutes[-1].close and q.timestamp <= end
    assert q.timestamp == minutes[-1].start + timedelta(minutes=1)


def _interval_end(market, bar_start: datetime) -> datetime:
    day = bar_start.astimezone(HKT).date()
    return next(b for a, b in market.calendar.session_bounds(day) if a <= bar_start < b)


def test_lunch_break_quote_is_the_morning_close(market):
    a, _ = day_span(date(2026, 11, 24))
    morning = market.bars("S0020", "1m", a, datetime(2026, 11, 24, 12, 0, tzinfo=HKT))
    assert morning[-1].start == datetime(2026, 11, 24, 11, 59, tzinfo=HKT)
    for t in (datetime(2026, 11, 24, 12, 0, tzinfo=HKT), datetime(2026, 11, 24, 12, 30, tzinfo=HKT),
              datetime(2026, 11, 24, 13, 0, 30, tzinfo=HKT)):
        q = market.quote("S0020", t)
        assert q.last == morning[-1].close
        assert q.volume == sum(b.volume for b in morning)
        assert q.bid < q.last < q.ask
        assert is_on_tick(q.bid, "hkex") and is_on_tick(q.ask, "hkex")


def test_overnight_and_weekend_quote_is_the_last_close(market):
    (friday,) = market.bars("S0030", "1d", *day_span(date(2026, 11, 20)))
    for t in (datetime(2026, 11, 20, 16, 0, tzinfo=HKT), datetime(2026, 11, 22, 3, 0, tzinfo=HKT),
              datetime(2026, 11, 23, 9, 30, 30, tzinfo=HKT)):       # Monday, first minute not finished yet
        q = market.quote("S0030", t)
        assert q.last == friday.close and q.volume == friday.volume
        assert q.timestamp == datetime(2026, 11, 20, 16, 0, tzinfo=HKT)


def test_prices_are_on_tick_and_positive(market):
    symbols = [i.symbol for i in market.instruments()]
    frames = market.daily_frame(symbols, NOW, 250)
    for field in ("open", "high", "low", "close"):
        values = frames[field].to_numpy().ravel()
        assert (values > 0).all()
        assert all(is_on_tick(Decimal(str(float(v))), "hkex") for v in values[::7])
    penny = [s for s in symbols if frames["close"][s].iloc[-1] < 1][:3]
    assert penny, "the universe should have penny stocks"
    for s in penny:
        for bar in market.bars(s, "1m", *day_span(date(2026, 11, 24))):
            assert all(is_on_tick(p, "hkex") for p in (bar.open, bar.high, bar.low, bar.close))


def test_vectorised_rounding_agrees_with_the_decimal_tick_table():
    rng = np.random.default_rng(0)
    for scheme in ("hkex", "us"):
        grid = TickGrid(scheme, Decimal("0.01"))
        prices = np.exp(rng.uniform(np.log(0.02), np.log(9000), 4000))
        units = grid.round(prices)
        for p, u in zip(prices, units):
            expected = round_to_tick(Decimal(repr(float(p))), scheme, "nearest")
            assert Decimal(int(u)) / 10_000 == expected


def test_moves_are_big_enough_for_stops_and_targets(market):
    symbols = [i.symbol for i in market.instruments()]
    f = market.daily_frame(symbols, NOW, 250)
    close, open_ = f["close"], f["open"]
    change = close.pct_change().iloc[1:]
    assert (change < -0.03).any().mean() > 0.5          # most symbols see a -3% day within a year
    assert (change > 0.08).any().mean() > 0.2           # and many a +8% day
    gaps = (open_ / close.shift(1) - 1).iloc[1:]
    assert (gaps.abs() > 0.03).sum().sum() > 100        # opening gaps happen
    assert 0.01 < change.std().median() < 0.06          # but it is a market, not noise


def test_universe_looks_like_hkex(market):
    instruments = market.instruments()
    assert len(instruments) >= 200
    assert len({i.symbol for i in instruments}) == len(instruments)
    assert all(i.symbol.startswith("S") and i.name.startswith("Sim ") for i in instruments)
    assert {i.currency for i in instruments} == {"HKD"} and {i.tick_scheme for i in instruments} == {"hkex"}
    lots = {i.lot_size for i in instruments}
    assert lots <= {100, 200, 400, 500, 1000, 2000, 4000, 5000, 10000, 20000} and len(lots) >= 5
    last = market.daily_frame([i.symbol for i in instruments], NOW, 1)["close"].iloc[-1]
    assert last.min() < 1 and last.max() > 200
    assert isinstance(market, MarketDataSource)


def test_us_market_uses_us_conventions():
    us = SimulatedMarket(seed=SEED, exchange="NYSE", n_symbols=30)
    inst = us.instruments()
    assert inst[0].symbol == "SIMA" and inst[26].symbol == "SIMAA"
    assert {i.lot_size for i in inst} == {1} and {i.currency for i in inst} == {"USD"}
    at = datetime(2026, 11, 27, 12, 59, 30, tzinfo=ET)       # day after Thanksgiving, closes 13:00
    q = us.quote("SIMC", at)
    assert is_on_tick(q.last, "us") and q.ask - q.bid == Decimal("0.02")
    bars = us.bars("SIMC", "1m", *day_span(date(2026, 11, 27), ET))
    assert len(bars) == 210


def test_unknown_symbol_and_bad_input_are_clear(market):
    with pytest.raises(KeyError, match="S9999"):
        market.instrument("S9999")
    with pytest.raises(UnknownSymbol):
        market.quote("0700", NOW)
    with pytest.raises(ValueError, match="naive"):
        market.quote("S0001", datetime(2026, 11, 24, 10, 0))
    with pytest.raises(ValueError, match="timeframe"):
        market.bars("S0001", "2m", NOW - timedelta(days=1), NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2015"):
        market.quote("S0001", datetime(2012, 5, 2, 3, 0, tzinfo=timezone.utc))


def test_the_paper_exchange_modules_each_stay_under_500_lines():
    """A module does one thing: the simulated market is its prices (price_paths), its tick grid and its cache."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "brokers" / "paper").glob("*.py")}
    assert max(sizes.values()) <= 500, sizes


# ------------------------------------------------------------ the daily paths' disk cache

def _daily_arrays(m: SimulatedMarket) -> dict[str, np.ndarray]:
    m.quote("S0003", NOW)                                  # computes (or loads) the paths through today
    return {f: getattr(m._daily, f) for f in ("open", "high", "low", "close", "lots", "sigma_in")}


def test_a_market_loaded_from_the_cache_is_the_market_computed(monkeypatch, tmp_path):
    from core import array_cache
    monkeypatch.setenv("CATALYST_CACHE_DIR", str(tmp_path))
    first = _daily_arrays(SimulatedMarket(seed=11, n_symbols=30))           # computed, then stored
    (entry,) = (tmp_path / "simulated").glob("XHKG_seed11_n30_*.npz")
    monkeypatch.setattr(SimulatedMarket, "_compute_daily", lambda *a: pytest.fail("the cache was not used"))
    loaded = _daily_arrays(SimulatedMarket(seed=11, n_symbols=30))
    monkeypatch.undo()
    monkeypatch.setattr(array_cache, "load", lambda *a: None)                # no cache at all
    monkeypatch.setenv("CATALYST_CACHE_DIR", str(tmp_path / "elsewhere"))
    computed = _daily_arrays(SimulatedMarket(seed=11, n_symbols=30))
    for f in computed:
        assert loaded[f].dtype == computed[f].dtype and np.array_equal(loaded[f], computed[f]), f
        assert np.array_equal(first[f], computed[f]), f
    assert entry.exists()


def test_a_cache_entry_of_another_shape_is_computed_again(monkeypatch, tmp_path):
    from core import array_cache
    monkeypatch.setenv("CATALYST_CACHE_DIR", str(tmp_path))
    good = _daily_arrays(SimulatedMarket(seed=12, n_symbols=20))
    (entry,) = (tmp_path / "simulated").glob("*.npz")
    array_cache.store("simulated", entry.stem, {f: a[:5] for f, a in good.items()})   # a stranger's rows
    again = _daily_arrays(SimulatedMarket(seed=12, n_symbols=20))
    assert all(np.array_equal(again[f], good[f]) for f in good)
