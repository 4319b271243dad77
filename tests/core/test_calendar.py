from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from core.calendar import MarketCalendar

HKT = ZoneInfo("Asia/Hong_Kong")
ET = ZoneInfo("America/New_York")


def hkt(*args) -> datetime:
    return datetime(*args, tzinfo=HKT)


@pytest.fixture(scope="module")
def hkex() -> MarketCalendar:
    return MarketCalendar("HKEX")


@pytest.fixture(scope="module")
def nyse() -> MarketCalendar:
    return MarketCalendar("NYSE")


def test_hkex_lunch_break_is_closed_and_reopens_at_one(hkex):
    state = hkex.state(hkt(2026, 11, 25, 12, 30))
    assert state.status == "lunch"
    assert not hkex.is_open(hkt(2026, 11, 25, 12, 30))
    assert state.next_open == hkt(2026, 11, 25, 13, 0)
    assert state.next_close == hkt(2026, 11, 25, 16, 0)
    assert state.next_open.tzinfo == timezone.utc


def test_hkex_session_edges_are_half_open(hkex):
    assert hkex.state(hkt(2026, 11, 25, 9, 29, 59)).status == "pre_open"
    assert hkex.is_open(hkt(2026, 11, 25, 9, 30))
    assert hkex.state(hkt(2026, 11, 25, 11, 59)).interval_end == hkt(2026, 11, 25, 12, 0)
    assert hkex.state(hkt(2026, 11, 25, 12, 0)).status == "lunch"
    assert hkex.is_open(hkt(2026, 11, 25, 13, 0))
    after = hkex.state(hkt(2026, 11, 25, 16, 0))
    assert after.status == "closed" and after.next_close is None
    assert after.next_open == hkt(2026, 11, 26, 9, 30)


@pytest.mark.parametrize("day", [date(2025, 12, 25), date(2026, 2, 17), date(2026, 2, 18), date(2026, 2, 19)])
def test_hkex_holidays_are_closed(hkex, day):
    assert not hkex.is_trading_day(day)
    assert hkex.session_bounds(day) == []
    state = hkex.state(datetime.combine(day, datetime.min.time().replace(hour=11), tzinfo=HKT))
    assert state.status == "closed" and state.session_date is None


def test_weekend_points_to_monday_morning(hkex):
    state = hkex.state(hkt(2026, 11, 28, 11, 0))     # Saturday
    assert state.status == "closed"
    assert state.next_open == hkt(2026, 11, 30, 9, 30)
    assert state.next_open.astimezone(HKT).weekday() == 0


def test_hkex_half_day_has_only_a_morning(hkex):
    bounds = hkex.session_bounds(date(2025, 12, 24))
    assert bounds == [(hkt(2025, 12, 24, 9, 30), hkt(2025, 12, 24, 12, 0))]
    assert hkex.state(hkt(2025, 12, 24, 13, 30)).status == "closed"
    assert len(hkex.minutes_open(date(2025, 12, 24))) == 150


def test_hkex_full_day_has_two_intervals_and_330_minutes(hkex):
    bounds = hkex.session_bounds(date(2026, 11, 25))
    assert bounds == [(hkt(2026, 11, 25, 9, 30), hkt(2026, 11, 25, 12, 0)),
                      (hkt(2026, 11, 25, 13, 0), hkt(2026, 11, 25, 16, 0))]
    minutes = hkex.minutes_open(date(2026, 11, 25))
    assert len(minutes) == 330
    assert minutes[0] == hkt(2026, 11, 25, 9, 30) and minutes[-1] == hkt(2026, 11, 25, 15, 59)
    assert hkt(2026, 11, 25, 12, 0) not in minutes


def test_nyse_early_close_after_thanksgiving(nyse):
    day = date(2026, 11, 27)
    assert not nyse.is_trading_day(date(2026, 11, 26))
    assert nyse.session_bounds(day) == [(datetime(2026, 11, 27, 9, 30, tzinfo=ET), datetime(2026, 11, 27, 13, 0, tzinfo=ET))]
    assert nyse.is_open(datetime(2026, 11, 27, 12, 59, tzinfo=ET))
    assert not nyse.is_open(datetime(2026, 11, 27, 13, 0, tzinfo=ET))
    assert len(nyse.minutes_open(day)) == 210
    assert len(nyse.minutes_open(date(2026, 11, 25))) == 390


