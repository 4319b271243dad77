"""Pure translation between OpenD's rows (the SDK's DataFrames, as dicts) and our values.

Symbols (`to_moomoo_code` / `from_moomoo_code`)::

    ours                        OpenD code     back to ours
    "0700", "00700", "0700.HK"  "HK.00700"     "0700"   (numeric codes: 5 digits at OpenD, at least 4 for us)
    "HK.00700"                  "HK.00700"     "0700"
    "S0142" (simulated market)  "HK.S0142"     "S0142"  (any other alphanumeric code passes through, upper-cased)

Order status, the one table (`STATUS_MAP`, moomoo `OrderStatus` -> ours)::

    N/A, UNSUBMITTED, WAITING_SUBMIT, SUBMITTING, TIMEOUT   -> PENDING_SUBMIT  (not at the exchange yet / unknown)
    SUBMITTED                                              -> SUBMITTED
    FILLED_PART                                            -> PARTIALLY_FILLED
    FILLED_ALL                                             -> FILLED
    CANCELLING_PART, CANCELLING_ALL                        -> CANCEL_PENDING
    CANCELLED_PART, CANCELLED_ALL, DELETED                 -> CANCELLED       (DELETED: only unfilled orders)
    SUBMIT_FAILED, FAILED, FILL_CANCELLED                  -> REJECTED        (FILL_CANCELLED: fills reversed)
    DISABLED                                               -> EXPIRED         (a day order past its session)

A STOP order (OpenD's `STOP`, a stop-market order, its trigger in `aux_price`) that OpenD lists as WAITING_SUBMIT
is SUBMITTED here: accepted and held by the broker until it triggers (which status a live OpenD shows for an
untriggered stop is not documented; the fake shows SUBMITTED).

Prices are OpenD doubles, read back as the exact decimal they were printed from; times are OpenD's Hong Kong
local time strings, returned as UTC. Our client_order_id travels in the order's `remark`.

A pushed basic quote (`basic_quote`, SubType QUOTE) carries the last price but no bid or ask: both are shown at the
last price.

Listings (`listing`, `snapshot_status`) carry the canonical symbol (core.symbols); a daily K-line (`daily_bar`)
starts at its session's open, as every daily bar of ours does.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from core.account import Account, Position
from core.errors import InvalidRequest
from core.feeds import Listing
from core.instruments import Bar, Instrument, Quote
from core.orders import Fill, OrderSide, OrderStatus, OrderType
from core.symbols import canonical_symbol

if TYPE_CHECKING:
    from core.calendar import MarketCalendar

log = logging.getLogger(__name__)

HKT = ZoneInfo("Asia/Hong_Kong")

_S = OrderStatus
STATUS_MAP: dict[str, OrderStatus] = {
    "N/A": _S.PENDING_SUBMIT, "UNSUBMITTED": _S.PENDING_SUBMIT, "WAITING_SUBMIT": _S.PENDING_SUBMIT,
    "SUBMITTING": _S.PENDING_SUBMIT, "TIMEOUT": _S.PENDING_SUBMIT,
    "SUBMITTED": _S.SUBMITTED,
    "FILLED_PART": _S.PARTIALLY_FILLED,
    "FILLED_ALL": _S.FILLED,
    "CANCELLING_PART": _S.CANCEL_PENDING, "CANCELLING_ALL": _S.CANCEL_PENDING,
    "CANCELLED_PART": _S.CANCELLED, "CANCELLED_ALL": _S.CANCELLED, "DELETED": _S.CANCELLED,
    "SUBMIT_FAILED": _S.REJECTED, "FAILED": _S.REJECTED, "FILL_CANCELLED": _S.REJECTED,
    "DISABLED": _S.EXPIRED,
}

KLINE_TYPES: dict[str, tuple[str, int]] = {   # our timeframe -> (moomoo KLType, minutes; 0 = daily)
    "1m": ("K_1M", 1), "5m": ("K_5M", 5), "15m": ("K_15M", 15), "30m": ("K_30M", 30), "1h": ("K_60M", 60),
    "1d": ("K_DAY", 0),
}


# ---------------------------------------------------------------- symbols and statuses

def to_moomoo_code(symbol: str) -> str:
    """Our HKEX symbol -> OpenD code ("0700" -> "HK.00700", "S0142" -> "HK.S0142"); InvalidRequest if malformed."""
    s = symbol.strip().upper()
    if s.startswith("HK."):
        s = s[3:]
    elif s.endswith(".HK"):
        s = s[:-3]
    if not s.isalnum() or not s.isascii() or (s.isdigit() and len(s) > 5):
        raise InvalidRequest(f"{symbol!r} is not an HKEX symbol (e.g. 0700, 00700, 0700.HK or HK.00700)")
    return "HK." + (s.zfill(5) if s.isdigit() else s)


def from_moomoo_code(code: str) -> str:
    """OpenD code -> our symbol ("HK.00700" -> "0700", "HK.S0142" -> "S0142")."""
    market, _, s = str(code).partition(".")
    if market != "HK" or not s:
        raise InvalidRequest(f"{code!r} is not an HKEX code")
    return s.lstrip("0").zfill(4) if s.isdigit() else s


def map_status(moomoo_status: str) -> OrderStatus:
    """One moomoo `OrderStatus` value -> ours (an unknown value is treated as not yet at the exchange)."""
    status = STATUS_MAP.get(str(moomoo_status))
    if status is None:
        log.warning("unknown moomoo order status %r; treating it as pending", moomoo_status)
        return OrderStatus.PENDING_SUBMIT
    return status


# ---------------------------------------------------------------- orders and deals

@dataclass(frozen=True, slots=True)
class OrderView:
    """What we know about one order at OpenD."""
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    quantity: int
    limit_price: Decimal | None
    status: OrderStatus
    filled_quantity: int
    avg_fill_price: Decimal | None
    reason: str | None
    submitted_at: datetime | None
    updated_at: datetime | None
    stop_price: Decimal | None = None


_ORDER_TYPES = {"MARKET": OrderType.MARKET, "STOP": OrderType.STOP}     # any other (NORMAL, ...) is a limit order


def order_view(row: dict[str, Any]) -> OrderView:
    """An SDK order row (order list, history or push) -> OrderView."""
    order_id = str(row["order_id"])
    filled = int(float(row.get("dealt_qty") or 0))
    kind = _ORDER_TYPES.get(str(row.get("order_type")), OrderType.LIMIT)
    status = map_status(row["order_status"])
    if kind is OrderType.STOP and row["order_status"] == "WAITING_SUBMIT":
        status = OrderStatus.SUBMITTED
    return OrderView(
        broker_order_id=order_id, client_order_id=row.get("remark") or f"moomoo:{order_id}",
        symbol=from_moomoo_code(row["code"]),
        side=OrderSide.SELL if str(row.get("trd_side", "")).startswith("SELL") else OrderSide.BUY,
        order_type=kind, quantity=int(float(row["qty"])),
        limit_price=dec(row.get("price")) if kind is OrderType.LIMIT else None, status=status,
        filled_quantity=filled, avg_fill_price=dec(row.get("dealt_avg_price")) if filled else None,
        reason=row.get("last_err_msg") or None, submitted_at=hkt(row.get("create_time")),
        updated_at=hkt(row.get("updated_time")),
        stop_price=dec(row.get("aux_price")) if kind is OrderType.STOP else None)


def deal_fill(deal_id: str, deal: dict[str, Any], view: OrderView) -> Fill:
    """A deal row (REAL accounts: deal list, history or push) of the order `view` -> Fill (OpenD has no per-deal
    fee: fees are the order's)."""
    return Fill(fill_id=deal_id, client_order_id=view.client_order_id, symbol=view.symbol, side=view.side,
                quantity=int(float(deal["qty"])), price=dec(deal["price"]), fee=Decimal(0),
                timestamp=hkt(deal["create_time"]) or view.updated_at)


# ---------------------------------------------------------------- market data and account

def instrument(code: str, row: dict[str, Any]) -> Instrument:
    """A snapshot row -> Instrument (board lot from OpenD, the HKEX spread table)."""
    return Instrument(symbol=from_moomoo_code(code), exchange="HKEX", currency="HKD", lot_size=int(row["lot_size"]),
                      name=str(row.get("name") or ""), tick_scheme="hkex")


def listing(code: str, row: dict[str, Any], *, status: str = "listed", turnover: Decimal | None = None) -> Listing:
    """A basic-info, plate or snapshot row -> Listing: canonical symbol, OpenD's board lot and name, the HKEX
    spread table."""
    name = row.get("name") or row.get("stock_name") or ""
    inst = Instrument(symbol=canonical_symbol(code, "HKEX"), exchange="HKEX", currency="HKD",
                      lot_size=int(row["lot_size"]), name=str(name), tick_scheme="hkex")
    return Listing(inst, status=status, turnover=turnover)  # type: ignore[arg-type]


def snapshot_status(row: dict[str, Any]) -> str:
    """'listed' | 'suspended' | 'delisted' from a snapshot row (`suspension`, `sec_status`)."""
    state = str(row.get("sec_status") or "")
    if state == "DELISTED":
        return "delisted"
    return "suspended" if flag(row.get("suspension")) or state == "SUSPENDED" else "listed"


def daily_bar(symbol: str, row: dict[str, Any], calendar: "MarketCalendar") -> tuple[Bar, datetime] | None:
    """A daily K-line row (labelled midnight of its session's date) -> (our bar, starting at the session open; the
    instant it is complete, the session close). None for a date that is not a session."""
    bounds = _daily_session(str(row["time_key"]), calendar)
    if bounds is None:
        return None
    return Bar(symbol=symbol, start=bounds[0], open=dec(row["open"]), high=dec(row["high"]), low=dec(row["low"]),
               close=dec(row["close"]), volume=int(float(row["volume"]))), bounds[1]


@functools.lru_cache(maxsize=4096)
def _daily_session(time_key: str, calendar: "MarketCalendar") -> tuple[datetime, datetime] | None:
    """A daily K-line's label -> (session open, session close), or None off-session. Every symbol of a sync has
    the same few hundred labels: each is parsed once, not once per symbol (a 500-symbol year is 125,000 rows)."""
    bounds = calendar.session_bounds(calendar.local_date(hkt(time_key)))
    return (bounds[0][0], bounds[-1][1]) if bounds else None


def quote(symbol: str, row: dict[str, Any], now: datetime) -> Quote:
    """A snapshot row -> Quote; a missing side (no orders on it) is shown at the last price."""
    last = dec(row["last_price"])
    bid, ask = dec(row.get("bid_price")), dec(row.get("ask_price"))
    if bid is None or ask is None:
        log.warning("moomoo snapshot of %s has no %s; using the last price", symbol, "bid" if bid is None else "ask")
    return Quote(symbol=symbol, bid=bid or last, ask=ask or last, last=last, volume=int(float(row["volume"])),
                 timestamp=hkt(row.get("update_time")) or now)


def basic_quote(symbol: str, row: dict[str, Any], now: datetime) -> Quote:
    """A pushed basic quote (StockQuoteHandlerBase row) -> Quote; it has no bid or ask, so both are the last."""
    last = dec(row["last_price"])
    stamp = hkt(f"{row.get('data_date')} {row.get('data_time')}") if row.get("data_date") else None
    return Quote(symbol=symbol, bid=last, ask=last, last=last, volume=int(float(row["volume"])),
                 timestamp=stamp or now)


def bar_start(label: datetime, minutes: int, calendar: "MarketCalendar") -> datetime | None:
    """OpenD labels an intraday K-line by its END (09:31 is 09:30-09:31; 12:00 ends the short 11:30-12:00 hour);
    our bars carry their start, aligned to the start of each continuous interval. Daily: the session open."""
    day = calendar.local_date(label if minutes == 0 else label - timedelta(seconds=1))
    bounds = calendar.session_bounds(day)
    if not bounds:
        return None
    if minutes == 0:
        return bounds[0][0]
    size = timedelta(minutes=minutes)
    for open_, close in bounds:
        if open_ < label <= close:
            return open_ + ((label - open_ - timedelta(microseconds=1)) // size) * size
    return None


def account(row: dict[str, Any], *, allow_margin: bool = False) -> Account:
    """An accinfo_query row (HKD) -> Account. Buying power is OpenD's `power`, capped at the cash unless margin is
    allowed: on a margin account `power` is what OpenD would lend against (net assets at a 50% margin rate)."""
    cash, power = dec(row["cash"]), dec(row["power"])
    return Account(currency="HKD", cash=cash, buying_power=power if allow_margin else min(power, cash),
                   equity=dec(row["total_assets"]))


def sellable(row: dict[str, Any]) -> tuple[int, int]:
    """A position_list_query row -> (shares held, shares free to sell: not already in open sell orders)."""
    held = int(float(row["qty"]))
    free = row.get("can_sell_qty")
    return held, held if free in (None, "N/A", "") else min(int(float(free)), held)


def position(row: dict[str, Any]) -> Position | None:
    """A position_list_query row -> Position, or None for a position with nothing left."""
    qty = int(float(row["qty"]))
    if qty <= 0:
        return None
    cost = dec(row.get("average_cost")) or dec(row.get("cost_price"))
    return Position(symbol=from_moomoo_code(row["code"]), quantity=qty, avg_price=cost,
                    market_price=dec(row.get("nominal_price")))


# ---------------------------------------------------------------- numbers, times, tables

def dec(value: Any) -> Decimal | None:
    """An OpenD double -> the exact decimal it was printed from ('N/A' and None -> None)."""
    if value is None or value == "N/A" or value == "":
        return None
    return Decimal(repr(float(value)))


def flag(value: Any) -> bool:
    """An SDK boolean column (numpy bool, or 'N/A' when OpenD left the field out) -> bool."""
    return value is not None and value != "N/A" and bool(value)


def hkt(text: Any) -> datetime | None:
    """OpenD's local time string ("2026-11-24 10:30:00[.123]") -> UTC."""
    if not text or text == "N/A":
        return None
    s = str(text)
    local = datetime.strptime(s[:19], "%Y-%m-%d %H:%M:%S")
    if len(s) > 20 and s[19] == ".":
        local = local.replace(microsecond=int(s[20:26].ljust(6, "0")))
    return local.replace(tzinfo=HKT).astimezone(timezone.utc)


def records(data: Any) -> list[dict[str, Any]]:
    """An SDK answer (a DataFrame, or a list of rows) -> a list of dicts. Column by column: the same dicts as
    DataFrame.to_dict("records") (Python scalars, None and NaN kept) at a fraction of its cost on the SDK's wide
    frames (a snapshot has over a hundred columns)."""
    if not hasattr(data, "to_dict"):
        return list(data or [])
    names, columns = [], []
    for name, column in data.items():
        names.append(name)
        columns.append(column.tolist())
    return [dict(zip(names, row)) for row in zip(*columns)]
