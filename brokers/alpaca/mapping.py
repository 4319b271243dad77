"""Pure translation between alpaca-py's objects and our values: statuses, orders, fills, quotes, bars, account.

Status table (`STATUS_MAP`, one entry per value of alpaca-py's `OrderStatus`):

    new, accepted, pending_new, accepted_for_bidding, pending_review,  -> SUBMITTED   (working, or about to)
    held, stopped, suspended, pending_replace, done_for_day, calculated
    partially_filled                                                    -> PARTIALLY_FILLED
    filled                                                              -> FILLED
    pending_cancel                                                      -> CANCEL_PENDING
    canceled                                                            -> CANCELLED
    replaced                                                            -> CANCELLED   (we never replace orders;
                                                                                        this id no longer works)
    expired                                                             -> EXPIRED
    rejected                                                            -> REJECTED
plus one rule (`map_status`): an order the table calls SUBMITTED reads PARTIALLY_FILLED once shares are filled,
and FILLED when all are (done_for_day and calculated report a finished day that way). done_for_day, stopped,
suspended and calculated stay open: Alpaca still has the last word on them.

Orders: market and limit orders go out for the DAY, a STOP order (a sell stop: type "stop", `stop_price`) good till
cancelled; it reads back as OrderType.STOP with its `stop_price`, "new" (or "accepted" before the session) while it
rests, then filled like a market order once a trade prints at or below the stop.

Fills: one `Fill` per execution, from an account FILL activity; `fill_id` is Alpaca's activity id
("<time>::<uuid>"). If the activity list lags the order (filled_qty above the executions visible), a finished
order is reported PARTIALLY_FILLED until they appear (`order_result`), so the order path syncs it again instead
of closing it short. Alpaca charges no commission and reports no fee per order or fill (regulatory fees on sells
post later as FEE activities), so `Fill.fee` and `OrderResult.fees` are 0.

Money arrives as strings (trading API) or JSON numbers (data API); shares are whole (fractions truncated). Daily
bars are stamped with the session open (Alpaca stamps midnight New York).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from core.account import Account, Position
from core.errors import BrokerUnavailable
from core.instruments import Bar, Instrument, Quote
from core.orders import Fill, OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType

if TYPE_CHECKING:
    from types import SimpleNamespace

    from core.calendar import MarketCalendar

_S = OrderStatus
STATUS_MAP: dict[str, OrderStatus] = {
    "new": _S.SUBMITTED, "accepted": _S.SUBMITTED, "pending_new": _S.SUBMITTED,
    "accepted_for_bidding": _S.SUBMITTED, "pending_review": _S.SUBMITTED, "held": _S.SUBMITTED,
    "stopped": _S.SUBMITTED, "suspended": _S.SUBMITTED, "pending_replace": _S.SUBMITTED,
    "done_for_day": _S.SUBMITTED, "calculated": _S.SUBMITTED,
    "partially_filled": _S.PARTIALLY_FILLED,
    "filled": _S.FILLED,
    "pending_cancel": _S.CANCEL_PENDING,
    "canceled": _S.CANCELLED, "replaced": _S.CANCELLED,
    "expired": _S.EXPIRED,
    "rejected": _S.REJECTED,
}
# Alpaca's order type -> ours. A stop-limit order (Alpaca makes one of every buy stop) is priced like a limit order;
# a trailing stop (never ours) reads as a market order.
_ORDER_TYPES = {"market": OrderType.MARKET, "limit": OrderType.LIMIT, "stop_limit": OrderType.LIMIT,
                "stop": OrderType.STOP, "trailing_stop": OrderType.MARKET}
_REASONS = {"canceled": "cancelled at Alpaca", "replaced": "replaced by another order at Alpaca",
            "expired": "expired at Alpaca (a day order past its session)", "rejected": "rejected by Alpaca"}

# our timeframe -> (amount, alpaca-py TimeFrameUnit name, bar length; None = one session)
TIMEFRAMES: dict[str, tuple[int, str, timedelta | None]] = {
    "1m": (1, "Minute", timedelta(minutes=1)), "5m": (5, "Minute", timedelta(minutes=5)),
    "15m": (15, "Minute", timedelta(minutes=15)), "30m": (30, "Minute", timedelta(minutes=30)),
    "1h": (1, "Hour", timedelta(hours=1)), "1d": (1, "Day", None),
}


def map_status(alpaca_status: str, *, filled: int = 0, quantity: int = 0) -> OrderStatus:
    """Our status for an Alpaca order status string (the table in the module docstring)."""
    try:
        status = STATUS_MAP[alpaca_status]
    except KeyError:
        raise BrokerUnavailable(f"alpaca: unknown order status {alpaca_status!r} (not in alpaca-py's table)") \
            from None
    if status is _S.SUBMITTED and filled > 0:
        return _S.FILLED if quantity and filled >= quantity else _S.PARTIALLY_FILLED
    return status


# ---------------------------------------------------------------- orders and fills

def order_status(raw: Any) -> OrderStatus:
    """Our status for an alpaca-py `Order`."""
    return map_status(value(raw.status), filled=shares(raw.filled_qty or 0), quantity=shares(raw.qty))


def order_result(raw: Any, fills: list[Fill]) -> OrderResult:
    """An alpaca-py `Order` and its executions -> OrderResult."""
    quantity, filled = shares(raw.qty), shares(raw.filled_qty or 0)
    status = map_status(value(raw.status), filled=filled, quantity=quantity)
    if status.is_terminal and sum(f.quantity for f in fills) < filled:
        status = OrderStatus.PARTIALLY_FILLED        # executions not visible yet: keep the order open for now
    kind = _ORDER_TYPES.get(value(raw.type or raw.order_type), OrderType.MARKET)
    return OrderResult(
        client_order_id=raw.client_order_id, broker_order_id=str(raw.id), symbol=raw.symbol,
        side=OrderSide(value(raw.side)), order_type=kind,
        quantity=quantity, limit_price=dec(raw.limit_price) if raw.limit_price not in (None, "") else None,
        status=status, filled_quantity=filled,
        avg_fill_price=dec(raw.filled_avg_price) if filled and raw.filled_avg_price not in (None, "") else None,
        fees=Decimal(0), reason=_REASONS.get(value(raw.status)), submitted_at=raw.submitted_at,
        updated_at=raw.updated_at, fills=tuple(sorted(fills, key=lambda f: (f.timestamp, f.fill_id))),
        stop_price=dec(raw.stop_price) if kind is OrderType.STOP and raw.stop_price not in (None, "") else None)


def fill(act: dict[str, Any], raw: Any) -> Fill:
    """One FILL activity (a JSON dict) of the alpaca-py `Order` `raw` -> Fill."""
    return Fill(fill_id=str(act["id"]), client_order_id=raw.client_order_id, symbol=act.get("symbol") or raw.symbol,
                side=OrderSide(value(raw.side)), quantity=shares(act["qty"]), price=dec(act["price"]),
                fee=Decimal(0), timestamp=datetime.fromisoformat(act["transaction_time"]).astimezone(timezone.utc))


def order_request(sdk: "SimpleNamespace", order: OrderRequest) -> Any:
    """Our OrderRequest -> alpaca-py's request in whole shares under our client_order_id: market and limit orders
    for the DAY, a STOP order good till cancelled (a protective stop must outlive the session; Alpaca cancels a GTC
    order 90 days after it was created)."""
    common = dict(symbol=order.symbol, qty=order.quantity, side=sdk.OrderSide(order.side.value),
                  client_order_id=order.client_order_id)
    if order.order_type is OrderType.STOP:
        return sdk.StopOrderRequest(stop_price=float(order.stop_price), time_in_force=sdk.TimeInForce.GTC, **common)
    if order.order_type is OrderType.LIMIT:
        return sdk.LimitOrderRequest(limit_price=float(order.limit_price), time_in_force=sdk.TimeInForce.DAY,
                                     **common)
    return sdk.MarketOrderRequest(time_in_force=sdk.TimeInForce.DAY, **common)


# ---------------------------------------------------------------- market data and account

def instrument(asset: Any) -> Instrument:
    """An alpaca-py `Asset` (a US equity) -> Instrument: whole shares, the US tick scheme."""
    return Instrument(symbol=asset.symbol, exchange=value(asset.exchange) or "US", currency="USD", lot_size=1,
                      name=asset.name or "", tick_scheme="us")


def quote(symbol: str, snap: Any) -> Quote | None:
    """A snapshot -> Quote, or None without a two-sided quote and a last trade."""
    q, t = snap.latest_quote, snap.latest_trade
    if q is None or t is None or not q.bid_price or not q.ask_price:
        return None
    volume = int(snap.daily_bar.volume) if snap.daily_bar is not None else 0
    return Quote(symbol=symbol, bid=dec(q.bid_price), ask=dec(q.ask_price), last=dec(t.price), volume=volume,
                 timestamp=max(q.timestamp, t.timestamp).astimezone(timezone.utc))


def bar(symbol: str, raw: Any, timeframe: str, calendar: "MarketCalendar") -> tuple[Bar, datetime]:
    """Our bar and the instant it is complete. Daily bars move from Alpaca's midnight stamp to the open."""
    stamp = raw.timestamp.astimezone(timezone.utc)
    length = TIMEFRAMES[timeframe][2]
    if length is None:
        bounds = calendar.session_bounds(stamp.astimezone(calendar.tz).date())
        start, done = (bounds[0][0], bounds[-1][1]) if bounds else (stamp, stamp + timedelta(days=1))
    else:
        start, done = stamp, stamp + length
    return Bar(symbol=symbol, start=start, open=dec(raw.open), high=dec(raw.high), low=dec(raw.low),
               close=dec(raw.close), volume=int(raw.volume)), done


def account(acct: Any) -> Account:
    """An alpaca-py `TradeAccount` -> Account. Buying power is capped at cash: we never trade on margin."""
    cash = dec(acct.cash)
    return Account(currency=acct.currency or "USD", cash=cash, buying_power=min(dec(acct.buying_power), cash),
                   equity=dec(acct.equity))


def position(p: Any) -> Position:
    """An alpaca-py `Position` -> Position (a short one shows a negative quantity)."""
    return Position(symbol=p.symbol, quantity=shares(p.qty), avg_price=dec(p.avg_entry_price),
                    market_price=dec(p.current_price) if p.current_price else None)


# ---------------------------------------------------------------- numbers

def dec(raw: Any) -> Decimal:
    """Alpaca sends money as strings (trading API) or JSON numbers (data API); str() keeps a float's short form."""
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise ValueError(f"not a number: {raw!r}") from None


def shares(raw: Any) -> int:
    """Whole shares (fractions are not part of our contract: truncated toward zero)."""
    return int(dec(raw).to_integral_value(rounding=ROUND_DOWN))


def value(x: Any) -> Any:
    """An SDK enum's value (or the thing itself)."""
    return getattr(x, "value", x)
