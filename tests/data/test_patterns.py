"""patterns.py: each pattern fires on a hand-built series with the documented direction, levels and bar range, and
stays silent on a near miss; random frames never raise and confidences stay in [0, 1]."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from data.patterns import Pattern, detect_patterns

DIRECTIONS = {"bullish", "bearish", "neutral"}


# ---------------------------------------------------------------- building series

def frame(rows: list[tuple[float, float, float, float, float]]) -> pd.DataFrame:
    """(open, high, low, close, volume) rows on consecutive business days."""
    index = pd.date_range("2026-01-05", periods=len(rows), freq="B", tz="UTC")
    return pd.DataFrame(rows, columns=["open", "high", "low", "close", "volume"], index=index, dtype=float)


def walk(closes, *, spread=0.5, volume=1000.0) -> list[tuple[float, float, float, float, float]]:
    """Bars opening at the previous close, high/low `spread` beyond the body."""
    rows, prev = [], closes[0]
    for c in closes:
        o = prev
        rows.append((o, max(o, c) + spread, min(o, c) - spread, c, volume))
        prev = c
    return rows


def flat(n, price=100.0, *, volume=1000.0) -> list[tuple[float, float, float, float, float]]:
    # Alternating closes so no bar is a doji and equal highs/lows make no swing points.
    return [(price, price + 0.5, price - 0.5, price + (0.2 if k % 2 else -0.2), volume) for k in range(n)]


def named(patterns: list[Pattern], name: str) -> Pattern | None:
    hits = [p for p in patterns if p.name == name]
    assert len(hits) <= 1, f"{name} reported {len(hits)} times"
    return hits[0] if hits else None


def at(f: pd.DataFrame, k: int) -> datetime:
    return f.index[k].to_pydatetime()


def assert_pattern(p: Pattern | None, f: pd.DataFrame, direction: str, start: int, end: int, **levels) -> Pattern:
    assert p is not None
    assert p.direction == direction
    assert (p.start, p.end) == (at(f, start), at(f, end))
    for key, value in levels.items():
        assert p.levels[key] == pytest.approx(value, abs=1e-9), key
    assert 0 <= p.confidence <= 1
    return p


# ---------------------------------------------------------------- breakout / breakdown

def test_breakout_fires_on_a_close_above_the_20_bar_high_on_volume():
    f = frame(flat(25) + [(100.5, 103.0, 100.4, 102.5, 2000.0)])
    p = assert_pattern(named(detect_patterns(f), "breakout"), f, "bullish", 5, 25, breakout_level=100.5, stop=100.4)
    assert p.confidence == pytest.approx(0.5 + 0.25 * (2.0 - 1.5) / 1.5 + 0.25 * min((102.5 / 100.5 - 1) / 0.03, 1))


def test_breakout_needs_volume_above_one_and_a_half_times_the_average():
    f = frame(flat(25) + [(100.5, 103.0, 100.4, 102.5, 1500.0)])
    assert named(detect_patterns(f), "breakout") is None


def test_breakout_needs_the_close_not_just_the_high_above_the_range():
    f = frame(flat(25) + [(100.2, 103.0, 100.0, 100.4, 3000.0)])
    assert named(detect_patterns(f), "breakout") is None


def test_breakdown_fires_on_a_close_below_the_20_bar_low_on_volume():
    f = frame(flat(25) + [(99.5, 99.6, 97.0, 97.5, 2500.0)])
    assert_pattern(named(detect_patterns(f), "breakdown"), f, "bearish", 5, 25, breakdown_level=99.5, stop=99.6)


def test_breakdown_near_miss_without_volume():
    f = frame(flat(25) + [(99.5, 99.6, 97.0, 97.5, 1400.0)])
    assert named(detect_patterns(f), "breakdown") is None


# ---------------------------------------------------------------- bull flag

def flag_rows(*, pole_top=112.0, flag_volume=1200.0):
    rows = flat(14)
    rows.append((100.0, 100.4, 99.0, 100.0, 1000.0))                    # the pole's low, bar 14
    for c in np.linspace(102.0, pole_top, 5):                            # the pole, bars 15..19
        rows.append((c - 2.0, c + 0.5, c - 2.2, c, 3000.0))
    for c in (111.5, 111.0, 110.8, 110.3, 110.0):                        # the flag, bars 20..24
        rows.append((c + 0.1, c + 0.4, c - 0.4, c, flag_volume))
    return rows


def test_bull_flag_fires_on_a_strong_pole_and_a_tight_drifting_flag_on_lighter_volume():
    f = frame(flag_rows())
    p = assert_pattern(named(detect_patterns(f), "bull_flag"), f, "bullish", 14, 24,
                       breakout_level=111.9, stop=109.6, target=111.9 + (112.5 - 99.0))
    assert p.confidence > 0.6


def test_bull_flag_needs_the_flag_volume_to_dry_up():
    assert named(detect_patterns(frame(flag_rows(flag_volume=2500.0))), "bull_flag") is None


def test_bull_flag_needs_a_pole_of_at_least_8_percent():
    rows = flag_rows(pole_top=106.0)
    rows[20:] = [(c + 0.1, c + 0.4, c - 0.4, c, 1200.0) for c in (105.6, 105.4, 105.3, 105.1, 105.0)]
    assert named(detect_patterns(frame(rows)), "bull_flag") is None


def test_bull_flag_fails_when_the_flag_gives_back_more_than_half_the_pole():
    rows = flag_rows()
    rows[-1] = (106.0, 106.4, 105.0, 105.5, 1200.0)                      # retraces 7.5 of a 13.5 pole
    assert named(detect_patterns(frame(rows)), "bull_flag") is None


# ---------------------------------------------------------------- double bottom / top

BOTTOM = [110, 108, 106, 104, 102, 100, 102, 104, 106, 108, 106, 104, 102, 101, 103, 105, 107]


def test_double_bottom_confirmed_by_a_close_above_the_neckline():
    f = frame(walk(BOTTOM + [109.5]))
    p = assert_pattern(named(detect_patterns(f), "double_bottom"), f, "bullish", 5, 17,
                       breakout_level=108.5, stop=99.5, target=117.5, confirmed=1.0)
    assert p.confidence >= 0.6


def test_double_bottom_unconfirmed_once_the_second_low_is_a_known_swing():
    f = frame(walk(BOTTOM[:16]))                                        # second low at bar 13, known at bar 15
    p = assert_pattern(named(detect_patterns(f), "double_bottom"), f, "bullish", 5, 15,
                       breakout_level=108.5, stop=99.5, confirmed=0.0)
    assert p.confidence < 0.6


def test_double_bottom_confirmed_long_ago_is_not_news():
    f = frame(walk(BOTTOM + [109.5, 110, 111, 112, 113]))
    assert named(detect_patterns(f), "double_bottom") is None


def test_a_low_under_the_bottoms_cancels_the_double_bottom():
    assert named(detect_patterns(frame(walk(BOTTOM[:16] + [98.5]))), "double_bottom") is None


def test_double_bottom_needs_the_lows_within_3_percent():
    closes = BOTTOM[:13] + [97, 99, 101, 103, 109.5]                   # second low 96.5 vs 99.5: 3.1% apart
    assert named(detect_patterns(frame(walk(closes))), "double_bottom") is None


TOP = [90, 92, 94, 96, 98, 100, 98, 96, 94, 92, 94, 96, 98, 99, 97, 95, 93]


def test_double_top_confirmed_by_a_close_below_the_trough():
    f = frame(walk(TOP + [90.5]))
    assert_pattern(named(detect_patterns(f), "double_top"), f, "bearish", 5, 17,
                   breakdown_level=91.5, stop=100.5, target=82.5, confirmed=1.0)


def test_double_top_needs_a_trough_at_least_5_percent_below():
    closes = [90, 92, 94, 96, 98, 100, 99, 98, 97, 96, 97, 98, 99, 99.5, 98, 96, 95.5]
    assert named(detect_patterns(frame(walk(closes))), "double_top") is None


# ---------------------------------------------------------------- support / resistance

RANGE = [104, 102, 100, 102, 104, 106, 104, 102, 100.5, 102, 104, 106, 105, 104]


def test_support_and_resistance_from_two_touches_each():
    f = frame(walk(RANGE))
    found = detect_patterns(f)
    s = assert_pattern(named(found, "support"), f, "neutral", 2, 8, level=(99.5 + 100.0) / 2, touches=2)
    r = assert_pattern(named(found, "resistance"), f, "neutral", 5, 11, level=106.5, touches=2)
    assert s.confidence == r.confidence == pytest.approx(0.45)


def test_support_needs_the_touches_within_one_and_a_half_percent():
    closes = RANGE[:8] + [97.5] + RANGE[9:]                             # lows 99.5 and 97.0: 2.5% apart
    assert named(detect_patterns(frame(walk(closes))), "support") is None


def test_a_level_broken_since_its_first_touch_is_not_support_even_after_a_recovery():
    closes = RANGE + [102, 97.5, 101, 103, 104]                         # 97.5 closed below 99.75 x (1 - 1.5%)
    assert named(detect_patterns(frame(walk(closes))), "support") is None
    assert named(detect_patterns(frame(walk(RANGE + [102, 99, 101, 103, 104]))), "support") is not None


def test_support_must_lie_below_the_last_close():
    assert named(detect_patterns(frame(walk(RANGE + [102, 99.6]))), "support") is None


# ---------------------------------------------------------------- gaps

def test_gap_up_that_holds_is_bullish():
    f = frame(flat(10) + [(103.0, 104.5, 102.5, 104.0, 1000.0)])
    prev = f["close"].iloc[-2]
    p = assert_pattern(named(detect_patterns(f), "gap_up"), f, "bullish", 9, 10, prev_close=prev, open=103.0,
                       filled=0.0)
    assert p.confidence > 0.5


def test_a_filled_gap_up_is_neutral():
    f = frame(flat(10) + [(103.0, 104.5, 99.5, 100.5, 1000.0)])
    p = assert_pattern(named(detect_patterns(f), "gap_up"), f, "neutral", 9, 10, filled=1.0)
    assert p.confidence == pytest.approx(0.3)


def test_gap_down_that_holds_is_bearish():
    f = frame(flat(10) + [(97.0, 97.5, 95.5, 96.0, 1000.0)])
    assert_pattern(named(detect_patterns(f), "gap_down"), f, "bearish", 9, 10, open=97.0, filled=0.0)


def test_an_opening_move_under_2_percent_is_no_gap():
    found = detect_patterns(frame(flat(10) + [(101.5, 102.0, 101.2, 101.8, 1000.0)]))
    assert named(found, "gap_up") is None and named(found, "gap_down") is None


# ---------------------------------------------------------------- candlesticks

DOWN = [110, 108, 106, 104, 102, 100]
UP = [90, 92, 94, 96, 98, 100]


def test_doji_fires_on_a_tiny_body():
    f = frame(walk(UP) + [(100.0, 101.0, 99.0, 100.05, 1000.0)])
    assert_pattern(named(detect_patterns(f), "doji"), f, "neutral", 6, 6, low=99.0, high=101.0)


def test_a_body_of_15_percent_of_the_range_is_no_doji():
    assert named(detect_patterns(frame(walk(UP) + [(100.0, 101.0, 99.0, 100.3, 1000.0)])), "doji") is None


HAMMER = (99.0, 99.5, 97.0, 99.4, 1000.0)
STAR = (101.0, 103.5, 100.5, 100.6, 1000.0)


def test_hammer_after_a_decline():
    f = frame(walk(DOWN) + [HAMMER])
    p = assert_pattern(named(detect_patterns(f), "hammer"), f, "bullish", 6, 6, low=97.0, high=99.5)
    assert p.confidence == pytest.approx(0.4 + 0.6 * min((2.0 / 2.5 - 0.6) / 0.3, 1))


def test_the_hammer_shape_after_a_rise_is_no_hammer():
    assert named(detect_patterns(frame(walk([90, 92, 94, 96, 98, 99]) + [HAMMER])), "hammer") is None


def test_a_hammer_needs_a_short_upper_shadow():
    assert named(detect_patterns(frame(walk(DOWN) + [(99.0, 100.0, 97.0, 99.4, 1000.0)])), "hammer") is None


def test_shooting_star_after_a_rise():
    f = frame(walk(UP) + [STAR])
    assert_pattern(named(detect_patterns(f), "shooting_star"), f, "bearish", 6, 6, low=100.5, high=103.5)


def test_the_shooting_star_shape_after_a_decline_is_no_shooting_star():
    assert named(detect_patterns(frame(walk([110, 108, 106, 104, 102, 101]) + [STAR])), "shooting_star") is None


def test_bullish_engulfing_after_a_decline():
    f = frame(walk(DOWN) + [(100.0, 100.2, 97.8, 98.0, 1000.0), (97.5, 101.2, 97.3, 101.0, 1500.0)])
    p = assert_pattern(named(detect_patterns(f), "bullish_engulfing"), f, "bullish", 6, 7, low=97.3, high=101.2)
    assert p.confidence == pytest.approx(0.5 + 0.3 * min(3.5 / 2.0 - 1, 1) + 0.2)


def test_an_up_bar_that_does_not_cover_the_prior_body_is_no_engulfing():
    f = frame(walk(DOWN) + [(100.0, 100.2, 97.8, 98.0, 1000.0), (97.5, 99.8, 97.3, 99.5, 1500.0)])
    assert named(detect_patterns(f), "bullish_engulfing") is None


def test_an_up_bar_with_exactly_the_same_body_is_no_engulfing():
    f = frame(walk(DOWN) + [(100.0, 100.2, 97.8, 98.0, 1000.0), (98.0, 100.3, 97.7, 100.0, 1500.0)])
    assert named(detect_patterns(f), "bullish_engulfing") is None


def test_bearish_engulfing_after_a_rise():
    f = frame(walk(UP) + [(100.0, 102.2, 99.8, 102.0, 1000.0), (102.5, 102.7, 98.8, 99.0, 900.0)])
    assert_pattern(named(detect_patterns(f), "bearish_engulfing"), f, "bearish", 6, 7, low=98.8, high=102.7)


def test_the_bearish_engulfing_shape_after_a_decline_is_not_reported():
    f = frame(walk(DOWN) + [(100.0, 102.2, 99.8, 102.0, 1000.0), (102.5, 102.7, 98.8, 99.0, 900.0)])
    assert named(detect_patterns(f), "bearish_engulfing") is None


MORNING = [(100.0, 100.2, 95.8, 96.0, 1000.0), (95.5, 95.8, 95.0, 95.3, 800.0), (95.6, 99.2, 95.4, 99.0, 1500.0)]
EVENING = [(100.0, 104.2, 99.8, 104.0, 1000.0), (104.5, 105.0, 104.2, 104.7, 800.0),
           (104.4, 104.6, 100.8, 101.0, 1500.0)]


def test_morning_star_after_a_decline():
    f = frame(walk(DOWN) + MORNING)
    p = assert_pattern(named(detect_patterns(f), "morning_star"), f, "bullish", 6, 8, low=95.0, high=100.2)
    assert p.confidence == pytest.approx(0.6 + 0.4 * (99.0 - 98.0) / 2.0)


def test_a_third_bar_closing_below_the_first_body_midpoint_is_no_morning_star():
    f = frame(walk(DOWN) + MORNING[:2] + [(95.6, 97.7, 95.4, 97.5, 1500.0)])
    assert named(detect_patterns(f), "morning_star") is None


def test_evening_star_after_a_rise():
    f = frame(walk(UP) + EVENING)
    assert_pattern(named(detect_patterns(f), "evening_star"), f, "bearish", 6, 8, low=99.8, high=105.0)


def test_a_star_that_opens_back_inside_the_first_body_is_no_evening_star():
    f = frame(walk(UP) + [EVENING[0], (103.5, 104.4, 103.3, 103.7, 800.0), EVENING[2]])
    assert named(detect_patterns(f), "evening_star") is None


# ---------------------------------------------------------------- recency, robustness, output

def test_a_candlestick_before_the_last_bar_is_not_reported():
    f = frame(walk(DOWN) + [HAMMER] + walk([99.4, 100.5], spread=0.3)[1:])
    assert named(detect_patterns(f), "hammer") is None


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_short_frames_give_no_patterns_or_only_what_they_can_support(n):
    f = frame(flat(n)) if n else frame([])
    found = detect_patterns(f)
    assert found == [] if n < 2 else all(p.name in {"doji", "gap_up", "gap_down"} for p in found)


def test_nan_rows_are_dropped_and_zero_volume_never_breaks_out():
    f = frame(flat(25, volume=0.0) + [(100.5, 103.0, 100.4, 102.5, 0.0)])
    assert named(detect_patterns(f), "breakout") is None
    g = frame(walk(DOWN) + [HAMMER, (np.nan, np.nan, np.nan, np.nan, np.nan)])
    assert named(detect_patterns(g), "hammer") is not None              # the NaN bar is skipped


def test_to_dict_is_compact_json():
    p = Pattern("breakout", "bullish", 0.123456, {"breakout_level": 101.234567, "stop": 99.0},
                datetime(2026, 1, 5, tzinfo=timezone.utc), datetime(2026, 2, 2, tzinfo=timezone.utc))
    assert p.to_dict() == {"name": "breakout", "direction": "bullish", "confidence": 0.12,
                           "levels": {"breakout_level": 101.2346, "stop": 99.0},
                           "start": "2026-01-05T00:00:00+00:00", "end": "2026-02-02T00:00:00+00:00"}


@st.composite
def random_frames(draw) -> pd.DataFrame:
    n = draw(st.integers(0, 90))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    close = 50 * np.exp(np.cumsum(rng.normal(0, draw(st.sampled_from([0.0, 0.01, 0.05])), n)))
    o = close * np.exp(rng.normal(0, 0.01, n))
    h = np.maximum(o, close) * (1 + rng.uniform(0, 0.03, n))
    lo = np.minimum(o, close) * (1 - rng.uniform(0, 0.03, n))
    v = rng.choice([0.0, 1000.0, 5000.0], n) * rng.uniform(0, 2, n)
    data = np.column_stack([o, h, lo, close, v]) if n else np.empty((0, 5))
    if n and draw(st.booleans()):
        data[rng.random(data.shape) < 0.1] = np.nan                        # scattered NaN
    if n and draw(st.booleans()):
        data[rng.random(n) < 0.2, 1] *= 0.9                                # highs below the body
    if n and draw(st.booleans()):
        data[rng.random(n) < 0.1, :4] = 0.0                                # zero prices
    return frame([tuple(r) for r in data])


@settings(max_examples=60, deadline=None)
@given(random_frames())
def test_random_frames_never_raise_and_give_well_formed_patterns(f):
    for p in detect_patterns(f):
        assert 0.0 <= p.confidence <= 1.0
        assert p.direction in DIRECTIONS and p.start <= p.end
        assert all(np.isfinite(v) for v in p.levels.values())
        json.dumps(p.to_dict(), allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0]), min_size=0, max_size=80), st.integers(5, 90))
def test_swing_points_are_exactly_the_definition(values, window):
    """x[j] is a swing high when it is above each of the SWING bars before it and at least each of the SWING bars
    after it, for j among the last `window` bars (ties included: few distinct values make many)."""
    from data.patterns import SWING, _find_swings
    x = np.array(values, dtype=np.float64)
    i = len(x) - 1
    expected = [j for j in range(max(SWING, i - window + 1), i - SWING + 1)
                if all(x[j] > x[k] for k in range(j - SWING, j)) and all(x[j] >= x[k] for k in range(j + 1, j + SWING + 1))]
    assert _find_swings(x, i, window) == expected
