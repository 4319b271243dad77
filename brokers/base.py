"""The whole broker port.

Every broker (paper, alpaca, moomoo) is a peer behind `BrokerClient`; nothing outside `brokers/` knows which
one it talks to. Money is `Decimal`, quantities are `int` shares, times are UTC-aware datetimes. The values and
errors it speaks live in `core` (instruments, orders, account, errors).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Sequence

from core.account import Account, Position
from core.errors import BrokerError, OrderRejected
from core.instruments import Bar, Instrument, Quote, Timeframe
from core.orders import OrderRequest, OrderResult, OrderSide, OrderType


# ---------------------------------------------------------------- the contract

class BrokerClient(ABC):
    """One broker account. Every method may raise `BrokerUnavailable`; order methods may raise `OrderRejected`."""

    name: str = "broker"
    environment: str = "paper"           # the venue's own word: paper (paper broker, Alpaca paper), live (Alpaca),
                                         # simulate / real (moomoo); heartbeat prints it

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def get_instrument(self, symbol: str) -> Instrument:
        """Lot size, tick scheme, currency, exchange. Unknown symbol -> InvalidRequest."""

    @abstractmethod
    async def get_quote(self, symbol: str) -> Quote: ...

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Quotes for many symbols at once (the monitor's hot path). Brokers with a batch API override this;
        the default asks one by one. A symbol whose quote fails is left out of the answer; the caller notices."""
        out: dict[str, Quote] = {}
        for symbol in symbols:
            try:
                out[symbol] = await self.get_quote(symbol)
            except BrokerError:
                continue
        return out

    @abstractmethod
    async def get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        """Bars whose start lies in [start, end), oldest first; never past the broker's notion of now."""

    @abstractmethod
    async def get_account(self) -> Account: ...

    @abstractmethod
    async def get_positions(self) -> list[Position]: ...

    async def get_account_and_positions(self) -> tuple[Account, list[Position]]:
        """Both, for a portfolio snapshot. The default asks for one, then the other; a broker that can read both
        at once (one request, one consistent view) overrides it."""
        return await self.get_account(), await self.get_positions()

    @abstractmethod
    async def place_order(self, order: OrderRequest) -> OrderResult:
        """Submit an order. Idempotent on client_order_id: a repeat returns the existing order."""

    @abstractmethod
    async def cancel_order(self, order_id: str) -> bool:
        """Cancel by client_order_id. True if the order is now cancelled (or cancel is pending)."""

    @abstractmethod
    async def get_orders(self, *, open_only: bool = False) -> list[OrderResult]: ...

    @abstractmethod
    async def get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        """The order we sent under this id, or None if the broker never received it."""

    async def close_position(self, symbol: str, client_order_id: str) -> OrderResult:
        """Sell the whole position at market. Raises OrderRejected if there is nothing to close."""
        positions = {p.symbol: p for p in await self.get_positions()}
        pos = positions.get(symbol)
        if pos is None or pos.quantity <= 0:
            raise OrderRejected(f"no open position in {symbol}", client_order_id=client_order_id)
        return await self.place_order(OrderRequest(
            client_order_id=client_order_id, symbol=symbol, side=OrderSide.SELL,
            quantity=pos.quantity, order_type=OrderType.MARKET))

    async def __aenter__(self) -> "BrokerClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()
