"""moomoo-api, contained: importing it, its two contexts, worker threads, timeouts, reconnects and errors.

SDK side effects we contain (`load_sdk`): it writes logs under ~/.com.moomoo.OpenD/Log at import time (here:
`<log_dir>/moomoo/`), prints to the console (its console handler removed, and a NullHandler in its place: without
one, Python's last-resort handler prints the SDK's warnings to stderr; every console line is a file line too),
installs a SIGINT handler that calls os._exit(0) (restored), and its context constructors retry forever while no
OpenD listens (constructed in a daemon thread and abandoned on timeout: `OpenDSession`). A quote stream gets a third
context of its own (`open_push_context`): it reports keep-alive answers and a dropped connection, and does not
reconnect.

The SDK is synchronous: every call runs in a worker thread (`asyncio.to_thread`) under the configured request
timeout (`OpenDSession.call`). The SDK has timeouts of its own that would fire first: 12 s per request
(`OpenContextBase._query_timeout`, checked once a second) and a hard 20 s wait for any reply (`ReqInfo.wait`);
both are set just past ours, so ours is the one that answers, once (a timeout is not retried).

Errors: a refused order -> OrderRejected(OpenD's message); a lost or absent gateway, or a request timeout ->
BrokerUnavailable; OpenD's request-frequency refusal -> `OpenDBusy` (a BrokerUnavailable); a spent history K-line
quota -> `core.feeds.QuotaExhausted`; bad arguments (SDK-side validation, unknown symbol) -> InvalidRequest. When
OpenD does not answer the connect within `connect_timeout_seconds`: BrokerUnavailable("MoomooClient not
initialized: OpenD not running (systemctl start opend) at host:port").
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import shutil
import signal
import threading
import warnings
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.feeds import QuotaExhausted
from core.config_model import MoomooConfig

log = logging.getLogger(__name__)

NOT_RUNNING = "MoomooClient not initialized: OpenD not running (systemctl start opend)"

_TIMEOUT_WORDS = ("packeterr.timeout", "abnormal event timeout")  # the SDK gave up waiting for a reply
_CONNECTION_WORDS = ("connection", "disconnect", "not connected", "timeout", "context status bad", "sendfail",
                     "abnormal event")
SDK_RET_OK = 0             # moomoo.RET_OK
SDK_TICK = 1.0             # how often the SDK's network thread checks its requests' timeouts
SDK_REPLY_WAIT = 20.0      # the SDK's hard bound on waiting for a reply (ReqInfo.wait)
_BUSY_WORDS = ("frequen", "too many requests", "频率")          # OpenD's per-30-seconds request limits
_QUOTA_WORDS = ("quota", "额度")                                # the history K-line quota (30 days)
_UNKNOWN_SYMBOL_WORDS = ("unknown stock", "unknown security", "stock not exist", "未知股票", "format of code")


def _as_rows(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an SDK call (in the worker thread) and turn the DataFrames in its answer into lists of row dicts there,
    so the event loop the pushed prices are judged on never converts a frame."""
    from pandas import DataFrame          # the SDK's own dependency, imported with it

    from brokers.moomoo.mapping import records
    result = fn(*args, **kwargs)
    if not isinstance(result, tuple):
        return result
    return tuple(records(part) if isinstance(part, DataFrame) else part for part in result)


class OpenDBusy(BrokerUnavailable):
    """OpenD refused a request for its frequency limit (another process may share the account's limit)."""


# ---------------------------------------------------------------- the two contexts and every call

