"""technicals.py: the vectorised universe path equals pandas-ta (talib=False) on every bar of every symbol, new
listings, suspensions and short histories included; compute_technicals gives the compact last-bar reading."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pandas_ta as ta
import pytest
from hypothesis import given, settings, strategies as st
from pandas_ta.maps import Imports

from data.technicals import UNIVERSE_KEYS, compute_technicals, last_rsi14, symbol_indicators, universe_indicators

TOL = 1e-9


# ---------------------------------------------------------------- helpers

def reference(close: pd.Series, high: pd.Series, low: pd.Series, volume: pd.Series) -> dict[str, pd.Series]:
    """pandas-ta called directly (the spec), on the symbol's own bars, put back on the full index."""
    keep = close.notna()
    c, h, lo, v = close[keep], high[keep], low[keep], volume[keep]
    nan = pd.Series(np.nan, index=c.index)
    macd = ta.macd(c, 12, 26, 9, talib=False)
    bb = ta.bbands(c, 20, 2.0, 2.0, talib=False)
    prev = v.shift(1).rolling(20).mean()
    out = {"rsi14": ta.rsi(c, 14, talib=False),
           "macd": macd.iloc[:, 0] if macd is not None else nan,
           "macd_hist": macd.iloc[:, 1] if macd is not None else nan,
           "macd_signal": macd.iloc[:, 2] if macd is not None else nan,
           "bb_lower": bb.iloc[:, 0] if bb is not None else nan,
           "bb_middle": bb.iloc[:, 1] if bb is not None else nan,
           "bb_upper": bb.iloc[:, 2] if bb is not None else nan,
           "atr14": ta.atr(h, lo, c, 14, talib=False),
           "sma20": ta.sma(c, 20, talib=False), "sma50": ta.sma(c, 50, talib=False),
           "ema20": ta.ema(c, 20, talib=False), "ema50": ta.ema(c, 50, talib=False),
           "volume_ratio20": v / prev.where(prev > 0)}
    return {k: (nan if s is None else s).reindex(close.index) for k, s in out.items()}


def assert_matches_pandas_ta(frames: dict[str, pd.DataFrame]) -> int:
    """Every symbol, key and bar; returns how many non-NaN values were compared."""
    ind = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    assert set(ind) == set(UNIVERSE_KEYS)
    compared = 0
    for sym in frames["close"].columns:
        ref = reference(*(frames[f][sym] for f in ("close", "high", "low", "volume")))
        for key in UNIVERSE_KEYS:
            got, want = ind[key][sym].to_numpy(), ref[key].to_numpy()
            assert ind[key].index.equals(frames["close"].index) and ind[key].columns.equals(frames["close"].columns)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{sym} {key}: NaN-ness")
            both = ~np.isnan(want)
            err = np.abs(got[both] - want[both]) / np.maximum(1.0, np.abs(want[both]))
            assert err.size == 0 or err.max() <= TOL, f"{sym} {key}: off by {err.max():.3g}"
            compared += int(both.sum())
    return compared


def random_frames(rng: np.random.Generator, bars: int, symbols: int, *, missing: np.ndarray | None = None
                  ) -> dict[str, pd.DataFrame]:
    index = pd.date_range("2025-01-02", periods=bars, freq="B", tz="UTC")
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (bars, symbols)), axis=0))
    spread = rng.uniform(0.001, 0.03, (bars, symbols))
    openp = close * np.exp(rng.normal(0, 0.01, (bars, symbols)))
    high = np.maximum(close, openp) * (1 + spread)
    low = np.minimum(close, openp) * (1 - spread)
    volume = rng.uniform(1e4, 1e6, (bars, symbols)).round()
    arrays = {"open": openp, "high": high, "low": low, "close": close, "volume": volume}
    if missing is not None:
        for a in arrays.values():
            a[missing] = np.nan
    cols = [f"S{j:03d}" for j in range(symbols)]
    return {k: pd.DataFrame(a, index=index, columns=cols) for k, a in arrays.items()}


def daily(closes, *, volume=1000.0, spread=0.5) -> pd.DataFrame:
    c = pd.Series(np.asarray(closes, dtype=float),
                  index=pd.date_range("2025-01-02", periods=len(closes), freq="B", tz="UTC"))
    return pd.DataFrame({"open": c, "high": c + spread, "low": c - spread, "close": c, "volume": volume})


