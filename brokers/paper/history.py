"""What the bar store asks of the paper venue (`core.feeds.HistorySource`), answered from its price feed.

    'list'   those symbols the feed carries (an unknown one is left out, logged)
    'board'  every instrument of the feed (`instruments()`), those whose last completed session traded at least
             `min_turnover` (close x volume of its daily bar), the `max_symbols` largest by it
    'index'  InvalidRequest: the simulated market and bar files have no indices

Daily history comes from the feed's `bars(symbol, "1d", start, end)`, BATCH symbols a batch, never past the clock.
Nothing here is rate limited: the feed is in-process.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, AsyncIterator

from core.clock import Clock
from core.errors import InvalidRequest
from core.feeds import Listing, UniverseSpec
from core.instruments import Bar

if TYPE_CHECKING:
    from core.calendar import MarketCalendar

log = logging.getLogger(__name__)

BATCH = 200
LOOKBACK = timedelta(days=15)        # far enough back to hold the last completed session over any holiday run


class PaperHistory:
    """Listings and daily history from a price feed (instrument, quote, bars; `instruments()` for a board)."""

    def __init__(self, market: Any, *, clock: Clock, calendar: "MarketCalendar") -> None:
        self.market = market
        self.clock = clock
        self.calendar = calendar

    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        if spec.kind == "index":
            raise InvalidRequest("the paper venue's price feed has no indices: use universe kind 'list' or 'board'")
        if spec.kind == "list":
            known = []
            for symbol in dict.fromkeys(spec.symbols):
                try:
                    known.append(self.market.instrument(symbol))
                except KeyError:
                    log.warning("paper: the price feed has no %s; left out of the universe", symbol)
            return [Listing(inst, turnover=self._turnover(inst.symbol)) for inst in known]
        if spec.kind != "board":
            raise InvalidRequest(f"unknown universe kind {spec.kind!r}; the paper venue answers 'list' and 'board'")
        everything = getattr(self.market, "instruments", None)
        if everything is None:
            raise InvalidRequest("this price feed does not list its instruments: use universe kind 'list'")
        found = [Listing(inst, turnover=self._turnover(inst.symbol)) for inst in everything()]
        keep = [li for li in found if (li.turnover or 0) >= spec.min_turnover]
        keep.sort(key=lambda li: (-(li.turnover or 0), li.instrument.symbol))
        return keep[:spec.max_symbols]

    def _turnover(self, symbol: str) -> Decimal | None:
        now = self.clock.now()
        bars = self.market.bars(symbol, "1d", now - LOOKBACK, now)
        return bars[-1].close * bars[-1].volume if bars else None

    async def daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        now = self.clock.now()
        upto = min(self._local_midnight(end + timedelta(days=1)), now)
        for i in range(0, len(wanted), BATCH):
            out: dict[str, list[Bar]] = {}
            for symbol, start in wanted[i:i + BATCH]:
                begin = self._local_midnight(start)
                try:
                    out[symbol] = list(self.market.bars(symbol, "1d", begin, upto)) if begin < upto else []
                except KeyError:
                    log.warning("paper: the price feed has no %s; no history", symbol)
                    out[symbol] = []
            yield out

    def _local_midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=self.calendar.tz)