class OpenDSession:
    """The SDK behind one broker: an `OpenQuoteContext` and an `OpenSecTradeContext(filter_trdmarket=HK,
    security_firm=<config>)`, opened by `open`, and every SDK call made through `call`."""

    def __init__(self, config: MoomooConfig, *, log_dir: Path, request_timeout_seconds: float,
                 reconnect_interval_seconds: float) -> None:
        self.config = config
        self.log_dir = log_dir
        self.request_timeout = request_timeout_seconds
        self.sdk_request_timeout = request_timeout_seconds + 2 * SDK_TICK    # the SDK's own: just past ours
        self.reconnect_interval = reconnect_interval_seconds
        self.sdk: ModuleType | None = None
        self._quote: Any = None
        self._trade: Any = None

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def is_open(self) -> bool:
        return self._trade is not None

    def quote_context(self) -> Any:
        if self._quote is None:
            raise BrokerUnavailable("moomoo broker is not connected (call connect() first)")
        return self._quote

    def trade_context(self) -> Any:
        if self._trade is None:
            raise BrokerUnavailable("moomoo broker is not connected (call connect() first)")
        return self._trade

    async def open(self) -> None:
        """Import the SDK (off the loop) and open both contexts; BrokerUnavailable(NOT_RUNNING ...) when OpenD does
        not answer within the connect timeout."""
        sdk = self.sdk = await asyncio.to_thread(load_sdk, self.log_dir)
        _let_replies_wait(self.sdk_request_timeout + 2 * SDK_TICK)
        cfg = self.config
        self._quote = await self._open(sdk.OpenQuoteContext, host=cfg.host, port=cfg.port)
        try:
            self._trade = await self._open(sdk.OpenSecTradeContext, filter_trdmarket=sdk.TrdMarket.HK,
                                           host=cfg.host, port=cfg.port, security_firm=cfg.security_firm)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for ctx in (self._trade, self._quote):
            if ctx is not None:
                await asyncio.to_thread(ctx.close)
        self._trade = self._quote = None

    async def open_push_context(self, *, deliver: Callable[[dict[str, Any]], None], heard: Callable[[], None],
                                lost: Callable[[str], None]) -> Any:
        """A quote context of its own for pushed basic quotes: `deliver(row)` for each pushed quote, `heard()` for
        each keep-alive OpenD answers, `lost(why)` once the connection drops (the SDK's close reason; all three on
        the SDK's threads). It does not reconnect: a lost stream is opened again by its owner."""
        base, pushes = _push_classes(self.sdk)

        def prepare(ctx: Any) -> None:
            ctx.stream_heard, ctx.stream_lost = heard, lost

        ctx = await self._open(base, prepare=prepare, host=self.config.host, port=self.config.port)
        ctx._auto_reconnect = False
        ctx.set_handler(pushes(deliver))
        return ctx

    async def _open(self, base: type, *, prepare: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
        """Build an SDK context in a daemon thread: its constructor retries forever while no OpenD listens, and a
        thread of asyncio's default executor would be joined (forever) at interpreter exit. `prepare(ctx)` runs
        before the constructor (so a hook the connection calls is in place from its first packet)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        cls = _context_class(base)
        ctx = cls.__new__(cls)
        if prepare is not None:
            prepare(ctx)

        def settle(error: BaseException | None) -> None:
            if not done.done():
                done.set_result(ctx) if error is None else done.set_exception(error)

        def build() -> None:
            error: BaseException | None = None
            try:
                ctx.__init__(**kwargs)
            except BaseException as exc:   # noqa: BLE001 - handed to the loop
                error = exc
            if ctx._abandoned:             # we gave up waiting: nobody wants this context any more
                if error is None:
                    ctx.close()
                return
            _call_soon(loop, settle, error)

        threading.Thread(target=build, name=f"moomoo-connect-{base.__name__}", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), self.config.connect_timeout_seconds)
        except TimeoutError:
            ctx.abandon()
            raise BrokerUnavailable(f"{NOT_RUNNING} at {self.where}") from None
        ctx.set_sync_query_connect_timeout(self.config.connect_timeout_seconds)
        ctx.set_request_timeout(self.sdk_request_timeout)
        ctx.reconnect_interval = self.reconnect_interval
        return ctx

    async def call(self, what: str, fn: Callable[..., Any], *args: Any, idempotent: bool = True,
                   order: bool = False, full: bool = False, **kwargs: Any) -> Any:
        """Run one SDK call off the loop and return its data (`full`: everything after the return code, as a tuple:
        request_history_kline's (data, page_req_key)), or raise the mapped error: OpenD refusing an order
        (`order=True`) -> OrderRejected, anything else it refuses -> BrokerUnavailable. A call that lost its
        connection is retried once after the SDK has reconnected, unless it is not `idempotent`; one OpenD did not
        answer in time is not (another request_timeout of silence would only double the wait)."""
        silent = BrokerUnavailable(f"moomoo {what}: no answer from OpenD within {self.request_timeout:g}s "
                                   f"({self.where})")
        for attempt in (1, 2):
            try:
                result = await asyncio.wait_for(asyncio.to_thread(_as_rows, fn, *args, **kwargs),
                                                self.request_timeout)
            except TimeoutError:
                raise silent from None
            ret, data = result[0], result[1]
            if ret == self.sdk.RET_OK:
                return tuple(result[1:]) if full else data
            kind = classify(str(data))
            if kind == "timeout":
                raise silent
            if kind == "connection" and idempotent and attempt == 1 and await self._wait_ready():
                continue
            if kind == "busy":
                raise OpenDBusy(f"moomoo {what}: {data} ({self.where})")
            if kind == "quota" and not order:
                raise QuotaExhausted(f"moomoo {what}: {data}")
            if kind == "connection":
                raise BrokerUnavailable(f"moomoo {what}: {data} ({self.where})")
            if kind == "invalid":
                raise InvalidRequest(f"moomoo {what}: {data}")
            raise OrderRejected(str(data)) if order else BrokerUnavailable(f"moomoo {what}: {data}")
        raise AssertionError("unreachable")

    async def _wait_ready(self) -> bool:
        """Wait (up to the connect timeout) until both contexts are connected again."""
        ready = self.sdk.ContextStatus.READY
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout_seconds
        while asyncio.get_running_loop().time() < deadline:
            if all(ctx is not None and ctx.status == ready for ctx in (self._quote, self._trade)):
                return True
            await asyncio.sleep(0.05)
        return False


def classify(message: str) -> str:
    """'timeout' | 'connection' | 'busy' | 'quota' | 'invalid' | 'refused' for an SDK / OpenD error message."""
    m = message.lower()
    if any(w in m for w in _TIMEOUT_WORDS):
        return "timeout"
    if any(w in m for w in _CONNECTION_WORDS):
        return "connection"
    if any(w in m for w in _BUSY_WORDS):
        return "busy"
    if any(w in m for w in _QUOTA_WORDS):
        return "quota"
    if m.startswith("error.") or "wrong type" in m or "wrong value" in m or "parameter" in m:
        return "invalid"
    return "refused"


def is_unknown_symbol(error: BaseException | str) -> bool:
    """OpenD refused the request because a code is not a security it knows (the whole request is refused)."""
    return any(w in str(error).lower() for w in _UNKNOWN_SYMBOL_WORDS)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:      # the loop is gone: nobody is waiting any more
        pass


# ---------------------------------------------------------------- importing the SDK

_sdk_lock = threading.Lock()
_loaded_sdk: ModuleType | None = None
_sdk_log_dir: Path | None = None
_reply_wait = SDK_REPLY_WAIT          # how long the SDK waits for any reply (ReqInfo.wait), raised per session


def load_sdk(log_dir: Path | str) -> ModuleType:
    """Import moomoo-api once with its side effects kept inside `<log_dir>/moomoo`; (re)point its log file there."""
    global _loaded_sdk
    target = Path(log_dir) / "moomoo"
    target.mkdir(parents=True, exist_ok=True)
    with _sdk_lock:
        if _loaded_sdk is None:
            _loaded_sdk = _import_sdk(target)
        _point_sdk_log(target)
        return _loaded_sdk


def _import_sdk(target: Path) -> ModuleType:
    # ft_logger builds its log path from $HOME when imported (and fails without one); moomoo/__init__ installs a
    # SIGINT handler that calls os._exit(0), which would skip our shutdown and log flush.
    home = target / ".import-home"
    old_home = os.environ.get("HOME")
    old_sigint = signal.getsignal(signal.SIGINT)
    os.environ["HOME"] = str(home)
    try:
        sdk = importlib.import_module("moomoo")
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
        if threading.current_thread() is threading.main_thread() and old_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)
    sdk.SysConfig.set_all_thread_daemon(True)     # a forgotten context must not keep the process alive
    # Its console lines would land in our stdout; with their handler gone, Python's last-resort handler would print
    # its warnings to stderr. Each of them is in its log file already.
    sdk.SysConfig.enable_console_log(False)
    importlib.import_module("moomoo.common.ft_logger").logger.console_logger.addHandler(logging.NullHandler())
    _bound_reply_waits(importlib.import_module("moomoo.common.open_context_base"))
    with warnings.catch_warnings():               # its network thread uses the deprecated Thread.setDaemon()
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("moomoo.common.network_manager").NetManager.default()
    return sdk


def _bound_reply_waits(base: ModuleType) -> None:
    """`ReqInfo.wait` waits for a reply at most a hard-coded 20 s, which would cut a longer request timeout short:
    make it wait `_reply_wait` (raised by `_let_replies_wait`). The SDK's per-request timeout still ends the wait."""
    timeout = base.PacketErr.Timeout

    def wait(req: Any) -> None:
        if req.is_sync and not req.event.wait(timeout=_reply_wait):
            req.err, req.msg = timeout, "Abnormal event timeout"

    base.ReqInfo.wait = wait


def _let_replies_wait(seconds: float) -> None:
    global _reply_wait
    with _sdk_lock:
        _reply_wait = max(_reply_wait, seconds)


def _point_sdk_log(target: Path) -> None:
    global _sdk_log_dir
    if _sdk_log_dir == target:
        return
    ft = importlib.import_module("moomoo.common.ft_logger").logger
    old = ft.fileHandler
    handler = TimedRotatingFileHandler(target / "moomoo-sdk.log", when="midnight", backupCount=14, encoding="utf-8")
    handler.setLevel(old.level)
    handler.setFormatter(ft.formatter)
    ft.file_logger.addHandler(handler)
    ft.file_logger.removeHandler(old)
    old.close()
    ft.fileHandler = handler
    ft.log_path = str(target)
    _sdk_log_dir = target
    shutil.rmtree(target / ".import-home", ignore_errors=True)


_context_classes: dict[type, type] = {}


def _context_class(base: type) -> type:
    """`base` whose endless connect loop can be stopped from outside (once abandoned, auto-reconnect reads False)
    and whose request timeout can be set."""
    if base in _context_classes:
        return _context_classes[base]

    class Abandonable(base):
        _abandoned = False

        @property
        def _auto_reconnect(self) -> bool:
            return self.__dict__.get("_auto_reconnect_value", True) and not self._abandoned

        @_auto_reconnect.setter
        def _auto_reconnect(self, value: bool) -> None:
            self.__dict__["_auto_reconnect_value"] = value

        def set_request_timeout(self, seconds: float) -> None:
            """The SDK's own per-request timeout (12 s unless set; it has no setter)."""
            with self._lock:
                self._query_timeout = seconds

        def abandon(self) -> None:
            self._abandoned = True
            try:
                self.close()
            except Exception:   # a half-built context may lack parts close() touches
                log.debug("closing an abandoned moomoo context failed", exc_info=True)

        if hasattr(base, "_check_acc_id_and_acc_index"):           # a trade context
            def _check_acc_id_and_acc_index(self, trd_env: Any, acc_id: int, acc_index: int) -> Any:
                """The SDK checks the account id of every trade request against a fresh Trd_GetAccList (another round
                trip to OpenD, and a DataFrame, before each order, order list and position list): an account id it
                accepted once is taken as it is for the life of the context (OpenD itself refuses a request for an
                account that has gone)."""
                known = self.__dict__.setdefault("_accounts_accepted", {})
                key = (trd_env, acc_id, acc_index)
                if acc_id and key in known:
                    return known[key]
                answer = super()._check_acc_id_and_acc_index(trd_env, acc_id, acc_index)
                if acc_id and answer[0] == SDK_RET_OK:
                    known[key] = answer
                return answer

    Abandonable.__name__ = Abandonable.__qualname__ = f"Abandonable{base.__name__}"
    _context_classes[base] = Abandonable
    return Abandonable


# ---------------------------------------------------------------- pushes (the SDK's callback thread)

_handler_cache: dict[int, tuple[type, type]] = {}


def push_handlers(sdk: ModuleType, *, account_id: Callable[[], int], on_order: Callable[[Any], None],
                  on_deal: Callable[[Any], None]) -> tuple[Any, Any]:
    """SDK push handlers for order and deal pushes of one account (`account_id()`, read at each push)."""
    if id(sdk) not in _handler_cache:
        query = importlib.import_module("moomoo.trade.trade_query")

        class OrderPushes(sdk.TradeOrderHandlerBase):
            def __init__(self, account: Callable[[], int], deliver: Callable[[Any], None]) -> None:
                super().__init__()
                self.account, self.deliver = account, deliver

            def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
                ret, data = query.UpdateOrderPush.unpack_rsp(rsp_pb)
                if ret == sdk.RET_OK and rsp_pb.s2c.header.accID == self.account():
                    self.deliver(data)
                return ret, data

        class DealPushes(sdk.TradeDealHandlerBase):
            def __init__(self, account: Callable[[], int], deliver: Callable[[Any], None]) -> None:
                super().__init__()
                self.account, self.deliver = account, deliver

            def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
                ret, data = query.UpdateDealPush.unpack_rsp(rsp_pb)
                if ret == sdk.RET_OK and rsp_pb.s2c.header.accID == self.account():
                    self.deliver(data)
                return ret, data

        _handler_cache[id(sdk)] = (OrderPushes, DealPushes)
    orders, deals = _handler_cache[id(sdk)]
    return orders(account_id, on_order), deals(account_id, on_deal)


_push_class_cache: dict[int, tuple[type, type]] = {}


def _push_classes(sdk: ModuleType) -> tuple[type, type]:
    """(an OpenQuoteContext that reports keep-alive answers and a dropped connection, a basic-quote push handler)."""
    if id(sdk) not in _push_class_cache:
        net = importlib.import_module("moomoo.common.network_manager")
        keep_alive = sdk.ProtoId.KeepAlive

        class PushQuoteContext(sdk.OpenQuoteContext):
            stream_heard: Callable[[], None] = staticmethod(lambda: None)
            stream_lost: Callable[[str], None] = staticmethod(lambda reason: None)

            def handle_packet(self, conn_id: Any, proto_id: int, serial_no: int, rsp_pb: Any, err: Any,
                              msg: Any) -> None:
                if proto_id == keep_alive and err is net.PacketErr.Ok:
                    self.stream_heard()           # KeepAlive (1004) answered: OpenD is alive
                super().handle_packet(conn_id, proto_id, serial_no, rsp_pb, err, msg)

            def on_disconnect(self, conn_id: Any, reason: Any, msg: Any) -> None:
                if reason is not net.CloseReason.Close:        # not our own close()
                    self.stream_lost(f"{getattr(reason, 'name', reason)}{': ' + str(msg) if msg else ''}")
                super().on_disconnect(conn_id, reason, msg)

        class BasicQuotePushes(sdk.StockQuoteHandlerBase):
            def __init__(self, deliver: Callable[[dict[str, Any]], None]) -> None:
                super().__init__()
                self.deliver = deliver

            def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
                ret, rows = self.parse_rsp_pb(rsp_pb)       # a list of dicts; the base class builds a DataFrame
                if ret == sdk.RET_OK:
                    for row in rows:
                        self.deliver(row)
                return ret, rows

        _push_class_cache[id(sdk)] = (PushQuoteContext, BasicQuotePushes)
    return _push_class_cache[id(sdk)]
