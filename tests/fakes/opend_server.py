"""A fake moomoo/Futu OpenD at the socket, so tests run the real moomoo-api SDK against the paper exchange.

Wire protocol (as the SDK packs it, moomoo/common/utils.py `_joint_head` / `parse_head`): every packet is a 44-byte
header `struct "<1s1sI2B2I20s8s"` = b"F", b"T", proto id (u32), body format (u8: 0 protobuf), protocol version
(u8: 0), serial number (u32; a reply echoes the request's), body length (u32), SHA1 of the plain body (20 bytes),
8 reserved bytes — then the body, a protobuf `Request`/`Response` from moomoo/common/pb/<Name>_pb2.py. No
encryption: the SDK encrypts only with `SysConfig.enable_proto_encrypt(True)` / an RSA key file, so InitConnect
asking for AES is refused here.

Answers (each proto id checked against `moomoo.common.constant.ProtoId`):
  1001 InitConnect, 1004 KeepAlive; 3203 Qot_GetSecuritySnapshot, 3103 Qot_RequestHistoryKL;
  2001 Trd_GetAccList, 2005 Trd_UnlockTrade, 2008 Trd_SubAccPush, 2101 Trd_GetFunds, 2102 Trd_GetPositionList,
  2201 Trd_GetOrderList, 2202 Trd_PlaceOrder, 2205 Trd_ModifyOrder (cancel), 2211 Trd_GetOrderFillList,
  2221 Trd_GetHistoryOrderList, 2222 Trd_GetHistoryOrderFillList, 2225 Trd_GetOrderFee;
  pushes 2208 Trd_UpdateOrder and (REAL accounts) 2218 Trd_UpdateOrderFill to connections that subscribed the
  account. Anything else gets retType -1 "not supported by the fake OpenD".

Behind it is the paper broker (brokers.paper.PaperBroker on the caller's SimulatedMarket and SimulatedClock, an
asyncpg pool on the fake's own event loop thread), so prices and fills agree with everything else in the tests.
Accounts: a paper OPTION account listed first (an adapter must not pick it for stocks), a paper STOCK account and
a REAL account, each its own paper account. As at the real OpenD, paper (SIMULATE) accounts answer neither deals
nor order fees, a refused order leaves no order behind (the paper broker's rejected row is hidden), the remark is
stored but never deduplicated, and REAL accounts trade only after Trd_UnlockTrade with the right password.

Fault injection: `drop_connections()`, `delay_next_place_order(seconds)` (the order is placed at once, the reply
waits), `reject_next_order(message)`, `pushes_before_reply` (order pushes go out before the PlaceOrder reply) and
`stale_order_lists` (order lists report every order as SUBMITTED with nothing filled, as a lagging OpenD cache
would; pushes stay true). Every request is recorded (`requests`, `requests_for(proto_id)`), every packet sent too
(`sent`: proto id and serial, in order); `positions(env)` shows what the exchange holds (from a worker thread).

Usage: import the SDK through `brokers.moomoo.load_sdk(log_dir)` first (its import has side effects), then
    with FakeOpenD(pg_url=..., market=..., clock=..., account_id="t_x", paper_config=...) as fake:
        ... MoomooConfig(host=fake.host, port=fake.port) ...
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from core.errors import BrokerError, InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.ticks import tick_size

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
FIRMS = {"FUTUSECURITIES": 1, "FUTUINC": 2, "FUTUSG": 3, "FUTUAU": 4}

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


@dataclass
class _Order:
    order_id: int
    acc_id: int
    paper_coid: str
    remark: str | None
    code: str
    pushed: tuple = ()


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


class FakeOpenD:
    def __init__(self, *, pg_url: str, market: Any, clock: Any, account_id: str, paper_config: Any,
                 calendar: MarketCalendar | None = None, trade_password: str | None = None,
                 security_firm: str = "FUTUSECURITIES", keep_alive_interval: int = 10) -> None:
        self.pg_url = pg_url
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
        self._fill_ids: dict[str, int] = {}
        self._conn_ids = itertools.count(7_000_001)
        self._order_ids = itertools.count(5_000_000_000_001)
        self._deal_ids = itertools.count(8_000_000_000_001)
        self._push_serials = itertools.count(1)
        self._pb: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self.sent: list[tuple[int, int]] = []          # (proto id, serial no) in the order they went out

    # ------------------------------------------------------------ lifecycle (any thread)
    def start(self) -> "FakeOpenD":
        constant = importlib.import_module("moomoo.common.constant")
        self._names = {v: k for k, v in vars(constant.ProtoId).items() if isinstance(v, int) and not k.startswith("_")}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-opend", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._startup(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return
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

    async def _flush(self, pushes: list[tuple[int, Any, int]]) -> None:
        for proto_id, message, acc_id in pushes:
            for conn in list(self._conns.values()):
                if acc_id in conn.accounts:
                    await self._send(conn, proto_id, next(self._push_serials), message)

    # ------------------------------------------------------------ connection
    async def _on_1001(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if c2s.HasField("packetEncAlgo") and c2s.packetEncAlgo != -1:     # -1 = PacketEncAlgo_None
            raise _Refuse("encrypted connections are not supported by the fake OpenD")
        s2c.serverVer, s2c.loginUserID, s2c.connID = 903, 10_000_001, conn.conn_id
        s2c.connAESKey, s2c.keepAliveInterval = "0123456789abcdef", self.keep_alive_interval

    async def _on_1004(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        s2c.time = int(time.time())

    # ------------------------------------------------------------ quotes
    def _instrument(self, market: int, code: str) -> Any:
        try:
            if market != QOT_MARKET_HK:
                raise KeyError(code)
            return self.market.instrument(code)
        except KeyError:
            raise _Refuse(f"Unknown stock HK.{code}") from None

    async def _on_3203(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        now = self.clock.now()
        for sec in c2s.securityList:
            inst = self._instrument(sec.market, sec.code)
            q = self.market.quote(inst.symbol, now)
            state = self.calendar.state(now)
            day = state.session_date or self.calendar.previous_trading_day(self.calendar.local_date(now))
            opens = self.calendar.session_bounds(day)
            today = self.market.bars(inst.symbol, "1m", opens[0][0], now) if opens else []
            prev_close = self.market.quote(inst.symbol, opens[0][0]).last if opens else q.last
            basic = s2c.snapshotList.add().basic
            basic.security.market, basic.security.code, basic.name = QOT_MARKET_HK, sec.code, inst.name
            basic.type, basic.isSuspend, basic.listTime, basic.lotSize = 3, False, "2015-01-02", inst.lot_size
            basic.priceSpread = float(tick_size(q.last, "hkex"))
            basic.updateTime = _local(q.timestamp)[:19]
            basic.openPrice = float(today[0].open if today else q.last)
            basic.highPrice = float(max((b.high for b in today), default=q.last))
            basic.lowPrice = float(min((b.low for b in today), default=q.last))
            basic.lastClosePrice, basic.curPrice = float(prev_close), float(q.last)
            basic.volume, basic.turnover, basic.turnoverRate = q.volume, float(q.last * q.volume), 0.0
            basic.bidPrice, basic.askPrice = float(q.bid), float(q.ask)

    async def _on_3103(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if c2s.klType not in KL_MINUTES:
            raise _Refuse(f"K-line type {c2s.klType} {NOT_SUPPORTED}")
        inst = self._instrument(c2s.security.market, c2s.security.code)
        minutes = KL_MINUTES[c2s.klType]
        begin, end = _parse_local(c2s.beginTime), _parse_local(c2s.endTime, end=True)
        timeframe = {0: "1d", 60: "1h"}.get(minutes, f"{minutes}m")
        bars = self.market.bars(inst.symbol, timeframe, begin - timedelta(days=1), min(end, self.clock.now()))
        labelled = [(label, b) for b in bars if begin <= (label := self._label(b.start, minutes)) <= end]
        offset = int(c2s.nextReqKey or b"0")
        count = c2s.maxAckKLNum if c2s.HasField("maxAckKLNum") and c2s.maxAckKLNum > 0 else len(labelled)
        page = labelled[offset:offset + count]
        s2c.security.market, s2c.security.code, s2c.name = QOT_MARKET_HK, c2s.security.code, inst.name
        for label, b in page:
            kl = s2c.klList.add()
            kl.time = label.astimezone(HKT).strftime("%Y-%m-%d %H:%M:%S")
            kl.isBlank = False
            kl.openPrice, kl.highPrice, kl.lowPrice = float(b.open), float(b.high), float(b.low)
            kl.closePrice, kl.volume, kl.turnover = float(b.close), b.volume, float(b.close * b.volume)
        if offset + len(page) < len(labelled):
            s2c.nextReqKey = str(offset + len(page)).encode()

    def _label(self, start: datetime, minutes: int) -> datetime:
        """OpenD's time key: the END of an intraday bar (never past its interval's end); midnight for a day."""
        if minutes == 0:
            return datetime.combine(self.calendar.local_date(start), datetime.min.time(), HKT)
        for open_, close in self.calendar.session_bounds(self.calendar.local_date(start)):
            if open_ <= start < close:
                return min(start + timedelta(minutes=minutes), close)
        return start + timedelta(minutes=minutes)

    # ------------------------------------------------------------ accounts
    async def _on_2001(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        for acc_id, env, sim_type in ((SIM_OPTION_ACC, SIMULATE, 2), (SIM_STOCK_ACC, SIMULATE, 1),
                                      (REAL_ACC, REAL, None)):
            acc = s2c.accList.add()
            acc.trdEnv, acc.accID, acc.accType = env, acc_id, 2
            acc.trdMarketAuthList.append(TRD_MARKET_HK)
            if sim_type is not None:
                acc.simAccType = sim_type
            else:
                acc.securityFirm, acc.cardNum, acc.uniCardNum = self.firm, "1001318721909873", "1001100000000001"
            acc.accStatus, acc.accRole = 0, 1

    async def _on_2005(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if not c2s.unlock:
            self.unlocked = False
            return
        if self.password_md5 is None or c2s.pwdMD5 != self.password_md5:
            raise _Refuse("Incorrect trade password")
        self.unlocked = True

    async def _on_2008(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        conn.accounts = set(c2s.accIDList)

    def _account(self, header: Any, *, trading: bool = False) -> PaperBroker:
        broker = self._paper.get(header.accID)
        if broker is None or header.trdEnv != (REAL if header.accID == REAL_ACC else SIMULATE):
            raise _Refuse(f"account {header.accID} does not exist in trading environment {header.trdEnv}")
        if header.trdMarket != TRD_MARKET_HK:
            raise _Refuse("this account trades only the HK market")
        if trading and header.accID == REAL_ACC and not self.unlocked:
            raise _Refuse("Please unlock trade first")
        return broker

    @staticmethod
    def _header(target: Any, header: Any) -> None:
        target.trdEnv, target.accID, target.trdMarket = header.trdEnv, header.accID, header.trdMarket

    async def _on_2101(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        acct = await self._account(c2s.header).get_account()
        self._header(s2c.header, c2s.header)
        f = s2c.funds
        f.power, f.totalAssets, f.cash = float(acct.buying_power), float(acct.equity), float(acct.cash)
        f.marketVal, f.frozenCash = float(acct.equity - acct.cash), float(acct.cash - acct.buying_power)
        f.debtCash, f.avlWithdrawalCash, f.currency = 0.0, float(acct.buying_power), CURRENCY_HKD

    async def _on_2102(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        broker = self._account(c2s.header)
        self._header(s2c.header, c2s.header)
        selling = {}
        for o in await broker.get_orders(open_only=True):
            if o.side is OrderSide.SELL:
                selling[o.symbol] = selling.get(o.symbol, 0) + o.remaining_quantity
        for p in await broker.get_positions():
            row = s2c.positionList.add()
            row.positionID = int(hashlib.sha1(p.symbol.encode()).hexdigest()[:12], 16)
            row.positionSide, row.code, row.name = 0, p.symbol, self.market.instrument(p.symbol).name
            row.qty, row.canSellQty = p.quantity, p.quantity - selling.get(p.symbol, 0)
            row.price, row.val = float(p.market_price), float(p.market_value)
            row.plVal = float((p.market_price - p.avg_price) * p.quantity)
            row.costPrice = row.averageCostPrice = row.dilutedCostPrice = float(p.avg_price)
            row.secMarket, row.trdMarket, row.currency = SEC_MARKET_HK, TRD_MARKET_HK, CURRENCY_HKD

    # ------------------------------------------------------------ orders
    def _mine(self, acc_id: int) -> dict[str, _Order]:
        return {o.paper_coid: o for o in self._orders.values() if o.acc_id == acc_id}

    def _fill_order(self, target: Any, meta: _Order, r: OrderResult, *, stale: bool = False) -> None:
        target.trdSide = 1 if r.side is OrderSide.BUY else 2
        target.orderType = 2 if r.order_type is OrderType.MARKET else 1
        filled = 0 if stale else r.filled_quantity
        if stale or r.status is not OrderStatus.CANCELLED:
            target.orderStatus = 5 if stale else _STATUS[r.status]
        else:
            target.orderStatus = 14 if r.filled_quantity else 15
        target.orderID, target.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        target.code, target.name, target.qty = meta.code, self.market.instrument(r.symbol).name, r.quantity
        target.price = float(r.limit_price or 0)
        target.createTime, target.updateTime = _local(r.submitted_at), _local(r.updated_at or r.submitted_at)
        target.createTimestamp = r.submitted_at.timestamp()
        target.fillQty, target.fillAvgPrice = filled, float(r.avg_fill_price or 0) if filled else 0.0
        target.lastErrMsg = "" if stale else (r.reason or "")
        target.secMarket, target.trdMarket, target.currency, target.timeInForce = (SEC_MARKET_HK, TRD_MARKET_HK,
                                                                                    CURRENCY_HKD, 0)
        if meta.remark is not None:
            target.remark = meta.remark

    def _fill_deal(self, target: Any, meta: _Order, r: OrderResult, fill: Any) -> None:
        if fill.fill_id not in self._fill_ids:
            self._fill_ids[fill.fill_id] = next(self._deal_ids)
        target.trdSide = 1 if r.side is OrderSide.BUY else 2
        target.fillID, target.fillIDEx = self._fill_ids[fill.fill_id], fill.fill_id
        target.orderID, target.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        target.code, target.name = meta.code, self.market.instrument(r.symbol).name
        target.qty, target.price, target.createTime = fill.quantity, float(fill.price), _local(fill.timestamp)
        target.createTimestamp, target.status = fill.timestamp.timestamp(), 0
        target.secMarket, target.trdMarket = SEC_MARKET_HK, TRD_MARKET_HK

    async def _results(self, acc_id: int) -> list[tuple[_Order, OrderResult]]:
        mine = self._mine(acc_id)
        return [(mine[r.client_order_id], r) for r in await self._paper[acc_id].get_orders()
                if r.client_order_id in mine]

    def _today(self, r: OrderResult) -> bool:
        now = self.clock.now()
        return r.status.is_open or self.calendar.local_date(r.submitted_at) == self.calendar.local_date(now)

    @staticmethod
    def _matches(c2s: Any, meta: _Order, r: OrderResult, *, by_time: bool) -> bool:
        fc = c2s.filterConditions
        if fc.codeList and meta.code not in fc.codeList:
            return False
        if fc.idList and meta.order_id not in fc.idList:
            return False
        if fc.orderIDExList and f"FAKE{meta.order_id}" not in fc.orderIDExList:
            return False
        if by_time and fc.beginTime and r.submitted_at < _parse_local(fc.beginTime):
            return False
        if by_time and fc.endTime and r.submitted_at > _parse_local(fc.endTime, end=True):
            return False
        return True

    async def _order_list(self, c2s: Any, s2c: Any, *, today: bool) -> None:
        self._account(c2s.header)
        self._header(s2c.header, c2s.header)
        wanted = set(c2s.filterStatusList)
        for meta, r in await self._results(c2s.header.accID):
            if (today and not self._today(r)) or not self._matches(c2s, meta, r, by_time=not today):
                continue
            row = s2c.orderList.add()
            self._fill_order(row, meta, r, stale=self.stale_order_lists)
            if wanted and row.orderStatus not in wanted:
                del s2c.orderList[-1]

    async def _on_2201(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        await self._order_list(c2s, s2c, today=True)
        return await self._changes(c2s.header.accID)

    async def _on_2221(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._order_list(c2s, s2c, today=False)

    async def _on_2202(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        broker = self._account(c2s.header, trading=True)
        if c2s.packetID.connID != conn.conn_id:
            raise _Refuse("packetID.connID does not match this connection")
        if c2s.secMarket not in (0, SEC_MARKET_HK):
            raise _Refuse("this account trades only the HK market")
        if c2s.trdSide not in (1, 2):
            raise _Refuse("short selling is not supported for HK stocks in this account")
        if c2s.orderType not in (1, 2):
            raise _Refuse(f"order type {c2s.orderType} {NOT_SUPPORTED}")
        if c2s.HasField("remark") and len(c2s.remark.encode()) > 64:
            raise _Refuse("remark is longer than 64 bytes")
        if c2s.qty != int(c2s.qty) or c2s.qty <= 0:
            raise _Refuse(f"quantity {c2s.qty} must be a positive whole number of shares")
        self._instrument(QOT_MARKET_HK, c2s.code)
        if self._rejections:
            raise _Refuse(self._rejections.pop(0))
        meta = _Order(order_id=next(self._order_ids), acc_id=c2s.header.accID, paper_coid="",
                      remark=c2s.remark if c2s.HasField("remark") else None, code=c2s.code)
        meta.paper_coid = f"fake-{meta.order_id}"
        market = c2s.orderType == 2
        try:
            request = OrderRequest(client_order_id=meta.paper_coid, symbol=c2s.code,
                                   side=OrderSide.BUY if c2s.trdSide == 1 else OrderSide.SELL,
                                   quantity=int(c2s.qty), order_type=OrderType.MARKET if market else OrderType.LIMIT,
                                   limit_price=None if market else Decimal(repr(c2s.price)))
        except InvalidRequest as exc:
            raise _Refuse(str(exc)) from None
        try:
            await broker.place_order(request)
        except OrderRejected as exc:
            raise _Refuse(exc.reason) from None      # OpenD refuses the request: no order exists
        self._orders[meta.order_id] = meta
        self._header(s2c.header, c2s.header)
        s2c.orderID, s2c.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        return await self._changes(c2s.header.accID)

    async def _on_2205(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        broker = self._account(c2s.header, trading=True)
        if c2s.modifyOrderOp != 2:
            raise _Refuse(f"modify operation {c2s.modifyOrderOp} {NOT_SUPPORTED} (only cancel)")
        mine = [o for o in self._orders.values() if o.acc_id == c2s.header.accID]
        if not c2s.forAll:
            mine = [o for o in mine if o.order_id == c2s.orderID or f"FAKE{o.order_id}" == c2s.orderIDEx]
            if not mine:
                raise _Refuse(f"order {c2s.orderIDEx or c2s.orderID} does not exist")
        for meta in mine:
            r = await broker.get_order_by_client_id(meta.paper_coid)
            if r.status.is_terminal and not c2s.forAll:
                raise _Refuse(f"order {meta.order_id} is {r.status.value} and can no longer be cancelled")
            await broker.cancel_order(meta.paper_coid)
        self._header(s2c.header, c2s.header)
        s2c.orderID = mine[0].order_id if mine and not c2s.forAll else 0
        s2c.orderIDEx = f"FAKE{mine[0].order_id}" if mine and not c2s.forAll else ""
        return await self._changes(c2s.header.accID)

    async def _deals(self, c2s: Any, s2c: Any, *, today: bool) -> None:
        self._account(c2s.header)
        if c2s.header.trdEnv == SIMULATE:
            raise _Refuse(PAPER_NO_DEALS)
        self._header(s2c.header, c2s.header)
        for meta, r in await self._results(c2s.header.accID):
            if not self._matches(c2s, meta, r, by_time=False):
                continue
            for fill in r.fills:
                local = self.calendar.local_date(fill.timestamp)
                if today and local != self.calendar.local_date(self.clock.now()):
                    continue
                if not today and not (_parse_local(c2s.filterConditions.beginTime) <= fill.timestamp
                                      <= _parse_local(c2s.filterConditions.endTime, end=True)):
                    continue
                self._fill_deal(s2c.orderFillList.add(), meta, r, fill)

    async def _on_2211(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._deals(c2s, s2c, today=True)

    async def _on_2222(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._deals(c2s, s2c, today=False)

    async def _on_2225(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        self._account(c2s.header)
        if c2s.header.trdEnv == SIMULATE:
            raise _Refuse(PAPER_NO_FEES)
        self._header(s2c.header, c2s.header)
        results = {f"FAKE{meta.order_id}": r for meta, r in await self._results(c2s.header.accID)}
        for order_id in c2s.orderIdExList:
            if order_id not in results:
                raise _Refuse(f"order {order_id} does not exist")
            fee = s2c.orderFeeList.add()
            fee.orderIDEx, fee.feeAmount = order_id, float(results[order_id].fees)
            item = fee.feeList.add()
            item.title, item.value = "Total charges", float(results[order_id].fees)

    async def _changes(self, acc_id: int) -> list[tuple[int, Any, int]]:
        """Order (and, for REAL, deal) pushes for whatever changed since the last ones."""
        pushes: list[tuple[int, Any, int]] = []
        order_pb, fill_pb = self._module(2208), self._module(2218)
        env = REAL if acc_id == REAL_ACC else SIMULATE
        for meta, r in await self._results(acc_id):
            state = (r.status, r.filled_quantity, tuple(f.fill_id for f in r.fills))
            if state == meta.pushed:
                continue
            seen = set(meta.pushed[2]) if meta.pushed else set()
            meta.pushed = state
            push = order_pb.Response()
            push.retType = 0
            push.s2c.header.trdEnv, push.s2c.header.accID, push.s2c.header.trdMarket = env, acc_id, TRD_MARKET_HK
            self._fill_order(push.s2c.order, meta, r)
            pushes.append((2208, push, acc_id))
            if env == REAL:
                for fill in r.fills:
                    if fill.fill_id in seen:
                        continue
                    deal = fill_pb.Response()
                    deal.retType = 0
                    deal.s2c.header.trdEnv, deal.s2c.header.accID = env, acc_id
                    deal.s2c.header.trdMarket = TRD_MARKET_HK
                    self._fill_deal(deal.s2c.orderFill, meta, r, fill)
                    pushes.append((2218, deal, acc_id))
        return pushes
