"""Exit signals for one open long position: pure functions from (position, thresholds, indicators) to a report.

No I/O, no clock of its own, no randomness: the same inputs always give the same report, live or in replay. The
caller (position_monitor.py) supplies the price, the high-water mark, RSI(14) and the detected patterns.

P&L% is (price - entry) / entry; a negative value is a loss. Thresholds are fractions of the entry price from
config `signals` (plus `trading.trailing_stop_pct`). Every comparison is exact: a P&L rule compares
`price - entry` with `entry x threshold` in Decimal, so a price exactly on a threshold is on the side named below.

Signals, in the order they are reported within a strength (strong ones first). Each kind appears at most once:
  hard_stop       strong    price <= the stop_loss recorded at entry (skipped when the position has none).
  stop_loss       strong    P&L% <= stop_loss_strong            (exactly -3% with the default -0.03 is strong)
                  moderate  P&L% <= stop_loss_moderate, but above stop_loss_strong.
  trailing_stop   strong    only once the position has been in profit, i.e. high > entry, where
                            high = max(high_water, price). The level is high x (1 - trailing_stop_pct); it fires when
                            level > entry (strictly: the stop protects a gain, not break-even) and price <= level.
                            A high_water at or below the entry (never in profit, or averaged up) keeps it off.
  take_profit     strong    P&L% >= take_profit_strong, or price >= the take_profit recorded at entry.
                  moderate  P&L% >= take_profit_moderate, but below take_profit_strong (and below any recorded
                            target).
  rsi_overbought  moderate  rsi >= rsi_overbought. A NaN RSI (too few bars) or None means no reading.
                            rsi_oversold is carried in the thresholds but is never an exit signal for a long.
  pattern_failure moderate  (a) a bullish pattern whose levels hold `breakout_level` (or else `level`), the price
                            has been at or above that level since entry (high >= level, so the breakout happened)
                            and is now strictly below it: the breakout failed. A bullish pattern whose level was
                            never reached is a pending breakout, not a failure.
                            (b) any bearish pattern (direction 'bearish'; or, with no direction given, a name in
                            BEARISH_PATTERNS, e.g. breakdown, bearish_engulfing, evening_star, shooting_star,
                            double_top). Neutral patterns and malformed levels are ignored.
                            All failing patterns fold into ONE signal, so overlapping candlestick detectors cannot
                            make an exit on their own: two moderates must come from two different kinds.

Decision (`SignalReport.action`):
  exit       any strong signal, or two or more moderate signals.
  uncertain  exactly one moderate signal and no strong one. This is the explicit uncertain band: the caller may
             ask a cheap model whether to exit; with no model (no key, no budget, an unusable answer) it holds and
             records why.
  hold       no signal at all.

No rule depends on time; `now` only fills in how long the position has been held (`held_seconds`), for the record.

Inputs are validated: a non-positive or non-finite price (entry, current, high-water, recorded stop or target) or a
non-positive quantity raises ValueError, a float price raises TypeError (money is Decimal), an RSI outside
[0, 100] raises ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal, Mapping, Sequence

Strength = Literal["strong", "moderate"]
Action = Literal["exit", "hold", "uncertain"]

# Reported in this order within each strength, so `signals[0]` is the most pressing reason to exit.
KINDS = ("hard_stop", "stop_loss", "trailing_stop", "take_profit", "rsi_overbought", "pattern_failure")

# Used only when a pattern carries no direction of its own.
BEARISH_PATTERNS = frozenset({"breakdown", "bearish_engulfing", "evening_star", "shooting_star", "double_top",
                              "head_and_shoulders", "dark_cloud_cover", "hanging_man", "three_black_crows",
                              "descending_triangle", "bearish_harami"})


@dataclass(frozen=True)
class SignalThresholds:
    stop_loss_strong: Decimal          # e.g. -0.03: exit now
    stop_loss_moderate: Decimal        # e.g. -0.02: exit unless the picture improves
    take_profit_strong: Decimal        # e.g. 0.08: take profit now
    take_profit_moderate: Decimal      # e.g. 0.05: consider it
    rsi_overbought: Decimal            # e.g. 75
    rsi_oversold: Decimal              # e.g. 30 (not an exit signal for a long)
    trailing_stop_pct: Decimal         # e.g. 0.03 below the high since entry

    def __post_init__(self) -> None:
        for name in ("stop_loss_strong", "stop_loss_moderate", "take_profit_strong", "take_profit_moderate",
                     "rsi_overbought", "rsi_oversold", "trailing_stop_pct"):
            object.__setattr__(self, name, _decimal(getattr(self, name), name, allow_float=True))
        if not -1 < self.stop_loss_strong <= self.stop_loss_moderate < 0:
            raise ValueError(f"need -1 < stop_loss_strong <= stop_loss_moderate < 0 (got {self.stop_loss_strong}, "
                             f"{self.stop_loss_moderate})")
        if not 0 < self.take_profit_moderate <= self.take_profit_strong:
            raise ValueError(f"need 0 < take_profit_moderate <= take_profit_strong (got {self.take_profit_moderate}, "
                             f"{self.take_profit_strong})")
        if not 0 < self.trailing_stop_pct < 1:
            raise ValueError(f"trailing_stop_pct must be > 0 and < 1 (got {self.trailing_stop_pct})")
        if not 0 <= self.rsi_oversold < self.rsi_overbought <= 100:
            raise ValueError(f"need 0 <= rsi_oversold < rsi_overbought <= 100 (got {self.rsi_oversold}, "
                             f"{self.rsi_overbought})")

    @classmethod
    def from_config(cls, signals_cfg: Any, trailing_stop_pct: Decimal | float | str) -> "SignalThresholds":
        """From config's `signals` section (anything with those attributes) and `trading.trailing_stop_pct`."""
        return cls(stop_loss_strong=signals_cfg.stop_loss_strong, stop_loss_moderate=signals_cfg.stop_loss_moderate,
                   take_profit_strong=signals_cfg.take_profit_strong,
                   take_profit_moderate=signals_cfg.take_profit_moderate,
                   rsi_overbought=signals_cfg.rsi_overbought, rsi_oversold=signals_cfg.rsi_oversold,
                   trailing_stop_pct=trailing_stop_pct)


