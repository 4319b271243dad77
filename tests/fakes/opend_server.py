"""A fake moomoo/Futu OpenD at the socket, so tests run the real moomoo-api SDK against the paper exchange.

Wire protocol (as the SDK packs it, moomoo/common/utils.py `_joint_head` / `parse_head`): every packet is a 44-byte
header `struct "<1s1sI2B2I20s8s"` = b"F", b"T", proto id (u32), body format (u8: 0 protobuf), protocol version
(u8: 0), serial number (u32; a reply echoes the request's), body length (u32), SHA1 of the plain body (20 bytes),
8 reserved bytes — then the body, a protobuf `Request`/`Response` from moomoo/common/pb/<Name>_pb2.py. No
encryption: the SDK encrypts only with `SysConfig.enable_proto_encrypt(True)` / an RSA key file, so InitConnect
asking for AES is refused here.

Answers (each proto id checked against `moomoo.common.constant.ProtoId`):
  1001 InitConnect, 1004 KeepAlive;
  3203 Qot_GetSecuritySnapshot, 3103 Qot_RequestHistoryKL, 3104 Qot_RequestHistoryKLQuota, 3202 Qot_GetStaticInfo,
  3205 Qot_GetPlateSecurity, with OpenD's batch sizes, page sizes, frequency limits and history K-line quota
  (opend_quotes.py);
  3001 Qot_Sub, 3002 Qot_RegQotPush, 3003 Qot_GetSubInfo and the push 3005 Qot_UpdateBasicQot, with the
  subscription quota and OpenD's one-minute minimum before an unsubscribe (opend_push.py);
  2001 Trd_GetAccList, 2005 Trd_UnlockTrade, 2008 Trd_SubAccPush, 2101 Trd_GetFunds, 2102 Trd_GetPositionList,
  2201 Trd_GetOrderList, 2202 Trd_PlaceOrder (limit, market and, on the REAL account, stop orders), 2205
  Trd_ModifyOrder (cancel), 2211 Trd_GetOrderFillList, 2221 Trd_GetHistoryOrderList, 2222
  Trd_GetHistoryOrderFillList, 2225 Trd_GetOrderFee; pushes 2208 Trd_UpdateOrder and (REAL accounts) 2218
  Trd_UpdateOrderFill to connections that subscribed the account. Anything else gets retType -1 "not supported by
  the fake OpenD".

A price feed with `listen` (tests/fakes/movable.py MovableMarket) is followed: a move is pushed at once to the
connections subscribed to that security and triggers the resting stop orders it crosses.

Behind it is the paper broker (brokers.paper.PaperBroker on the caller's price feed — a SimulatedMarket, or a
tests.fakes.universe.Universe with real-looking HKEX codes, listings and plates — and SimulatedClock, an asyncpg
pool on the fake's own event loop thread), so prices and fills agree with everything else in the tests.
Accounts: a paper OPTION account listed first (an adapter must not pick it for stocks), a paper STOCK account and
a REAL account, each its own paper account. As at the real OpenD, paper (SIMULATE) accounts answer neither deals
nor order fees, a refused order leaves no order behind (the paper broker's rejected row is hidden), the remark is
stored but never deduplicated, and REAL accounts trade only after Trd_UnlockTrade with the right password.

Margin, as the venue has it (`margin_accounts`: the STOCK and REAL accounts): Trd_GetFunds reports `power` as the
docs define it, net assets at a 50% initial margin rate less what is held (about twice the cash of an account with
no positions), `maxPowerShort` at 60%, `netCashPower` the cash that is free. A sell larger than the shares free to
sell is accepted on the REAL margin account (OpenD would let it go short) and stays working, unfilled: the paper
exchange behind the fake lends no shares. Paper accounts refuse it (no HK short selling in paper trading). Not
like OpenD: the paper exchange lends no money either, so a buy above the cash is refused even where `power`
covers it.

Late fills (`fill_delay = seconds`, off by default): a market order is accepted at once (SUBMITTED, nothing
filled) and reaches the paper exchange that many (wall-clock) seconds later, filling then, as a live venue fills a
moment after it accepts. What the exchange would refuse at once (a buy above the cash at the quote, a sell of more
than a paper account holds) is refused at once; an order it refuses later shows FAILED with the reason.

Fault injection: `drop_connections()`, `stall()` / `resume()` (no quote pushes, no keep-alive answers),
`delay_next_place_order(seconds)` (the order is placed at once, the reply
waits), `reject_next_order(message)`, `silence(proto_id)` (requests of that kind are recorded and never answered,
as an OpenD that hangs), `pushes_before_reply` (order pushes go out before the PlaceOrder reply) and
`stale_order_lists` (order lists report every order as SUBMITTED with nothing filled, as a lagging OpenD cache
would; pushes stay true). Every request is recorded (`requests`, `requests_for(proto_id)`), every packet sent too
(`sent`: proto id and serial, in order); `positions(env)` shows what the exchange holds (from a worker thread);
`count(kind)`, `accepted_at` and `refused` show the quote requests (opend_quotes.py). Frequency limits are timed
on `rate_clock` (wall time by default, as OpenD's; a test may pass the simulated clock its broker sleeps on).

    opend_server.py   the fake: lifecycle, framing, connections, fault injection
    opend_trade.py    accounts, funds, positions, orders, deals, fees, pushes
    opend_quotes.py   snapshots, K-lines, listings, plates, the K-line quota, frequency limits
    opend_push.py     quote subscriptions, their quota and minimum age, basic-quote pushes, the feed's moves
    opend_wire.py     the header, the protocol's numbers, the records kept

Usage: import the SDK through `brokers.moomoo.load_sdk(log_dir)` first (its import has side effects), then
    with FakeOpenD(pg_url=..., market=..., clock=..., account_id="t_x", paper_config=...) as fake:
        ... MoomooConfig(host=fake.host, port=fake.port) ...
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import threading
import time
from typing import Any

from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import Clock, RealClock
from core.errors import BrokerError
from tests.fakes.opend_push import PushHandlers
from tests.fakes.opend_quotes import QuoteHandlers
from tests.fakes.opend_trade import TradeHandlers
from core.orders import OrderResult
from tests.fakes.opend_wire import (FIRMS, HEAD, NOT_SUPPORTED, REAL_ACC, SIM_OPTION_ACC, SIM_STOCK_ACC, Recorded,
                                    _Conn, _Order, _Refuse)


class FakeOpenD(TradeHandlers, QuoteHandlers, PushHandlers):
    def __init__(self, *, pg_url: str, market: Any, clock: Any, account_id: str, paper_config: Any,
                 calendar: MarketCalendar | None = None, trade_password: str | None = None,
                 security_firm: str = "FUTUSECURITIES", keep_alive_interval: int = 10,
                 rate_clock: Clock | None = None) -> None:
        self.pg_url = pg_url
        self.rate_clock = rate_clock or RealClock()
        self.market = market
        self.clock = clock
        self.calendar = calendar or MarketCalendar("HKEX")
        self.account_id = account_id
        self.paper_config = paper_config
        self.password_md5 = hashlib.md5(trade_password.encode()).hexdigest() if trade_password else None
        self.firm = FIRMS[security_firm]
        self.keep_alive_interval = keep_alive_interval
        self.host = "127.0.0.1"
        self.port = 0
        self.pushes_before_reply = False
        self.stale_order_lists = False
        self.margin_accounts = {SIM_STOCK_ACC, REAL_ACC}
        self.fill_delay: float | None = None
        self._silent: set[int] = set()
        self.unlocked = False
        self.requests: list[Recorded] = []
        self._requests_lock = threading.Lock()
        self._delays: list[float] = []
        self._rejections: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pool: Any = None
        self._paper: dict[int, PaperBroker] = {}
        self._conns: dict[int, _Conn] = {}
        self._orders: dict[int, _Order] = {}
        self._orders_of: dict[int, dict[str, dict[str, _Order]]] = {}     # acc id -> code -> paper id -> order
        self._held: dict[int, OrderResult] = {}        # accepted by OpenD, not (yet) at the paper exchange
        self._firing: set[int] = set()                  # stops being sent to the exchange right now
        self._fill_ids: dict[str, int] = {}
        self._conn_ids = itertools.count(7_000_001)
        self._order_ids = itertools.count(5_000_000_000_001)
        self._deal_ids = itertools.count(8_000_000_000_001)
        self._push_serials = itertools.count(1)
        self._pb: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self.sent: list[tuple[int, int]] = []          # (proto id, serial no) in the order they went out
        self._init_quotes()
        self._init_push()

    # ------------------------------------------------------------ lifecycle (any thread)
    def start(self) -> "FakeOpenD":
        constant = importlib.import_module("moomoo.common.constant")
        self._names = {v: k for k, v in vars(constant.ProtoId).items() if isinstance(v, int) and not k.startswith("_")}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-opend", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._startup(), self._loop).result(30)
        if hasattr(self.market, "listen"):
            self.market.listen(self._moved)
        return self

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return
        if hasattr(self.market, "unlisten"):
            self.market.unlisten(self._moved)
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "FakeOpenD":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _startup(self) -> None:
        from runtime import database
        self._pool = await database.create_pool(self.pg_url, max_size=4)
        for acc_id in (SIM_OPTION_ACC, SIM_STOCK_ACC, REAL_ACC):
            broker = PaperBroker(self._pool, self.market, self.clock, self.calendar,
                                 account_id=f"{self.account_id}:{acc_id % 1000}", currency="HKD",
                                 config=self.paper_config)
            await broker.connect()
            self._paper[acc_id] = broker
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._pulse())

    async def _shutdown(self) -> None:
        self._server.close()
        for conn in list(self._conns.values()):
            conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except TimeoutError:
            self._pool.terminate()

    # ------------------------------------------------------------ fault injection and observation (any thread)
    def drop_connections(self) -> None:
        """Cut every client connection now (as a crashing or restarting OpenD would)."""
        def cut() -> None:
            for conn in list(self._conns.values()):
                conn.writer.transport.abort()
        self._loop.call_soon_threadsafe(cut)

    def delay_next_place_order(self, seconds: float) -> None:
        self._delays.append(seconds)

    def reject_next_order(self, message: str) -> None:
        self._rejections.append(message)

    def silence(self, proto_id: int) -> None:
        """Record requests of this proto id and never answer them (an OpenD that hangs on them)."""
        self._silent.add(proto_id)

    def requests_for(self, proto_id: int) -> list[Recorded]:
        with self._requests_lock:
            return [r for r in self.requests if r.proto_id == proto_id]

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def positions(self, env: str = "SIMULATE") -> dict[str, int]:
        """What the exchange holds for the paper STOCK account ("SIMULATE") or the REAL account. Blocking: the
        paper broker lives on the fake's own loop, so call this from a worker thread (asyncio.to_thread)."""
        broker = self._paper[REAL_ACC if env == "REAL" else SIM_STOCK_ACC]
        held = asyncio.run_coroutine_threadsafe(broker.get_positions(), self._loop).result(30)
        return {p.symbol: p.quantity for p in held}

    # ------------------------------------------------------------ framing
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(next(self._conn_ids), writer)
        self._conns[conn.conn_id] = conn
        try:
            while True:
                head = HEAD.unpack(await reader.readexactly(HEAD.size))
                h1, h2, proto_id, fmt, _ver, serial, length, sha, _ = head
                body = await reader.readexactly(length)
                if h1 + h2 != b"FT" or fmt != 0 or hashlib.sha1(body).digest() != sha:
                    break      # not OpenD's protocol (or JSON bodies, which the fake does not speak)
                task = asyncio.create_task(self._answer(conn, proto_id, serial, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._conns.pop(conn.conn_id, None)
            self._conn_closed(conn)
            writer.transport.abort()

    async def _send(self, conn: _Conn, proto_id: int, serial: int, message: Any) -> None:
        body = message.SerializeToString()
        packet = HEAD.pack(b"F", b"T", proto_id, 0, 0, serial, len(body), hashlib.sha1(body).digest(),
                           b"\0" * 8) + body
        async with conn.lock:
            if conn.writer.is_closing():
                return
            conn.writer.write(packet)
            self.sent.append((proto_id, serial))
            await conn.writer.drain()

    def _module(self, proto_id: int) -> Any:
        if proto_id not in self._pb:
            self._pb[proto_id] = importlib.import_module(f"moomoo.common.pb.{self._names[proto_id]}_pb2")
        return self._pb[proto_id]

    async def _answer(self, conn: _Conn, proto_id: int, serial: int, body: bytes) -> None:
        from google.protobuf.json_format import MessageToDict
        if proto_id not in self._names:
            return                                       # an id the SDK does not know either: no answer
        module = self._module(proto_id)
        request = module.Request()
        request.ParseFromString(body)
        with self._requests_lock:
            self.requests.append(Recorded(proto_id, serial, conn.conn_id,
                                          MessageToDict(request, preserving_proto_field_name=True)))
        if proto_id in self._silent:
            return
        response = module.Response()
        handler = getattr(self, f"_on_{proto_id}", None)
        after: list[Any] = []
        try:
            if handler is None:
                raise _Refuse(f"proto {proto_id} ({self._names[proto_id]}) {NOT_SUPPORTED}")
            after = await handler(conn, request.c2s, response.s2c) or []
            response.retType = 0
        except _Refuse as exc:
            response.Clear()
            response.retType, response.retMsg, response.errCode = -1, str(exc), 1
        except BrokerError as exc:
            response.Clear()
            response.retType, response.retMsg, response.errCode = -1, str(exc), 1
        delay = 0.0
        if proto_id == 2202 and response.retType == 0:
            if self.pushes_before_reply:
                await self._flush(after)
                after = []
            if self._delays:
                delay = self._delays.pop(0)
        if delay:
            await asyncio.sleep(delay)
        await self._send(conn, proto_id, serial, response)
        await self._flush(after)

    async def _flush(self, pushes: list[tuple[int, Any, int | _Conn]]) -> None:
        """Send pushes: to every connection that subscribed an account (an account id), or to one connection."""
        for proto_id, message, target in pushes:
            if isinstance(target, _Conn):
                if target.conn_id in self._conns:
                    await self._send(target, proto_id, next(self._push_serials), message)
                continue
            for conn in list(self._conns.values()):
                if target in conn.accounts:
                    await self._send(conn, proto_id, next(self._push_serials), message)

    # ------------------------------------------------------------ connection
    async def _on_1001(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if c2s.HasField("packetEncAlgo") and c2s.packetEncAlgo != -1:     # -1 = PacketEncAlgo_None
            raise _Refuse("encrypted connections are not supported by the fake OpenD")
        s2c.serverVer, s2c.loginUserID, s2c.connID = 903, 10_000_001, conn.conn_id
        s2c.connAESKey, s2c.keepAliveInterval = "0123456789abcdef", self.keep_alive_interval

    async def _on_1004(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        s2c.time = int(time.time())