# ---------------------------------------------------------------- universe vs pandas-ta

def test_universe_equals_pandas_ta_with_new_listings_suspensions_delistings_and_short_histories():
    rng = np.random.default_rng(7)
    bars, symbols = 140, 40
    missing = np.zeros((bars, symbols), dtype=bool)
    for j in range(0, symbols, 3):
        missing[:rng.integers(1, bars), j] = True                 # new listings, some with only a few bars
    for j in range(1, symbols, 2):
        start = rng.integers(0, bars - 5)
        missing[start:start + rng.integers(1, 12), j] = True      # suspensions
    missing[-7:, 4] = True                                        # no bar lately (delisted / suspended today)
    missing[:, 5] = True                                          # never traded
    missing[:-14, 6] = True                                       # 14 bars: no RSI, no ATR
    missing[:-15, 7] = True                                       # 15 bars: RSI from bar 1, ATR from bar 13
    missing[:-33, 8] = True                                       # 33 bars: no MACD at all
    missing[:-34, 9] = True                                       # 34 bars: MACD from bar 25, signal from 33
    frames = random_frames(rng, bars, symbols, missing=missing)
    assert assert_matches_pandas_ta(frames) > 30_000


def test_a_fully_populated_universe_equals_pandas_ta():
    assert assert_matches_pandas_ta(random_frames(np.random.default_rng(3), 260, 12)) > 35_000


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bars=st.integers(1, 90), symbols=st.integers(1, 5),
       lead=st.lists(st.integers(0, 90), min_size=5, max_size=5),
       gaps=st.lists(st.tuples(st.integers(0, 89), st.integers(1, 15)), max_size=4))
def test_any_mix_of_listing_dates_and_suspensions_equals_pandas_ta(seed, bars, symbols, lead, gaps):
    missing = np.zeros((bars, symbols), dtype=bool)
    for j in range(symbols):
        missing[:lead[j], j] = True
    for k, (start, length) in enumerate(gaps):
        missing[start:start + length, k % symbols] = True
    assert_matches_pandas_ta(random_frames(np.random.default_rng(seed), bars, symbols, missing=missing))


def test_a_suspension_is_skipped_not_filled():
    rng = np.random.default_rng(11)
    frames = random_frames(rng, 120, 2)
    gapped = {k: f.copy() for k, f in frames.items()}
    for f in gapped.values():
        f.iloc[60:70, 0] = np.nan                                 # S000 suspended for 10 sessions
    with_gap = universe_indicators(gapped["close"], gapped["high"], gapped["low"], gapped["volume"])
    dropped = {k: f[["S000"]].drop(f.index[60:70]) for k, f in frames.items()}
    without = universe_indicators(dropped["close"], dropped["high"], dropped["low"], dropped["volume"])
    for key in UNIVERSE_KEYS:
        assert with_gap[key]["S000"].iloc[60:70].isna().all()
        np.testing.assert_allclose(with_gap[key]["S000"].drop(frames["close"].index[60:70]).to_numpy(),
                                   without[key]["S000"].to_numpy(), rtol=0, atol=1e-12, equal_nan=True)
    # ...and differs from forward-filling the gap, which would count the suspension as flat sessions.
    filled = {k: f.ffill() for k, f in gapped.items()}
    ffilled = universe_indicators(filled["close"], filled["high"], filled["low"], filled["volume"])
    assert abs(ffilled["rsi14"]["S000"].iloc[75] - with_gap["rsi14"]["S000"].iloc[75]) > 1e-6


def test_a_flat_window_has_zero_band_width_like_pandas_ta():
    frames = {k: pd.DataFrame({"A": daily([10.0] * 30 + list(np.linspace(10, 12, 30)))[k]})
              for k in ("close", "high", "low", "volume")}
    ind = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    assert (ind["bb_upper"]["A"].iloc[19:30] == ind["bb_middle"]["A"].iloc[19:30]).all()
    assert_matches_pandas_ta(frames)


def test_an_empty_universe_gives_empty_frames():
    empty = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"), columns=["A", "B"], dtype=float)
    ind = universe_indicators(empty, empty, empty, empty)
    assert set(ind) == set(UNIVERSE_KEYS) and all(f.shape == (0, 2) for f in ind.values())


