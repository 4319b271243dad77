"""The fake Alpaca's trading routes (a mixin of FakeAlpaca; see alpaca_server.py for what it models): the account
(a margin account), positions, orders (late fills included; stop orders in alpaca_stops.py), and the FILL
activities.

Everything here runs on the HTTP handler threads; the paper broker lives on the fake's own loop (`self.run`).
A late fill's order is accepted under the order lock and placed from a timer thread, never from the loop (whose
thread an HTTP thread holding the lock may be waiting on).
"""
from __future__ import annotations

import re
import threading
import uuid
from dataclasses import replace
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from core.errors import InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from tests.fakes.alpaca_stops import StopOrders
from tests.fakes.alpaca_wire import (ID_SPACE, NEW_YORK, PAPER_TO_ALPACA, _Answer, _error, _number, _s, _time_param,
                                     _ts)


class TradingRoutes(StopOrders):
    """GET /v2/account, /v2/positions[/{symbol}], POST|GET /v2/orders, GET /v2/orders:by_client_order_id,
    GET|DELETE /v2/orders/{id}, GET /v2/account/activities/FILL."""

    def _init_trading(self) -> None:
        self.lagging_activities = False
        self.fill_delay: float | None = None
        self._order_lock = threading.Lock()
        self._ids: dict[str, str] = {}                    # alpaca order id -> client_order_id
        self._late: dict[str, tuple[OrderRequest, OrderResult]] = {}    # client_order_id -> accepted, not placed yet
        self._late_ids: dict[str, str] = {}     # client_order_id -> the Alpaca id given at acceptance (a late fill,
                                                # a stop), kept once the order is on the paper exchange
        self._timers: list[threading.Timer] = []
        self._init_stops()

    # ------------------------------------------------------------ account and positions
    def _get_account(self, q, body) -> tuple[int, Any]:
        acct = self.run(self.paper.get_account())
        cash_power, held_long = _s(acct.buying_power), acct.equity - acct.cash
        margin_power = _s(max((acct.equity - (acct.cash - acct.buying_power)) * 2 - held_long, Decimal(0)))
        return 200, {
            "id": str(uuid.uuid5(ID_SPACE, self.account_id)), "account_number": "PA" + self.account_id[-10:].upper(),
            "status": "ACTIVE", "crypto_status": "INACTIVE", "currency": "USD", "buying_power": margin_power,
            "regt_buying_power": margin_power, "non_marginable_buying_power": cash_power,
            "options_buying_power": cash_power, "daytrading_buying_power": "0",
            "cash": _s(acct.cash), "accrued_fees": "0", "pending_transfer_in": "0", "portfolio_value": _s(acct.equity),
            "trading_blocked": False, "transfers_blocked": False, "account_blocked": False,
            "created_at": "2026-01-02T15:00:00Z", "trade_suspended_by_user": False, "multiplier": "2",
            "shorting_enabled": False, "equity": _s(acct.equity), "last_equity": _s(acct.equity),
            "long_market_value": _s(acct.equity - acct.cash), "short_market_value": "0", "initial_margin": "0",
            "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0", "options_approved_level": 0,
            "options_trading_level": 0}

    def _get_positions(self, q, body) -> tuple[int, Any]:
        return 200, [self._position_json(p, pending) for p, pending in self._positions().values()]

    def _get_position(self, q, body, symbol: str) -> tuple[int, Any]:
        found = self._position(symbol)
        if found is None:
            raise _error(404, 40410000, "position does not exist")
        return 200, self._position_json(*found)

    def _positions(self) -> dict[str, tuple[Any, int]]:
        """symbol -> (paper position, shares in open sell orders, resting stops included)."""
        held = self.run(self.paper.get_positions())
        open_orders = self.run(self.paper.get_orders(open_only=True)) + [r for _, r in self._late.values()
                                                                           if r.status.is_open]
        selling: dict[str, int] = self._held_by_stops()
        for o in open_orders:
            if o.side is OrderSide.SELL:
                selling[o.symbol] = selling.get(o.symbol, 0) + o.remaining_quantity
        return {p.symbol: (p, selling.get(p.symbol, 0)) for p in held}

    def _position(self, symbol: str) -> tuple[Any, int] | None:
        """One symbol's (paper position, shares in open sell orders, resting stops included), or None: read for
        that symbol alone, so a sell's checks cost the same however many positions the account holds."""
        held = self.run(self.paper.get_position(symbol))
        if held is None:
            return None
        open_orders = [o for o in self.run(self.paper.get_orders(open_only=True)) if o.symbol == symbol]
        open_orders += [r for _, r in self._late.values() if r.status.is_open and r.symbol == symbol]
        selling = self._held_by_stops().get(symbol, 0)
        return held, selling + sum(o.remaining_quantity for o in open_orders if o.side is OrderSide.SELL)

    def _position_json(self, p: Any, pending_sell: int) -> dict[str, Any]:
        price = p.market_price or p.avg_price
        value, cost = price * p.quantity, p.avg_price * p.quantity
        pl = value - cost
        plpc = pl / cost if cost else Decimal(0)
        return {"asset_id": str(uuid.uuid5(ID_SPACE, p.symbol)), "symbol": p.symbol, "exchange": "NYSE",
                "asset_class": "us_equity", "asset_marginable": True, "avg_entry_price": _s(p.avg_price),
                "qty": str(p.quantity), "qty_available": str(p.quantity - pending_sell), "side": "long",
                "market_value": _s(value), "cost_basis": _s(cost), "unrealized_pl": _s(pl),
                "unrealized_plpc": _s(plpc.quantize(Decimal("0.000001"))), "unrealized_intraday_pl": _s(pl),
                "unrealized_intraday_plpc": _s(plpc.quantize(Decimal("0.000001"))), "current_price": _s(price),
                "lastday_price": _s(price), "change_today": "0"}

    # ------------------------------------------------------------ orders
    def _post_order(self, q, body) -> tuple[int, Any]:
        request = self._order_request(body)
        coid = request.client_order_id
        with self._order_lock:        # check-then-place must not interleave with another POST of the same id
            existing = self.run(self.paper.get_order_by_client_id(coid))
            if coid in self._late or coid in self._stops or (existing is not None
                                                             and existing.status is not OrderStatus.REJECTED):
                raise _error(422, 40010001, "client_order_id must be unique")
            self._refuse_unavailable(request)         # shares held by open sells, stops included, are not free
            if request.order_type is OrderType.STOP:
                return 200, self._order_json(self._accept_stop(request, body["time_in_force"]))
            if request.order_type is OrderType.MARKET and self.fill_delay is not None and self._acceptable(request):
                return 200, self._order_json(self._accept_late(request))
            try:
                result = self.run(self.paper.place_order(request))
            except OrderRejected as exc:
                raise self._refusal(exc.reason, request) from None
            except InvalidRequest as exc:
                raise _error(422, 40010001, str(exc)) from None
        return 200, self._order_json(result)

    def _order_request(self, body: Any) -> OrderRequest:
        """Alpaca's request checks for what the fake can do: day market/limit orders and day/gtc sell stop orders,
        in whole shares."""
        if not isinstance(body, dict):
            raise _error(400, 40010000, "request body format is invalid")
        for key in ("notional", "trail_price", "trail_percent", "legs", "take_profit", "stop_loss"):
            if body.get(key) is not None:
                raise _error(422, 40010001, f"{key} is not supported by the fake Alpaca")
        if body.get("order_class") not in (None, "", "simple"):
            raise _error(422, 40010001, f"order_class {body['order_class']} is not supported by the fake Alpaca")
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type")
        if not symbol:
            raise _error(422, 40010001, "symbol is required")
        if side not in ("buy", "sell"):
            raise _error(422, 40010001, f"invalid side {side!r}")
        if kind not in ("market", "limit", "stop"):
            raise _error(422, 40010001, f"invalid order type {kind!r} for the fake Alpaca")
        stop = self._check_stop(body, kind, side)
        if kind != "stop" and body.get("time_in_force") != "day":
            raise _error(422, 40010001, f"time_in_force {body.get('time_in_force')!r} is not supported by the fake")
        if body.get("extended_hours"):
            raise _error(422, 42210000, "extended hours orders are not supported by the fake Alpaca")
        qty = _number(body.get("qty"), "qty")
        if qty <= 0:
            raise _error(422, 40010001, "qty must be > 0")
        if qty != qty.to_integral_value():
            raise _error(422, 40010001, f'asset "{symbol}" is not fractionable')
        limit = body.get("limit_price")
        if kind == "limit" and limit is None:
            raise _error(422, 40010001, "limit_price is required for limit orders")
        if kind == "market" and limit is not None:
            raise _error(422, 40010001, "limit_price must not be set for market orders")
        try:
            return OrderRequest(client_order_id=body.get("client_order_id") or str(uuid.uuid4()), symbol=symbol,
                                side=OrderSide(side), quantity=int(qty), order_type=OrderType(kind),
                                limit_price=None if limit is None else _number(limit, "limit_price"),
                                stop_price=stop)
        except InvalidRequest as exc:
            raise _error(422, 40010001, str(exc)) from None

    @staticmethod
    def _refusal(reason: str, request: OrderRequest) -> _Answer:
        """The paper exchange's reason, as Alpaca says it."""
        low = reason.lower()
        if "insufficient buying power" in low:
            return _error(403, 40310000, "insufficient buying power")
        held = re.search(r"(\d+) held, (\d+) already", reason)
        if held:
            available = int(held.group(1)) - int(held.group(2))
            return _error(403, 40310000, f"insufficient qty available for order (requested: {request.quantity}, "
                                         f"available: {available})")
        if "tick grid" in low:
            return _error(422, 42210000, f"invalid limit_price {request.limit_price}. sub-penny increment does not "
                                         f"fulfill minimum pricing criteria")
        if "unknown symbol" in low:
            return _error(422, 40010001, f'asset "{request.symbol}" not found')
        return _error(403, 40310000, reason)

    def _get_orders(self, q, body) -> tuple[int, Any]:
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise _error(422, 40010001, f"invalid status {status!r}")
        orders = [o for o in self._visible(self.run(self.paper.get_orders(open_only=status == "open")))
                  if o.client_order_id not in self._stops]
        orders += [r for _, r in list(self._late.values()) if status != "open" or r.status.is_open]
        stops = [self._stop_view(s) for s in list(self._stops.values())]
        orders += [o for o in stops if status != "open" or o.status.is_open]
        if status == "closed":
            orders = [o for o in orders if o.status.is_terminal]
        after, until = _time_param(q.get("after")), _time_param(q.get("until"))
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        orders = [o for o in orders if (after is None or o.submitted_at > after)
                  and (until is None or o.submitted_at <= until) and (symbols is None or o.symbol in symbols)
                  and (not q.get("side") or o.side.value == q["side"])]
        orders.sort(key=lambda o: (o.submitted_at, o.broker_order_id), reverse=q.get("direction", "desc") == "desc")
        limit = min(int(q.get("limit", 50)), 500)
        return 200, [self._order_json(o) for o in orders[:limit]]

    def _get_order_by_client_id(self, q, body) -> tuple[int, Any]:
        return 200, self._order_json(self._order(q.get("client_order_id", "")))

    def _get_order(self, q, body, order_id: str) -> tuple[int, Any]:
        return 200, self._order_json(self._order_by_alpaca_id(order_id))

    def _delete_order(self, q, body, order_id: str) -> tuple[int, Any]:
        order = self._order_by_alpaca_id(order_id)
        if order.status.is_terminal:
            raise _error(422, 42210000, f'order is already in "{PAPER_TO_ALPACA[order.status.value]}" state')
        with self._order_lock:
            if self._cancel_stop(order.client_order_id):
                return 204, None
            late = self._late.get(order.client_order_id)
            if late is not None:
                self._late[order.client_order_id] = (late[0], replace(late[1], status=OrderStatus.CANCELLED,
                                                                      updated_at=self.clock.now()))
                return 204, None
        self.run(self.paper.cancel_order(order.client_order_id))
        return 204, None

    def _order(self, client_order_id: str) -> OrderResult:
        stop = self._stops.get(client_order_id)
        if stop is not None:
            return self._stop_view(stop)
        late = self._late.get(client_order_id)
        if late is not None:
            return late[1]
        found = self.run(self.paper.get_order_by_client_id(client_order_id))
        if found is None or found.status is OrderStatus.REJECTED:     # Alpaca keeps no refused order
            raise _error(404, 40410000, "order not found")
        return found

    def _order_by_alpaca_id(self, order_id: str) -> OrderResult:
        try:
            uuid.UUID(order_id)
        except ValueError:
            raise _error(422, 40010001, "order_id is missing") from None
        coid = self._ids.get(order_id)
        if coid is None:
            for o in self.run(self.paper.get_orders()) + [r for _, r in list(self._late.values())]:
                self._order_json(o)
            for stop in list(self._stops.values()):
                self._order_json(self._stop_view(stop))
            coid = self._ids.get(order_id)
        if coid is None:
            raise _error(404, 40410000, "order not found")
        return self._order(coid)

    @staticmethod
    def _visible(orders: list[OrderResult]) -> list[OrderResult]:
        return [o for o in orders if o.status is not OrderStatus.REJECTED]

    def _alpaca_id(self, o: OrderResult) -> str:
        """An order's id at Alpaca: a late fill's is given when it is accepted and kept once it is placed."""
        return self._late_ids.get(o.client_order_id) or str(uuid.uuid5(ID_SPACE, o.broker_order_id))

    def _order_json(self, o: OrderResult) -> dict[str, Any]:
        order_id = self._alpaca_id(o)
        self._ids[order_id] = o.client_order_id
        status = PAPER_TO_ALPACA[o.status.value]
        if status == "new" and o.client_order_id in self._late:
            status = "accepted"                      # taken, not yet routed to the exchange
        updated = o.updated_at or o.submitted_at
        last_fill = max((f.timestamp for f in o.fills), default=None)
        return {
            "id": order_id, "client_order_id": o.client_order_id, "created_at": _ts(o.submitted_at),
            "updated_at": _ts(updated), "submitted_at": _ts(o.submitted_at),
            "filled_at": _ts(last_fill) if o.status is OrderStatus.FILLED and last_fill else None,
            "expired_at": _ts(updated) if status == "expired" else None, "expires_at": None,
            "canceled_at": _ts(updated) if status == "canceled" else None, "failed_at": None,
            "replaced_at": None, "replaced_by": None, "replaces": None,
            "asset_id": str(uuid.uuid5(ID_SPACE, o.symbol)), "symbol": o.symbol, "asset_class": "us_equity",
            "notional": None, "qty": str(o.quantity), "filled_qty": str(o.filled_quantity),
            "filled_avg_price": _s(o.avg_fill_price) if o.avg_fill_price is not None else None,
            "order_class": "", "order_type": o.order_type.value, "type": o.order_type.value, "side": o.side.value,
            "position_intent": "buy_to_open" if o.side is OrderSide.BUY else "sell_to_close",
            "time_in_force": "day", "limit_price": _s(o.limit_price) if o.limit_price is not None else None,
            "stop_price": None, "status": status, "extended_hours": False, "legs": None, "trail_percent": None,
            "trail_price": None, "hwm": None, **self._stop_fields(o, status)}

    # ------------------------------------------------------------ late fills
    def _acceptable(self, request: OrderRequest) -> bool:
        """What a late fill may accept before it reaches the exchange: a sell of shares free to sell, a buy the cash
        covers at the ask (anything else goes to the exchange now, which refuses it)."""
        if request.side is OrderSide.SELL:
            held, pending = self._position(request.symbol) or (None, 0)
            return held is not None and request.quantity <= held.quantity - pending
        ask = self.market.quote(request.symbol, self.clock.now()).ask
        return ask * request.quantity <= self.run(self.paper.get_account()).buying_power

    def _accept_late(self, request: OrderRequest) -> OrderResult:
        """Accepted now (under the order lock), placed on the paper exchange `fill_delay` seconds later."""
        now = self.clock.now()
        coid = request.client_order_id
        result = OrderResult(client_order_id=coid, broker_order_id=f"late-{coid}", symbol=request.symbol,
                             side=request.side, order_type=request.order_type, quantity=request.quantity,
                             limit_price=None, status=OrderStatus.SUBMITTED, submitted_at=now, updated_at=now)
        self._late[coid] = (request, result)
        self._late_ids[coid] = str(uuid.uuid5(ID_SPACE, f"late-{coid}"))
        timer = threading.Timer(self.fill_delay, self._place_late, (coid,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return result

    def _place_late(self, coid: str) -> None:
        """The accepted order reaches the paper exchange (unless cancelled meanwhile) and fills there (a timer
        thread)."""
        with self._order_lock:
            request, result = self._late[coid]
            if result.status is not OrderStatus.SUBMITTED:          # cancelled meanwhile
                return
            try:
                self.run(self.paper.place_order(request))
                del self._late[coid]
            except OrderRejected as exc:                # refused after it was accepted: Alpaca shows it rejected
                self._late[coid] = (request, replace(result, status=OrderStatus.REJECTED, reason=exc.reason,
                                                     updated_at=self.clock.now()))

    # ------------------------------------------------------------ fill activities
    def _get_fills(self, q, body) -> tuple[int, Any]:
        acts = [] if self.lagging_activities else self._activities()
        after, until = _time_param(q.get("after")), _time_param(q.get("until"))
        day = date.fromisoformat(q["date"]) if q.get("date") else None
        acts = [a for a in acts if (after is None or a[0] > after) and (until is None or a[0] <= until)
                and (day is None or a[0].astimezone(NEW_YORK).date() == day)]
        if q.get("direction", "desc") == "desc":
            acts.reverse()
        token = q.get("page_token")
        if token:
            ids = [a[1]["id"] for a in acts]
            acts = acts[ids.index(token) + 1:] if token in ids else []
        size = min(int(q.get("page_size", 100)), 100)
        return 200, [a[1] for a in acts[:size]]

    def _activities(self) -> list[tuple[datetime, dict[str, Any]]]:
        """Every execution of the account as Alpaca FILL activities, oldest first."""
        out = []
        for o in self._visible(self.run(self.paper.get_orders())):
            cum = 0
            for f in o.fills:
                cum += f.quantity
                at = f.timestamp.astimezone(timezone.utc)
                stamp = at.strftime("%Y%m%d%H%M%S") + f"{at.microsecond // 1000:03d}"
                done = cum == o.quantity
                out.append((at, {
                    "id": f"{stamp}::{uuid.uuid5(ID_SPACE, f.fill_id)}", "activity_type": "FILL",
                    "transaction_time": _ts(at), "type": "fill" if done else "partial_fill", "price": _s(f.price),
                    "qty": str(f.quantity), "side": o.side.value, "symbol": o.symbol,
                    "leaves_qty": str(o.quantity - cum), "order_id": self._alpaca_id(o),
                    "cum_qty": str(cum), "order_status": "filled" if done else "partially_filled"}))
        out.sort(key=lambda a: (a[0], a[1]["id"]))
        return out
