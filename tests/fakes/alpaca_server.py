"""A fake Alpaca REST API at the socket, so tests run the real alpaca-py SDK against the paper exchange.

A real HTTP/1.1 server (http.server, keep-alive) on 127.0.0.1 serving both of Alpaca's hosts under one base URL
(alpaca-py appends /v2 to `url_override`):

  trading  GET /v2/account, GET /v2/assets, GET /v2/assets/{symbol}, GET /v2/positions, GET /v2/positions/{symbol},
           POST /v2/orders, GET /v2/orders (status open|closed|all, limit, after, until, direction, symbols, side),
           GET /v2/orders:by_client_order_id?client_order_id=, GET|DELETE /v2/orders/{id},
           GET /v2/account/activities/FILL (after, until, date, direction, page_size, page_token)
  data     GET /v2/stocks/bars (symbols, timeframe, start, end, limit, page_token, sort),
           GET /v2/stocks/snapshots, /v2/stocks/quotes/latest, /v2/stocks/trades/latest (symbols)
           (assets and market data: alpaca_data.py, with Alpaca's paging and, when asked, its rate limit)

Every request must carry APCA-API-KEY-ID / APCA-API-SECRET-KEY with the fake's keys (else 401). JSON shapes are
Alpaca's as alpaca-py parses them: trading numbers are strings, data numbers are JSON numbers, timestamps RFC 3339
UTC, daily bars stamped at midnight New York, errors {"code": ..., "message": ...}.

Behind it is the paper broker (brokers.paper.PaperBroker on the caller's price feed — a SimulatedMarket, or a
tests.fakes.universe.Universe with real-looking tickers and listings — and SimulatedClock, with an asyncpg pool owned
by the fake's own event loop thread), so prices and fills agree with everything else. What Alpaca
does differently is translated: order ids are UUIDs (uuid5 of the paper id), a refused order leaves no order behind
(insufficient buying power -> 403 40310000; an oversell -> 403 "insufficient qty available for order"; a sub-penny
price -> 422 42210000 "... sub-penny increment does not fulfill minimum pricing criteria"), a repeated
client_order_id -> 422 "client_order_id must be unique", fills are FILL activities with ids "<time>::<uuid>".
Not like Alpaca: market orders outside the session are refused (the paper broker's rule; Alpaca queues them), only
day market/limit orders in whole shares are accepted, and client_order_id is limited to 48 characters (ours).

Fault injection (each takes an optional `match`, e.g. "POST /v2/orders" or "/v2/stocks", default any request):
`fail_next(status, body, times=1, headers=None)` answers without doing anything (429 with Retry-After, 500 ...);
`drop_connections(n, after_processing=False)` closes the socket without an answer (after doing the work if asked);
`delay_next(seconds)` does the work, then waits before answering (a client timeout on an order that IS placed).
`lagging_activities = True` makes the FILL activity list answer nothing, as Alpaca's lags its orders at times.
Every request is recorded (`requests`, `requests_for("POST", "/v2/orders")`, `count("bars")`).
`limit_rate(n, per_seconds)` turns on Alpaca's rate limit (429 + Retry-After), timed on `rate_clock` (wall time
unless a test passes the simulated clock its broker sleeps on).

    alpaca_server.py   the fake: lifecycle, faults, routing, trading routes
    alpaca_data.py     assets and market data routes, paging, the rate limit
    alpaca_wire.py     errors, records, HTTP plumbing, Alpaca's JSON shapes

Usage:
    with FakeAlpaca(pg_url=..., market=SimulatedMarket(seed=7, exchange="NYSE"), clock=..., account_id="t_x",
                    paper_config=...) as fake:
        AlpacaBroker(AlpacaConfig(), api_key=fake.api_key, secret_key=fake.secret_key,
                     base_url=fake.base_url, data_url=fake.base_url, ...)
"""
from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import Clock, RealClock
from core.errors import InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from tests.fakes.alpaca_data import DataRoutes
from tests.fakes.alpaca_wire import (ID_SPACE, NEW_YORK, PAPER_TO_ALPACA, UNAUTHORIZED, Recorded, _Answer, _error,
                                     _Fault, _handler_class, _number, _s, _time_param, _ts)


