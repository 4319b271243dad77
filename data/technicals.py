"""Technical indicators: one symbol for the tools (`compute_technicals`), every symbol at once for the scan
(`universe_indicators`). Both follow pandas-ta's own implementation, always called with talib=False.

Why pin it: TA-Lib (used by pandas-ta whenever it is installed, unless talib=False) seeds RSI and ATR differently and
uses the population standard deviation for Bollinger, so the same bars would give other numbers on a machine that
happens to have TA-Lib. The conventions, read from pandas-ta 0.4.71b0's source (a "bar" is a row where close is not
NaN; a symbol's bars are taken in order and a suspension day is skipped, not filled; k counts bars from 0):

  rsi14        Gains and losses of close.diff(), each smoothed by Wilder's RMA = ewm(alpha=1/14, adjust=False) with
               no SMA seed and no min_periods: the RMA starts at the first change (bar 1) with that change itself.
               RSI = 100 G / (G + L). So RSI exists from bar 1 once the series has >= 15 bars (with fewer, none at
               all); the first values are unwarmed (bar 1 is 0 or 100) and it is NaN while no price has moved.
               TA-Lib instead starts at bar 14 with the SMA of the first 14 changes.
  ema20, ema50 presma: bar n-1 holds the SMA of the first n closes, then ewm(span=n, adjust=False), i.e. alpha =
               2/(n+1). Needs >= n bars.
  macd         EMA(12) - EMA(26) (same SMA seeds), from bar 25. macd_signal = EMA(9) of the MACD line started at its
               first value with the same SMA seed, so from bar 33; macd_hist = macd - macd_signal. All three need
               >= 34 bars (26 + 9 - 1), or there is none at all.
  bb_*         Bollinger(20, 2): middle = SMA(20); std is the SAMPLE standard deviation (ddof=1) of the 20 closes
               (TA-Lib: ddof=0); bands = middle +/- 2 std. Needs >= 20 bars.
  atr14        True range TR_k = max(|h-l|, |h - c_prev|, |c_prev - l|) with TR_0 = h-l (prenan=False, drift=1).
               Bar 13 is seeded with the mean of TR_0..TR_13 (TR_0 included; TA-Lib drops it and starts at bar 14),
               then RMA alpha 1/14. In points, not percent. Needs >= 15 bars. (pandas-ta adds machine epsilon to
               every high-low when any bar has high == low; that 2e-16 is below every tolerance here.)
  sma20, sma50 Plain mean of the last n closes. Needs >= n bars.
  volume_ratio20  (ours; pandas-ta has none) volume_k / mean(volume_{k-20} .. volume_{k-1}): the bar's volume over
               the mean of the previous 20 bars' volumes, the bar itself excluded. Needs 21 bars; NaN when that mean
               is 0.
  vwap         (compute_technicals only, intraday frames only) the session VWAP of the last bar's session:
               sum(hlc3 x volume) / sum(volume) over that session's bars, hlc3 = (high + low + close) / 3 as in
               pandas-ta's vwap. A session is the trailing run of bars with no gap over 4 hours between neighbours
               (an overnight close, never a lunch break), so it does not depend on where the UTC date changes.

`symbol_indicators` is the per-symbol reference (pandas-ta itself); `universe_indicators` is a numpy
re-implementation (used by the scan, by `compute_technicals` on a one-column frame and, for RSI alone, by
`last_rsi14`) over the whole dates x symbols matrix that must agree with it on every bar (tests and
bench/bench_scan.py check 1e-9). Its recursive filters are the same arithmetic as pandas' ewm(adjust=False), the
divisor (1 - alpha) + alpha being exactly 1.0 for every alpha used here; the only departure is pandas' shortcut that
keeps the average unchanged when the input equals it, worth at most one ulp.

High, low and volume are expected wherever close is present; a NaN there propagates into the indicators using it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from data.bar_arrays import BarArrays

RSI_LEN = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_LEN, BB_STD = 20, 2.0
ATR_LEN = 14
VOLUME_LEN = 20
SESSION_GAP_NS = 4 * 3600 * 10**9          # 4 hours (pandas is imported only where a frame is made)

UNIVERSE_KEYS = ("rsi14", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr14",
                 "sma20", "sma50", "ema20", "ema50", "volume_ratio20")


# ---------------------------------------------------------------- one symbol

def symbol_indicators(close: pd.Series, high: pd.Series, low: pd.Series,
                      volume: pd.Series) -> dict[str, pd.Series]:
    """pandas-ta (talib=False) on one symbol's bars (rows with a NaN close dropped): UNIVERSE_KEYS -> Series on
    those bars. An indicator pandas-ta refuses for a short series comes back all NaN."""
    import pandas as pd
    import pandas_ta as ta

    keep = close.notna()
    c, h, lo, v = (s[keep].astype(np.float64) for s in (close, high, low, volume))
    macd = ta.macd(c, fast=MACD_FAST, slow=MACD_SLOW, signal=MACD_SIGNAL, talib=False)
    bb = ta.bbands(c, length=BB_LEN, lower_std=BB_STD, upper_std=BB_STD, ddof=1, mamode="sma", talib=False)
    prev_mean = v.shift(1).rolling(VOLUME_LEN).mean()
    raw = {
        "rsi14": ta.rsi(c, length=RSI_LEN, mamode="rma", talib=False),
        "macd": _column(macd, "MACD_"), "macd_signal": _column(macd, "MACDs_"), "macd_hist": _column(macd, "MACDh_"),
        "bb_upper": _column(bb, "BBU_"), "bb_middle": _column(bb, "BBM_"), "bb_lower": _column(bb, "BBL_"),
        "atr14": ta.atr(h, lo, c, length=ATR_LEN, mamode="rma", prenan=False, drift=1, presma=True, talib=False),
        "sma20": ta.sma(c, length=20, talib=False), "sma50": ta.sma(c, length=50, talib=False),
        "ema20": ta.ema(c, length=20, presma=True, talib=False),
        "ema50": ta.ema(c, length=50, presma=True, talib=False),
        "volume_ratio20": v / prev_mean.where(prev_mean > 0),
    }
    return {k: pd.Series(np.nan, index=c.index) if s is None else s.astype(np.float64) for k, s in raw.items()}


def compute_technicals(frame: pd.DataFrame, *, rsi_overbought: float = 70,
                       rsi_oversold: float = 30) -> dict[str, Any]:
    """The last bar's indicators for one symbol's OHLCV frame (oldest first), compact for the model: floats
    to six significant digits, None where the history is too short; plus rsi_state, bb_position (0 = lower band,
    1 = upper, outside [0, 1] beyond the bands) and bars_used."""
    from data.bar_arrays import BarArrays
    return technicals_of(BarArrays.from_frame(frame), rsi_overbought=rsi_overbought, rsi_oversold=rsi_oversold)


def technicals_of(bars: "BarArrays", *, rsi_overbought: float = 70, rsi_oversold: float = 30,
                  indicators: Iterable[str] | None = None) -> dict[str, Any]:
    """`compute_technicals` of one symbol's bars as arrays (the bar store's own form: no frame built). With
    `indicators`, only those (rsi_state with rsi14, bars_used always): only their groups are worked out, each the
    same number as in the whole set."""
    close = bars.close
    keep = ~np.isnan(close)
    if not keep.all():
        bars = bars.take(keep)
    # The universe path on one dense column (every row a bar): pandas-ta's numbers, without its cost.
    cols = [a.astype(np.float64, copy=False)[:, None] for a in (bars.close, bars.high, bars.low, bars.volume)]
    n = len(bars)
    asked = None if indicators is None else frozenset(indicators)
    keys = UNIVERSE_KEYS if asked is None else [k for k in UNIVERSE_KEYS if k in asked or (
        k in ("bb_upper", "bb_lower") and "bb_position" in asked)]
    dense = _dense_indicators(*cols, np.array([n]), keys=frozenset(keys))
    last = {k: _rounded(float(dense[k][-1, 0])) if n else None for k in keys}
    rsi = last.get("rsi14")
    upper, lower = last.get("bb_upper"), last.get("bb_lower")
    position = None
    if upper is not None and lower is not None and upper > lower:
        position = round((float(cols[0][-1, 0]) - lower) / (upper - lower), 2)
    values = {
        "rsi14": rsi, "rsi_state": _rsi_state(rsi, rsi_overbought, rsi_oversold),
        "macd": last.get("macd"), "macd_signal": last.get("macd_signal"), "macd_hist": last.get("macd_hist"),
        "bb_upper": upper, "bb_middle": last.get("bb_middle"), "bb_lower": lower, "bb_position": position,
        "atr14": last.get("atr14"), "vwap": _session_vwap(bars) if asked is None or "vwap" in asked else None,
        "sma20": last.get("sma20"), "sma50": last.get("sma50"), "ema20": last.get("ema20"), "ema50": last.get("ema50"),
        "volume_ratio20": last.get("volume_ratio20"), "bars_used": n,
    }
    return values if asked is None else only(values, asked)


# Returned with any selection of indicators (MarketData's answers carry the first four as well).
WITH_ANY = ("symbol", "timeframe", "as_of", "close", "bars_used", "note")


def only(values: dict[str, Any], indicators: Iterable[str] | None) -> dict[str, Any]:
    """`values` (a copy), or only the indicators asked for (rsi_state with rsi14) and what comes with any."""
    if indicators is None:
        return dict(values)
    keep = set(indicators) | set(WITH_ANY) | ({"rsi_state"} if "rsi14" in indicators else set())
    return {k: v for k, v in values.items() if k in keep}


def rsi_technicals(bars: "BarArrays", *, rsi_overbought: float = 70, rsi_oversold: float = 30) -> dict[str, Any]:
    """`technicals_of`'s rsi14, rsi_state and bars_used alone (the same numbers: `last_rsi14` is its RSI bit for
    bit), without the other indicators' work."""
    close = np.asarray(bars.close, dtype=np.float64)
    rsi = last_rsi14(close)
    rounded = None if rsi is None else _rounded(rsi)
    return {"rsi14": rounded, "rsi_state": _rsi_state(rounded, rsi_overbought, rsi_oversold),
            "bars_used": int((~np.isnan(close)).sum())}


