"""The whole broker port.

Every broker (paper, alpaca, moomoo) is a peer behind `BrokerClient`; nothing outside `brokers/` knows which
one it talks to. Money is `Decimal`, quantities are `int` shares, times are UTC-aware datetimes. The values and
errors it speaks live in `core` (instruments, orders, account, errors).

A small public port with private hooks (NautilusTrader's execution client): the public async methods are
concrete and own what every venue shares — today, logging each call on the "catalyst.broker" logger (reads at
debug, `place_order` and `cancel_order` at info) — and each venue fills in the `_`-hooks (`_connect`,
`_get_quote`, `_place_order`, ...). Errors are the venue's to translate at its own boundary (each does it
differently: a database, a REST API, a socket gateway), so the port passes them through unchanged.

Two capabilities a venue may lack, each with a safe default: `open_quote_stream` (pushed quotes for the monitor;
None = the monitor polls) and `supports_stop_orders` (a protective STOP order held at the venue; False = the
monitor alone protects a position, and heartbeat says so).

Every broker is also a `core.feeds.HistorySource` for the bar store (`list_securities`, `daily_history`): each
venue keeps its own documented batch sizes, paging, rate limits and quotas behind those two calls.
"""
from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from contextlib import aclosing
from datetime import date, datetime
from typing import Any, AsyncIterator, Awaitable, Iterable, Sequence

from core.account import Account, Position
from core.errors import BrokerError
from core.feeds import Listing, UniverseSpec
from core.instruments import Bar, Instrument, Quote, Timeframe
from core.orders import OrderRequest, OrderResult

log = logging.getLogger("catalyst.broker")

# An exit reads its position (`get_position`) and sells at once. A venue whose sell checks the shares free to sell
# itself (moomoo, Alpaca: both would take an oversell on a margin account) takes that read for the check when it is
# younger than this many seconds, once, instead of asking the venue a second time before the order leaves.
SELL_CHECK_FRESH = 0.5


class SellCheckReads:
    """What an exit's position read found, per key (a symbol, a venue code), for the sell's check that follows: each
    taken at most once, and only while younger than `fresh` seconds (else the caller asks the venue again)."""

    def __init__(self, fresh: float = SELL_CHECK_FRESH) -> None:
        self.fresh = fresh
        self._kept: dict[str, tuple[float, Any]] = {}

    def keep(self, key: str, value: Any) -> None:
        now = time.monotonic()
        self._kept = {k: v for k, v in self._kept.items() if now - v[0] < self.fresh}
        self._kept[key] = (now, value)

    def take(self, key: str) -> tuple[bool, Any]:
        """(True, the value) when a fresh read is kept for `key`, else (False, None); either way it is gone."""
        kept = self._kept.pop(key, None)
        if kept is not None and time.monotonic() - kept[0] < self.fresh:
            return True, kept[1]
        return False, None

    def drop(self, key: str) -> None:
        self._kept.pop(key, None)


# ---------------------------------------------------------------- pushed quotes

class StreamClosed(BrokerError):
    """The venue's quote stream is gone (dropped connection, refused login, closed by us); open a new one."""