def test_high_low_and_volume_are_aligned_to_close_by_label():
    frames = random_frames(np.random.default_rng(5), 60, 3)
    shuffled = {k: (f[f.columns[::-1]] if k != "close" else f) for k, f in frames.items()}
    a = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    b = universe_indicators(shuffled["close"], shuffled["high"], shuffled["low"], shuffled["volume"])
    for key in UNIVERSE_KEYS:
        pd.testing.assert_frame_equal(a[key], b[key])


def test_symbol_indicators_is_pandas_ta_itself():
    frames = random_frames(np.random.default_rng(9), 90, 1)
    args = [frames[f]["S000"] for f in ("close", "high", "low", "volume")]
    ours, ref = symbol_indicators(*args), reference(*args)
    for key in UNIVERSE_KEYS:
        pd.testing.assert_series_equal(ours[key], ref[key], check_names=False)


# ---------------------------------------------------------------- talib=False is really used

def test_results_do_not_change_when_talib_is_reported_installed(monkeypatch):
    # Were any call (or pandas-ta's inner calls) left on the default talib=True, pandas-ta would now import talib,
    # which is not installed, and fail.
    frames = random_frames(np.random.default_rng(1), 80, 1)
    args = [frames[f]["S000"] for f in ("close", "high", "low", "volume")]
    before = symbol_indicators(*args)
    monkeypatch.setitem(Imports, "talib", True)
    after = symbol_indicators(*args)
    for key in UNIVERSE_KEYS:
        pd.testing.assert_series_equal(before[key], after[key])


def test_bollinger_uses_pandas_ta_sample_deviation_not_ta_lib_population_one():
    closes = [10, 11, 13, 12, 14, 15, 13, 12, 16, 17, 15, 14, 18, 19, 17, 16, 20, 21, 19, 18]
    out = compute_technicals(daily(closes))
    mean = sum(closes) / 20
    sample = math.sqrt(sum((x - mean) ** 2 for x in closes) / 19)
    population = math.sqrt(sum((x - mean) ** 2 for x in closes) / 20)
    sig = lambda x: float(f"{x:.6g}")          # noqa: E731  (what the model is shown: six significant digits)
    assert out["bb_middle"] == sig(mean)
    assert out["bb_upper"] == sig(mean + 2 * sample) != sig(mean + 2 * population)
    assert out["bb_lower"] == sig(mean - 2 * sample)


def test_rsi_is_seeded_by_the_first_change_not_by_a_14_bar_sma():
    # pandas-ta's RMA starts at bar 1 with the change itself: after up, down, the RSI is
    # 100 G / (G + L) with G = 13/14 x 1 and L = 1/14 x 2. TA-Lib would have no value before bar 14.
    closes = [10.0, 11.0, 9.0] + [9.0] * 12
    rsi = symbol_indicators(*(daily(closes)[k] for k in ("close", "high", "low", "volume")))["rsi14"]
    g, lo = 13 / 14 * 1.0, 1 / 14 * 2.0
    assert rsi.iloc[1] == 100.0 and rsi.iloc[2] == pytest.approx(100 * g / (g + lo), abs=1e-12)


def test_atr_seed_is_the_mean_of_the_first_14_true_ranges_including_the_first_bar():
    closes = [10.0 + (k % 3) for k in range(20)]
    frame = daily(closes, spread=0.5)
    s = symbol_indicators(*(frame[k] for k in ("close", "high", "low", "volume")))["atr14"]
    c = np.array(closes)
    tr = [1.0] + [max(1.0, abs(c[k] + 0.5 - c[k - 1]), abs(c[k - 1] - c[k] + 0.5)) for k in range(1, 20)]
    assert s.iloc[:13].isna().all() and s.iloc[13] == pytest.approx(np.mean(tr[:14]), abs=1e-12)
    assert s.iloc[14] == pytest.approx(s.iloc[13] * 13 / 14 + tr[14] / 14, abs=1e-12)


# ---------------------------------------------------------------- compute_technicals

