from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

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
