"""What a source of market history answers: the paper venue's price feed and the scan's universe.

Implementations: `brokers.paper.simulated.SimulatedMarket` (the default, no account needed) and
`data.bar_files.BarFileSource` (history the user brings). Both are synchronous and CPU-bound; async callers
use `asyncio.to_thread` for the big ones (`daily_frame`).

No look-ahead, by contract: `end` / `at` is what the caller's clock says is now, and nothing that happens after
it may come back — not a bar that is still forming, not a later quote.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

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