def _rsi_state(rsi: float | None, overbought: float, oversold: float) -> str | None:
    if rsi is None:
        return None
    return "overbought" if rsi >= overbought else "oversold" if rsi <= oversold else "neutral"


def _column(frame: pd.DataFrame | None, prefix: str) -> pd.Series | None:
    # pandas-ta names columns after its parameters (BBU_20_2.0_2.0); match on the stable prefix.
    if frame is None:
        return None
    return frame[next(c for c in frame.columns if c.startswith(prefix))]


def _rounded(x: float) -> float | None:
    """Six significant digits: compact for the model, and never a small value rounded to zero (an hourly MACD
    histogram of 3e-5 keeps its sign; decimal places would make it 0 and flip a `> 0` test)."""
    return float(f"{x:.6g}") + 0.0 if math.isfinite(x) else None      # + 0.0: no "-0.0" in the JSON


def _session_vwap(bars: "BarArrays") -> float | None:
    """Session VWAP of the last bar's session for intraday bars (< 1 day apart); None for daily bars."""
    if len(bars) < 2:
        return None
    gaps = np.diff(bars.starts)                                   # nanoseconds
    if not np.median(gaps) < 86_400 * 10**9:                     # daily bars: no session VWAP
        return None
    breaks = np.flatnonzero(gaps > SESSION_GAP_NS)
    first = breaks[-1] + 1 if len(breaks) else 0
    high, low, close, volume = (a[first:] for a in (bars.high, bars.low, bars.close, bars.volume))
    hlc3 = (high + low + close) / 3
    vol = np.nansum(volume)                                    # NaN skipped, as pandas' sum does
    if not vol > 0:
        return None
    vwap = float(np.nansum(hlc3 * volume) / vol)
    return round(vwap, 4) if math.isfinite(vwap) else None


