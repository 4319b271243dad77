"""The fake OpenD's shared parts: the packet header, the protocol's numbers, and the records it keeps.

See opend_server.py for the fake itself (framing, connections), opend_trade.py (accounts, orders, deals) and
opend_quotes.py (quotes, K-lines, listings, plates, the history K-line quota and OpenD's frequency limits).
"""
from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from core.orders import OrderStatus

HEAD = struct.Struct("<1s1sI2B2I20s8s")
HKT = ZoneInfo("Asia/Hong_Kong")
SIMULATE, REAL = 0, 1
TRD_MARKET_HK = 1
SEC_MARKET_HK = 1
QOT_MARKET_HK = 1
CURRENCY_HKD = 1
KL_MINUTES = {1: 1, 6: 5, 7: 15, 8: 30, 9: 60, 2: 0}    # Qot_Common.KLType -> minutes (0 = day)
SIM_OPTION_ACC, SIM_STOCK_ACC, REAL_ACC = 9_000_001, 9_000_002, 281_756_480_572_583_411
NOT_SUPPORTED = "not supported by the fake OpenD"
PAPER_NO_DEALS = "Paper trading does not support deals related operations"
PAPER_NO_FEES = "Paper trading accounts do not support querying order fees"
# "Order Types: limit order and market order" / "Valid Period: Paper trading only supports good for day order"
# (futu-api-doc/en/qa/trade.html, Q1 paper trading)
PAPER_ORDER_TYPES = "Paper trading supports limit orders and market orders only"
PAPER_DAY_ONLY = "Paper trading supports only good-for-day orders"
# Trd_Common.OrderType / TimeInForce
ORDER_NORMAL, ORDER_MARKET, ORDER_STOP = 1, 2, 10
TIF_DAY, TIF_GTC = 0, 1
FIRMS = {"FUTUSECURITIES": 1, "FUTUINC": 2, "FUTUSG": 3, "FUTUAU": 4}
# accinfo_query's `power` is "an approximation computed at a 50% initial margin rate for financing" and
# `max_power_short` "at a 60% margin rate for short selling" (futu-api-doc trade/get-funds.html)
FINANCING_MARGIN_RATE = Decimal("0.5")
SHORT_MARGIN_RATE = Decimal("0.6")

# status of a paper order -> Trd_Common.OrderStatus
_STATUS = {OrderStatus.SUBMITTED: 5, OrderStatus.PARTIALLY_FILLED: 10, OrderStatus.FILLED: 11,
           OrderStatus.EXPIRED: 22, OrderStatus.REJECTED: 21, OrderStatus.PENDING_SUBMIT: 1,
           OrderStatus.CANCEL_PENDING: 13}


class _Refuse(Exception):
    """Answer the request with retType -1 and this message."""


@dataclass(frozen=True)
class Recorded:
    proto_id: int
    serial_no: int
    conn_id: int
    body: dict[str, Any]
    received: float = field(default_factory=time.perf_counter)   # when it arrived (this process's perf_counter)


@dataclass
class _Order:
    order_id: int
    acc_id: int
    paper_coid: str
    remark: str | None
    code: str
    pushed: tuple = ()
    order_type: int = ORDER_NORMAL      # as placed (a triggered stop stays a stop order)
    aux_price: float | None = None      # a stop order's trigger
    time_in_force: int = TIF_DAY


@dataclass
class _Conn:
    conn_id: int
    writer: asyncio.StreamWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    accounts: set[int] = field(default_factory=set)


def _local(when: datetime) -> str:
    return when.astimezone(HKT).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _parse_local(text: str, *, end: bool = False) -> datetime:
    text = text.strip()
    if len(text) == 10:
        text += " 23:59:59" if end else " 00:00:00"
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=HKT).astimezone(timezone.utc)

