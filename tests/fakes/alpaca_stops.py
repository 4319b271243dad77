"""The fake Alpaca's stop orders (a mixin of FakeAlpaca, used by the order routes in alpaca_trading.py), as Alpaca
documents them (docs.alpaca.markets/docs/orders-at-alpaca: "Stop Orders", "Sub-penny increments for stop orders",
"Time in Force", "Aged order policy", "Order Lifecycle", "Order Handling Standards"):

- A stop (market) order needs `stop_price`; once the market trades at or through it the order is elected and
  becomes a market order. Sell stops stay stop orders (Alpaca turns buy stops into stop-limit orders: not modelled,
  the fake refuses a buy stop).
- `stop_price` at or above $1 has at most 2 decimals, below $1 at most 4; else 422 42210000 "invalid stop_price
  290.123. sub-penny increment does not fulfill minimum pricing criteria".
- time_in_force day or gtc. A day stop expires at the close; a gtc stop carries `expires_at` 90 days after it was
  created (16:15 New York), when it is cancelled.
- While it rests the order is "new" ("accepted" when it arrived outside the session and no session has opened
  since); it holds its shares: `qty_available` drops and a sell of more than is left is refused 403 40310000
  "insufficient qty available for order (requested: N, available: M)" with `held_for_orders` and
  `related_orders`.
- "Your sell stop order will only elect if there is a trade on the consolidated tape at or lower than your stop
  price", in regular trading hours only.

The fake elects a resting sell stop when its feed trades at or below the stop during the session: at once when the
feed announces a move (`MovableMarket.listen`), and otherwise on its own matching, which runs before every request
(the one-minute bars completed since the stop was last looked at, and the quote at the clock's now). An elected
stop is a market sell on the paper exchange under the same client_order_id and Alpaca order id, still reported as
type "stop" with its stop_price; it fills like any market order. `elections` records each election:
(client_order_id, "move" | "matching", when).

A cancel is done at once, unless `cancel_delay` is set: then the stop is "pending_cancel" for that many (wall-clock)
seconds, still holding its shares, as Alpaca's cancel is asynchronous ("pending_cancel: The order is waiting to be
canceled"; a sell sent meanwhile is refused for want of free shares).

Not like Alpaca: a crossing the matching first sees after the close (no request came in between) is elected at the
next open and fills there; Alpaca would have filled it at the crossing.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable

from core.errors import OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.ticks import is_on_tick
from tests.fakes.alpaca_wire import ID_SPACE, NEW_YORK, _Answer, _error, _number, _ts

AGED_ORDER_DAYS = 90                   # Alpaca's aged order policy: a GTC order is cancelled 90 days after creation
AGED_CANCEL_AT = time(16, 15)          # ... at 4:15 pm ET on its expires_at date
_STATUS = {"resting": OrderStatus.SUBMITTED, "cancelling": OrderStatus.CANCEL_PENDING,
           "cancelled": OrderStatus.CANCELLED, "expired": OrderStatus.EXPIRED, "rejected": OrderStatus.REJECTED}


@dataclass
class _Stop:
    request: OrderRequest              # the stop as asked (side SELL, order_type STOP, stop_price)
    time_in_force: str                 # "day" | "gtc"
    submitted_at: datetime
    checked_to: datetime               # prints before this minute have been looked at
    state: str = "resting"             # resting | elected (a market order on the paper exchange now) | cancelling |
                                       # cancelled | expired | rejected
    updated_at: datetime | None = None
    reason: str | None = None
    expires_at: datetime | None = None

    @property
    def resting(self) -> bool:
        return self.state == "resting"

    @property
    def elected(self) -> bool:
        return self.state == "elected"

    @property
    def holding(self) -> bool:
        """Its shares are not free to sell: resting, or a cancel not yet done."""
        return self.state in ("resting", "cancelling")


class StopOrders:
    """Resting stop orders, their election and how they read on the wire."""

    def _init_stops(self) -> None:
        self._stops: dict[str, _Stop] = {}                 # client_order_id -> the stop
        self.elections: list[tuple[str, str, datetime]] = []
        self.cancel_delay: float | None = None             # seconds a cancel stays pending_cancel (wall clock)

    # ------------------------------------------------------------ entry (HTTP threads, under the order lock)
    def _check_stop(self, body: dict[str, Any], kind: str, side: str) -> Decimal | None:
        """Alpaca's checks of a stop order's own fields; the stop price (None for other order types)."""
        stop = body.get("stop_price")
        if kind != "stop":
            if stop is not None:
                raise _error(422, 40010001, f"stop_price must not be set for {kind} orders")
            return None
        if stop is None:
            raise _error(422, 40010001, "stop_price is required for stop orders")
        if body.get("limit_price") is not None:
            raise _error(422, 40010001, "limit_price must not be set for stop orders")
        if side == "buy":
            raise _error(422, 40010001, "buy stop orders (Alpaca makes them stop-limit orders) are not supported by "
                                        "the fake Alpaca")
        if body.get("time_in_force") not in ("day", "gtc"):
            raise _error(422, 40010001, f"invalid time_in_force {body.get('time_in_force')!r} for a stop order")
        price = _number(stop, "stop_price")
        if price <= 0:
            raise _error(422, 40010001, "stop_price must be > 0")
        if not is_on_tick(price, "us"):
            raise _error(422, 42210000, f"invalid stop_price {stop}. sub-penny increment does not fulfill minimum "
                                        f"pricing criteria")
        return price

    def _accept_stop(self, request: OrderRequest, time_in_force: str) -> OrderResult:
        now = self.clock.now()
        coid = request.client_order_id
        expires = None
        if time_in_force == "gtc":
            day = (now.astimezone(NEW_YORK) + timedelta(days=AGED_ORDER_DAYS)).date()
            expires = datetime.combine(day, AGED_CANCEL_AT, NEW_YORK).astimezone(timezone.utc)
        else:
            state = self.calendar.state(now)          # a day stop lives through this session, or the next one
            expires = state.next_close or self.calendar.state(state.next_open).next_close
        self._stops[coid] = _Stop(request, time_in_force, now, _minute(now), updated_at=now, expires_at=expires)
        self._late_ids[coid] = str(uuid.uuid5(ID_SPACE, f"stop-{coid}"))
        return self._stop_view(self._stops[coid])

    def _refuse_unavailable(self, request: OrderRequest) -> None:
        """Alpaca's 403 for a sell of more shares than are free (held minus open sell orders, stops included)."""
        if request.side is not OrderSide.SELL:
            return
        held, pending = self._position(request.symbol) or (None, 0)
        existing = held.quantity if held is not None else 0
        available = max(existing - pending, 0)
        if request.quantity <= available:
            return
        related = [self._alpaca_id(o) for o in self._open_sells(request.symbol)]
        raise _insufficient_qty(request, available, existing, pending, related)

    # ------------------------------------------------------------ views
    def _stop_view(self, stop: _Stop) -> OrderResult:
        """How a stop reads: its own record while it rests (or was cancelled), the paper exchange's market order
        once elected."""
        coid = stop.request.client_order_id
        if stop.elected:
            placed = self.run(self.paper.get_order_by_client_id(coid))
            return replace(placed, order_type=OrderType.STOP, stop_price=stop.request.stop_price,
                           submitted_at=stop.submitted_at)
        r = stop.request
        return OrderResult(client_order_id=coid, broker_order_id=f"stop-{coid}", symbol=r.symbol, side=r.side,
                           order_type=OrderType.STOP, quantity=r.quantity, limit_price=None, status=_STATUS[stop.state],
                           reason=stop.reason, submitted_at=stop.submitted_at, updated_at=stop.updated_at,
                           stop_price=r.stop_price)

    def _stop_fields(self, o: OrderResult, status: str) -> dict[str, Any]:
        """The order JSON fields a stop changes: time in force, expiry, "accepted" before its first session."""
        stop = self._stops.get(o.client_order_id)
        if stop is None:
            return {}
        fields: dict[str, Any] = {"time_in_force": stop.time_in_force,
                                  "stop_price": format(stop.request.stop_price.normalize(), "f"),
                                  "expires_at": _ts(stop.expires_at) if stop.expires_at else None}
        if stop.resting and not self.calendar.is_open(stop.submitted_at):
            if self.clock.now() < self.calendar.state(stop.submitted_at).next_open:
                fields["status"] = "accepted"            # taken outside the session, not yet routed
        return fields

    def _open_sells(self, symbol: str) -> list[OrderResult]:
        orders = [o for o in self.run(self.paper.get_orders(open_only=True))
                  if o.side is OrderSide.SELL and o.symbol == symbol]
        orders += [r for _, r in self._late.values() if r.status.is_open and r.side is OrderSide.SELL
                   and r.symbol == symbol]
        orders += [self._stop_view(s) for s in self._stops.values() if s.holding and s.request.symbol == symbol]
        return orders

    def _held_by_stops(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for s in list(self._stops.values()):
            if s.holding:
                held[s.request.symbol] = held.get(s.request.symbol, 0) + s.request.quantity
        return held

    def _cancel_stop(self, coid: str) -> bool:
        """Cancel a stop not yet elected (under the order lock): at once, or pending_cancel for `cancel_delay`
        seconds; False when `coid` is no such stop."""
        stop = self._stops.get(coid)
        if stop is None or stop.elected:
            return False
        if stop.resting and self.cancel_delay:
            stop.state, stop.updated_at = "cancelling", self.clock.now()
            timer = threading.Timer(self.cancel_delay, self._cancelled, (coid,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        elif stop.resting:
            stop.state, stop.updated_at = "cancelled", self.clock.now()
        return True

    def _cancelled(self, coid: str) -> None:
        """A pending cancel is done (a timer thread)."""
        with self._order_lock:
            stop = self._stops[coid]
            if stop.state == "cancelling":
                stop.state, stop.updated_at = "cancelled", self.clock.now()

    # ------------------------------------------------------------ election (any thread)
    def match_stops(self, symbols: Iterable[str] | None = None, *, source: str = "matching") -> list[str]:
        """Elect every resting stop (of `symbols`, default all) whose market traded at or below its stop since it
        was last looked at; expire the ones past their time. Answers the client_order_ids elected."""
        wanted = None if symbols is None else set(symbols)
        if not any(s.resting for s in list(self._stops.values())):
            return []
        elected = []
        with self._order_lock:
            now = self.clock.now()
            is_open = self.calendar.is_open(now)
            for coid, stop in list(self._stops.items()):
                if not stop.resting or (wanted is not None and stop.request.symbol not in wanted):
                    continue
                if stop.expires_at is not None and now >= stop.expires_at:
                    stop.state = "expired" if stop.time_in_force == "day" else "cancelled"
                    stop.updated_at = now
                    stop.reason = "expired at the close" if stop.time_in_force == "day" else "aged order policy"
                    continue
                if not is_open or not self._crossed(stop, now):
                    continue
                self._elect(stop, now)
                self.elections.append((coid, source, now))
                elected.append(coid)
        return elected

    def _crossed(self, stop: _Stop, now: datetime) -> bool:
        """A print at or below the stop since it was last looked at: a completed minute bar's low, or now's last."""
        symbol, level = stop.request.symbol, stop.request.stop_price
        done = _minute(now)
        low = self.market.quote(symbol, now).last
        if stop.checked_to < done:
            bars = self.market.bars(symbol, "1m", stop.checked_to, done)
            low = min([low, *(b.low for b in bars if b.start >= stop.submitted_at)])
            stop.checked_to = done
        return low <= level

    def _elect(self, stop: _Stop, now: datetime) -> None:
        r = stop.request
        market = OrderRequest(client_order_id=r.client_order_id, symbol=r.symbol, side=r.side, quantity=r.quantity,
                              order_type=OrderType.MARKET)
        try:
            self.run(self.paper.place_order(market))
        except OrderRejected as exc:                    # elected, then refused at the exchange: Alpaca shows it
            stop.state, stop.reason, stop.updated_at = "rejected", exc.reason, now
            return
        stop.state, stop.updated_at = "elected", now


def _insufficient_qty(request: OrderRequest, available: int, existing: int, held: int,
                      related: list[str]) -> _Answer:
    return _Answer(403, {"available": str(available), "code": 40310000, "existing_qty": str(existing),
                         "held_for_orders": str(held), "message": f"insufficient qty available for order (requested: "
                                                                  f"{request.quantity}, available: {available})",
                         "related_orders": related, "symbol": request.symbol})


def _minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)
