"""The exchange tick table in integer units, for the simulated market's whole-array arithmetic.

Prices inside the simulated market are int64 counts of 0.0001 (`UNITS` to the unit of currency): exact, cheap to
store, and on the tick grid by construction. `TickGrid.round` puts a whole float array on the grid at once (the
same answer as `core.ticks.round_to_tick(..., "nearest")` gives one Decimal at a time); `price` and `touch` turn
units back into `Decimal`s at the edge.
"""
from __future__ import annotations

import functools
from decimal import Decimal

import numpy as np

from core.ticks import TickScheme, tick_above, tick_bands, tick_below

UNITS = 10_000                  # prices are held as integers of 0.0001
_TEN4 = Decimal(UNITS)


class TickGrid:
    """The tick table of core/ticks.py in integer units, for rounding whole float arrays at once."""

    def __init__(self, scheme: TickScheme, min_price: Decimal) -> None:
        self.scheme = scheme
        bands, top, upper_inclusive = tick_bands(scheme)
        self.uppers = np.array([int(u * UNITS) for u, _ in bands], dtype=np.float64)
        self.ticks = np.array([int(t * UNITS) for _, t in bands] + [int(top * UNITS)], dtype=np.int64)
        self.side = "left" if upper_inclusive else "right"
        self.min_units = int(min_price * UNITS)

    def round(self, prices: np.ndarray) -> np.ndarray:
        """Nearest valid price, as int64 units; a price never falls below the exchange minimum."""
        pu = np.asarray(prices, dtype=np.float64) * UNITS
        tick = self.ticks[np.searchsorted(self.uppers, pu, side=self.side)]
        return np.maximum(np.rint(pu / tick).astype(np.int64) * tick, self.min_units)


@functools.lru_cache(maxsize=1 << 16)
def price(units: int) -> Decimal:
    """Units -> Decimal, exact: the quotient has at most four decimals (prices repeat: cached)."""
    return Decimal(int(units)) / _TEN4


@functools.lru_cache(maxsize=1 << 16)
def touch(units: int, scheme: str) -> tuple[Decimal, Decimal, Decimal]:
    """(bid, last, ask) around a last price: one tick either side (prices repeat: cached)."""
    last = price(units)
    return tick_below(last, scheme), last, tick_above(last, scheme)
