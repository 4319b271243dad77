"""A price feed a test can move: the shared way to cross a stop in every venue (paper, the OpenD fake, the Alpaca
fake all read their prices from a feed; give them this one).

`move(symbol, price)` makes the symbol trade at `price` from the clock's now on: quotes at or after that instant are
the underlying feed's quote scaled so its last is `price` (then kept on the tick grid), and so are bars that start
at or after the minute of the move; the bar that holds the move has its low (or high) stretched to the moved
price, so a venue that matches orders on bars sees the crossing too. Every listener (`listen(callback)`, e.g. a
venue fake's quote push) is called at once with the new quote, on the caller's thread.

Everything else (instruments, the universe, daily frames, plates) is the underlying feed's.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Sequence

from core.instruments import Bar, Quote
from core.ticks import round_to_tick


class MovableMarket:
    def __init__(self, inner: Any, clock: Any) -> None:
        self.inner = inner
        self.clock = clock
        self._moves: dict[str, list[tuple[datetime, Decimal]]] = {}   # symbol -> [(from, factor)], oldest first
        self._listeners: list[Callable[[str, Quote], None]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:          # instruments, daily_frame, plates, securities, bar_minutes...
        return getattr(self.inner, name)

    # ------------------------------------------------------------ the test's controls
    def move(self, symbol: str, price: Decimal | str | float, at: datetime | None = None) -> Quote:
        """From `at` (default: the clock's now) on, `symbol` trades at `price`. Returns the new quote."""
        at = at or self.clock.now()
        price = Decimal(str(price))
        base = self.inner.quote(symbol, at).last
        with self._lock:
            self._moves.setdefault(symbol, []).append((at, price / base))
            self._moves[symbol].sort(key=lambda m: m[0])
        quote = self.quote(symbol, at)
        for listener in list(self._listeners):
            listener(symbol, quote)
        return quote

    def listen(self, callback: Callable[[str, Quote], None]) -> None:
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[str, Quote], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    # ------------------------------------------------------------ the feed
    def _factor(self, symbol: str, at: datetime) -> Decimal | None:
        with self._lock:
            moves = self._moves.get(symbol)
            if not moves:
                return None
            factor = None
            for start, f in moves:
                if start <= at:
                    factor = f
            return factor

    def _px(self, symbol: str, price: Decimal, factor: Decimal, mode: str) -> Decimal:
        scheme = self.inner.instrument(symbol).tick_scheme
        return round_to_tick(price * factor, scheme, mode)

    def quote(self, symbol: str, at: datetime) -> Quote:
        q = self.inner.quote(symbol, at)
        factor = self._factor(symbol, at)
        if factor is None:
            return q
        last = self._px(symbol, q.last, factor, "nearest")
        bid = min(self._px(symbol, q.bid, factor, "down"), last)
        ask = max(self._px(symbol, q.ask, factor, "up"), last)
        return replace(q, bid=bid, ask=ask, last=last)

    def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> Sequence[Bar]:
        bars = list(self.inner.bars(symbol, timeframe, start, end))
        with self._lock:
            moves = list(self._moves.get(symbol, ()))
        if not moves:
            return bars
        out = []
        for i, bar in enumerate(bars):
            bar_end = bars[i + 1].start if i + 1 < len(bars) else bar.start + _span(timeframe)
            factor = self._factor(symbol, bar.start)
            inside = [(t, f) for t, f in moves if bar.start < t < bar_end]
            if factor is not None:
                bar = replace(bar, open=self._px(symbol, bar.open, factor, "nearest"),
                              high=self._px(symbol, bar.high, factor, "up"),
                              low=self._px(symbol, bar.low, factor, "down"),
                              close=self._px(symbol, bar.close, factor, "nearest"))
            for t, f in inside:            # a move inside this bar: the bar reaches the moved price, closes there
                moved = self.quote(symbol, t).last
                close = self._px(symbol, bars[i].close, f, "nearest")
                bar = replace(bar, high=max(bar.high, moved, close), low=min(bar.low, moved, close), close=close)
            out.append(bar)
        return out


def _span(timeframe: str) -> timedelta:
    return {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
            "30m": timedelta(minutes=30), "1h": timedelta(hours=1), "1d": timedelta(days=1)}[timeframe]
