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

and, on its own port, Alpaca's real-time stock data websocket (`stream_url`, alpaca_stream.py; alpaca-py's
StockDataStream(url_override=...) speaks to it): quotes and trades of the subscribed symbols, pushed when the feed
(a MovableMarket) moves and periodically.

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
day market/limit orders and day/gtc sell stop orders in whole shares are accepted, and client_order_id is limited
to 48 characters (ours).

Stop orders (alpaca_stops.py) rest in the fake itself, holding their shares (`qty_available`, 403 "insufficient qty
available for order"), and are elected when the feed trades at or below them in the session: at once when the feed
is a MovableMarket and a test moves it (the fake listens), otherwise by the fake's own matching before every
request; an elected stop is a market sell on the paper exchange, still reported as type "stop".

A margin account, as Alpaca's default (multiplier 2, Reg T): `buying_power` and `regt_buying_power` are twice the
equity not held by open buy orders, less what is already held long; `non_marginable_buying_power` and `cash` are
what the account really has. Not like Alpaca: the paper exchange behind the fake lends nothing, so a buy above the
cash is refused (403 insufficient buying power) even where `buying_power` covers it.

Late fills (`fill_delay = seconds`, off by default): a market order is accepted at once ("accepted", nothing
filled) and reaches the paper exchange that many (wall-clock) seconds later, filling then, as a live venue fills a
moment after it accepts. What the exchange would refuse at once (a buy above the cash at the ask, a sell of more
than is free) is refused at once; an order it refuses later shows "rejected" with the reason.

Fault injection (each takes an optional `match`, e.g. "POST /v2/orders" or "/v2/stocks", default any request):
`fail_next(status, body, times=1, headers=None)` answers without doing anything (429 with Retry-After, 500 ...);
`drop_connections(n, after_processing=False)` closes the socket without an answer (after doing the work if asked);
`delay_next(seconds)` does the work, then waits before answering (a client timeout on an order that IS placed).
`lagging_activities = True` makes the FILL activity list answer nothing, as Alpaca's lags its orders at times.
Every request is recorded (`requests`, `requests_for("POST", "/v2/orders")`, `count("bars")`).
`limit_rate(n, per_seconds)` turns on Alpaca's rate limit (429 + Retry-After), timed on `rate_clock` (wall time
unless a test passes the simulated clock its broker sleeps on).

    alpaca_server.py   the fake: lifecycle, faults, routing
    alpaca_trading.py  account, positions, orders (late fills included), fill activities
    alpaca_stops.py    stop orders: checks, resting, election, how they read
    alpaca_stream.py   the real-time stock data websocket (`stream_url`; `stream` has its test controls)
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
from http.server import ThreadingHTTPServer
from typing import Any, Callable

from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import Clock, RealClock
from tests.fakes.alpaca_data import DataRoutes
from tests.fakes.alpaca_stream import FakeAlpacaStream
from tests.fakes.alpaca_trading import TradingRoutes
from tests.fakes.alpaca_wire import UNAUTHORIZED, Recorded, _Answer, _error, _Fault, _handler_class


class FakeAlpaca(TradingRoutes, DataRoutes):
    def __init__(self, *, pg_url: str, market: Any, clock: Any, account_id: str, paper_config: Any,
                 calendar: MarketCalendar | None = None, api_key: str = "PKFAKEKEY0000000",
                 secret_key: str = "fake-secret-0000000000000000", rate_clock: Clock | None = None,
                 stream_symbol_limit: int | None = 30) -> None:
        self.pg_url, self.market, self.clock = pg_url, market, clock
        self.rate_clock = rate_clock or RealClock()
        self.calendar = calendar or MarketCalendar("NYSE")
        self.account_id, self.paper_config = account_id, paper_config
        self.api_key, self.secret_key = api_key, secret_key
        self.requests: list[Recorded] = []
        self.errors: list[BaseException] = []            # unexpected exceptions inside the fake (a test bug)
        self.paper: PaperBroker | None = None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._pool: Any = None
        self._sockets: set[socket.socket] = set()
        self.stream = FakeAlpacaStream(market=market, clock=clock, api_key=api_key, secret_key=secret_key,
                                       symbol_limit=stream_symbol_limit)
        self._init_trading()
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
        self.stream.start()
        if hasattr(self.market, "listen"):     # a MovableMarket: a move is pushed and elects the stops it crosses
            self.market.listen(self._on_move)
        return self

    def stop(self) -> None:
        if hasattr(self.market, "unlisten"):
            self.market.unlisten(self._on_move)
        for timer in self._timers:
            timer.cancel()
        self.stream.stop()
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

    @property
    def stream_url(self) -> str:
        """The real-time stock data stream (IEX feed), for alpaca-py's StockDataStream(url_override=...)."""
        return self.stream.url("iex")

    def _on_move(self, symbol: str, quote: Any) -> None:
        """MovableMarket's listener (the mover's thread): push the new print to subscribers, then elect the stops
        it crosses."""
        self.stream.on_move(symbol, quote)
        self.match_stops([symbol], source="move")

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
            self.match_stops()                   # the venue's own matching: stops the market crossed meanwhile
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