_VIEW_PRICES = ("entry_price", "price", "high_water", "stop_loss", "take_profit")
_PNL_Q = Decimal("0.000001")


@dataclass(frozen=True)
class PositionView:
    symbol: str
    quantity: int                      # shares held, > 0 (long only)
    entry_price: Decimal
    price: Decimal                     # the current last (or bid)
    high_water: Decimal                # the highest price since entry
    stop_loss: Decimal | None = None   # the hard stop recorded at entry
    take_profit: Decimal | None = None
    opened_at: datetime | None = None

    def __post_init__(self) -> None:
        # the common case first (a row and a quote: an int quantity, positive finite Decimal prices): no loop
        e, p, h, sl, tp = self.entry_price, self.price, self.high_water, self.stop_loss, self.take_profit
        if (type(self.quantity) is int and self.quantity > 0 and type(e) is Decimal and type(p) is Decimal
                and type(h) is Decimal and e.is_finite() and p.is_finite() and h.is_finite() and e > 0 and p > 0
                and h > 0 and (sl is None or (type(sl) is Decimal and sl.is_finite() and sl > 0))
                and (tp is None or (type(tp) is Decimal and tp.is_finite() and tp > 0))):
            return
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int):
            raise TypeError(f"{self.symbol}: quantity must be an int (got {self.quantity!r})")
        if self.quantity <= 0:
            raise ValueError(f"{self.symbol}: quantity must be positive for a long position (got {self.quantity})")
        for name in _VIEW_PRICES:
            value = getattr(self, name)
            if type(value) is Decimal and value.is_finite() and value > 0:
                continue                       # already what _price makes of it (the common case: a row, a quote)
            if value is None and name in ("stop_loss", "take_profit"):
                continue
            object.__setattr__(self, name, _price(value, f"{self.symbol}: {name}"))


@dataclass(frozen=True)
class Signal:
    kind: str
    strength: Strength
    reason: str

    def __post_init__(self) -> None:
        if self.strength not in ("strong", "moderate"):
            raise ValueError(f"strength must be 'strong' or 'moderate' (got {self.strength!r})")

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "strength": self.strength, "reason": self.reason}


@dataclass(frozen=True)
class SignalReport:
    action: Action
    signals: tuple[Signal, ...]
    pnl_pct: Decimal                   # (price - entry) / entry, rounded to 6 places for the record
    reason: str
    held_seconds: int | None = None

    @property
    def strong(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.strength == "strong")

    @property
    def moderate(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.strength == "moderate")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action, "pnl_pct": str(self.pnl_pct), "reason": self.reason,
                             "signals": [s.to_dict() for s in self.signals]}
        if self.held_seconds is not None:
            d["held_seconds"] = self.held_seconds
        return d


