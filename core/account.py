"""The account as a broker reports it: cash, buying power, equity, positions."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Account:
    currency: str
    cash: Decimal
    buying_power: Decimal
    equity: Decimal


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    quantity: int            # > 0 long (short selling is not supported)
    avg_price: Decimal
    market_price: Decimal | None = None

    @property
    def market_value(self) -> Decimal | None:
        return None if self.market_price is None else self.market_price * self.quantity