def test_trading_day_navigation(hkex):
    assert hkex.trading_days(date(2026, 2, 13), date(2026, 2, 23)) == [
        date(2026, 2, 13), date(2026, 2, 16), date(2026, 2, 20), date(2026, 2, 23)]
    assert hkex.previous_trading_day(date(2026, 2, 20)) == date(2026, 2, 16)
    assert hkex.next_trading_day(date(2026, 2, 16)) == date(2026, 2, 20)
    assert hkex.next_trading_day(date(2026, 11, 27)) == date(2026, 11, 30)


def test_bad_input_gets_a_clear_error(hkex):
    with pytest.raises(ValueError, match="naive"):
        hkex.state(datetime(2026, 11, 25, 10, 0))
    with pytest.raises(ValueError, match="outside"):
        hkex.is_trading_day(date(1989, 12, 29))
    with pytest.raises(ValueError, match="unknown exchange"):
        MarketCalendar("LSE")


def test_us_aliases_share_the_nyse_calendar():
    assert MarketCalendar("NASDAQ").code == MarketCalendar("US").code == "XNYS"
    assert MarketCalendar("HKEX").tz == HKT


def test_real_history_before_2006_is_in_the_calendar(hkex):
    """GOOG daily (backtesting.py) starts in 2004: the calendar covers it, with Hong Kong's own holidays."""
    days = hkex.trading_days(date(2005, 1, 3), date(2005, 12, 30))
    assert len(days) == 247 and date(2005, 2, 9) not in days          # Lunar New Year 2005
    assert MarketCalendar("NYSE").is_trading_day(date(2004, 8, 19))     # GOOG's first day of trading


# ------------------------------------------------------------ the session-table cache

def _fresh_table(monkeypatch, cache: Path, start: date = date(2024, 1, 2), end: date = date(2025, 12, 31)):
    """Load a table as a new process would (lru cache emptied), with the disk cache in `cache`."""
    from core import calendar
    monkeypatch.setenv("CATALYST_CACHE_DIR", str(cache))
    calendar._load_table.cache_clear()
    try:
        return calendar._load_table("XHKG", start, end)
    finally:
        calendar._load_table.cache_clear()


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("dates", "opens", "break_starts",
                                                                       "break_ends", "closes"))


def test_a_cached_session_table_is_the_one_exchange_calendars_builds(monkeypatch, tmp_path):
    from core import calendar
    built = _fresh_table(monkeypatch, tmp_path)
    files = list((tmp_path / "calendars").glob("XHKG_20240102_20251231_xcals-*.npz"))
    assert len(files) == 1                               # keyed by calendar, range and library version
    monkeypatch.setattr(calendar, "_build_table", lambda *a: pytest.fail("the cache was not used"))
    cached = _fresh_table(monkeypatch, tmp_path)
    assert _same(cached, built)
    assert cached.dates.dtype == np.dtype("datetime64[D]") and cached.opens.dtype == np.int64


def test_a_damaged_cache_file_is_rebuilt_not_believed(monkeypatch, tmp_path):
    built = _fresh_table(monkeypatch, tmp_path)
    (file,) = (tmp_path / "calendars").glob("*.npz")
    file.write_bytes(file.read_bytes()[:1000])            # truncated by a full disk, say
    assert _same(_fresh_table(monkeypatch, tmp_path), built)
    assert _same(_fresh_table(monkeypatch, tmp_path), built)   # and written whole again


def test_an_unwritable_cache_directory_only_costs_the_build(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    table = _fresh_table(monkeypatch, blocker / "cache")
    assert table.dates[0] == np.datetime64("2024-01-02") and len(table.dates) > 400


def test_a_new_exchange_calendars_release_builds_afresh(monkeypatch, tmp_path):
    from core import calendar
    _fresh_table(monkeypatch, tmp_path)
    monkeypatch.setattr(calendar, "_xcals_version", lambda: "99.0")
    _fresh_table(monkeypatch, tmp_path)
    (kept,) = (tmp_path / "calendars").glob("*.npz")      # the old release's file is replaced, not kept beside
    assert kept.stem.endswith("_xcals-99.0")