def evaluate(position: PositionView, thresholds: SignalThresholds, *, rsi: float | Decimal | None = None,
             patterns: Sequence[Mapping[str, Any]] = (), now: datetime | None = None) -> SignalReport:
    """Every exit signal for `position` and the action they add up to. Pure: everything is in the arguments."""
    p, t = position, thresholds
    reading = _rsi(rsi)
    held = _held_seconds(p.opened_at, now)
    found = [s for s in (_hard_stop(p), _stop_loss(p, t), _trailing_stop(p, t), _take_profit(p, t),
                         _rsi_overbought(reading, t), _pattern_failure(p, patterns) if patterns else None)
             if s is not None]
    return _report(p, found, held)


def as_of(report: SignalReport, position: PositionView, now: datetime | None) -> SignalReport:
    """`report`, evaluate's price-only answer for `position` at some time, as of `now`: exactly
    `evaluate(position, thresholds, now=now)`, since no rule depends on time (only held_seconds does). What a
    monitor pass reuses when nothing about a position changed since its last pass."""
    held = _held_seconds(position.opened_at, now)
    if held == report.held_seconds:
        return report
    return SignalReport(report.action, report.signals, report.pnl_pct, report.reason, held)


def with_indicators(report: SignalReport, position: PositionView, thresholds: SignalThresholds, *,
                    rsi: float | Decimal | None = None, patterns: Sequence[Mapping[str, Any]] = ()) -> SignalReport:
    """`evaluate(position, thresholds, rsi=rsi, patterns=patterns, now=now)`, given `report`, the price-only
    `evaluate(position, thresholds, now=now)` of the same position: its price signals are not worked out again, and
    when the indicators add no signal the answer is `report` itself."""
    extra = [s for s in (_rsi_overbought(_rsi(rsi), thresholds),
                         _pattern_failure(position, patterns) if patterns else None) if s is not None]
    if not extra:
        return report
    return _report(position, [*report.signals, *extra], report.held_seconds, report.pnl_pct)


def _report(p: PositionView, found: list[Signal], held: int | None, pnl: Decimal | None = None) -> SignalReport:
    """The signals found, in reporting order, and the action and reason they add up to."""
    if len(found) > 1:
        found.sort(key=lambda s: (s.strength != "strong", KINDS.index(s.kind)))
    signals = tuple(found)
    strong = [s for s in signals if s.strength == "strong"]
    moderate = [s for s in signals if s.strength == "moderate"]
    ratio = (p.price - p.entry_price) / p.entry_price
    if pnl is None:
        pnl = ratio.quantize(_PNL_Q, rounding=ROUND_HALF_EVEN)
    summary = f"{p.symbol} {p.price} vs entry {p.entry_price} (P&L {ratio:+.2%})"
    if strong:
        action: Action = "exit"
        reason = f"exit: {summary}; " + "; ".join(f"{s.kind} ({s.strength}): {s.reason}" for s in signals)
    elif len(moderate) >= 2:
        action = "exit"
        reason = f"exit: {len(moderate)} moderate signals agree: {summary}; " + "; ".join(
            f"{s.kind}: {s.reason}" for s in moderate)
    elif moderate:
        action = "uncertain"
        reason = (f"uncertain: one moderate signal: {summary}; {moderate[0].kind}: {moderate[0].reason}; "
                  f"a second opinion may exit, otherwise hold")
    else:
        action = "hold"
        reason = f"hold: no exit signal: {summary}"
    return SignalReport(action=action, signals=signals, pnl_pct=pnl, reason=reason, held_seconds=held)


def protective_level(position: PositionView, thresholds: SignalThresholds) -> Decimal:
    """The highest price at which a price-only strong exit fires for this position: the level a protective stop at
    the broker holds, so a stop that fires while we are down sells where the monitor would have (hard_stop,
    stop_loss_strong, or the trailing stop once it protects a gain). Uses the high-water mark, not the current
    price: the level only rises as the high rises. Unrounded (the caller puts it on the tick grid)."""
    p, t = position, thresholds
    levels = [p.entry_price * (1 + t.stop_loss_strong)]
    if p.stop_loss is not None:
        levels.append(p.stop_loss)
    high = p.high_water
    if high > p.entry_price:
        trailing = high * (1 - t.trailing_stop_pct)
        if trailing > p.entry_price:
            levels.append(trailing)
    return max(levels)


