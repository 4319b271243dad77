"""What is traded and its prices: instruments, quotes, bars."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

# The columns of a daily bar frame, in order.
DAILY_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    exchange: str            # e.g. "HKEX", "NYSE"
    currency: str            # e.g. "HKD", "USD"
    lot_size: int            # shares per board lot
    name: str = ""
    tick_scheme: Literal["hkex", "us"] = "hkex"


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: int              # cumulative shares traded today
    timestamp: datetime

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    start: datetime          # bar open time, UTC
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: int


Timeframe = Literal["1m", "5m", "15m", "30m", "1h", "1d"]
