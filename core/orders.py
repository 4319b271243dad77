"""Orders as values: side, type, status and its one transition table, what we ask a broker, what it answers."""
from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from core.errors import InvalidRequest


class OrderSide(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


class OrderType(str, enum.Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"          # a stop-market order: once the market trades at or through stop_price it becomes a market
                           # order (a sell stop triggers at or below, a buy stop at or above); a protective stop


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

# Working: the order may still fill (a cancel we asked for may still lose the race, so CANCEL_PENDING counts).
WORKING_STATUSES = frozenset(OrderStatus) - TERMINAL_STATUSES

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


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What we ask a broker to do. Built and validated before the network."""
    client_order_id: str
    symbol: str
    side: OrderSide
    quantity: int
    order_type: OrderType
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None    # the trigger of a STOP order; nothing else carries one

    def __post_init__(self) -> None:
        if not self.client_order_id or len(self.client_order_id) > 48:
            raise InvalidRequest("client_order_id must be 1..48 characters")
        if not isinstance(self.quantity, int) or isinstance(self.quantity, bool) or self.quantity <= 0:
            raise InvalidRequest(f"quantity must be a positive integer, got {self.quantity!r}")
        if self.order_type is OrderType.LIMIT:
            if self.limit_price is None or self.limit_price <= 0:
                raise InvalidRequest("a limit order needs a positive limit_price")
        elif self.limit_price is not None:
            raise InvalidRequest(f"a {self.order_type.value} order must not carry a limit_price")
        if self.order_type is OrderType.STOP:
            if self.stop_price is None or self.stop_price <= 0:
                raise InvalidRequest("a stop order needs a positive stop_price")
        elif self.stop_price is not None:
            raise InvalidRequest(f"a {self.order_type.value} order must not carry a stop_price")


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
    stop_price: Decimal | None = None    # a STOP order's trigger, as the broker holds it

    @property
    def remaining_quantity(self) -> int:
        return self.quantity - self.filled_quantity


def client_id_prefix(agent_id: str) -> str:
    """The start of every client order id this agent sends ('<agent, 12 alphanumerics>-'): the one derivation
    the order path uses to name orders and reconciliation uses to recognise ours."""
    return (re.sub(r"[^A-Za-z0-9]", "", agent_id)[:12] or "agent") + "-"


def make_client_order_id(agent_id: str, cycle_id: uuid.UUID | None, symbol: str, side: OrderSide, seq: int) -> str:
    """Deterministic: (agent, cycle, symbol, side, sequence) -> at most 48 characters."""
    cycle = cycle_id.hex[:10] if cycle_id else "nocycle"
    sym = re.sub(r"[^A-Za-z0-9]", "", symbol)[:10]
    return f"{client_id_prefix(agent_id)}{cycle}-{sym}-{side.value[0]}{seq}"