def price_exit_band(position: PositionView, thresholds: SignalThresholds) -> tuple[Decimal, Decimal]:
    """(low, high): with no indicators, `evaluate` says "exit" exactly when the price is at or below `low` or at or
    above `high`. What a pushed price is checked against first (two comparisons),
    `evaluate` deciding only outside the band. `low` is `protective_level` (the strong stops); `high` the first
    strong take-profit. Two moderate price signals never agree (one needs a loss, the other a gain), so no exit
    hides inside the band. Uses the position's high-water mark: recompute when it rises."""
    p, t = position, thresholds
    highs = [p.entry_price * (1 + t.take_profit_strong)]
    if p.take_profit is not None:
        highs.append(p.take_profit)
    return protective_level(p, t), min(highs)


# ---------------------------------------------------------------- the rules, one function each

def _hard_stop(p: PositionView) -> Signal | None:
    if p.stop_loss is not None and p.price <= p.stop_loss:
        return Signal("hard_stop", "strong", f"price {p.price} is at or below the stop {p.stop_loss}")
    return None


def _stop_loss(p: PositionView, t: SignalThresholds) -> Signal | None:
    change, entry = p.price - p.entry_price, p.entry_price
    if change <= entry * t.stop_loss_strong:
        return Signal("stop_loss", "strong", f"loss {_pct(change, entry)} is at or beyond "
                                             f"stop_loss_strong {t.stop_loss_strong:.2%}")
    if change <= entry * t.stop_loss_moderate:
        return Signal("stop_loss", "moderate", f"loss {_pct(change, entry)} is at or beyond stop_loss_moderate "
                                               f"{t.stop_loss_moderate:.2%} (strong at {t.stop_loss_strong:.2%})")
    return None


def _trailing_stop(p: PositionView, t: SignalThresholds) -> Signal | None:
    high = max(p.high_water, p.price)
    if high <= p.entry_price:
        return None                                # never in profit: the hard stop and stop_loss cover it
    level = high * (1 - t.trailing_stop_pct)
    if level <= p.entry_price or p.price > level:
        return None
    return Signal("trailing_stop", "strong",
                  f"price {p.price} is at or below the trailing stop {_px(level)} ({t.trailing_stop_pct:.2%} below "
                  f"the high {p.high_water} since entry), locking in {_pct(level - p.entry_price, p.entry_price)}")


def _take_profit(p: PositionView, t: SignalThresholds) -> Signal | None:
    change, entry = p.price - p.entry_price, p.entry_price
    target_hit = p.take_profit is not None and p.price >= p.take_profit
    if change >= entry * t.take_profit_strong:
        gain = f"gain {_pct(change, entry)} is at or beyond take_profit_strong {t.take_profit_strong:.2%}"
        return Signal("take_profit", "strong", f"{gain}; {_target(p)}" if target_hit else gain)
    if target_hit:
        return Signal("take_profit", "strong", _target(p))
    if change >= entry * t.take_profit_moderate:
        return Signal("take_profit", "moderate", f"gain {_pct(change, entry)} is at or beyond take_profit_moderate "
                                                 f"{t.take_profit_moderate:.2%} (strong at "
                                                 f"{t.take_profit_strong:.2%})")
    return None


def _target(p: PositionView) -> str:
    return f"price {p.price} is at or above the take-profit {p.take_profit}"


def indicators_matter(thresholds: SignalThresholds, *, rsi: float | Decimal | None = None,
                      patterns: Sequence[Mapping[str, Any]] = ()) -> bool:
    """Whether an RSI reading or patterns can add a signal to a price-only evaluation. When False, evaluate() with
    them returns the same report as without them, so a caller may keep the price-only report."""
    if patterns:
        return True
    reading = _rsi(rsi)
    return reading is not None and reading >= thresholds.rsi_overbought


def _rsi_overbought(rsi: Decimal | None, t: SignalThresholds) -> Signal | None:
    if rsi is not None and rsi >= t.rsi_overbought:
        return Signal("rsi_overbought", "moderate", f"RSI(14) {_px(rsi, 1)} is at or above {t.rsi_overbought}")
    return None


def _pattern_failure(p: PositionView, patterns: "Sequence[Mapping[str, Any]] | PatternSet") -> Signal | None:
    high = max(p.high_water, p.price)
    found = [head if level is None else f"{head}{p.price}{tail}"
             for level, head, tail in PatternSet.of(patterns).entries if level is None or high >= level > p.price]
    if not found:
        return None
    return Signal("pattern_failure", "moderate", "; ".join(found))