def last_rsi14(close: np.ndarray) -> float | None:
    """RSI(14) of the last bar of one symbol's closes (NaN rows skipped), bit for bit universe_indicators' rsi14
    (the same operations in the same order, on Python floats); None with fewer than 15 bars or no movement.
    The position monitor uses it: the full indicator set is not needed there."""
    c = [x for x in np.asarray(close, dtype=np.float64).tolist() if x == x]
    if len(c) < RSI_LEN + 1:
        return None
    alpha = 1 / RSI_LEN
    keep = 1.0 - alpha
    d = c[1] - c[0]
    gain, loss = max(d, 0.0), max(-d, 0.0)
    for k in range(2, len(c)):
        d = c[k] - c[k - 1]
        gain = max(d, 0.0) * alpha + gain * keep
        loss = max(-d, 0.0) * alpha + loss * keep
    total = loss + gain
    if not total > 0:
        return None
    value = gain * 100.0 / total
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- the whole universe

def universe_indicators(close: pd.DataFrame, high: pd.DataFrame, low: pd.DataFrame,
                        volume: pd.DataFrame, keys=UNIVERSE_KEYS) -> dict[str, pd.DataFrame]:
    """`keys` (UNIVERSE_KEYS or some of them) -> (dates x symbols) frames for every symbol at once, equal (1e-9)
    to `symbol_indicators` on each symbol's own bars; NaN on rows where the symbol has no bar. Only the indicators
    asked for are computed (the scan reads five of the thirteen); each is the same number either way."""
    import pandas as pd
    index, columns = close.index, close.columns
    c = close.to_numpy(dtype=np.float64)
    h, lo, v = (_values(f, index, columns) for f in (high, low, volume))
    layout = _Layout(~np.isnan(c))
    dense = _dense_indicators(*(layout.pack(a) for a in (c, h, lo, v)), layout.counts, keys=frozenset(keys))
    return {k: pd.DataFrame(layout.unpack(dense[k]), index=index, columns=columns, copy=False) for k in keys}


