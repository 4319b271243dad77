"""OpenD's documented limits on market data requests, and the window that keeps us inside them.

Each number is from the moomoo / Futu OpenAPI docs (sources in docs/notes/moomoo.md, section 8):

    get_market_snapshot      at most 400 codes a request; at most 60 requests in any 30 seconds
    request_history_kline    at most 1000 K-lines a page (page_req_key for the rest); at most 60 requests in any
                             30 seconds, counting only each symbol's FIRST page (later pages are not limited)
    get_plate_stock          at most 10 requests in any 30 seconds
    history K-line quota     one unit per symbol not fetched in the last 30 days (get_history_kl_quota)
    quote subscriptions      one unit of the subscription quota (100 / 300 / 1000 / 2000 by account) per security
                             and sub type held by any connection (query_subscription: total_used, remain); a
                             subscription can be cancelled only after at least one minute ("Quote related" Q2)

The rule is "at most n in 30 seconds: the 1st and the (n+1)th request are more than 30 seconds apart": a burst of
n, then a wait, is allowed. `RateWindow` keeps it by the injected clock and sleeps with the injected sleep, so tests
run on a simulated clock without waiting.
"""
from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta
from typing import Awaitable, Callable

from core.clock import Clock

log = logging.getLogger(__name__)

SNAPSHOT_CODES_MAX = 400
SNAPSHOT_RATE = (60, 30.0)
KLINE_PAGE_MAX = 1000
KLINE_FIRST_PAGE_RATE = (60, 30.0)
PLATE_RATE = (10, 30.0)
KL_QUOTA_DAYS = 30
MARGIN = timedelta(seconds=0.5)      # "more than 30 seconds apart", measured at OpenD, not here
UNSUBSCRIBE_AFTER = timedelta(minutes=1) + MARGIN      # a subscription's minimum age before OpenD lets it go

Sleep = Callable[[float], Awaitable[None]]


class RateWindow:
    """At most `limit` requests in any `window` seconds, timed by `clock`; `acquire` waits (with `sleep`) until one
    more is allowed. `waits` and `waited` say how often and how long it waited."""

    def __init__(self, name: str, limit: int, window: float, *, clock: Clock, sleep: Sleep) -> None:
        self.name = name
        self.limit = limit
        self.window = timedelta(seconds=window)
        self.clock = clock
        self.sleep = sleep
        self.waits = 0
        self.waited = 0.0
        self._sent: deque[datetime] = deque()

    async def acquire(self) -> None:
        now = self.clock.now()
        while self._sent and now - self._sent[0] > self.window:
            self._sent.popleft()
        if len(self._sent) >= self.limit:
            opens = self._sent[0] + self.window + MARGIN
            wait = (opens - now).total_seconds()
            log.info("moomoo %s: %d requests in %gs (OpenD's limit), waiting %.1fs", self.name, self.limit,
                     self.window.total_seconds(), wait)
            self.waits += 1
            self.waited += wait
            await self.sleep(wait)
            self._sent.popleft()
            now = max(self.clock.now(), opens)   # the sleep is trusted even if the clock did not visibly move
        self._sent.append(now)
