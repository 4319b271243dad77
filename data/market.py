"""Market data for the tools: quotes and bars from the broker, technicals and patterns computed on them.

Decimal prices from the broker become floats only here, inside analytics (technicals, patterns).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from core.clock import Clock
from core.instruments import Bar, Quote, Timeframe

if TYPE_CHECKING:
    import pandas as pd

    from core.calendar import MarketCalendar
    from data.store import BarStore

# How far back to ask for bars so the slowest indicator (SMA 50, MACD 26+9) has history.
LOOKBACK = {"1d": timedelta(days=400), "1h": timedelta(days=30), "15m": timedelta(days=10),
            "5m": timedelta(days=5), "1m": timedelta(days=2)}


def bars_to_frame(bars: list[Bar]) -> "pd.DataFrame":
    import pandas as pd
    frame = pd.DataFrame({
        "open": [float(b.open) for b in bars], "high": [float(b.high) for b in bars],
        "low": [float(b.low) for b in bars], "close": [float(b.close) for b in bars],
        "volume": [float(b.volume) for b in bars]},
        index=pd.DatetimeIndex([b.start for b in bars], name="timestamp"))
    return frame


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
        self._key_at: Any = None               # daily_key's (local date, closed yet?) for this instant
        self._key_day: tuple = ()

    async def quote(self, symbol: str) -> Quote:
        return await self.broker.get_quote(symbol)

    async def bars_frame(self, symbol: str, timeframe: str) -> "pd.DataFrame":
        now = self.clock.now()
        bars = await self.broker.get_bars(symbol, timeframe, now - LOOKBACK[timeframe], now)
        return bars_to_frame(list(bars))

    def daily_key(self, symbol: str, kind: str) -> tuple | None:
        """Daily bars change only when a session closes: (symbol, kind, local date, closed yet?) names them."""
        now = self.clock.now()
        if now != self._key_at:
            day = self.calendar.local_date(now)
            bounds = self.calendar.session_bounds(day)
            self._key_at, self._key_day = now, (day, bool(bounds) and now >= bounds[-1][1])
        return (symbol, kind, *self._key_day)

    def _remember(self, key: tuple, value: Any) -> Any:
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = value
        return value

    async def daily_frame(self, symbol: str) -> "pd.DataFrame":
        """The symbol's daily bars, fetched once per symbol until the session closes (callers must not modify
        the frame): technicals, patterns and the monitor's RSI all read this one copy."""
        key = self.daily_key(symbol, "bars")
        frame = self._cache.get(key)
        if frame is None:
            now = self.clock.now()
            if self.daily is not None:
                frame = await self.daily.symbol_frame(symbol, now - LOOKBACK["1d"], now)
            if frame is None:
                frame = await self.bars_frame(symbol, "1d")
            frame = self._remember(key, frame)
        return frame

    async def technicals(self, symbol: str, timeframe: str = "1d") -> dict[str, Any]:
        if timeframe != "1d":
            return self._technicals(symbol, timeframe, await self.bars_frame(symbol, timeframe))
        key = self.daily_key(symbol, "technicals")
        if key not in self._cache:
            self._remember(key, self._technicals(symbol, timeframe, await self.daily_frame(symbol)))
        return dict(self._cache[key])

    def _technicals(self, symbol: str, timeframe: str, frame: "pd.DataFrame") -> dict[str, Any]:
        from data.technicals import compute_technicals
        if frame.empty:
            return {"symbol": symbol, "timeframe": timeframe, "bars_used": 0, "note": "no bars yet"}
        values = compute_technicals(frame, rsi_overbought=self.rsi_overbought, rsi_oversold=self.rsi_oversold)
        return {"symbol": symbol, "timeframe": timeframe, "as_of": frame.index[-1].isoformat(),
                "close": float(frame["close"].iloc[-1]), **values}

    async def patterns(self, symbol: str, timeframe: str = "1d") -> list:
        if timeframe != "1d":
            return self._patterns(await self.bars_frame(symbol, timeframe))
        key = self.daily_key(symbol, "patterns")
        if key not in self._cache:
            self._remember(key, self._patterns(await self.daily_frame(symbol)))
        return list(self._cache[key])

    @staticmethod
    def _patterns(frame: "pd.DataFrame") -> list:
        from data.patterns import detect_patterns
        if len(frame) < 5:
            return []
        return detect_patterns(frame)

    async def monitor_indicators(self, symbol: str) -> tuple[float | None, tuple[dict, ...]]:
        """(RSI(14), patterns as dicts) of the daily bars, as the position monitor's signals take them."""
        key = self.daily_key(symbol, "monitor")
        hit = self._cache.get(key)
        if hit is None:
            hit = self._remember(key, (await self.rsi14(symbol),
                                       tuple(p.to_dict() for p in await self.patterns(symbol))))
        return hit

    async def rsi14(self, symbol: str) -> float | None:
        """RSI(14) of the last daily bar alone (the position monitor's need), without the other indicators."""
        key = self.daily_key(symbol, "rsi14")
        if key not in self._cache:
            from data.technicals import last_rsi14
            frame = await self.daily_frame(symbol)
            self._remember(key, last_rsi14(frame["close"].to_numpy()) if not frame.empty else None)
        return self._cache[key]
