"""Bars as arrays (data/bar_arrays.py): the technicals and patterns of a symbol's arrays are those of its frame."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from core.instruments import Bar
from data.bar_arrays import BarArrays
from data.patterns import detect_patterns, patterns_of
from data.technicals import compute_technicals, rsi_technicals, technicals_of
from tools import INDICATORS

FIELDS = ("open", "high", "low", "close", "volume")


def real(name: str) -> pd.DataFrame:
    from backtesting import test as shipped
    frame = getattr(shipped, name).rename(columns=str.lower)[list(FIELDS)].astype(float)
    frame.index = frame.index.tz_localize("UTC")
    return frame


# Indicators asked by name (tools.INDICATORS): each subset's values are the whole set's, in its order.
_SUBSETS = [("rsi14", "sma20", "macd_hist"), ("bb_position",), ("vwap", "atr14"), ("ema50", "macd", "macd_signal"),
            ("bb_upper", "bb_middle", "bb_lower", "volume_ratio20", "sma50", "ema20"), ("rsi14",), INDICATORS]


def arrays(frame: pd.DataFrame) -> BarArrays:
    """What the bar store serves: epoch-ns starts and float columns, no index."""
    return BarArrays(frame.index.as_unit("ns").asi8, *(frame[f].to_numpy() for f in FIELDS))


@pytest.mark.parametrize("name", ["GOOG", "EURUSD"])
def test_real_windows_give_the_same_technicals_and_patterns_as_their_frames(name):
    """GOOG daily and EURUSD hourly (shipped with backtesting.py), 280-bar windows: the arrays the store serves give
    exactly the frame's technicals and patterns, pattern times included (hourly frames exercise the session VWAP)."""
    frame = real(name)
    found = 0
    for end in range(30, len(frame), 7):
        window = frame.iloc[max(0, end - 280):end]
        whole = compute_technicals(window)
        assert technicals_of(arrays(window)) == whole
        assert rsi_technicals(arrays(window)) == {k: whole[k] for k in ("rsi14", "rsi_state", "bars_used")}
        asked = _SUBSETS[(end // 7) % len(_SUBSETS)]
        assert list(technicals_of(arrays(window), indicators=asked).items()) == [
            (k, v) for k, v in whole.items()
            if k in asked or k == "bars_used" or (k == "rsi_state" and "rsi14" in asked)]
        theirs = [p.to_dict() for p in detect_patterns(window)]
        assert [p.to_dict() for p in patterns_of(arrays(window))] == theirs
        found += len(theirs)
    assert found > 50                                    # the comparison saw patterns, not only empty lists


def test_nan_rows_are_dropped_alike_and_times_follow_the_bars_kept():
    frame = real("GOOG").iloc[:120].copy()
    frame.iloc[[5, 60, 117], 3] = np.nan                 # closes missing
    frame.iloc[[40], 1] = 0.0                            # an unusable high
    assert technicals_of(arrays(frame)) == compute_technicals(frame)
    assert technicals_of(arrays(frame))["bars_used"] == 117
    whole = compute_technicals(frame)
    assert rsi_technicals(arrays(frame)) == {k: whole[k] for k in ("rsi14", "rsi_state", "bars_used")}
    assert [p.to_dict() for p in patterns_of(arrays(frame))] == [p.to_dict() for p in detect_patterns(frame)]


def test_broker_bars_become_utc_arrays():
    start = datetime(2026, 3, 2, 1, 30, tzinfo=timezone.utc)
    bars = [Bar("0700", start + timedelta(days=k), Decimal("10.5") + k, Decimal("11.25") + k, Decimal("10") + k,
                Decimal("11") + k, 1000 * (k + 1)) for k in range(3)]
    a = BarArrays.from_bars(bars)
    assert a.starts.dtype == np.int64 and len(a) == 3
    assert a.close.tolist() == [11.0, 12.0, 13.0] and a.volume.tolist() == [1000.0, 2000.0, 3000.0]
    assert a.time(2) == start + timedelta(days=2) and a.time(2).utcoffset() == timedelta(0)
    assert len(BarArrays.from_bars([])) == 0
