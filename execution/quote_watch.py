"""The monitor's fast path: one quote stream following the open positions, each pushed price judged at once.

`QuoteWatch.run` keeps a stream (`broker.open_quote_stream()`) open while the market is in a session:
  - it follows exactly the monitor's watched symbols (open positions with no exit working), re-following whenever
    they change (a symbol an exit took out is unfollowed once no exit is in flight, so the venue's work on the
    unsubscribe does not queue beside the exit's requests); symbols the venue's quota cannot hold are left to the
    monitor's poll (`polled`);
  - every pushed quote is judged by `PositionMonitor.judge` (stop, stop_loss, take-profit, trailing on that price;
    the quotes waiting are taken and judged in one go), an exit it calls for runs as a task of its own beside the
    stream (a second stop crossed meanwhile is not kept waiting behind the first exit's order), and the quote is
    kept as the symbol's latest price: while the stream is healthy the monitor's poll pass takes those
    (`pushed_quotes`) and asks the venue only for the symbols the stream does not hold;
  - never blind: a stream that drops (StreamClosed), stalls (no message of any kind for `stall_seconds` during a
    session) or falls behind (more than BEHIND quotes waiting) is closed; the watch says so (`state` 'polling' and
    `reason`, shown in the daemon's STATUS line and service_health), checks the gap since the last pushed price for
    crossed stops (`PositionMonitor.check_gap`), runs a poll pass at once, and re-opens the stream with backoff
    (1 s doubling up to `max_backoff`).
A venue that cannot push (`open_quote_stream()` is None) leaves the watch 'unavailable': the poll alone watches.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Awaitable, Callable

from brokers.base import QuoteStream, StreamClosed
from core.clock import Clock
from core.instruments import Quote

if TYPE_CHECKING:
    from brokers.base import BrokerClient
    from execution.monitor import PositionMonitor

log = logging.getLogger("catalyst.monitor.stream")

BEHIND = 5_000            # quotes waiting to be judged: the reader has fallen behind the venue
READ_SLICE = 0.25         # seconds a read waits before the watch looks at its clock and symbols again


class _Failed(Exception):
    """The stream is no longer trustworthy (stalled, behind)."""


class QuoteWatch:
    def __init__(self, *, broker: "BrokerClient", monitor: "PositionMonitor", clock: Clock,
                 stall_seconds: float, max_backoff: float = 60.0,
                 on_change: Callable[["QuoteWatch"], Awaitable[None]] | None = None) -> None:
        self.broker = broker
        self.monitor = monitor
        self.clock = clock
        self.stall_seconds = stall_seconds
        self.max_backoff = max_backoff
        self.state = "starting"          # starting | streaming | polling | unavailable | closed (market)
        self.reason = ""
        self.followed: frozenset[str] = frozenset()
        self.polled: frozenset[str] = frozenset()
        self.quotes = 0
        self.failures = 0
        self.last_quote_at: datetime | None = None     # the market time of the last pushed price
        self._silent_since: datetime | None = None     # when the failed stream last said anything
        self._on_change = on_change                    # told at once when the stream goes down or comes back
        self._latest: dict[str, Quote] = {}            # the last pushed price of each followed symbol
        self._stream: QuoteStream | None = None        # the stream open now
        self._exits: set[asyncio.Task] = set()         # exits pushed prices called for, running beside the stream
        monitor.use_pushed_quotes(self.pushed_quotes)  # the poll asks the venue only for what is not streamed

    # ------------------------------------------------------------ what the daemon shows
    def status_text(self) -> str:
        if self.state == "streaming":
            text = f"streaming {len(self.followed)} symbols"
            return text + (f", polling {len(self.polled)} over the quota" if self.polled else "")
        if self.state == "polling":
            return f"stream down ({self.reason}); polling"
        if self.state == "unavailable":
            return "no quote stream at this venue; polling"
        return f"stream {self.state}"

    def health(self) -> dict:
        return {"stream": self.state, "stream_reason": self.reason or None, "streamed": len(self.followed),
                "polled_over_quota": len(self.polled), "pushed_quotes": self.quotes,
                "stream_failures": self.failures, "stream_exits": self.monitor.stream_exits}

    def pending(self) -> int:
        """Pushed quotes waiting to be judged (0 with no stream open)."""
        return self._stream.pending() if self._stream is not None else 0

    def pushed_quotes(self) -> dict[str, Quote]:
        """The latest pushed price of each followed symbol while the stream is healthy; nothing otherwise (the
        poll then asks the venue for every price)."""
        if self.state != "streaming":
            return {}
        return {s: q for s, q in self._latest.items() if s in self.followed}

    # ------------------------------------------------------------ the loop
    async def run(self, stop: asyncio.Event, in_session: Callable[[], bool]) -> None:
        try:
            await self._run(stop, in_session)
        finally:                          # an exit under way is let finish: it is an order at the broker
            if self._exits:
                await asyncio.gather(*self._exits, return_exceptions=True)

    async def _run(self, stop: asyncio.Event, in_session: Callable[[], bool]) -> None:
        backoff = 1.0
        while not stop.is_set():
            if not in_session():
                self.state = "closed"
                await self._wait(stop, 1.0)
                continue
            try:
                stream = await self.broker.open_quote_stream()
            except Exception as exc:
                await self._fell_back(f"could not open: {type(exc).__name__}: {exc}")
                await self._wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if stream is None:
                self.state, self.reason = "unavailable", ""
                log.info("the venue pushes no quotes: the monitor polls")
                return
            opened = time.monotonic()
            self._stream = stream
            try:
                await self._pump(stream, stop, in_session)
                reason = None
            except StreamClosed as exc:
                reason = f"dropped: {exc}"
            except _Failed as exc:
                reason = str(exc)
            except Exception as exc:      # never let the fast path take the daemon down
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("quote stream failed")
            finally:
                self._stream = None
                self._latest = {}         # a closed stream's prices are not kept for the next one
                try:
                    await stream.close()
                except Exception:
                    pass
            if reason is None:            # stopped, or the session ended
                continue
            if time.monotonic() - opened > 4 * self.max_backoff:
                backoff = 1.0             # it had been healthy for a while: start the backoff again
            await self._fell_back(reason)
            await self._wait(stop, backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _pump(self, stream: QuoteStream, stop: asyncio.Event, in_session: Callable[[], bool]) -> None:
        wanted: frozenset[str] | None = None
        while not stop.is_set():
            if not in_session():
                self.state = "closed"
                return
            symbols = self.monitor.watched_symbols()     # the same object while the positions stay the same
            if symbols is not wanted and not self._leaving_during_exit(symbols, wanted):
                if symbols != wanted:
                    self.followed = await stream.follow(symbols)
                    self.polled = symbols - self.followed
                    self._latest = {s: q for s, q in self._latest.items() if s in self.followed}
                    if self.state != "streaming":
                        self.state, self.reason = "streaming", ""
                        log.info("quote stream: %s", self.status_text())
                        await self._changed()
                wanted = symbols
            try:
                first = await stream.get(READ_SLICE)
            finally:
                silent = time.monotonic() - stream.last_heard
                self._silent_since = self.clock.now() - timedelta(seconds=silent)
            if first is None:
                if self.followed and silent > self.stall_seconds:
                    raise _Failed(f"stalled: no message for {silent:.1f}s")
                continue
            batch = [first, *stream.take_waiting()]      # everything pushed meanwhile, judged in one go
            if len(batch) > BEHIND:
                raise _Failed(f"fell behind: {len(batch)} quotes waiting")
            for quote in batch:
                self.quotes += 1
                self.last_quote_at = quote.timestamp
                self._latest[quote.symbol] = quote
                crossed = self.monitor.judge(quote)
                if crossed is not None:      # the exit runs beside the stream: the next price is judged meanwhile
                    task = asyncio.create_task(self.monitor.exit_pushed(*crossed), name=f"exit-{quote.symbol}")
                    self._exits.add(task)
                    task.add_done_callback(self._exits.discard)
            await asyncio.sleep(0)           # an exit just started goes out before the next batch is judged

    def _leaving_during_exit(self, symbols: frozenset[str], wanted: frozenset[str] | None) -> bool:
        """True while symbols only left the watched set (an exit took them out) and an exit is still in flight: the
        unsubscribe waits until no exit is, so the venue's work on it is not queued beside the exit's own requests
        (a position's pushes are ignored as soon as its exit is called for; an added symbol never waits)."""
        return bool(self._exits) and wanted is not None and symbols < wanted

    async def _fell_back(self, reason: str) -> None:
        """Poll at once: the gap since the last pushed price is checked for crossed stops, then a full pass."""
        self.failures += 1
        self.state, self.reason = "polling", reason
        self._latest = {}                 # what a failed stream last said is not a price to go on
        log.warning("quote stream %s; polling (the gap since the last pushed price is checked)", reason)
        await self._changed()
        since = self._silent_since
        self._silent_since = None
        try:
            if since is not None:
                gap = await self.monitor.check_gap(since)
                if gap.exits:
                    log.warning("stops crossed during the stream gap: %s", [e["symbol"] for e in gap.exits])
            await self.monitor.run_pass()
        except Exception as exc:          # the daemon's own pass loop retries
            log.error("poll after the stream failed: %s", exc)

    async def _changed(self) -> None:
        if self._on_change is not None:
            try:
                await self._on_change(self)
            except Exception as exc:
                log.warning("stream state not reported: %s", exc)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
