"""Pushed quotes from Alpaca's real-time stock data stream, through alpaca-py's own `StockDataStream`.

The SDK speaks the protocol (docs.alpaca.markets/docs/streaming-market-data): it connects (msgpack frames), waits
for {"T":"success","msg":"connected"}, authenticates with {"action":"auth","key","secret"}, encodes subscribe and
unsubscribe messages, and decodes every frame, handing each message to the handler it holds for the symbol. It is
built with `raw_data=True` (its own option): a handler gets the message as decoded ({"T":"q","S","bp","ap","t"},
{"T":"t","S","p","s","t"}, "t" a msgpack Timestamp) rather than a pydantic model built per message, which cost more
of the event loop than judging the price did. Its
`run()` is not used (it calls asyncio.run and reconnects by itself, hiding a drop); the stream drives the SDK's
coroutines on the caller's event loop instead: `_start_ws` (connect and authenticate) when opened, `_consume` (read,
decode, dispatch) as a task, and the subscription messages when `follow` changes the symbols. The SDK sends nothing
on `subscribe_*` / `unsubscribe_*` while its own run loop is not running, so those only set its handlers and the
stream sends the messages itself, then waits for Alpaca's answer: the whole list of subscriptions, or an error.

A quote ("q") gives bid and ask, a trade ("t") the last price and volume; each symbol's `Quote` is the two
combined, seeded by a snapshot (REST) when the symbol is first followed, so the first message already makes a
whole quote. Volume is the snapshot's session volume plus the sizes of the trades since. A side of zero (the IEX
feed quotes one-sided at times) is not a usable quote: skipped, though the stream was heard.

Symbols: Alpaca's Basic plan (IEX) allows 30 symbols on the stream, Algo Trader Plus is unlimited
(docs.alpaca.markets/docs/about-market-data-api, "Websocket subscriptions"), so `follow` asks for at most
`limit` (STREAM_SYMBOL_LIMIT by default), the ones already followed first, and answers the symbols Alpaca confirmed
on both quotes and trades. A subscription refused with 405 "symbol limit exceeded" leaves Alpaca's list as it was;
the stream then asks for half as many new symbols at a time until Alpaca takes no more, and keeps the lower
limit. Alpaca allows
one stream connection per account (406 "connection limit exceeded" for a second one).

A dropped connection (or one Alpaca closes) ends the stream: `_lost`, and `get` raises StreamClosed; open a new
one. Alpaca sends no keep-alive messages of its own: `last_heard` moves with every quote, trade, subscription answer
or error.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Awaitable, Callable, Iterable, Sequence

from brokers.alpaca.mapping import dec
from brokers.base import QuoteStream, StreamClosed
from core.errors import BrokerUnavailable
from core.instruments import Quote

log = logging.getLogger(__name__)

STREAM_URL = "wss://stream.data.alpaca.markets/v2/{feed}"
STREAM_SYMBOL_LIMIT = 30          # Alpaca's Basic plan (IEX): 30 symbols on the websocket; Algo Trader Plus: no limit
PING_SECONDS = 10                 # the SDK's own websocket pings ...
PING_TIMEOUT_SECONDS = 20         # ... and how long a missing pong may take before the socket counts as dropped


@dataclass
class _Book:
    """One symbol's quote as the stream builds it."""
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    volume: int = 0
    at: datetime | None = None

    def seeded(self, quote: Quote) -> "_Book":
        return _Book(quote.bid, quote.ask, quote.last, quote.volume, quote.timestamp)

    def stamp(self, when: datetime | None) -> None:
        if when is not None:
            when = when.astimezone(timezone.utc)
            self.at = when if self.at is None else max(self.at, when)