def test_a_steadily_rising_series_reads_rsi_100_and_overbought():
    out = compute_technicals(daily(np.linspace(10, 30, 80)))
    assert out["rsi14"] == 100.0 and out["rsi_state"] == "overbought"
    assert out["sma20"] > out["sma50"] and out["macd"] > 0 and out["bars_used"] == 80


def test_a_steadily_falling_series_reads_rsi_0_and_oversold():
    out = compute_technicals(daily(np.linspace(30, 10, 80)))
    assert out["rsi14"] == 0.0 and out["rsi_state"] == "oversold"


def test_rsi_state_follows_the_given_thresholds():
    closes = 20 + np.sin(np.arange(60) / 3)
    rsi = compute_technicals(daily(closes))["rsi14"]
    assert 30 < rsi < 70
    assert compute_technicals(daily(closes))["rsi_state"] == "neutral"
    assert compute_technicals(daily(closes), rsi_overbought=rsi)["rsi_state"] == "overbought"
    assert compute_technicals(daily(closes), rsi_oversold=rsi)["rsi_state"] == "oversold"


@pytest.mark.parametrize("bars", [0, 1, 2, 13, 14, 15, 19, 20, 21, 33, 34, 49, 50])
def test_short_frames_give_none_not_exceptions(bars):
    out = compute_technicals(daily(np.linspace(10, 12, bars)) if bars else daily([]))
    assert out["bars_used"] == bars
    assert (out["rsi14"] is None) == (bars < 15)
    assert (out["atr14"] is None) == (bars < 15)
    assert (out["bb_middle"] is None) == (out["bb_position"] is None) == (bars < 20)
    assert (out["volume_ratio20"] is None) == (bars < 21)
    assert (out["macd"] is None) == (out["macd_signal"] is None) == (bars < 34)
    assert (out["sma50"] is None) == (out["ema50"] is None) == (bars < 50)
    assert out["vwap"] is None


def test_the_output_is_compact_and_json_ready():
    out = compute_technicals(daily(np.linspace(10, 30, 80) + np.sin(np.arange(80))))
    assert list(out) == ["rsi14", "rsi_state", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle",
                         "bb_lower", "bb_position", "atr14", "vwap", "sma20", "sma50", "ema20", "ema50",
                         "volume_ratio20", "bars_used"]
    for key, value in out.items():
        if isinstance(value, float):
            assert value == float(f"{value:.6g}") and math.isfinite(value), key


def test_bb_position_places_the_close_within_the_band():
    closes = list(np.linspace(10, 12, 30)) + [11.0]
    frame = daily(closes)
    s = symbol_indicators(*(frame[k] for k in ("close", "high", "low", "volume")))
    upper, lower = s["bb_upper"].iloc[-1], s["bb_lower"].iloc[-1]
    out = compute_technicals(frame)
    assert out["bb_position"] == round((11.0 - lower) / (upper - lower), 2)
    assert 0 < out["bb_position"] < 1
    assert compute_technicals(daily(closes[:-1] + [20.0]))["bb_position"] > 1      # above the upper band
    assert compute_technicals(daily([10.0] * 30))["bb_position"] is None          # a zero-width band


def test_compute_technicals_reads_the_last_bar_of_the_universe_path():
    frames = random_frames(np.random.default_rng(21), 120, 1)
    ind = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    out = compute_technicals(pd.DataFrame({k: f["S000"] for k, f in frames.items()}))
    for key in UNIVERSE_KEYS:
        assert out[key] == pytest.approx(round(float(ind[key]["S000"].iloc[-1]), 4), abs=1e-4), key


def test_volume_ratio_is_the_last_volume_over_the_mean_of_the_previous_20():
    frame = daily(np.linspace(10, 12, 22), volume=np.r_[[0.0] * 1, [100.0] * 10, [300.0] * 10, [500.0]])
    assert compute_technicals(frame)["volume_ratio20"] == 2.5        # 500 / mean(10 x 100, 10 x 300)
    silent = daily(np.linspace(10, 12, 22), volume=np.r_[[0.0] * 21, [500.0]])
    assert compute_technicals(silent)["volume_ratio20"] is None       # no previous volume: no ratio


def test_vwap_is_none_for_daily_bars():
    assert compute_technicals(daily(np.linspace(10, 12, 40)))["vwap"] is None


