"""`OpenDQuoteStream`: quotes OpenD pushes (the monitor's fast path), over a quote connection of its own.

Each followed symbol is a QUOTE subscription (`subscribe(codes, [SubType.QUOTE], subscribe_push=True)`; the first
push comes at once) whose basic-quote pushes arrive on the SDK's callback thread. What OpenD documents, and how the
stream keeps it:

  - Quota: every (security, sub type) any connection holds takes one unit of the account's subscription quota
    (100 / 300 / 1000 / 2000). Before subscribing, `query_subscription` says what remains and which securities are
    held already (those cost nothing more); symbols beyond the quota are not subscribed and `follow` leaves them out
    of its answer, so the caller polls them.
  - A subscription can be cancelled only after at least a minute. A symbol no longer followed is unsubscribed by
    the first `follow` after its minute (timed on the broker's `rate_clock`); until then it stays subscribed and
    OpenD keeps pushing it, but its quotes are no longer delivered. A refused unsubscribe (another clock, another
    process) keeps the subscription and is tried again on a later `follow`.
  - HK quotes can be subscribed with LV1 rights or above: a refused subscribe (rights, quota raced away by another
    process) leaves those symbols to polling, logged.

A basic quote has no bid or ask: a pushed `Quote` shows both at the last price. Keep-alives OpenD answers on this
connection mark the stream heard (so does every push); a dropped connection closes the stream (`StreamClosed` from
`get`), and it does not reconnect: its owner opens a new one.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Iterable

from brokers.base import QuoteStream, StreamClosed
from brokers.moomoo import mapping
from brokers.moomoo.limits import UNSUBSCRIBE_AFTER
from brokers.moomoo.mapping import to_moomoo_code
from brokers.moomoo.sdk import OpenDSession, is_unknown_symbol
from core.clock import Clock
from core.errors import BrokerError, InvalidRequest

log = logging.getLogger(__name__)


class OpenDQuoteStream(QuoteStream):
    def __init__(self, opend: OpenDSession, *, clock: Clock, rate_clock: Clock, buffer: int = 20_000) -> None:
        super().__init__(buffer=buffer)
        self._opend = opend
        self._clock = clock              # stamps a pushed quote that carries no time of its own
        self._rate_clock = rate_clock    # ages subscriptions (OpenD counts real seconds)
        self._ctx: Any = None
        self._since: dict[str, datetime] = {}       # code -> when we subscribed it (the loop's, only)
        self._symbols: dict[str, str] = {}          # code -> the caller's symbol, for codes delivered now (replaced
                                                    # whole, read by the SDK's callback thread)

    async def start(self) -> "OpenDQuoteStream":
        self._ctx = await self._opend.open_push_context(deliver=self._on_row, heard=self._on_heard,
                                                        lost=self._on_lost)
        return self

    # ------------------------------------------------------------ QuoteStream
    async def _follow(self, wanted: frozenset[str]) -> Iterable[str]:
        if self._ctx is None:
            raise StreamClosed(self.closed_reason or "not started")
        codes: dict[str, str] = {}
        for symbol in sorted(wanted):
            try:
                codes.setdefault(to_moomoo_code(symbol), symbol)
            except InvalidRequest as exc:
                log.warning("moomoo quote stream: %s; left to polling", exc)
        self._symbols = {c: s for c, s in codes.items() if c in self._since}      # stop delivering the rest now
        await self._drop([c for c in self._since if c not in codes])
        new = [c for c in codes if c not in self._since]
        if new:
            self._symbols = {**self._symbols, **{c: codes[c] for c in new}}      # their first push may come first
            await self._add(new)
        self._symbols = {c: s for c, s in codes.items() if c in self._since}
        return list(self._symbols.values())

    async def _close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await asyncio.to_thread(ctx.close)

    # ------------------------------------------------------------ subscriptions
    async def _drop(self, stale: list[str]) -> None:
        """Unsubscribe the codes no longer followed that are old enough; the younger ones wait for a later call."""
        now = self._rate_clock.now()
        ripe = [c for c in stale if now - self._since[c] >= UNSUBSCRIBE_AFTER]
        if len(ripe) < len(stale):
            log.debug("moomoo quote stream: %d symbols no longer followed stay subscribed until their minute is up",
                      len(stale) - len(ripe))
        if not ripe:
            return
        try:
            await self._call("unsubscribe", self._ctx.unsubscribe, ripe, [self._opend.sdk.SubType.QUOTE])
        except BrokerError as exc:
            log.info("moomoo quote stream: unsubscribe of %d symbols refused, kept until a later follow: %s",
                     len(ripe), exc)
            return
        for code in ripe:
            del self._since[code]

    async def _add(self, new: list[str]) -> None:
        """Subscribe as many of `new` as the quota allows (those another connection holds cost nothing)."""
        try:
            info = await self._call("query_subscription", self._ctx.query_subscription, True)
        except BrokerError as exc:
            log.warning("moomoo quote stream: cannot read the subscription quota, %d symbols left to polling: %s",
                        len(new), exc)
            return
        held = set(info.get("sub_list", {}).get(self._opend.sdk.SubType.QUOTE, []))
        free = [c for c in new if c in held]
        costly = [c for c in new if c not in held]
        room = max(int(info.get("remain", 0)), 0)
        if len(costly) > room:
            log.info("moomoo quote stream: subscription quota has room for %d of %d new symbols (%d used); the rest "
                     "are polled", room, len(costly), info.get("total_used", 0))
        await self._subscribe(free + costly[:room])

    async def _subscribe(self, codes: list[str]) -> None:
        if not codes:
            return
        try:
            await self._call("subscribe", self._ctx.subscribe, codes, [self._opend.sdk.SubType.QUOTE],
                             subscribe_push=True)
        except BrokerError as exc:
            if len(codes) > 1 and is_unknown_symbol(exc):   # OpenD refuses the whole request for one unknown code
                half = len(codes) // 2
                await self._subscribe(codes[:half])
                await self._subscribe(codes[half:])
                return
            log.warning("moomoo quote stream: subscribe of %d symbols refused, left to polling: %s", len(codes), exc)
            return
        now = self._rate_clock.now()
        for code in codes:
            self._since[code] = now

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._ctx is None or self.closed_reason is not None:
            raise StreamClosed(self.closed_reason or "closed")
        return await self._opend.call(f"quote stream {what}", fn, *args, idempotent=False, **kwargs)

    # ------------------------------------------------------------ the SDK's threads
    def _on_row(self, row: dict[str, Any]) -> None:
        try:
            symbol = self._symbols.get(row.get("code"))
            if symbol is None:                 # still subscribed, no longer followed: a sign of life only
                self._on_heard()
                return
            self._push_threadsafe(mapping.basic_quote(symbol, row, self._clock.now()))
        except RuntimeError:                   # the event loop is gone: nobody reads any more
            pass
        except Exception:                      # a push must never kill the SDK's callback thread
            log.exception("moomoo quote push not understood: %r", row)

    def _on_heard(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._heard)
        except RuntimeError:
            pass

    def _on_lost(self, why: str) -> None:
        try:
            self._lost_threadsafe(f"OpenD quote connection lost ({why}) at {self._opend.where}")
        except RuntimeError:
            pass
