"""The whole broker contract.

Every broker (paper, alpaca, moomoo) is a peer behind `BrokerClient`; nothing outside `brokers/` knows which
one it talks to. Money is `Decimal`, quantities are `int` shares, times are UTC-aware datetimes.

Errors say what the caller should do::

    BrokerError
    ├── BrokerUnavailable   the broker or gateway cannot be reached / timed out  -> retry later, keep state
    ├── OrderRejected       the broker refused this order (reason)              -> tell the model / user
    └── InvalidRequest      we sent something malformed                          -> our bug; fix the caller
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Sequence


# ---------------------------------------------------------------- errors

class BrokerError(Exception):
    """Base of every broker error."""


class BrokerUnavailable(BrokerError):
    """The broker or its gateway cannot be reached; retry later. Nothing was decided."""


class OrderRejected(BrokerError):
    """The broker refused the order; `reason` is meant for a human or the model."""

    def __init__(self, reason: str, *, client_order_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.client_order_id = client_order_id


class InvalidRequest(BrokerError):
    """The request itself is malformed (a bug in the caller, not a market condition)."""


# ---------------------------------------------------------------- enums

class OrderSide(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


class OrderType(str, enum.Enum):
    MARKET = "market"
    LIMIT = "limit"


class OrderStatus(str, enum.Enum):
    PENDING_SUBMIT = "pending_submit"   # write-ahead row exists, broker not yet answered
    SUBMITTED = "submitted"             # accepted by the broker, resting
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCEL_PENDING = "cancel_pending"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_open(self) -> bool:
        return not self.is_terminal


TERMINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})

_S = OrderStatus
# One table of allowed transitions. A cancel can race a fill: CANCEL_PENDING may still end FILLED or
# PARTIALLY_FILLED. A broker may report a fill before we saw the acceptance (PENDING_SUBMIT -> FILLED).
ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.PENDING_SUBMIT: frozenset({_S.SUBMITTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.REJECTED,
                                  _S.CANCEL_PENDING, _S.CANCELLED, _S.EXPIRED}),
    _S.SUBMITTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCEL_PENDING, _S.CANCELLED,
                             _S.EXPIRED, _S.REJECTED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCEL_PENDING, _S.CANCELLED,
                                    _S.EXPIRED}),
    # a cancel the venue refuses puts the order back to working
    _S.CANCEL_PENDING: frozenset({_S.CANCELLED, _S.PARTIALLY_FILLED, _S.FILLED, _S.EXPIRED, _S.SUBMITTED}),
    _S.FILLED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.EXPIRED: frozenset(),
}


def can_transition(old: OrderStatus, new: OrderStatus) -> bool:
    """True when a broker may move an order from `old` to `new` (same status is always allowed)."""
    return old == new or new in ALLOWED_TRANSITIONS[old]


# ---------------------------------------------------------------- values

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


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What we ask a broker to do. Built and validated before the network."""
    client_order_id: str
    symbol: str
    side: OrderSide
    quantity: int
    order_type: OrderType
    limit_price: Decimal | None = None

    def __post_init__(self) -> None:
        if not self.client_order_id or len(self.client_order_id) > 48:
            raise InvalidRequest("client_order_id must be 1..48 characters")
        if not isinstance(self.quantity, int) or isinstance(self.quantity, bool) or self.quantity <= 0:
            raise InvalidRequest(f"quantity must be a positive integer, got {self.quantity!r}")
        if self.order_type is OrderType.LIMIT:
            if self.limit_price is None or self.limit_price <= 0:
                raise InvalidRequest("a limit order needs a positive limit_price")
        elif self.limit_price is not None:
            raise InvalidRequest("a market order must not carry a limit_price")


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    quantity: int
    price: Decimal
    fee: Decimal
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class OrderResult:
    """A broker's view of one order."""
    client_order_id: str
    broker_order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    quantity: int
    limit_price: Decimal | None
    status: OrderStatus
    filled_quantity: int = 0
    avg_fill_price: Decimal | None = None
    fees: Decimal = Decimal("0")
    reason: str | None = None            # rejection or cancel reason, if any
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    fills: tuple[Fill, ...] = field(default_factory=tuple)

    @property
    def remaining_quantity(self) -> int:
        return self.quantity - self.filled_quantity


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
