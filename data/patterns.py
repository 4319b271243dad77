"""Chart and candlestick patterns on one symbol's OHLCV bars (oldest first), reported only when they matter now.

Bars: rows whose open, high, low or close is not a positive finite number are dropped; a NaN or negative volume
counts as 0; high and low are widened to contain open and close. i is the last bar, N = `lookback` (20), and swing
structure (double bottoms/tops, support/resistance) is read over the last W = 3N bars.
  swing low at j   low_j is below the 2 lows before it and at or below the 2 after it (so it is known 2 bars later);
  swing high       the mirror with highs.
  a decline into s close_{s-1} < close_{s-6} (a rise: >), the trend context candlesticks require.

Recency, because the agent decides now: breakouts, gaps and candlesticks end on the last bar; a bull flag's
consolidation runs up to the last bar; a double bottom/top must complete within the last 3 bars; support and
resistance are the levels standing at the last bar, however old their touches.

Rules (module constants hold every threshold). Confidence is in [0, 1]; the formula follows each rule.
  breakout       bullish  close_i > the highest high of the N bars before i, and volume_i > 1.5 x their mean volume.
                          levels breakout_level (that high), stop (low_i); bars i-N .. i.
                          0.5 + 0.25 min((volume ratio - 1.5) / 1.5, 1) + 0.25 min(close margin above the level / 3%, 1)
  breakdown      bearish  the mirror: close_i < the lowest low of the N bars before, same volume rule.
                          levels breakdown_level, stop (high_i).
  bull_flag      bullish  pole top p = the highest high of the last 19 bars (the latest if tied), 3 to 8 bars
                          before i, so the flag p+1 .. i never exceeds it; pole start a = the lowest low of the 10 bars
                          up to p (the earliest if tied), at least 2 bars before p. Pole rise high_p / low_a - 1 >= 8%.
                          The flag keeps the upper half of the pole (its lowest low retraces <= 50% of the pole's
                          height), drifts flat or down (the least-squares slope of its closes <= +0.2% of high_p per
                          bar) on declining volume (its mean volume <= 0.8 x the pole's).
                          levels breakout_level (the flag's highest high), stop (the flag's lowest low), target
                          (breakout_level + pole height); bars a .. i.
                          0.4 + 0.2 min(rise / 20%, 1) + 0.2 (1 - retrace / 50%) + 0.2 (1 - volume ratio / 0.8)
  double_bottom  bullish  two swing lows in the last W bars, at least 5 bars apart, within 3% of each other (of the
                          lower), nothing lower between them and no low below the lower one since; the highest high
                          between them (the neckline) at least 5% above the higher bottom. Confirmed when a close after
                          the second bottom is above the neckline, and the first such close completes the pattern;
                          unconfirmed, it completes when the second swing low becomes known (2 bars after it). Only a
                          completion within the last 3 bars is reported; of several, the most confident.
                          levels breakout_level (the neckline), stop (the lower bottom), target (neckline + neckline -
                          bottom), confirmed (1 or 0); bars first bottom .. completion.
                          (0.6 confirmed, else 0.3) + 0.2 (1 - difference / 3%) + 0.2 min(neckline rise / 15%, 1)
  double_top     bearish  the mirror with swing highs: levels breakdown_level (the trough between), stop (the higher
                          top), target (trough - (top - trough), only when positive), confirmed.
  support        neutral  at least 2 swing lows in the last W bars within 1.5% of the lowest of them; level = their
                          mean, below the last close, with no close since the first touch below level x (1 - 1.5%).
                          The nearest such level. levels level, touches; bars first .. last touch.
                          min(0.3 + 0.15 (touches - 1), 0.9)
  resistance     neutral  the mirror with swing highs above the last close.
  gap_up         bullish  open_i / close_{i-1} - 1 >= 2%; filled when low_i <= close_{i-1}, and then neutral (0.3).
                          levels prev_close, open, filled (1 or 0); bars i-1 .. i.
                          open: 0.5 + 0.5 min((gap - 2%) / 8%, 1)
  gap_down       bearish  the mirror: <= -2%, filled when high_i >= close_{i-1}.
  Candlesticks end on the last bar. body = |close - open|, range = high - low (must be > 0), shadows beyond the body.
  levels low, high (of the pattern's bars: the stop sits beyond one of them); bars: the pattern's own. One bar can
  be two of them (a dragonfly doji after a decline is also a hammer).
  doji              neutral  body <= 10% of range.                                  0.3 + 0.4 (1 - body / (10% range))
  hammer            bullish  after a decline; lower shadow >= 2 x body and >= 60% of range, upper shadow <= 15%
                             of range.
  shooting_star     bearish  after a rise; upper shadow >= 2 x body and >= 60% of range, lower shadow <= 15%
                             of range.
                             0.4 + 0.6 min((long shadow / range - 60%) / 30%, 1)
  bullish_engulfing bullish  after a decline into i-1; i-1 closes down, i closes up, i's body covers i-1's
                             (open_i <= close_{i-1}, close_i >= open_{i-1}) and is larger.
  bearish_engulfing bearish  the mirror after a rise.
                             0.5 + 0.3 min(body ratio - 1, 1) + 0.2 (volume_i > volume_{i-1})
  morning_star      bullish  after a decline into i-2; i-2 closes down with a body >= 50% of its range; i-1's body is
                             <= 30% of i-2's and its top is at or below close_{i-2}; i closes up, above the midpoint of
                             i-2's body.
  evening_star      bearish  the mirror after a rise.  0.6 + 0.4 min(close_i beyond the midpoint / half i-2's body, 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from data.bar_arrays import BarArrays

if TYPE_CHECKING:
    import pandas as pd

Direction = Literal["bullish", "bearish", "neutral"]

SWING = 2                     # bars each side of a swing point
TREND_BARS = 5                # trend context: close before the pattern vs 5 bars earlier
BREAKOUT_VOLUME = 1.5         # x mean volume of the lookback
FLAG_MIN_RISE, FLAG_MAX_RETRACE, FLAG_MAX_SLOPE, FLAG_MAX_VOLUME = 0.08, 0.5, 0.002, 0.8
FLAG_BARS = (3, 8)            # flag length, bars
POLE_BARS = 10                # the pole's low is sought in the 10 bars up to its top
DOUBLE_TOLERANCE, DOUBLE_MIN_RISE, DOUBLE_MIN_GAP = 0.03, 0.05, 5
RECENT = 3                    # multi-bar chart patterns complete within the last 3 bars
LEVEL_TOLERANCE = 0.015
GAP = 0.02
DOJI_BODY = 0.10
SHADOW_MIN, SHADOW_OTHER_MAX = 0.60, 0.15
STAR_FIRST_BODY, STAR_SMALL_BODY = 0.5, 0.3


@dataclass(frozen=True)
class Pattern:
    name: str
    direction: Direction
    confidence: float                   # 0 .. 1
    levels: dict[str, float]            # key prices (and small counts/flags), all finite
    start: datetime                     # the bar range the pattern rests on, from the frame's index
    end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "confidence": round(self.confidence, 2),
                "levels": {k: round(v, 4) for k, v in self.levels.items()},
                "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class _Bars:
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    v: np.ndarray
    source: BarArrays                   # the bars kept (their times name a pattern's start and end)
    memo: dict = field(default_factory=dict, compare=False)     # swing points by (window, lows)

    @property
    def last(self) -> int:
        return len(self.c) - 1

    def pattern(self, name: str, direction: Direction, confidence: float, levels: dict[str, float],
                start: int, end: int) -> Pattern:
        conf = min(max(float(confidence), 0.0), 1.0) if math.isfinite(confidence) else 0.0
        clean = {k: float(x) for k, x in levels.items() if math.isfinite(x)}
        return Pattern(name, direction, conf, clean, self.source.time(start), self.source.time(end))

    def decline_into(self, s: int) -> bool:
        return s - 1 - TREND_BARS >= 0 and self.c[s - 1] < self.c[s - 1 - TREND_BARS]

    def rise_into(self, s: int) -> bool:
        return s - 1 - TREND_BARS >= 0 and self.c[s - 1] > self.c[s - 1 - TREND_BARS]


def detect_patterns(frame: pd.DataFrame, *, lookback: int = 20) -> list[Pattern]:
    """Every rule in the module docstring on `frame` (DatetimeIndex, open/high/low/close/volume, oldest first);
    [] for a frame too short for any of them. Never raises on NaN, zero volume or inconsistent bars."""
    return patterns_of(BarArrays.from_frame(frame), lookback=lookback)


def patterns_of(bars: BarArrays, *, lookback: int = 20) -> list[Pattern]:
    """`detect_patterns` of one symbol's bars as arrays (the bar store's own form: no frame built)."""
    if lookback < 5:
        raise ValueError(f"lookback must be at least 5 bars (got {lookback})")
    b = _clean(bars)
    if b is None:
        return []
    found: list[Pattern | None] = []
    with np.errstate(all="ignore"):
        found += [_breakout(b, lookback), _breakdown(b, lookback), _bull_flag(b)]
        found += [_double(b, 3 * lookback, bottom=True), _double(b, 3 * lookback, bottom=False)]
        found += [_level(b, 3 * lookback, support=True), _level(b, 3 * lookback, support=False)]
        found += [_gap(b)]
        found += _candles(b)
    return [p for p in found if p is not None]


def _clean(bars: BarArrays) -> _Bars | None:
    if len(bars) < 2:
        return None
    o, h, lo, c = (a.astype(np.float64, copy=False) for a in (bars.open, bars.high, bars.low, bars.close))
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
              & (o > 0) & (h > 0) & (lo > 0) & (c > 0))
    if ok.sum() < 2:
        return None
    if not ok.all():
        bars = bars.take(ok)
        o, h, lo, c = o[ok], h[ok], lo[ok], c[ok]
    v = bars.volume.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        v = np.where(np.isfinite(v) & (v > 0), v, 0.0)
    return _Bars(o, np.maximum(h, np.maximum(o, c)), np.minimum(lo, np.minimum(o, c)), c, v, bars)


# ---------------------------------------------------------------- breakouts

def _breakout(b: _Bars, n: int) -> Pattern | None:
    i = b.last
    if i < n:
        return None
    level, avg = b.h[i - n:i].max(), b.v[i - n:i].mean()
    if not (b.c[i] > level and avg > 0 and b.v[i] > BREAKOUT_VOLUME * avg):
        return None
    conf = (0.5 + 0.25 * min((b.v[i] / avg - BREAKOUT_VOLUME) / BREAKOUT_VOLUME, 1)
            + 0.25 * min((b.c[i] / level - 1) / 0.03, 1))
    return b.pattern("breakout", "bullish", conf, {"breakout_level": level, "stop": b.lo[i]}, i - n, i)


def _breakdown(b: _Bars, n: int) -> Pattern | None:
    i = b.last
    if i < n:
        return None
    level, avg = b.lo[i - n:i].min(), b.v[i - n:i].mean()
    if not (b.c[i] < level and avg > 0 and b.v[i] > BREAKOUT_VOLUME * avg):
        return None
    conf = (0.5 + 0.25 * min((b.v[i] / avg - BREAKOUT_VOLUME) / BREAKOUT_VOLUME, 1)
            + 0.25 * min((1 - b.c[i] / level) / 0.03, 1))
    return b.pattern("breakdown", "bearish", conf, {"breakdown_level": level, "stop": b.h[i]}, i - n, i)


def _bull_flag(b: _Bars) -> Pattern | None:
    i = b.last
    lo_flag, hi_flag = FLAG_BARS
    span = b.h[max(0, i - hi_flag - POLE_BARS):i + 1]
    p = i - int(np.argmax(span[::-1]))                  # the latest of the highest highs
    if not lo_flag <= i - p <= hi_flag:
        return None
    first = max(0, p - POLE_BARS + 1)
    a = first + int(np.argmin(b.lo[first:p + 1]))
    if p - a < 2:
        return None
    top, low = b.h[p], b.lo[a]
    rise, height = top / low - 1, top - low
    flag = slice(p + 1, i + 1)
    flag_low = b.lo[flag].min()
    retrace = (top - flag_low) / height
    slope = np.polyfit(np.arange(i - p, dtype=np.float64), b.c[flag], 1)[0] / top
    pole_volume = b.v[a:p + 1].mean()
    volume = b.v[flag].mean() / pole_volume if pole_volume > 0 else math.inf
    if not (rise >= FLAG_MIN_RISE and retrace <= FLAG_MAX_RETRACE and slope <= FLAG_MAX_SLOPE
            and volume <= FLAG_MAX_VOLUME):
        return None
    breakout = b.h[flag].max()
    conf = (0.4 + 0.2 * min(rise / 0.2, 1) + 0.2 * (1 - retrace / FLAG_MAX_RETRACE)
            + 0.2 * (1 - volume / FLAG_MAX_VOLUME))
    return b.pattern("bull_flag", "bullish", conf,
                     {"breakout_level": breakout, "stop": flag_low, "target": breakout + height}, a, i)


# ---------------------------------------------------------------- swing structure

def _swings(b: _Bars, window: int, *, lows: bool) -> list[int]:
    """Swing lows (or highs) among the last `window` bars, oldest first: x[j] above the SWING bars before it
    and at least the SWING bars after it (x = the highs, or the negated lows). Worked out once per bars and
    window (the double bottom and the support level ask for the same lows) and only over the bars it reads."""
    key = (window, lows)
    found = b.memo.get(key)
    if found is None:
        found = b.memo[key] = _find_swings(-b.lo if lows else b.h, b.last, window)
    return found


def _find_swings(x: np.ndarray, i: int, window: int) -> list[int]:
    first, stop = max(SWING, i - window + 1), i - SWING + 1
    if stop <= first:
        return []
    base = first - SWING                                # x[base:] holds every bar compared (stop + SWING = i + 1)
    seg = x[base:i + 1]
    widest = seg[:len(seg) - SWING + 1].copy()          # widest[k] = max x[base + k : base + k + SWING]
    for s in range(1, SWING):
        np.maximum(widest, seg[s:len(seg) - SWING + 1 + s], out=widest)
    j = np.arange(first, stop)
    keep = (x[j] > widest[j - SWING - base]) & (x[j] >= widest[j + 1 - base])
    return j[keep].tolist()


def _double(b: _Bars, window: int, *, bottom: bool) -> Pattern | None:
    i = b.last
    # Work on "depth" d: lows for a bottom, negated highs for a top, so both are the same search for minima.
    d = b.lo if bottom else -b.h
    peak = b.h if bottom else -b.lo
    close = b.c if bottom else -b.c
    best: tuple[float, int, Pattern] | None = None
    swings = _swings(b, window, lows=bottom)
    for k, j2 in enumerate(swings):
        for j1 in swings[:k]:
            if j2 - j1 < DOUBLE_MIN_GAP:
                continue
            x1, x2 = abs(d[j1]), abs(d[j2])
            floor, higher = min(x1, x2), max(x1, x2)
            diff = (higher - floor) / floor
            if diff > DOUBLE_TOLERANCE:                  # most pairs end here, before any slice is read
                continue
            if bottom:
                neck = peak[j1:j2 + 1].max()
                rise = neck / higher - 1
            else:
                neck = -peak[j1:j2 + 1].max()            # the lowest low between the tops
                rise = floor / neck - 1                  # floor is the lower top here
            if rise < DOUBLE_MIN_RISE:
                continue
            between = d[j1:j2 + 1].min() if bottom else (-d[j1:j2 + 1]).max()
            after = d[j2 + 1:i + 1]
            if bottom:
                broken = between < floor or (after.size and after.min() < floor)
            else:
                broken = between > higher or (after.size and (-after).max() > higher)
            if broken:
                continue
            beyond = np.flatnonzero(close[j2 + 1:i + 1] > (neck if bottom else -neck))
            confirmed = beyond.size > 0
            done = j2 + 1 + int(beyond[0]) if confirmed else j2 + SWING
            if i - done >= RECENT:
                continue
            conf = (0.6 if confirmed else 0.3) + 0.2 * (1 - diff / DOUBLE_TOLERANCE) + 0.2 * min(rise / 0.15, 1)
            if bottom:
                levels = {"breakout_level": neck, "stop": floor, "target": 2 * neck - floor}
                name, direction = "double_bottom", "bullish"
            else:
                levels = {"breakdown_level": neck, "stop": higher}
                if 2 * neck - higher > 0:
                    levels["target"] = 2 * neck - higher
                name, direction = "double_top", "bearish"
            levels["confirmed"] = 1.0 if confirmed else 0.0
            found = b.pattern(name, direction, conf, levels, j1, done)
            if best is None or (found.confidence, done) > best[:2]:
                best = (found.confidence, done, found)
    return best[2] if best else None


def _level(b: _Bars, window: int, *, support: bool) -> Pattern | None:
    i = b.last
    swings = _swings(b, window, lows=support)
    price = b.lo if support else b.h
    order = sorted(swings, key=lambda j: price[j], reverse=not support)
    clusters: list[list[int]] = []
    for j in order:
        if clusters and abs(price[j] / price[clusters[-1][0]] - 1) <= LEVEL_TOLERANCE:
            clusters[-1].append(j)
        else:
            clusters.append([j])
    best: tuple[float, list[int]] | None = None
    for touches in clusters:
        if len(touches) < 2:
            continue
        level = float(np.mean(price[touches]))
        first = min(touches)
        since = b.c[first:i + 1]
        if support:
            ok = level < b.c[i] and since.min() >= level * (1 - LEVEL_TOLERANCE)
        else:
            ok = level > b.c[i] and since.max() <= level * (1 + LEVEL_TOLERANCE)
        if ok and (best is None or abs(b.c[i] - level) < abs(b.c[i] - best[0])):
            best = (level, touches)
    if best is None:
        return None
    level, touches = best
    return b.pattern("support" if support else "resistance", "neutral", min(0.3 + 0.15 * (len(touches) - 1), 0.9),
                     {"level": level, "touches": float(len(touches))}, min(touches), max(touches))


# ---------------------------------------------------------------- the last bar

def _gap(b: _Bars) -> Pattern | None:
    i = b.last
    prev, gap = b.c[i - 1], b.o[i] / b.c[i - 1] - 1
    if gap >= GAP:
        name, filled, direction = "gap_up", b.lo[i] <= prev, "bullish"
    elif gap <= -GAP:
        name, filled, direction = "gap_down", b.h[i] >= prev, "bearish"
    else:
        return None
    conf = 0.3 if filled else 0.5 + 0.5 * min((abs(gap) - GAP) / 0.08, 1)
    return b.pattern(name, "neutral" if filled else direction, conf,
                     {"prev_close": prev, "open": b.o[i], "filled": 1.0 if filled else 0.0}, i - 1, i)


def _candles(b: _Bars) -> list[Pattern | None]:
    i = b.last
    o, h, lo, c = b.o, b.h, b.lo, b.c
    body, rng = np.abs(c - o), h - lo
    upper, lower = h - np.maximum(o, c), np.minimum(o, c) - lo
    out: list[Pattern | None] = []

    def add(name: str, direction: Direction, conf: float, start: int) -> None:
        out.append(b.pattern(name, direction, conf, {"low": lo[start:i + 1].min(), "high": h[start:i + 1].max()},
                             start, i))

    if rng[i] > 0:
        if body[i] <= DOJI_BODY * rng[i]:
            add("doji", "neutral", 0.3 + 0.4 * (1 - body[i] / (DOJI_BODY * rng[i])), i)
        if (b.decline_into(i) and lower[i] >= 2 * body[i] and lower[i] >= SHADOW_MIN * rng[i]
                and upper[i] <= SHADOW_OTHER_MAX * rng[i]):
            add("hammer", "bullish", 0.4 + 0.6 * min((lower[i] / rng[i] - SHADOW_MIN) / 0.3, 1), i)
        if (b.rise_into(i) and upper[i] >= 2 * body[i] and upper[i] >= SHADOW_MIN * rng[i]
                and lower[i] <= SHADOW_OTHER_MAX * rng[i]):
            add("shooting_star", "bearish", 0.4 + 0.6 * min((upper[i] / rng[i] - SHADOW_MIN) / 0.3, 1), i)

    j = i - 1
    if j >= 0 and body[j] > 0:
        grew = body[i] > body[j]
        conf = 0.5 + 0.3 * min(body[i] / body[j] - 1, 1) + 0.2 * (b.v[i] > b.v[j])
        if (b.decline_into(j) and c[j] < o[j] and c[i] > o[i] and o[i] <= c[j] and c[i] >= o[j] and grew):
            add("bullish_engulfing", "bullish", conf, j)
        if (b.rise_into(j) and c[j] > o[j] and c[i] < o[i] and o[i] >= c[j] and c[i] <= o[j] and grew):
            add("bearish_engulfing", "bearish", conf, j)

    s = i - 2
    if s >= 0 and rng[s] > 0 and body[s] >= STAR_FIRST_BODY * rng[s] and body[i - 1] <= STAR_SMALL_BODY * body[s]:
        mid, half = (o[s] + c[s]) / 2, body[s] / 2
        if (b.decline_into(s) and c[s] < o[s] and max(o[i - 1], c[i - 1]) <= c[s] and c[i] > o[i] and c[i] > mid):
            add("morning_star", "bullish", 0.6 + 0.4 * min((c[i] - mid) / half, 1), s)
        if (b.rise_into(s) and c[s] > o[s] and min(o[i - 1], c[i - 1]) >= c[s] and c[i] < o[i] and c[i] < mid):
            add("evening_star", "bearish", 0.6 + 0.4 * min((mid - c[i]) / half, 1), s)
    return out
