"""Market data for the tools: quotes and bars from the broker, technicals and patterns computed on them.

Decimal prices from the broker become floats only here, inside analytics (technicals, patterns).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from core.clock import Clock
from core.instruments import Bar, Quote, Timeframe

if TYPE_CHECKING:
    from core.calendar import MarketCalendar
    from data.bar_arrays import BarArrays
    from data.store import BarStore

# How far back to ask for bars so the slowest indicator (SMA 50, MACD 26+9) has history.
LOOKBACK = {"1d": timedelta(days=400), "1h": timedelta(days=30), "15m": timedelta(days=10),
            "5m": timedelta(days=5), "1m": timedelta(days=2)}


_MISS = object()


class Prefetched(Protocol):
    """Daily analytics worked out ahead (replay/prefetch.py), under MarketData's own cache keys."""

    def take(self, key: tuple, default: Any) -> Any: ...


class QuoteSource(Protocol):
    """Where live quotes and per-symbol bars come from (the broker)."""

    async def get_quote(self, symbol: str) -> Quote: ...

    async def get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]: ...


class MarketData:
    """The agent's view of one symbol: its quote, bars, technicals and patterns (cached per session)."""

    def __init__(self, *, broker: QuoteSource, clock: Clock, calendar: "MarketCalendar",
                 rsi_overbought: float = 75, rsi_oversold: float = 30, daily: "BarStore | None" = None) -> None:
        self.broker = broker
        self.daily = daily              # the bar store: daily bars come from it when it holds the symbol
        self.clock = clock
        self.calendar = calendar
        self.rsi_overbought = rsi_overbought
        self.rsi_oversold = rsi_oversold
        self._cache: dict[tuple, Any] = {}     # daily technicals and patterns, until the next session close
        # worked out ahead by another process (replay/prefetch.py): `take(key, default)` by the keys of _cache
        self.prefetched: "Prefetched | None" = None
        self._key_at: Any = None               # daily_key's (local date, closed yet?) for this instant
        self._key_day: tuple = ()

    async def quote(self, symbol: str) -> Quote:
        return await self.broker.get_quote(symbol)

    async def _broker_bars(self, symbol: str, timeframe: str, start: datetime | None = None) -> Sequence[Bar]:
        now = self.clock.now()
        return await self.broker.get_bars(symbol, timeframe, start or now - LOOKBACK[timeframe], now)

    async def bar_arrays(self, symbol: str, timeframe: str) -> "BarArrays":
        """The symbol's bars of `timeframe` as the technicals and patterns read them (daily: `daily_bars`)."""
        if timeframe == "1d":
            return await self.daily_bars(symbol)
        from data.bar_arrays import BarArrays
        return BarArrays.from_bars(await self._broker_bars(symbol, timeframe))

    def daily_key(self, symbol: str, kind: str) -> tuple | None:
        """Daily bars change only when a session closes: (symbol, kind, local date, closed yet?) names them."""
        now = self.clock.now()
        if now != self._key_at:
            self._key_at, self._key_day = now, self.calendar.session_key(now)
        return (symbol, kind, *self._key_day)

    def _cached(self, key: tuple) -> Any:
        """The value remembered under `key`, or one worked out ahead (then remembered), else _MISS."""
        hit = self._cache.get(key, _MISS)
        if hit is _MISS and self.prefetched is not None:
            hit = self.prefetched.take(key, _MISS)
            if hit is not _MISS:
                self._remember(key, hit)
        return hit

    def worked_out(self) -> dict[tuple, Any]:
        """The analytics remembered since the last call (not the bars, nor the RSI the monitor's pair holds), by
        key; forgotten here (what replay/prefetch.py sends to the replay)."""
        found = {k: v for k, v in self._cache.items() if k[1] not in ("bars", "rsi14")}   # (RSI alone: read in "monitor")
        self._cache.clear()
        return found

    def _remember(self, key: tuple, value: Any) -> Any:
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = value
        return value

    async def daily_bars(self, symbol: str) -> "BarArrays":
        """The symbol's daily bars, fetched once per symbol until the session closes (callers must not modify
        them): technicals, patterns and the monitor's RSI all read this one copy. From the bar store when it holds
        the symbol (views of its arrays), else from the broker.

        The window starts LOOKBACK before the exchange's day, not before the moment asked: every process (the day
        job, the monitor daemon) reads the same bars for a session, whenever it first asks."""
        key = self.daily_key(symbol, "bars")
        bars = self._cache.get(key)
        if bars is None:
            now = self.clock.now()
            start = self.calendar.day_start(now) - LOOKBACK["1d"]
            if self.daily is not None:
                bars = await self.daily.symbol_bars(symbol, start, now)
            if bars is None:
                from data.bar_arrays import BarArrays
                bars = BarArrays.from_bars(await self._broker_bars(symbol, "1d", start))
            bars = self._remember(key, bars)
        return bars

    async def technicals(self, symbol: str, timeframe: str = "1d",
                         indicators: Sequence[str] | None = None) -> dict[str, Any]:
        """The last bar's indicators (all, or only `indicators`: the symbol, timeframe, as_of, close and bars_used
        come with any). Daily indicators asked for by name are worked out without the rest (the same numbers; RSI
        alone by `rsi_technicals`), unless the whole set is at hand already."""
        from data.technicals import only
        if timeframe != "1d":
            return only(self._technicals(symbol, timeframe, await self.bar_arrays(symbol, timeframe)), indicators)
        key = self.daily_key(symbol, "technicals")
        whole = self._cached(key)
        if whole is _MISS and indicators is not None:     # these alone, unless the whole set is at hand
            asked = ",".join(sorted(set(indicators)))
            key = self.daily_key(symbol, f"technicals:{asked}")
            whole = self._cached(key)
            if whole is _MISS:
                whole = self._remember(key, self._technicals(symbol, timeframe, await self.daily_bars(symbol),
                                                             indicators=indicators))
        if whole is _MISS:
            whole = self._remember(key, self._technicals(symbol, timeframe, await self.daily_bars(symbol)))
        return only(whole, indicators)

    def _technicals(self, symbol: str, timeframe: str, bars: "BarArrays", *,
                    indicators: Sequence[str] | None = None) -> dict[str, Any]:
        from data.technicals import rsi_technicals, technicals_of
        if not len(bars):
            return {"symbol": symbol, "timeframe": timeframe, "bars_used": 0, "note": "no bars yet"}
        if indicators is not None and set(indicators) <= {"rsi14"}:
            values = rsi_technicals(bars, rsi_overbought=self.rsi_overbought, rsi_oversold=self.rsi_oversold)
        else:
            values = technicals_of(bars, rsi_overbought=self.rsi_overbought, rsi_oversold=self.rsi_oversold,
                                   indicators=indicators)
        return {"symbol": symbol, "timeframe": timeframe, "as_of": bars.time(len(bars) - 1).isoformat(),
                "close": float(bars.close[-1]), **values}

    async def patterns(self, symbol: str, timeframe: str = "1d") -> list:
        if timeframe != "1d":
            return self._patterns(await self.bar_arrays(symbol, timeframe))
        key = self.daily_key(symbol, "patterns")
        found = self._cached(key)
        if found is _MISS:
            found = self._remember(key, self._patterns(await self.daily_bars(symbol)))
        return list(found)

    @staticmethod
    def _patterns(bars: "BarArrays") -> list:
        from data.patterns import patterns_of
        if len(bars) < 5:
            return []
        return patterns_of(bars)

    async def monitor_indicators(self, symbol: str) -> tuple[float | None, tuple[dict, ...]]:
        """(RSI(14), patterns as dicts) of the daily bars, as the position monitor's signals take them."""
        key = self.daily_key(symbol, "monitor")
        hit = self._cached(key)
        if hit is _MISS:
            hit = self._remember(key, (await self.rsi14(symbol),
                                       tuple(p.to_dict() for p in await self.patterns(symbol))))
        return hit

    async def rsi14(self, symbol: str) -> float | None:
        """RSI(14) of the last daily bar alone (the position monitor's need), without the other indicators."""
        key = self.daily_key(symbol, "rsi14")
        found = self._cached(key)
        if found is _MISS:
            from data.technicals import last_rsi14
            bars = await self.daily_bars(symbol)
            found = self._remember(key, last_rsi14(bars.close) if len(bars) else None)
        return found