def _values(frame: pd.DataFrame, index: pd.Index, columns: pd.Index) -> np.ndarray:
    if not (frame.index.equals(index) and frame.columns.equals(columns)):
        frame = frame.reindex(index=index, columns=columns)
    return frame.to_numpy(dtype=np.float64)


class _Layout:
    """Dense per-symbol time: each symbol's bars moved to the top of its column in order (row k = bar k), NaN
    below its last bar, so a window or a seed sits on the same row for every symbol.

    Only the columns with a missing row (a new listing, a suspension) are moved; the rest are already dense."""

    def __init__(self, valid: np.ndarray) -> None:
        self.counts = valid.sum(axis=0)
        self.moved = np.flatnonzero(self.counts < valid.shape[0])
        if self.moved.size:
            sub = valid[:, self.moved]
            self.sub_shape = sub.shape
            self.src = np.flatnonzero(sub)                       # row-major positions of the bars
            rank = np.cumsum(sub, axis=0) - 1
            self.dst = rank.ravel()[self.src] * sub.shape[1] + self.src % sub.shape[1]

    def pack(self, a: np.ndarray) -> np.ndarray:
        if not self.moved.size:
            return a
        out = a.copy()
        out[:, self.moved] = self._move(a[:, self.moved], self.src, self.dst)
        return out

    def unpack(self, d: np.ndarray) -> np.ndarray:
        """In place: `d` is ours."""
        if self.moved.size:
            d[:, self.moved] = self._move(d[:, self.moved], self.dst, self.src)
        return d

    def _move(self, sub: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        out = np.full(self.sub_shape, np.nan)
        np.put(out, dst, np.take(sub, src, mode="clip"), mode="clip")   # indices are in range by construction
        return out


# (first bar with a value, bars the series needs or pandas-ta returns nothing), per key
_RULES = {"rsi14": (1, RSI_LEN + 1),
          "macd": (MACD_SLOW - 1, MACD_SLOW + MACD_SIGNAL - 1),
          "macd_signal": (MACD_SLOW + MACD_SIGNAL - 2, MACD_SLOW + MACD_SIGNAL - 1),
          "macd_hist": (MACD_SLOW + MACD_SIGNAL - 2, MACD_SLOW + MACD_SIGNAL - 1),
          "bb_upper": (BB_LEN - 1, BB_LEN), "bb_middle": (BB_LEN - 1, BB_LEN), "bb_lower": (BB_LEN - 1, BB_LEN),
          "atr14": (ATR_LEN - 1, ATR_LEN + 1), "sma20": (19, 20), "sma50": (49, 50), "ema20": (19, 20),
          "ema50": (49, 50), "volume_ratio20": (VOLUME_LEN, VOLUME_LEN + 1)}


def _dense_indicators(c: np.ndarray, h: np.ndarray, lo: np.ndarray, v: np.ndarray,
                      counts: np.ndarray, keys: frozenset = frozenset(UNIVERSE_KEYS)) -> dict[str, np.ndarray]:
    """Indicators in dense per-symbol time (see _Layout); rows past a symbol's last bar are never read back.
    Each group of `keys` is computed only when one of its keys is asked for (by the same operations either way)."""
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.nan_to_num(c[0]) if len(c) else 0.0    # sums of offsets from bar 0 keep the totals small
        cs = np.cumsum(c - ref, axis=0)
        sma20 = _window_mean(cs, 20, ref)
        out["sma20"], out["sma50"] = sma20, _window_mean(cs, 50, ref)
        if keys & {"bb_middle", "bb_upper", "bb_lower"}:
            band = _rolling_std(c, sma20, BB_LEN)
            band *= BB_STD
            out["bb_middle"] = sma20.copy()
            out["bb_upper"] = sma20 + band
            out["bb_lower"] = sma20 - band

        if "rsi14" in keys:
            diff = np.full_like(c, np.nan)
            np.subtract(c[1:], c[:-1], out=diff[1:])
            seed_bar = 1 if len(c) > 1 else len(c)            # the RMA starts at the first change, with it
            gain = _ewm(np.maximum(diff, 0.0), 1 / RSI_LEN, seed_bar)
            loss = _ewm(np.maximum(-diff, 0.0), 1 / RSI_LEN, seed_bar)
            loss += gain
            gain *= 100.0                                    # pandas-ta: scalar * G / (G + L), in that order
            gain /= loss
            out["rsi14"] = gain

        if "atr14" in keys:
            prev = np.full_like(c, np.nan)
            prev[1:] = c[:-1]
            tr = np.abs(h - lo)
            tr = np.fmax(tr, np.abs(h - prev), out=tr)        # fmax: bar 0 has no previous close, TR_0 = |h - l|
            tr = np.fmax(tr, np.abs(prev - lo), out=tr)
            out["atr14"] = _ewm(tr, 1 / ATR_LEN, ATR_LEN - 1, sma_seed=True)

        spans = [n for n, key in ((20, "ema20"), (50, "ema50")) if key in keys]
        if keys & {"macd", "macd_signal", "macd_hist"}:
            spans += [MACD_FAST, MACD_SLOW]
        ema = {n: _ewm(c, 2 / (n + 1), n - 1, sma_seed=True) for n in (MACD_FAST, MACD_SLOW, 20, 50) if n in spans}
        out.update({f"ema{n}": ema[n] for n in (20, 50) if n in ema})
        if MACD_FAST in ema:
            macd = ema[MACD_FAST]
            macd -= ema[MACD_SLOW]
            first = MACD_SLOW - 1
            signal = np.full_like(c, np.nan)
            signal[first:] = _ewm(macd[first:], 2 / (MACD_SIGNAL + 1), MACD_SIGNAL - 1, sma_seed=True)
            out["macd"], out["macd_signal"], out["macd_hist"] = macd, signal, macd - signal

        if "volume_ratio20" in keys:
            vol_mean = _window_mean(np.cumsum(v, axis=0), VOLUME_LEN, 0.0)
            ratio = np.full_like(v, np.nan)
            prev_mean = vol_mean[VOLUME_LEN - 1:-1]
            np.divide(v[VOLUME_LEN:], np.where(prev_mean > 0, prev_mean, np.nan), out=ratio[VOLUME_LEN:])
            out["volume_ratio20"] = ratio

    short = {need: np.flatnonzero(counts < need) for need in {need for _, need in _RULES.values()}}
    for key, (first_bar, need) in _RULES.items():
        if key not in out:
            continue
        a = out[key]
        a[:first_bar] = np.nan
        if short[need].size:
            a[:, short[need]] = np.nan
    return out


def _window_mean(cs: np.ndarray, n: int, ref: np.ndarray | float) -> np.ndarray:
    """Mean over rows k-n+1..k at row k (NaN before row n-1) from the cumulative sum `cs` of x - ref."""
    out = np.full_like(cs, np.nan)
    if cs.shape[0] >= n:
        s = out[n - 1:]
        s[...] = cs[n - 1:]
        s[1:] -= cs[:-n]
        s /= n
        s += ref
    return out


def _rolling_std(x: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """Sample standard deviation (ddof=1) over rows k-n+1..k, two-pass (squared deviations from the window mean)
    so a flat window gives 0 rather than the noise of a difference of large sums."""
    out = np.full_like(x, np.nan)
    rows = x.shape[0] - n + 1
    if rows <= 0:
        return out
    m = mean[n - 1:]
    acc = out[n - 1:]
    acc[...] = 0.0
    d = np.empty_like(m)
    for k in range(n):
        np.subtract(x[k:k + rows], m, out=d)
        np.multiply(d, d, out=d)
        acc += d
    acc /= n - 1
    np.sqrt(acc, out=acc)
    return out


def _ewm(x: np.ndarray, alpha: float, seed_bar: int, *, sma_seed: bool = False) -> np.ndarray:
    """pandas' ewm(alpha=alpha, adjust=False).mean() of each column started at row `seed_bar` (NaN before): the
    seed is x there, or with sma_seed (pandas-ta's presma) the mean of rows 0..seed_bar; then
    y_k = (1 - alpha) y_{k-1} + alpha x_k, the same products pandas adds (its divisor is exactly 1.0 here)."""
    y = x * alpha
    if seed_bar >= len(x):
        y[:] = np.nan
        return y
    y[:seed_bar] = np.nan
    y[seed_bar] = x[:seed_bar + 1].mean(axis=0) if sma_seed else x[seed_bar]
    keep = 1.0 - alpha
    if y.ndim == 2 and y.shape[1] == 1:
        # One symbol (the tools): the same two roundings per step on Python floats, ~30x faster than numpy
        # calls on one-element rows.
        col = y[:, 0].tolist()
        prev = col[seed_bar]
        for k in range(seed_bar + 1, len(col)):
            prev = col[k] + prev * keep
            col[k] = prev
        y[:, 0] = col
        return y
    tmp = np.empty_like(y[0])
    for k in range(seed_bar + 1, len(y)):
        np.multiply(y[k - 1], keep, out=tmp)
        y[k] += tmp
    return y
