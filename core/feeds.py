"""What a source of market history answers: the paper venue's price feed and the scan's universe.

Implementations: `brokers.paper.simulated.SimulatedMarket` (the default, no account needed) and
`data.bar_files.BarFileSource` (history the user brings). Both are synchronous and CPU-bound; async callers
use `asyncio.to_thread` for the big ones (`daily_frame`).

No look-ahead, by contract: `end` / `at` is what the caller's clock says is now, and nothing that happens after
it may come back — not a bar that is still forming, not a later quote.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, AsyncIterator, Literal, Protocol, Sequence, runtime_checkable

from core.errors import BrokerError
from core.instruments import Bar, Instrument, Quote, Timeframe

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class UniverseSource(Protocol):
    """What the scan reads: the universe and its daily bars."""

    def instruments(self) -> list[Instrument]:
        """The whole universe, in a stable order."""
        ...

    def daily_frame(self, symbols: Sequence[str], end: datetime, lookback_days: int) -> dict[str, "pd.DataFrame"]:
        """{"open"|"high"|"low"|"close"|"volume": DataFrame(session date x symbol, float, NaN where no bar)}.

        The last `lookback_days` sessions whose daily bar completed at or before `end`.
        """
        ...


@runtime_checkable
class PriceFeed(Protocol):
    """What the paper venue fills against: one symbol's instrument, quote and bars as of an instant."""

    def instrument(self, symbol: str) -> Instrument:
        """One instrument; an unknown symbol raises `UnknownSymbol` (a KeyError) saying what is carried."""
        ...

    def quote(self, symbol: str, at: datetime) -> Quote:
        """The quote as of `at`: the close of the last bar completed at or before `at`."""
        ...

    def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        """Bars with start in [start, end) that have COMPLETED at or before `end`, oldest first."""
        ...


@runtime_checkable
class MarketDataSource(UniverseSource, PriceFeed, Protocol):
    """Both: a history that serves the scan and the paper venue (the simulated market, bar files)."""


# ---------------------------------------------------------------- history for the bar store (data/sync.py)

@dataclass(frozen=True)
class UniverseSpec:
    """Which instruments the agent's universe holds (config `market_data.universe`).

    kind 'list':  exactly `symbols`.
    kind 'index': the constituents of `index` (a venue's plate/index code, e.g. moomoo 'HK.800000' for the HSI).
    kind 'board': every listed common stock of the market whose last session's turnover is at least
                  `min_turnover`, the `max_symbols` largest by turnover.
    """
    kind: Literal["list", "index", "board"]
    symbols: tuple[str, ...] = ()
    index: str | None = None
    min_turnover: Decimal = Decimal(0)
    max_symbols: int = 3000


@dataclass(frozen=True)
class Listing:
    """A security as its venue describes it: what `securities` records."""
    instrument: Instrument
    status: Literal["listed", "suspended", "delisted"] = "listed"
    turnover: Decimal | None = None          # the last session's traded value, when the venue told us


class QuotaExhausted(BrokerError):
    """The venue's history quota (or a rate limit that will not clear soon) is spent; `resets` says when, if known.
    Nothing is wrong with the request: sync stops asking and reports the symbols it skipped."""

    def __init__(self, message: str, *, resets: datetime | None = None) -> None:
        super().__init__(message)
        self.resets = resets


@runtime_checkable
class HistorySource(Protocol):
    """A venue's market data for the bar store: its listings and daily history (each broker implements it; the
    paper broker answers from its price feed)."""

    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        """The universe `spec` names, with each security's name, lot, tick scheme and listing status."""
        ...

    def daily_history(self, wanted: Sequence[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        """Completed daily bars of each (symbol, first session wanted) up to `end` inclusive, oldest first, as the
        venue's batches arrive ({symbol: bars}; a symbol with nothing new maps to []). Keeps to the venue's
        documented batch sizes, paging and rate limits; raises QuotaExhausted when the venue's quota is spent
        (batches already yielded stay valid)."""
        ...