class FakeAlpaca(DataRoutes):
    def __init__(self, *, pg_url: str, market: Any, clock: Any, account_id: str, paper_config: Any,
                 calendar: MarketCalendar | None = None, api_key: str = "PKFAKEKEY0000000",
                 secret_key: str = "fake-secret-0000000000000000", rate_clock: Clock | None = None) -> None:
        self.pg_url, self.market, self.clock = pg_url, market, clock
        self.rate_clock = rate_clock or RealClock()
        self.calendar = calendar or MarketCalendar("NYSE")
        self.account_id, self.paper_config = account_id, paper_config
        self.api_key, self.secret_key = api_key, secret_key
        self.requests: list[Recorded] = []
        self.errors: list[BaseException] = []            # unexpected exceptions inside the fake (a test bug)
        self.paper: PaperBroker | None = None
        self.lagging_activities = False
        self._lock = threading.Lock()
        self._order_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._ids: dict[str, str] = {}                    # alpaca order id -> client_order_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._pool: Any = None
        self._sockets: set[socket.socket] = set()
        self._init_data()

    # ------------------------------------------------------------ lifecycle (any thread but the fake's loop)
    def start(self) -> "FakeAlpaca":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-alpaca-loop", daemon=True)
        self._thread.start()
        self.run(self._startup())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                               name="fake-alpaca-http", daemon=True)
        self._server_thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                for sock in list(self._sockets):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._server = None
        if self._loop is not None and self._loop.is_running():
            self.run(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> "FakeAlpaca":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _startup(self) -> None:
        from runtime import database
        self._pool = await database.create_pool(self.pg_url, max_size=4)
        self.paper = PaperBroker(self._pool, self.market, self.clock, self.calendar, account_id=self.account_id,
                                 currency="USD", config=self.paper_config)
        await self.paper.connect()

    async def _shutdown(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except TimeoutError:
            self._pool.terminate()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the fake's loop (where the paper broker's pool lives) and wait for it. Blocking."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------ fault injection and observation (any thread)
    def fail_next(self, status: int, body: Any = None, times: int = 1, headers: dict[str, str] | None = None,
                  *, match: str | None = None) -> None:
        body = body if body is not None else {"code": status * 100_000, "message": f"injected HTTP {status}"}
        self._add(_Fault("fail", match, times, status=status, body=body, headers=dict(headers or {})))

    def drop_connections(self, n: int = 1, *, match: str | None = None, after_processing: bool = False) -> None:
        self._add(_Fault("drop", match, n, after_processing=after_processing))

    def delay_next(self, seconds: float, *, match: str | None = None) -> None:
        self._add(_Fault("delay", match, 1, seconds=seconds))

    def requests_for(self, method: str, path_prefix: str = "/") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, kinds: tuple[str, ...], method: str, path: str, *, after: bool | None = None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.applies(method, path) and (
                        after is None or fault.after_processing == after):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------ one request (HTTP handler threads)
    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               headers: Any) -> tuple[int, Any, dict[str, str]] | None:
        """The answer (status, JSON body or None, headers), or None to drop the connection unanswered."""
        fault = self._take(("fail",), method, path) or self._take(("drop",), method, path, after=False)
        if fault is not None:
            return None if fault.kind == "drop" else (fault.status, fault.body, fault.headers)
        if headers.get("APCA-API-KEY-ID") != self.api_key or headers.get("APCA-API-SECRET-KEY") != self.secret_key:
            return 401, UNAUTHORIZED, {}
        try:
            headers_out = self._rate_check(path)
            status, answer = self._route(method, path, query, body)
        except _Answer as a:
            status, answer, headers_out = a.status, a.body, a.headers
        except Exception as exc:                 # a bug in the fake or the backing broker: say so loudly
            self.errors.append(exc)
            status, answer, headers_out = 500, {"code": 50010000, "message": f"fake alpaca: {exc!r}"}, {}
        if self._take(("drop",), method, path, after=True) is not None:
            return None
        delay = self._take(("delay",), method, path)
        if delay is not None:
            time.sleep(delay.seconds)
        return status, answer, headers_out

    def _route(self, method: str, path: str, q: dict[str, str], body: Any) -> tuple[int, Any]:
        for route_method, pattern, fn in self._routes():
            m = re.fullmatch(pattern, path)
            if m and route_method == method:
                return fn(q, body, **m.groupdict())
        raise _error(404, 40410000, f"endpoint not found: {method} {path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        return [
            ("GET", r"/v2/account", self._get_account),
            ("GET", r"/v2/assets", self._get_assets),
            ("GET", r"/v2/assets/(?P<symbol>[^/]+)", self._get_asset),
            ("GET", r"/v2/positions", self._get_positions),
            ("GET", r"/v2/positions/(?P<symbol>[^/]+)", self._get_position),
            ("POST", r"/v2/orders", self._post_order),
            ("GET", r"/v2/orders", self._get_orders),
            ("GET", r"/v2/orders:by_client_order_id", self._get_order_by_client_id),
            ("GET", r"/v2/orders/(?P<order_id>[^/]+)", self._get_order),
            ("DELETE", r"/v2/orders/(?P<order_id>[^/]+)", self._delete_order),
            ("GET", r"/v2/account/activities/FILL", self._get_fills),
            ("GET", r"/v2/stocks/bars", self._get_bars),
            ("GET", r"/v2/stocks/snapshots", self._get_snapshots),
            ("GET", r"/v2/stocks/quotes/latest", self._get_latest_quotes),
            ("GET", r"/v2/stocks/trades/latest", self._get_latest_trades),
        ]

    # ------------------------------------------------------------ trading routes
    def _get_account(self, q, body) -> tuple[int, Any]:
        acct = self.run(self.paper.get_account())
        bp = _s(acct.buying_power)
        return 200, {
            "id": str(uuid.uuid5(ID_SPACE, self.account_id)), "account_number": "PA" + self.account_id[-10:].upper(),
            "status": "ACTIVE", "crypto_status": "INACTIVE", "currency": "USD", "buying_power": bp,
            "regt_buying_power": bp, "non_marginable_buying_power": bp, "options_buying_power": bp,
            "cash": _s(acct.cash), "accrued_fees": "0", "pending_transfer_in": "0", "portfolio_value": _s(acct.equity),
            "trading_blocked": False, "transfers_blocked": False, "account_blocked": False,
            "created_at": "2026-01-02T15:00:00Z", "trade_suspended_by_user": False, "multiplier": "1",
            "shorting_enabled": False, "equity": _s(acct.equity), "last_equity": _s(acct.equity),
            "long_market_value": _s(acct.equity - acct.cash), "short_market_value": "0", "initial_margin": "0",
            "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0", "options_approved_level": 0,
            "options_trading_level": 0}

    def _get_positions(self, q, body) -> tuple[int, Any]:
        return 200, [self._position_json(p, pending) for p, pending in self._positions().values()]

    def _get_position(self, q, body, symbol: str) -> tuple[int, Any]:
        found = self._positions().get(symbol)
        if found is None:
            raise _error(404, 40410000, "position does not exist")
        return 200, self._position_json(*found)

    def _positions(self) -> dict[str, tuple[Any, int]]:
        """symbol -> (paper position, shares in open sell orders)."""
        held = self.run(self.paper.get_positions())
        open_orders = self.run(self.paper.get_orders(open_only=True))
        selling: dict[str, int] = {}
        for o in open_orders:
            if o.side is OrderSide.SELL:
                selling[o.symbol] = selling.get(o.symbol, 0) + o.remaining_quantity
        return {p.symbol: (p, selling.get(p.symbol, 0)) for p in held}

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

    def _post_order(self, q, body) -> tuple[int, Any]:
        request = self._order_request(body)
        with self._order_lock:        # check-then-place must not interleave with another POST of the same id
            existing = self.run(self.paper.get_order_by_client_id(request.client_order_id))
            if existing is not None and existing.status is not OrderStatus.REJECTED:
                raise _error(422, 40010001, "client_order_id must be unique")
            try:
                result = self.run(self.paper.place_order(request))
            except OrderRejected as exc:
                raise self._refusal(exc.reason, request) from None
            except InvalidRequest as exc:
                raise _error(422, 40010001, str(exc)) from None
        return 200, self._order_json(result)

    def _order_request(self, body: Any) -> OrderRequest:
        """Alpaca's request checks for what the paper exchange can do: day market/limit orders in whole shares."""
        if not isinstance(body, dict):
            raise _error(400, 40010000, "request body format is invalid")
        for key in ("notional", "stop_price", "trail_price", "trail_percent", "legs", "take_profit", "stop_loss"):
            if body.get(key) is not None:
                raise _error(422, 40010001, f"{key} is not supported by the fake Alpaca")
        if body.get("order_class") not in (None, "", "simple"):
            raise _error(422, 40010001, f"order_class {body['order_class']} is not supported by the fake Alpaca")
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type")
        if not symbol:
            raise _error(422, 40010001, "symbol is required")
        if side not in ("buy", "sell"):
            raise _error(422, 40010001, f"invalid side {side!r}")
        if kind not in ("market", "limit"):
            raise _error(422, 40010001, f"invalid order type {kind!r} for the fake Alpaca")
        if body.get("time_in_force") != "day":
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
                                limit_price=None if limit is None else _number(limit, "limit_price"))
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
        orders = self._visible(self.run(self.paper.get_orders(open_only=status == "open")))
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
        self.run(self.paper.cancel_order(order.client_order_id))
        return 204, None

    def _order(self, client_order_id: str) -> OrderResult:
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
            for o in self.run(self.paper.get_orders()):
                self._order_json(o)
            coid = self._ids.get(order_id)
        if coid is None:
            raise _error(404, 40410000, "order not found")
        return self._order(coid)

    @staticmethod
    def _visible(orders: list[OrderResult]) -> list[OrderResult]:
        return [o for o in orders if o.status is not OrderStatus.REJECTED]

    def _order_json(self, o: OrderResult) -> dict[str, Any]:
        order_id = str(uuid.uuid5(ID_SPACE, o.broker_order_id))
        self._ids[order_id] = o.client_order_id
        status = PAPER_TO_ALPACA[o.status.value]
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
            "trail_price": None, "hwm": None}

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
                    "leaves_qty": str(o.quantity - cum), "order_id": str(uuid.uuid5(ID_SPACE, o.broker_order_id)),
                    "cum_qty": str(cum), "order_status": "filled" if done else "partially_filled"}))
        out.sort(key=lambda a: (a[0], a[1]["id"]))
        return out