class AlpacaQuoteStream(QuoteStream):
    """One connection to Alpaca's stock data stream (see the module docstring); built by `AlpacaBroker`."""

    def __init__(self, *, url: str, feed: str, keys: tuple[str, str],
                 seed: Callable[[Sequence[str]], Awaitable[dict[str, Quote]]], limit: int | None = STREAM_SYMBOL_LIMIT,
                 timeout: float = 15.0, buffer: int = 20_000) -> None:
        super().__init__(buffer=buffer)
        self.url, self.feed = url, feed
        self.limit = limit
        self.timeout = timeout
        self._keys = keys
        self._seed = seed
        self._socket: Any = None
        self._task: asyncio.Task | None = None
        self._books: dict[str, _Book] = {}
        self._asked: set[str] = set()            # symbols the SDK holds handlers for (what we asked Alpaca for)
        self._confirmed: frozenset[str] = frozenset()          # on quotes and trades, by Alpaca's last answer
        self._answers = 0
        self._answered = asyncio.Event()
        self._following = asyncio.Lock()         # one change of subscriptions at a time
        self.errors: list[tuple[Any, str]] = []                 # Alpaca's error messages on this connection

    def __repr__(self) -> str:  # never the keys
        return f"AlpacaQuoteStream({self.url}, following {len(self.followed)})"

    # ------------------------------------------------------------ open
    async def start(self) -> None:
        """Connect and authenticate; BrokerUnavailable (with Alpaca's reason) when either fails."""
        base, feeds = await asyncio.to_thread(_sdk_stream_class)
        key, secret = self._keys
        self._socket = _socket_class(base)(
            on_control=self._control, api_key=key, secret_key=secret, feed=feeds(self.feed), url_override=self.url,
            raw_data=True,
            websocket_params={"ping_interval": PING_SECONDS, "ping_timeout": PING_TIMEOUT_SECONDS, "max_queue": 1024,
                              "open_timeout": self.timeout, "close_timeout": 2})
        try:
            await asyncio.wait_for(self._socket._start_ws(), self.timeout)
        except Exception as exc:
            await self._close_socket()
            raise BrokerUnavailable(f"alpaca stream {self.url}: {_describe(exc, self.timeout)}") from exc
        self._heard()
        self._task = asyncio.create_task(self._run(), name="alpaca-quote-stream")

    async def _run(self) -> None:
        try:
            await self._socket._consume()
            reason = "closed"
        except asyncio.CancelledError:
            raise
        except Exception as exc:                       # the socket died or Alpaca closed it
            reason = f"alpaca stream: connection lost ({_describe(exc, self.timeout)})"
            if self.errors:
                reason += f"; Alpaca's last error: {self.errors[-1][1]} ({self.errors[-1][0]})"
        self._lost(reason)
        self._answered.set()

    # ------------------------------------------------------------ follow
    async def _follow(self, wanted: frozenset[str]) -> Iterable[str]:
        async with self._following:
            return await self._change(wanted)

    async def _change(self, wanted: frozenset[str]) -> frozenset[str]:
        keep = sorted(wanted & self._asked)
        new = sorted(wanted - self._asked)
        target = frozenset((keep + new) if self.limit is None else (keep + new)[:self.limit])
        remove, add = self._asked - target, sorted(target - self._asked)
        try:
            if remove:
                await self._unsubscribe(sorted(remove))
            if add:
                await self._subscribe(add)
        except Exception as exc:
            if self.closed_reason is None and _is_disconnect(exc):
                self._lost(f"alpaca stream: connection lost ({_describe(exc, self.timeout)})")
            if self.closed_reason is not None:
                raise StreamClosed(self.closed_reason) from exc
            raise
        return self._confirmed & target

    async def _unsubscribe(self, symbols: list[str]) -> None:
        self._socket.unsubscribe_quotes(*symbols)             # handlers only: the SDK is not "running"
        self._socket.unsubscribe_trades(*symbols)
        self._asked -= set(symbols)
        for symbol in symbols:
            self._books.pop(symbol, None)
        before = self._answers
        await self._socket._send_unsubscribe_msg("quotes", symbols)
        await self._socket._send_unsubscribe_msg("trades", symbols)
        await self._answer(before + 2)

    async def _subscribe(self, symbols: list[str]) -> None:
        seeds = await self._seed(symbols)
        for symbol in symbols:
            self._books[symbol] = _Book().seeded(seeds[symbol]) if symbol in seeds else _Book()
        pending, refused = list(symbols), False
        while pending:
            chunk = pending
            while chunk and not await self._try_subscribe(chunk):
                refused = True                   # 405: Alpaca's list is as before; try half as many
                chunk = chunk[:len(chunk) // 2]
            if not chunk:
                break
            pending = [s for s in pending if s not in chunk]
        for symbol in pending:
            self._books.pop(symbol, None)
        if refused:
            self.limit = len(self._asked)
            log.warning("alpaca stream: symbol limit exceeded (405): the market data plan takes %d symbols; "
                        "following those (set the stream symbol limit to the plan's)", self.limit)

    async def _try_subscribe(self, symbols: list[str]) -> bool:
        """Ask Alpaca for `symbols` too; False when it refused them with 405 "symbol limit exceeded"."""
        self._socket.subscribe_quotes(self._on_quote, *symbols)
        self._socket.subscribe_trades(self._on_trade, *symbols)
        self._asked |= set(symbols)
        before, errors = self._answers, len(self.errors)
        await self._socket._send_subscribe_msg()            # the SDK sends every symbol it holds a handler for
        await self._answer(before + 1)
        if not any(code == 405 for code, _ in self.errors[errors:]):
            return True
        self._socket.unsubscribe_quotes(*symbols)             # handlers only, as Alpaca's list is unchanged
        self._socket.unsubscribe_trades(*symbols)
        self._asked -= set(symbols)
        return False

    async def _answer(self, count: int) -> None:
        """Wait until Alpaca has answered `count` subscription messages in all (a list or an error)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout
        while self._answers < count and self.closed_reason is None:
            self._answered.clear()
            left = give_up - loop.time()
            if left <= 0:
                log.warning("alpaca stream: no answer to a subscription within %g s; following what Alpaca last "
                            "confirmed", self.timeout)
                return
            try:
                await asyncio.wait_for(self._answered.wait(), left)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ messages (the SDK's dispatch, on this loop)
    def _control(self, msg: dict[str, Any]) -> None:
        self._heard()
        kind = msg.get("T")
        if kind == "subscription":
            self._confirmed = frozenset(msg.get("quotes") or ()) & frozenset(msg.get("trades") or ())
        elif kind == "error":
            self.errors.append((msg.get("code"), str(msg.get("msg"))))
            log.warning("alpaca stream error %s: %s", msg.get("code"), msg.get("msg"))
        else:
            return
        self._answers += 1
        self._answered.set()

    async def _on_quote(self, q: dict[str, Any]) -> None:
        book = self._books.get(q.get("S"))
        if book is None or not q.get("bp") or not q.get("ap"):
            self._heard()
            return
        book.bid, book.ask = dec(q["bp"]), dec(q["ap"])
        book.stamp(_when(q.get("t")))
        self._emit(q["S"], book)

    async def _on_trade(self, t: dict[str, Any]) -> None:
        book = self._books.get(t.get("S"))
        if book is None or not t.get("p"):
            self._heard()
            return
        book.last = dec(t["p"])
        book.volume += int(t.get("s") or 0)
        book.stamp(_when(t.get("t")))
        self._emit(t["S"], book)

    def _emit(self, symbol: str, book: _Book) -> None:
        if book.bid is None or book.ask is None or book.last is None or book.at is None:
            self._heard()
            return
        self._push(Quote(symbol=symbol, bid=book.bid, ask=book.ask, last=book.last, volume=book.volume,
                         timestamp=book.at))

    # ------------------------------------------------------------ close
    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._close_socket()

    async def _close_socket(self) -> None:
        if self._socket is not None:
            try:
                await asyncio.wait_for(self._socket.close(), 5)
            except Exception as exc:                  # closing a dead socket: nothing left to do
                log.debug("alpaca stream: close: %s", exc)


# ---------------------------------------------------------------- the SDK's class, contained

def _sdk_stream_class() -> tuple[type, type]:
    """alpaca-py's StockDataStream and DataFeed (imported off the event loop: the SDK pulls in pandas)."""
    from alpaca.data.enums import DataFeed
    from alpaca.data.live.stock import StockDataStream
    return StockDataStream, DataFeed


@functools.cache
def _socket_class(base: type) -> type:
    """alpaca-py's StockDataStream, telling the stream about Alpaca's control messages (subscription lists and
    errors), which the SDK only logs."""

    class _Socket(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, on_control: Callable[[dict[str, Any]], None], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._on_control = on_control

        async def _dispatch(self, msg: dict[str, Any]) -> None:
            if msg.get("T") in ("subscription", "error"):
                self._on_control(msg)
            await super()._dispatch(msg)

    return _Socket


def _when(raw: Any) -> datetime | None:
    """A message's "t": a msgpack Timestamp (the SDK's frames), an RFC 3339 string (JSON), or a datetime."""
    if raw is None or isinstance(raw, datetime):
        return raw
    if hasattr(raw, "to_datetime"):
        return raw.to_datetime()
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        log.warning("alpaca stream: a message time not understood: %r", raw)
        return None


def _is_disconnect(exc: BaseException) -> bool:
    import websockets
    return isinstance(exc, (websockets.WebSocketException, OSError))


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