@dataclass(frozen=True)
class PatternSet:
    """Patterns read once for many evaluations (the monitor judges one session's patterns on every pass): per
    pattern that can fail, in the order given, (breakout level or None for a bearish one, its text before the
    price, after it). Neutral patterns and bullish ones with no usable level are left out: they never signal.
    `evaluate`, `with_indicators` and `indicators_matter` take it wherever they take the patterns themselves."""
    entries: tuple[tuple[Decimal | None, str, str], ...]

    def __bool__(self) -> bool:
        return bool(self.entries)

    @classmethod
    def of(cls, patterns: "Sequence[Mapping[str, Any]] | PatternSet") -> "PatternSet":
        if isinstance(patterns, PatternSet):
            return patterns
        entries: list[tuple[Decimal | None, str, str]] = []
        for pattern in patterns:
            if type(pattern) is not dict and not isinstance(pattern, Mapping):
                raise TypeError(f"patterns must be mappings (Pattern.to_dict()), got {type(pattern).__name__}")
            name = str(pattern.get("name") or "pattern")
            direction = str(pattern.get("direction") or "").lower()
            confidence = _confidence(pattern.get("confidence"))
            if direction == "bearish" or (not direction and name.lower() in BEARISH_PATTERNS):
                entries.append((None, f"bearish {name}{confidence} present", ""))
            elif direction == "bullish":
                level = _level(pattern.get("levels"))
                if level is not None:
                    entries.append((level, f"bullish {name}{confidence} failed: price ",
                                    f" fell back below its breakout level {_px(level)}"))
        return cls(tuple(entries))


def rsi_reading(rsi: float | Decimal | None) -> Decimal | None:
    """An RSI value as the rules read it (None for no reading; ValueError outside [0, 100]): converted once, it is
    given to many evaluations as it is."""
    return _rsi(rsi)


# ---------------------------------------------------------------- validation and formatting

def _decimal(value: Any, what: str, *, allow_float: bool = False) -> Decimal:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number (got {value!r})")
    if isinstance(value, float):
        if not allow_float:
            raise TypeError(f"{what} must be a Decimal, not a float (got {value!r}): money is exact")
        value = Decimal(repr(value))
    elif isinstance(value, (int, str)):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal (got {type(value).__name__})")
    if not value.is_finite():
        raise ValueError(f"{what} must be finite (got {value})")
    return value


def _price(value: Any, what: str) -> Decimal:
    if isinstance(value, str):
        raise TypeError(f"{what} must be a Decimal (got the string {value!r})")
    d = _decimal(value, what)
    if d <= 0:
        raise ValueError(f"{what} must be positive (got {d})")
    return d


def _rsi(rsi: float | Decimal | None) -> Decimal | None:
    if rsi is None or (isinstance(rsi, float) and math.isnan(rsi)) or (isinstance(rsi, Decimal) and rsi.is_nan()):
        return None
    d = _decimal(rsi, "rsi", allow_float=True)
    if not 0 <= d <= 100:
        raise ValueError(f"rsi must be within [0, 100] (got {rsi})")
    return d


def _held_seconds(opened_at: datetime | None, now: datetime | None) -> int | None:
    if opened_at is None or now is None:
        return None
    if (opened_at.tzinfo is None) != (now.tzinfo is None):
        raise ValueError(f"opened_at ({opened_at.isoformat()}) and now ({now.isoformat()}) must both be "
                         f"time-zone aware, or both naive")
    return max(0, int((now - opened_at).total_seconds()))


def _level(levels: Any) -> Decimal | None:
    """The breakout level of a bullish pattern, or None when it has no usable one."""
    if not isinstance(levels, Mapping):
        return None
    raw = levels.get("breakout_level", levels.get("level"))
    if raw is None or isinstance(raw, bool):
        return None
    try:
        level = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
    except (ArithmeticError, TypeError, ValueError):
        return None
    return level if level.is_finite() and level > 0 else None


def _confidence(value: Any) -> str:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool) and math.isfinite(value):
        return f" (confidence {float(value):.2f})"
    return ""


def _pct(change: Decimal, base: Decimal) -> str:
    return f"{change / base:+.2%}"


def _px(x: Decimal, places: int = 4) -> str:
    """A computed price for a human: at most `places` decimals, trailing digits of the arithmetic dropped."""
    exponent = x.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        return str(x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN))
    return str(x)
