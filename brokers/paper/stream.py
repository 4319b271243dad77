"""The paper venue's pushed quotes: what its price feed says, for the symbols the monitor follows.

A feed that announces its moves (`listen(callback(symbol, quote))`, as tests/fakes/movable.py does) has each move
pushed at once, on the thread that moved it. Every `CADENCE_SECONDS` of wall time the stream sends its keep-alive
(`_heard`) and reads the feed for the quotes that changed since the last push: every followed symbol when the
clock has entered a new minute since the last full read (a feed's quote changes only when a bar completes under the
clock), otherwise only the symbols not pushed yet and those whose move was announced this minute (one announced for
a later instant) — so a minute's cadences cost nothing however many symbols are followed. Quotes are read as of the injected clock's now, never later, so a
move announced for a future instant is not pushed before the clock reaches it. No quota: every followed symbol the
feed carries is pushed. Nothing here touches the database; a read of 500 symbols is 500 in-memory quotes.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Iterable

from brokers.base import QuoteStream
from core.clock import Clock
from core.instruments import Quote

log = logging.getLogger("catalyst.broker")

CADENCE_SECONDS = 0.25


class PaperQuoteStream(QuoteStream):
    def __init__(self, market: Any, clock: Clock, *, cadence: float = CADENCE_SECONDS) -> None:
        super().__init__()
        self._market = market
        self._clock = clock
        self._cadence = cadence
        self._wanted: frozenset[str] = frozenset()
        self._last: dict[str, Quote] = {}            # the last quote pushed, by symbol
        self._announced: set[str] = set()             # moves announced since the last full read
        self._stalled = False
        self._thread = threading.get_ident()
        self._listen = getattr(market, "listen", None)
        if self._listen is not None:
            self._listen(self._moved)
        self._task = asyncio.create_task(self._run(), name="paper-quote-stream")

    # ------------------------------------------------------------ for tests
    def stall(self) -> None:
        """Stop pushing and keep-alives, as a venue that went silent without closing the connection."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    # ------------------------------------------------------------ QuoteStream
    async def _follow(self, wanted: frozenset[str]) -> Iterable[str]:
        known = set()
        for symbol in wanted:
            try:
                self._market.instrument(symbol)
            except KeyError:
                log.debug("paper quote stream: the feed has no %s; not followed", symbol)
                continue
            known.add(symbol)
        self._wanted = frozenset(known)
        for symbol in set(self._last) - known:
            del self._last[symbol]                   # a symbol followed again gets its quote pushed afresh
        return known

    async def _close(self) -> None:
        if self._listen is not None:
            getattr(self._market, "unlisten", lambda _cb: None)(self._moved)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    # ------------------------------------------------------------ pushing
    def _moved(self, symbol: str, _quote: Quote) -> None:
        """The feed's announcement (on the mover's thread): push the symbol's quote as of now, if followed."""
        if symbol not in self._wanted:
            return
        self._announced.add(symbol)
        if threading.get_ident() == self._thread:
            self._offer(symbol)
        else:
            self._loop.call_soon_threadsafe(self._offer, symbol)

    def _offer(self, symbol: str) -> None:
        if self._stalled or self.closed_reason is not None or symbol not in self._wanted:
            return
        try:
            quote = self._market.quote(symbol, self._clock.now())
        except (KeyError, ValueError) as exc:        # no price yet (before a file's first bar): nothing to push
            log.debug("paper quote stream: no quote for %s: %s", symbol, exc)
            return
        if self._last.get(symbol) != quote:
            self._last[symbol] = quote
            self._push(quote)

    async def _run(self) -> None:
        minute = None
        try:
            while True:
                await asyncio.sleep(self._cadence)
                if self._stalled:
                    continue
                self._heard()
                now = self._clock.now().replace(second=0, microsecond=0)
                if now != minute:                    # a bar may have completed: every followed quote is read
                    minute, self._announced = now, set()
                    todo = self._wanted
                else:                                # within the minute only a move changes a quote
                    todo = (self._wanted - self._last.keys()) | (self._announced & self._wanted)
                for symbol in todo:
                    self._offer(symbol)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — a feed that fails ends the stream; the monitor polls and reopens
            self._lost(f"paper quote stream: reading the feed failed: {exc!r}")