def test_vwap_is_the_volume_weighted_typical_price_of_the_last_session_only():
    yesterday = pd.date_range("2025-03-03 14:30", periods=3, freq="5min", tz="UTC")
    today = pd.date_range("2025-03-04 14:30", periods=3, freq="5min", tz="UTC")
    frame = pd.DataFrame({"open": [50, 50, 50, 10, 11, 12], "high": [51, 51, 51, 11, 12, 15],
                          "low": [49, 49, 49, 9, 10, 12], "close": [50, 50, 50, 10, 11, 12],
                          "volume": [9e6, 9e6, 9e6, 100, 200, 100]}, index=yesterday.append(today), dtype=float)
    # typical prices today: 10, 11, 13 -> (10 x 100 + 11 x 200 + 13 x 100) / 400
    assert compute_technicals(frame)["vwap"] == 11.25


def test_a_lunch_break_does_not_start_a_new_vwap_session():
    hkt = pd.DatetimeIndex(["2025-03-03 15:00", "2025-03-04 10:00", "2025-03-04 11:00", "2025-03-04 13:00",
                            "2025-03-04 14:00"]).tz_localize("Asia/Hong_Kong").tz_convert("UTC")
    prices = [99.0, 10.0, 20.0, 30.0, 40.0]         # yesterday's bar, then today's around the 12:00-13:00 lunch
    frame = pd.DataFrame({"open": prices, "high": prices, "low": prices, "close": prices,
                          "volume": [1.0, 1.0, 1.0, 1.0, 1.0]}, index=hkt)
    assert compute_technicals(frame)["vwap"] == 25.0


def test_one_symbol_gives_bit_identical_indicators_to_the_same_symbol_among_others():
    """_ewm's one-column fast path (Python floats) does the same arithmetic as its numpy path."""
    frames = random_frames(np.random.default_rng(5), 150, 3)
    many = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    one = {k: f[["S001"]] for k, f in frames.items()}
    alone = universe_indicators(one["close"], one["high"], one["low"], one["volume"])
    for key in UNIVERSE_KEYS:
        np.testing.assert_array_equal(alone[key]["S001"].to_numpy(), many[key]["S001"].to_numpy(), err_msg=key)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.floats(1, 500), st.sampled_from([10.0, 10.0, float("nan")])), max_size=60))
def test_last_rsi14_is_the_universe_rsi_of_the_last_bar_bit_for_bit(closes):
    c = np.asarray(closes, dtype=np.float64)
    valid = c[~np.isnan(c)]
    frame = pd.DataFrame({"x": valid})
    expected = universe_indicators(frame, frame, frame, frame)["rsi14"].iloc[-1, 0] if len(valid) else math.nan
    got = last_rsi14(c)
    if math.isnan(expected):
        assert got is None
    else:
        assert got == expected


def test_last_rsi14_needs_fifteen_bars():
    assert last_rsi14(np.linspace(10, 12, 14)) is None
    assert last_rsi14(np.linspace(10, 12, 15)) == 100.0
    assert last_rsi14(np.full(30, 7.0)) is None             # nothing moved: no RSI, as pandas-ta


def test_a_small_indicator_keeps_its_sign_and_size():
    """Rounding is for display and never to zero: an hourly MACD histogram of a few 1e-5 keeps its sign."""
    closes = 1.1 + 1e-5 * np.sin(np.arange(120) / 5)
    out = compute_technicals(daily(closes))
    hist = out["macd_hist"]
    assert hist is not None and hist != 0 and abs(hist) < 1e-3


def test_a_subset_of_keys_gives_the_same_numbers_as_the_whole_set():
    """The scan asks for five indicators; each is bit for bit what the whole set computes."""
    missing = np.random.default_rng(4).random((150, 12)) < 0.05       # suspensions and late listings
    frames = random_frames(np.random.default_rng(4), 150, 12, missing=missing)
    whole = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"])
    for keys in (("rsi14", "sma20", "sma50", "macd_hist", "volume_ratio20"), ("atr14",), ("bb_upper", "ema50")):
        part = universe_indicators(frames["close"], frames["high"], frames["low"], frames["volume"], keys=keys)
        assert set(part) == set(keys)
        for k in keys:
            np.testing.assert_array_equal(part[k].to_numpy(), whole[k].to_numpy())
