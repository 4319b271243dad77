"""What we know about our orders at OpenD, merged from queries and pushes.

`OrderBook` is thread-safe (the SDK's push thread and our event loop both write it), keyed by broker order id
and by remark (our client_order_id). Pushes can arrive before `place_order` returns and queries can be staler
than pushes, so a merge only moves an order along `ALLOWED_TRANSITIONS` and never lowers its filled quantity.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

from brokers.moomoo.mapping import OrderView
from core.orders import can_transition

log = logging.getLogger(__name__)


def merge(old: OrderView, new: OrderView) -> OrderView:
    """Monotonic: status only along ALLOWED_TRANSITIONS, filled quantity never down."""
    status = new.status if can_transition(old.status, new.status) else old.status
    if status is not new.status:
        log.debug("order %s: keeping %s over a stale %s", old.broker_order_id, old.status.value, new.status.value)
    fresher = new if new.filled_quantity >= old.filled_quantity else old
    return replace(old, status=status, filled_quantity=fresher.filled_quantity,
                   avg_fill_price=fresher.avg_fill_price, reason=new.reason or old.reason,
                   updated_at=max((t for t in (old.updated_at, new.updated_at) if t), default=None))


class OrderBook:
    """Thread-safe cache of order views (SDK push thread and our loop) plus deals seen by push."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, OrderView] = {}
        self._by_remark: dict[str, str] = {}
        self._deals: dict[str, dict[str, Any]] = {}

    def merge(self, view: OrderView) -> OrderView:
        with self._lock:
            old = self._orders.get(view.broker_order_id)
            merged = view if old is None else merge(old, view)
            self._orders[view.broker_order_id] = merged
            self._by_remark.setdefault(view.client_order_id, view.broker_order_id)
            return merged

    def by_remark(self, client_order_id: str) -> OrderView | None:
        with self._lock:
            order_id = self._by_remark.get(client_order_id)
            return None if order_id is None else self._orders[order_id]

    def add_deal(self, deal: dict[str, Any]) -> None:
        with self._lock:
            self._deals[str(deal["deal_id"])] = deal

    def deals_of(self, order_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self._deals.values() if str(d["order_id"]) == order_id]