class QuoteStream(ABC):
    """Quotes a venue pushes for the symbols it is told to follow (the monitor's fast path).

    `follow(symbols)` makes the venue push exactly those symbols as far as its quota allows and answers the ones it
    pushes; the rest must be polled. `get(timeout)` returns the next pushed quote, None when nothing came within
    the timeout, and raises `StreamClosed` once the connection is gone. `last_heard` is the monotonic time of the
    venue's last message of any kind (a quote or a keep-alive): the caller judges a stall from it. Quotes arrive in
    the order the venue sent them; a buffer that fills drops the oldest quote (a newer one supersedes it) and
    counts it in `dropped`.

    Venues implement `_follow` and `_close`, and deliver with `_push` (on the event loop) or `_push_threadsafe`
    (from an SDK's own thread), `_heard` on a keep-alive, `_lost(reason)` when the connection drops.
    """

    def __init__(self, *, buffer: int = 20_000) -> None:
        self._queue: asyncio.Queue[Quote] = asyncio.Queue(maxsize=buffer)
        self._loop = asyncio.get_running_loop()
        self.followed: frozenset[str] = frozenset()
        self.last_heard: float = time.monotonic()
        self.closed_reason: str | None = None
        self.dropped = 0
        self.received = 0

    async def follow(self, symbols: Iterable[str]) -> frozenset[str]:
        if self.closed_reason is not None:
            raise StreamClosed(self.closed_reason)
        wanted = frozenset(symbols)
        self.followed = frozenset(await self._follow(wanted))
        log.debug("quote stream: following %d of %d symbols", len(self.followed), len(wanted))
        return self.followed

    async def get(self, timeout: float) -> Quote | None:
        if self.closed_reason is not None and self._queue.empty():
            raise StreamClosed(self.closed_reason)
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0.0))
        except asyncio.TimeoutError:
            if self.closed_reason is not None:
                raise StreamClosed(self.closed_reason) from None
            return None

    def take_waiting(self) -> list[Quote]:
        """Every quote delivered and not yet taken, oldest first, without waiting."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def pending(self) -> int:
        """Quotes delivered but not yet taken (a growing number means the reader falls behind)."""
        return self._queue.qsize()

    async def close(self) -> None:
        if self.closed_reason is None:
            self.closed_reason = "closed"
        await self._close()

    # ------------------------------------------------------------ for the venue
    def _push(self, quote: Quote) -> None:
        self.last_heard = time.monotonic()
        self.received += 1
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(quote)

    def _push_threadsafe(self, quote: Quote) -> None:
        self._loop.call_soon_threadsafe(self._push, quote)

    def _heard(self) -> None:
        self.last_heard = time.monotonic()

    def _lost(self, reason: str) -> None:
        if self.closed_reason is None:
            log.warning("quote stream lost: %s", reason)
            self.closed_reason = reason

    def _lost_threadsafe(self, reason: str) -> None:
        self._loop.call_soon_threadsafe(self._lost, reason)

    @abstractmethod
    async def _follow(self, wanted: frozenset[str]) -> Iterable[str]: ...

    @abstractmethod
    async def _close(self) -> None: ...


# ---------------------------------------------------------------- the contract

class BrokerClient(ABC):
    """One broker account. Every method may raise `BrokerUnavailable`; order methods may raise `OrderRejected`."""

    name: str = "broker"
    environment: str = "paper"           # the venue's own word: paper (paper broker, Alpaca paper), live (Alpaca),
                                         # simulate / real (moomoo); heartbeat prints it
    # Whether the broker's reads are statements on our own database (the paper venue): asked beside one of our
    # reads they only take a second connection, so callers ask one after the other (`both`); a remote broker's
    # answer is awaited beside our read.
    shares_our_database: bool = False

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        log.debug("%s(%s): connect", self.name, self.environment)
        await self._connect()

    async def disconnect(self) -> None:
        log.debug("%s(%s): disconnect", self.name, self.environment)
        await self._disconnect()

    async def __aenter__(self) -> "BrokerClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # ------------------------------------------------------------ market data
    async def get_instrument(self, symbol: str) -> Instrument:
        """Lot size, tick scheme, currency, exchange. Unknown symbol -> InvalidRequest."""
        log.debug("%s: get_instrument %s", self.name, symbol)
        return await self._get_instrument(symbol)

    async def get_quote(self, symbol: str) -> Quote:
        log.debug("%s: get_quote %s", self.name, symbol)
        return await self._get_quote(symbol)

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Quotes for many symbols at once (the monitor's hot path). A symbol whose quote fails is left out of the
        answer; the caller notices."""
        symbols = list(symbols)
        log.debug("%s: get_quotes (%d symbols)", self.name, len(symbols))
        return await self._get_quotes(symbols)

    async def get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        """Bars whose start lies in [start, end), oldest first; never past the broker's notion of now."""
        log.debug("%s: get_bars %s %s [%s, %s)", self.name, symbol, timeframe, start, end)
        return await self._get_bars(symbol, timeframe, start, end)

    async def open_quote_stream(self) -> QuoteStream | None:
        """A new stream of pushed quotes, or None when this venue (or account) cannot push: the monitor polls."""
        log.debug("%s: open_quote_stream", self.name)
        return await self._open_quote_stream()

    # ------------------------------------------------------------ history for the bar store (core.feeds.HistorySource)
    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        """The universe `spec` names, with each security's name, lot, tick scheme and listing status (canonical
        symbols). A kind the venue cannot answer is an InvalidRequest saying which kinds it can."""
        log.debug("%s: list_securities %s", self.name, spec.kind)
        return await self._list_securities(spec)

    async def daily_history(self, wanted: Sequence[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        """Completed daily bars of each (symbol, first session wanted) up to `end` inclusive, as the venue's batches
        arrive; raises `core.feeds.QuotaExhausted` when the venue's quota is spent (batches yielded stay valid)."""
        wanted = list(wanted)
        log.debug("%s: daily_history (%d symbols) to %s", self.name, len(wanted), end)
        async with aclosing(self._daily_history(wanted, end)) as batches:
            async for batch in batches:
                yield batch

    # ------------------------------------------------------------ account
    async def get_account(self) -> Account:
        log.debug("%s: get_account", self.name)
        return await self._get_account()

    async def get_positions(self) -> list[Position]:
        log.debug("%s: get_positions", self.name)
        return await self._get_positions()

    async def get_position(self, symbol: str) -> Position | None:
        """One symbol's position, None when none is held: what an exit checks (one symbol, not the whole book)."""
        log.debug("%s: get_position %s", self.name, symbol)
        return await self._get_position(symbol)

    async def get_account_and_positions(self) -> tuple[Account, list[Position]]:
        """Both, for a portfolio snapshot (one consistent view where the venue can give one)."""
        log.debug("%s: get_account_and_positions", self.name)
        return await self._get_account_and_positions()

    # ------------------------------------------------------------ orders
    def supports_stop_orders(self) -> bool:
        """True when this account holds a sell STOP order at the venue (a protective stop that fires while we are
        down); False: the monitor alone protects positions here, and heartbeat says so."""
        return self._supports_stop_orders()

    async def place_order(self, order: OrderRequest) -> OrderResult:
        """Submit an order. Idempotent on client_order_id: a repeat returns the existing order."""
        log.info("%s(%s): place_order %s: %s %s %s %s%s%s", self.name, self.environment, order.client_order_id,
                 order.side.value, order.quantity, order.symbol, order.order_type.value,
                 "" if order.limit_price is None else f" @ {order.limit_price}",
                 "" if order.stop_price is None else f" stop {order.stop_price}")
        return await self._place_order(order)

    async def cancel_order(self, order_id: str) -> bool:
        """Cancel by client_order_id. True if the order is now cancelled (or cancel is pending)."""
        log.info("%s(%s): cancel_order %s", self.name, self.environment, order_id)
        return await self._cancel_order(order_id)

    async def get_orders(self, *, open_only: bool = False) -> list[OrderResult]:
        log.debug("%s: get_orders%s", self.name, " (open only)" if open_only else "")
        return await self._get_orders(open_only=open_only)

    async def get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        """The order we sent under this id, or None if the broker never received it."""
        log.debug("%s: get_order_by_client_id %s", self.name, client_order_id)
        return await self._get_order_by_client_id(client_order_id)

    # ------------------------------------------------------------ the hooks each venue implements
    @abstractmethod
    async def _connect(self) -> None: ...

    @abstractmethod
    async def _disconnect(self) -> None: ...

    @abstractmethod
    async def _get_instrument(self, symbol: str) -> Instrument: ...

    @abstractmethod
    async def _get_quote(self, symbol: str) -> Quote: ...

    async def _get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Brokers with a batch API override this; the default asks one by one through the public `get_quote`."""
        out: dict[str, Quote] = {}
        for symbol in symbols:
            try:
                out[symbol] = await self.get_quote(symbol)
            except BrokerError:
                continue
        return out

    @abstractmethod
    async def _get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        ...

    @abstractmethod
    async def _list_securities(self, spec: UniverseSpec) -> list[Listing]: ...

    @abstractmethod
    def _daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]: ...

    @abstractmethod
    async def _get_account(self) -> Account: ...

    @abstractmethod
    async def _get_positions(self) -> list[Position]: ...

    async def _get_position(self, symbol: str) -> Position | None:
        """Brokers that can ask for one symbol override this; the default reads the whole list."""
        return next((p for p in await self._get_positions() if p.symbol == symbol), None)

    async def _get_account_and_positions(self) -> tuple[Account, list[Position]]:
        """The default asks for one, then the other; a broker that can read both at once (one request, one
        consistent view) overrides it."""
        return await self._get_account(), await self._get_positions()

    @abstractmethod
    async def _place_order(self, order: OrderRequest) -> OrderResult: ...

    def _supports_stop_orders(self) -> bool:
        return False

    async def _open_quote_stream(self) -> QuoteStream | None:
        return None

    @abstractmethod
    async def _cancel_order(self, order_id: str) -> bool: ...

    @abstractmethod
    async def _get_orders(self, *, open_only: bool) -> list[OrderResult]: ...

    @abstractmethod
    async def _get_order_by_client_id(self, client_order_id: str) -> OrderResult | None: ...


async def both(broker: BrokerClient, from_broker: Awaitable, from_us: Awaitable) -> tuple:
    """(broker's answer, our read's answer): awaited side by side, or one after the other when the broker's reads are
    statements on our own database (BrokerClient.shares_our_database)."""
    if broker.shares_our_database:
        try:
            first = await from_broker
        except BaseException:
            if asyncio.iscoroutine(from_us):
                from_us.close()                  # never started: nothing to wait for
            raise
        return first, await from_us
    return tuple(await asyncio.gather(from_broker, from_us))
