"""One symbol's bars as parallel arrays, oldest first: what the technicals and the patterns read.

The bar store already holds each symbol's history as arrays (data/store.py `Series`); a window of it is served as
views, with no DataFrame built per symbol and read back column by column. A DataFrame (the tools' intraday bars,
tests, a caller's own data) converts with `from_frame`; both forms give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from core.calendar import from_ns, to_ns

if TYPE_CHECKING:
    import pandas as pd

    from core.instruments import Bar


@dataclass(frozen=True)
class BarArrays:
    starts: np.ndarray                  # int64 epoch ns of each bar's start (UTC)
    open: np.ndarray                    # float64, like the rest
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    index: Any = None                   # the frame's own index when made from one (its times keep its time zone)

    def __len__(self) -> int:
        return len(self.close)

    def time(self, k: int) -> datetime:
        """The start of bar k as a datetime (UTC, or as the frame's index had it)."""
        if self.index is not None:
            import pandas as pd
            return pd.Timestamp(self.index[k]).to_pydatetime()
        return from_ns(int(self.starts[k]))

    def take(self, keep: np.ndarray) -> "BarArrays":
        """The bars where `keep` (a boolean mask) holds."""
        return BarArrays(self.starts[keep], self.open[keep], self.high[keep], self.low[keep], self.close[keep],
                         self.volume[keep], None if self.index is None else self.index[keep])

    @classmethod
    def from_frame(cls, frame: "pd.DataFrame") -> "BarArrays":
        """open/high/low/close/volume columns of a frame indexed by bar start."""
        def col(name: str) -> np.ndarray:
            return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)

        index = frame.index
        try:
            starts = index.to_numpy(dtype="datetime64[ns]").view(np.int64)
        except (TypeError, ValueError):
            starts = np.arange(len(index), dtype=np.int64)
        return cls(starts, col("open"), col("high"), col("low"), col("close"), col("volume"), index)

    @classmethod
    def from_bars(cls, bars: Sequence["Bar"]) -> "BarArrays":
        """Broker bars (Decimal prices) as floats."""
        return cls(np.array([to_ns(b.start) for b in bars], dtype=np.int64),
                   *(np.array([float(getattr(b, f)) for b in bars], dtype=np.float64)
                     for f in ("open", "high", "low", "close", "volume")))
