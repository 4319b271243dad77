"""Moomoo (Futu) through the OpenD gateway: a `BrokerClient` over the moomoo-api SDK, HKEX securities only.

Two SDK contexts per broker: `OpenQuoteContext` (snapshots, K-lines) and `OpenSecTradeContext(filter_trdmarket=HK,
security_firm=<config>)`. The trading environment is SIMULATE (moomoo's paper account) unless the config says
`trade_env: real`; then `unlock_trade` runs with MOOMOO_TRADE_PASSWORD from `.env` (missing -> ConfigError).
The SDK is synchronous: every call runs in a worker thread (`asyncio.to_thread`) under a timeout.

Symbols (`to_moomoo_code` / `from_moomoo_code`, pure functions)::

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

What we know about an order is merged from queries and pushes (`_OrderBook`, thread-safe, keyed by broker order
id and by remark). Pushes can arrive before `place_order` returns and queries can be staler than pushes, so a
merge only moves an order along `ALLOWED_TRANSITIONS` and never lowers its filled quantity.

Our client_order_id travels in the order's `remark` (OpenD has no client id field; at most 64 UTF-8 bytes).
`place_order` first looks for the remark in today's orders (idempotency); after a timeout or a lost connection
it looks again before giving up, so an order is never sent twice. `get_order_by_client_id` scans today's orders,
then the last 90 days of history.

Fills: in the REAL environment from `deal_list_query` and deal pushes, `fill_id` = OpenD's deal id, fees from
`order_fee_query` (order level; OpenD has no per-deal fee, so `Fill.fee` is 0). OpenD's paper accounts answer
neither deals nor fees, so in SIMULATE fills are derived from the order's filled quantity, one per board lot
(`fill_id` "<order id>-L<n>"): every process sees the same ids for the same shares, so nothing is counted twice;
fees are 0.

Errors: a refused order -> OrderRejected(OpenD's message); a lost or absent gateway, or a request timeout ->
BrokerUnavailable; bad arguments (SDK-side validation, unknown symbol) -> InvalidRequest. When OpenD does not
answer the connect within `connect_timeout_seconds`: BrokerUnavailable("MoomooClient not initialized: OpenD not
running (systemctl start opend) at host:port").

SDK side effects we contain (`load_sdk`): it writes logs under ~/.com.moomoo.OpenD/Log at import time (here:
`<log_dir>/moomoo/`), installs a SIGINT handler that calls os._exit(0) (restored), and its context constructors
retry forever while no OpenD listens (constructed in a daemon thread and abandoned on timeout).
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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence
from zoneinfo import ZoneInfo

from core.account import Account, Position
from core.instruments import Bar, Instrument, Quote, Timeframe
from brokers.base import BrokerClient
from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.orders import Fill, OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType, can_transition
from core.clock import Clock, RealClock
from core.settings import ConfigError, MoomooConfig
from core.ticks import is_on_tick, round_to_tick

if TYPE_CHECKING:
    from core.settings import Settings
    from core.calendar import MarketCalendar

log = logging.getLogger(__name__)

NOT_RUNNING = "MoomooClient not initialized: OpenD not running (systemctl start opend)"
REMARK_MAX_BYTES = 64
HISTORY_DAYS = 90
HKT = ZoneInfo("Asia/Hong_Kong")
PRICE_Q = Decimal("0.000001")

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

_CONNECTION_WORDS = ("connection", "disconnect", "not connected", "timeout", "context status bad", "sendfail",
                     "abnormal event")
_BUSY_WORDS = ("frequen", "too many requests", "频率")          # OpenD's per-30-seconds request limits
_UNKNOWN_SYMBOL_WORDS = ("unknown stock", "unknown security", "stock not exist", "未知股票", "format of code")


# ---------------------------------------------------------------- pure helpers

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


def _dec(value: Any) -> Decimal | None:
    """An OpenD double -> the exact decimal it was printed from ('N/A' and None -> None)."""
    if value is None or value == "N/A" or value == "":
        return None
    return Decimal(repr(float(value)))


def _hkt(text: Any) -> datetime | None:
    """OpenD's local time string ("2026-11-24 10:30:00[.123]") -> UTC."""
    if not text or text == "N/A":
        return None
    s = str(text)
    local = datetime.strptime(s[:19], "%Y-%m-%d %H:%M:%S")
    if len(s) > 20 and s[19] == ".":
        local = local.replace(microsecond=int(s[20:26].ljust(6, "0")))
    return local.replace(tzinfo=HKT).astimezone(timezone.utc)


def _records(data: Any) -> list[dict[str, Any]]:
    return data.to_dict("records") if hasattr(data, "to_dict") else list(data or [])


def _classify(message: str) -> str:
    """'connection' | 'busy' | 'invalid' | 'refused' for an SDK / OpenD error message."""
    m = message.lower()
    if any(w in m for w in _CONNECTION_WORDS):
        return "connection"
    if any(w in m for w in _BUSY_WORDS):
        return "busy"
    if m.startswith("error.") or "wrong type" in m or "wrong value" in m or "parameter" in m:
        return "invalid"
    return "refused"


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


# ---------------------------------------------------------------- the SDK, contained

_sdk_lock = threading.Lock()
_loaded_sdk: ModuleType | None = None
_sdk_log_dir: Path | None = None


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
    sdk.SysConfig.enable_console_log(False)       # its console lines would land in our stdout
    with warnings.catch_warnings():               # its network thread uses the deprecated Thread.setDaemon()
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("moomoo.common.network_manager").NetManager.default()
    return sdk


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
    """`base` whose endless connect loop can be stopped from outside: once abandoned, auto-reconnect reads False."""
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

        def abandon(self) -> None:
            self._abandoned = True
            try:
                self.close()
            except Exception:   # a half-built context may lack parts close() touches
                log.debug("closing an abandoned moomoo context failed", exc_info=True)

    Abandonable.__name__ = Abandonable.__qualname__ = f"Abandonable{base.__name__}"
    _context_classes[base] = Abandonable
    return Abandonable


# ---------------------------------------------------------------- order state

@dataclass(frozen=True, slots=True)
class _OrderView:
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


def _view(row: dict[str, Any]) -> _OrderView:
    """An SDK order row (order list, history or push) -> _OrderView."""
    order_id = str(row["order_id"])
    filled = int(float(row.get("dealt_qty") or 0))
    is_market = row.get("order_type") == "MARKET"
    return _OrderView(
        broker_order_id=order_id, client_order_id=row.get("remark") or f"moomoo:{order_id}",
        symbol=from_moomoo_code(row["code"]),
        side=OrderSide.SELL if str(row.get("trd_side", "")).startswith("SELL") else OrderSide.BUY,
        order_type=OrderType.MARKET if is_market else OrderType.LIMIT, quantity=int(float(row["qty"])),
        limit_price=None if is_market else _dec(row.get("price")), status=map_status(row["order_status"]),
        filled_quantity=filled, avg_fill_price=_dec(row.get("dealt_avg_price")) if filled else None,
        reason=row.get("last_err_msg") or None, submitted_at=_hkt(row.get("create_time")),
        updated_at=_hkt(row.get("updated_time")))


def _merge(old: _OrderView, new: _OrderView) -> _OrderView:
    """Monotonic: status only along ALLOWED_TRANSITIONS, filled quantity never down."""
    status = new.status if can_transition(old.status, new.status) else old.status
    if status is not new.status:
        log.debug("order %s: keeping %s over a stale %s", old.broker_order_id, old.status.value, new.status.value)
    fresher = new if new.filled_quantity >= old.filled_quantity else old
    return replace(old, status=status, filled_quantity=fresher.filled_quantity,
                   avg_fill_price=fresher.avg_fill_price, reason=new.reason or old.reason,
                   updated_at=max((t for t in (old.updated_at, new.updated_at) if t), default=None))


class _OrderBook:
    """Thread-safe cache of order views (SDK push thread and our loop) plus deals seen by push."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orders: dict[str, _OrderView] = {}
        self._by_remark: dict[str, str] = {}
        self._deals: dict[str, dict[str, Any]] = {}

    def merge(self, view: _OrderView) -> _OrderView:
        with self._lock:
            old = self._orders.get(view.broker_order_id)
            merged = view if old is None else _merge(old, view)
            self._orders[view.broker_order_id] = merged
            self._by_remark.setdefault(view.client_order_id, view.broker_order_id)
            return merged

    def by_remark(self, client_order_id: str) -> _OrderView | None:
        with self._lock:
            order_id = self._by_remark.get(client_order_id)
            return None if order_id is None else self._orders[order_id]

    def add_deal(self, deal: dict[str, Any]) -> None:
        with self._lock:
            self._deals[str(deal["deal_id"])] = deal

    def deals_of(self, order_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self._deals.values() if str(d["order_id"]) == order_id]


# ---------------------------------------------------------------- the broker

class MoomooBroker(BrokerClient):
    name = "moomoo"

    def __init__(self, config: MoomooConfig, *, log_dir: Path | str, clock: Clock, calendar: "MarketCalendar",
                 trade_password: str | None = None, request_timeout_seconds: float = 15.0,
                 reconnect_interval_seconds: float = 6.0) -> None:
        if config.trade_env == "real" and not trade_password:
            raise ConfigError("MOOMOO_TRADE_PASSWORD is not set: moomoo.trade_env is 'real', and OpenD needs the "
                              "trade password to unlock trading (put it in .env)")
        self.config = config
        self.environment = config.trade_env
        self.log_dir = Path(log_dir)
        self.clock = clock
        self.calendar = calendar
        self._password = trade_password
        self._request_timeout = request_timeout_seconds
        self._reconnect_interval = reconnect_interval_seconds
        self._sdk: ModuleType | None = None
        self._quote: Any = None
        self._trade: Any = None
        self._acc_id = 0
        self._book = _OrderBook()
        self._instruments: dict[str, Instrument] = {}
        self._sim_fills: dict[str, list[Fill]] = {}

    @classmethod
    def from_settings(cls, settings: "Settings", *, clock: Clock | None = None,
                      calendar: "MarketCalendar | None" = None) -> "MoomooBroker":
        """From config `moomoo:` (MOOMOO_HOST / MOOMOO_PORT in the environment override host and port), the trade
        password from MOOMOO_TRADE_PASSWORD, SDK logs under `settings.log_dir / "moomoo"`."""
        from core.calendar import MarketCalendar
        config = settings.config.moomoo
        changes: dict[str, Any] = {}
        if settings.env.get("MOOMOO_HOST"):
            changes["host"] = settings.env.get("MOOMOO_HOST")
        if settings.env.get("MOOMOO_PORT"):
            port = settings.env.get("MOOMOO_PORT")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"MOOMOO_PORT must be a TCP port number 1..65535 (got {port!r})")
            changes["port"] = int(port)
        return cls(config.model_copy(update=changes), log_dir=settings.log_dir, clock=clock or RealClock(),
                   calendar=calendar or MarketCalendar("HKEX"),
                   trade_password=settings.env.get("MOOMOO_TRADE_PASSWORD"),
                   request_timeout_seconds=config.request_timeout_seconds)

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        if self._trade is not None:
            return
        sdk = self._sdk = await asyncio.to_thread(load_sdk, self.log_dir)
        cfg = self.config
        self._quote = await self._open(sdk.OpenQuoteContext, host=cfg.host, port=cfg.port)
        try:
            self._trade = await self._open(sdk.OpenSecTradeContext, filter_trdmarket=sdk.TrdMarket.HK,
                                           host=cfg.host, port=cfg.port, security_firm=cfg.security_firm)
            for handler in _push_handlers(sdk, self):
                self._t().set_handler(handler)
            self._acc_id = await self._pick_account()
            if self.environment == "real":
                try:
                    await self._call("unlock_trade", self._t().unlock_trade, password=self._password)
                except BrokerUnavailable as exc:
                    raise BrokerUnavailable(f"{exc} (check MOOMOO_TRADE_PASSWORD)") from None
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        for ctx in (self._trade, self._quote):
            if ctx is not None:
                await asyncio.to_thread(ctx.close)
        self._trade = self._quote = None

    async def _open(self, base: type, **kwargs: Any) -> Any:
        """Build an SDK context in a daemon thread: its constructor retries forever while no OpenD listens, and a
        thread of asyncio's default executor would be joined (forever) at interpreter exit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        cls = _context_class(base)
        ctx = cls.__new__(cls)

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
            raise BrokerUnavailable(f"{NOT_RUNNING} at {self.config.host}:{self.config.port}") from None
        ctx.set_sync_query_connect_timeout(self.config.connect_timeout_seconds)
        ctx.reconnect_interval = self._reconnect_interval
        return ctx

    async def _pick_account(self) -> int:
        """The first HK securities account of our environment (a paper STOCK account, not the option one)."""
        env = self._env
        for row in _records(await self._call("get_acc_list", self._t().get_acc_list)):
            if row["trd_env"] != env or "HK" not in row["trdmarket_auth"]:
                continue
            if env == "SIMULATE" and row["sim_acc_type"] not in ("STOCK", "STOCK_AND_OPTION"):
                continue
            return int(row["acc_id"])
        raise BrokerUnavailable(f"OpenD lists no {env} HK securities account for {self.config.security_firm}")

    # ------------------------------------------------------------ calls
    def _q(self) -> Any:
        if self._quote is None:
            raise BrokerUnavailable("moomoo broker is not connected (call connect() first)")
        return self._quote

    def _t(self) -> Any:
        if self._trade is None:
            raise BrokerUnavailable("moomoo broker is not connected (call connect() first)")
        return self._trade

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, idempotent: bool = True,
                    order: bool = False, **kwargs: Any) -> Any:
        """Run one SDK call off the loop and return its data, or raise the mapped error: OpenD refusing an order
        (`order=True`) -> OrderRejected, anything else it refuses -> BrokerUnavailable. A call that lost its
        connection is retried once after the SDK has reconnected, unless it is not `idempotent`."""
        for attempt in (1, 2):
            try:
                result = await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), self._request_timeout)
            except TimeoutError:
                raise BrokerUnavailable(f"moomoo {what}: no answer from OpenD within {self._request_timeout:g}s "
                                        f"({self.config.host}:{self.config.port})") from None
            ret, data = result[0], result[1]
            if ret == self._sdk.RET_OK:
                return data
            kind = _classify(str(data))
            if kind == "connection" and idempotent and attempt == 1 and await self._wait_ready():
                continue
            if kind in ("connection", "busy"):
                raise BrokerUnavailable(f"moomoo {what}: {data} ({self.config.host}:{self.config.port})")
            if kind == "invalid":
                raise InvalidRequest(f"moomoo {what}: {data}")
            raise OrderRejected(str(data)) if order else BrokerUnavailable(f"moomoo {what}: {data}")
        raise AssertionError("unreachable")

    async def _wait_ready(self) -> bool:
        """Wait (up to the connect timeout) until both contexts are connected again."""
        ready = self._sdk.ContextStatus.READY
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout_seconds
        while asyncio.get_running_loop().time() < deadline:
            if all(ctx is not None and ctx.status == ready for ctx in (self._quote, self._trade)):
                return True
            await asyncio.sleep(0.05)
        return False

    def _acc(self) -> dict[str, Any]:
        return {"trd_env": self._env, "acc_id": self._acc_id}

    @property
    def _env(self) -> str:
        return "REAL" if self.environment == "real" else "SIMULATE"

    # ------------------------------------------------------------ market data
    async def get_instrument(self, symbol: str) -> Instrument:
        code = to_moomoo_code(symbol)
        if code not in self._instruments:
            await self._snapshots([code])
        return self._instruments[code]

    async def _snapshots(self, codes: list[str]) -> dict[str, dict[str, Any]]:
        try:
            data = await self._call("get_market_snapshot", self._q().get_market_snapshot, codes)
        except BrokerUnavailable as exc:
            if any(w in str(exc).lower() for w in _UNKNOWN_SYMBOL_WORDS):
                raise InvalidRequest(f"unknown symbol: {exc}") from None
            raise
        rows = {row["code"]: row for row in _records(data)}
        for code, row in rows.items():
            self._instruments[code] = Instrument(symbol=from_moomoo_code(code), exchange="HKEX", currency="HKD",
                                                 lot_size=int(row["lot_size"]), name=str(row.get("name") or ""),
                                                 tick_scheme="hkex")
        missing = [c for c in codes if c not in rows]
        if missing:
            raise InvalidRequest(f"unknown symbol(s) at OpenD: {', '.join(missing)}")
        return rows

    async def get_quote(self, symbol: str) -> Quote:
        code = to_moomoo_code(symbol)
        return _quote(symbol, (await self._snapshots([code]))[code], self.clock.now())

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """One snapshot request per 400 symbols; a batch refused for an unknown symbol is asked one by one, a batch
        that cannot be answered (OpenD down) is left out."""
        out: dict[str, Quote] = {}
        wanted = list(dict.fromkeys(symbols))
        for i in range(0, len(wanted), 400):
            chunk = wanted[i:i + 400]
            try:
                rows = await self._snapshots([to_moomoo_code(s) for s in chunk])
                out.update({s: _quote(s, rows[to_moomoo_code(s)], self.clock.now()) for s in chunk})
            except InvalidRequest:
                out.update(await super().get_quotes(chunk))
            except BrokerUnavailable as exc:
                log.warning("moomoo quotes for %d symbols unavailable: %s", len(chunk), exc)
        return out

    async def get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        if timeframe not in KLINE_TYPES:
            raise InvalidRequest(f"unknown timeframe {timeframe!r}; expected one of {', '.join(KLINE_TYPES)}")
        ktype, minutes = KLINE_TYPES[timeframe]
        code = to_moomoo_code(symbol)
        end = min(end, self.clock.now())
        if end <= start:
            return []
        data = await self._call("request_history_kline", self._q().request_history_kline, code,
                                start=start.astimezone(HKT).strftime("%Y-%m-%d"),
                                end=end.astimezone(HKT).strftime("%Y-%m-%d"), ktype=ktype, max_count=None)
        bars = []
        for row in _records(data):
            label = _hkt(row["time_key"])
            begin = bar_start(label, minutes, self.calendar)
            if begin is None or not start <= begin < end:
                continue
            done_at = label if minutes else self.calendar.session_bounds(self.calendar.local_date(begin))[-1][1]
            if done_at > end:
                continue
            bars.append(Bar(symbol=symbol, start=begin, open=_dec(row["open"]), high=_dec(row["high"]),
                            low=_dec(row["low"]), close=_dec(row["close"]), volume=int(float(row["volume"]))))
        return sorted(bars, key=lambda b: b.start)

    # ------------------------------------------------------------ account
    async def get_account(self) -> Account:
        data = await self._call("accinfo_query", self._t().accinfo_query, currency="HKD",
                                **self._acc())
        row = _records(data)[0]
        return Account(currency="HKD", cash=_dec(row["cash"]), buying_power=_dec(row["power"]),
                       equity=_dec(row["total_assets"]))

    async def get_positions(self) -> list[Position]:
        data = await self._call("position_list_query", self._t().position_list_query,
                                currency="HKD", **self._acc())
        out = []
        for row in _records(data):
            qty = int(float(row["qty"]))
            if qty <= 0:
                continue
            cost = _dec(row.get("average_cost")) or _dec(row.get("cost_price"))
            out.append(Position(symbol=from_moomoo_code(row["code"]), quantity=qty, avg_price=cost,
                                market_price=_dec(row.get("nominal_price"))))
        return sorted(out, key=lambda p: p.symbol)

    # ------------------------------------------------------------ orders
    async def place_order(self, order: OrderRequest) -> OrderResult:
        code = to_moomoo_code(order.symbol)
        if len(order.client_order_id.encode("utf-8")) > REMARK_MAX_BYTES:
            raise InvalidRequest(f"client_order_id {order.client_order_id!r} is longer than OpenD's remark "
                                 f"({REMARK_MAX_BYTES} bytes of UTF-8)")
        _check_order(order, await self.get_instrument(order.symbol))
        existing = await self._find(order.client_order_id, history=False)   # orders are day orders
        if existing is not None:
            return await self._finish(existing)
        sdk = self._sdk
        try:
            data = await self._call(
                "place_order", self._t().place_order, price=float(order.limit_price or 0), qty=order.quantity,
                code=code, trd_side=sdk.TrdSide.BUY if order.side is OrderSide.BUY else sdk.TrdSide.SELL,
                order_type=sdk.OrderType.MARKET if order.order_type is OrderType.MARKET else sdk.OrderType.NORMAL,
                remark=order.client_order_id, time_in_force=sdk.TimeInForce.DAY, idempotent=False,
                order=True, **self._acc())
        except OrderRejected as exc:
            raise OrderRejected(exc.reason, client_order_id=order.client_order_id) from None
        except BrokerUnavailable:
            found = await self._find(order.client_order_id, history=False)   # lost the reply, not the order?
            if found is None:
                raise
            log.warning("place_order %s: reply lost, found the order by its remark", order.client_order_id)
            return await self._finish(found)
        for row in _records(data):      # the SDK's own follow-up query; just {order_id} if that failed
            if isinstance(row.get("code"), str) and isinstance(row.get("order_status"), str):
                self._book.merge(_view(row))
        view = self._book.by_remark(order.client_order_id) or await self._find(order.client_order_id,
                                                                                  history=False)
        if view is None:
            raise BrokerUnavailable(f"moomoo place_order {order.client_order_id}: accepted, but OpenD does not "
                                    "list it yet; reconcile by client_order_id")
        return await self._finish(view)

    async def cancel_order(self, order_id: str) -> bool:
        view = await self._find(order_id)
        if view is None:
            return False
        if view.status.is_terminal:
            return view.status is OrderStatus.CANCELLED
        try:
            await self._call("modify_order(CANCEL)", self._t().modify_order, self._sdk.ModifyOrderOp.CANCEL,
                             view.broker_order_id, 0, 0, idempotent=False, order=True, **self._acc())
            accepted = True
        except OrderRejected as exc:      # e.g. it filled meanwhile
            log.warning("cancel %s refused by OpenD: %s", order_id, exc.reason)
            accepted = False
        now = await self._find(order_id)
        if now is None:
            return False
        if now.status in (OrderStatus.CANCELLED, OrderStatus.CANCEL_PENDING):
            return True
        return accepted and now.status.is_open        # OpenD took the request; the exchange has not answered yet

    async def get_orders(self, *, open_only: bool = False) -> list[OrderResult]:
        views = await self._today_orders()
        if open_only:
            views = [v for v in views if v.status.is_open]
        return await self._results(views)

    async def get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        view = await self._find(client_order_id)
        return None if view is None else (await self._results([view]))[0]

    # ------------------------------------------------------------ order internals
    async def _today_orders(self) -> list[_OrderView]:
        data = await self._call("order_list_query", self._t().order_list_query, **self._acc())
        return [self._book.merge(_view(row)) for row in _records(data)]

    async def _history_orders(self) -> list[_OrderView]:
        today = self.clock.now().astimezone(HKT).date()
        data = await self._call("history_order_list_query", self._t().history_order_list_query,
                                start=f"{today - timedelta(days=HISTORY_DAYS)} 00:00:00",
                                end=f"{today} 23:59:59", **self._acc())
        return [self._book.merge(_view(row)) for row in _records(data)]

    async def _find(self, client_order_id: str, *, history: bool = True) -> _OrderView | None:
        """Our order by remark: today's orders, then (history=True) the last HISTORY_DAYS days."""
        for load in (self._today_orders, self._history_orders)[:2 if history else 1]:
            mine = sorted((v for v in await load() if v.client_order_id == client_order_id),
                          key=lambda v: (v.submitted_at or datetime.min.replace(tzinfo=timezone.utc)))
            if len(mine) > 1:
                log.error("%d moomoo orders carry remark %s; using the first (%s)", len(mine), client_order_id,
                          mine[0].broker_order_id)
            if mine:
                return self._book.merge(mine[0])
        return None

    async def _finish(self, view: _OrderView) -> OrderResult:
        result = (await self._results([view]))[0]
        if result.status is OrderStatus.REJECTED:
            raise OrderRejected(result.reason or "rejected by OpenD", client_order_id=result.client_order_id)
        return result

    async def _results(self, views: list[_OrderView]) -> list[OrderResult]:
        if not views:
            return []
        if self.environment == "real":
            filled = [v for v in views if self._book.merge(v).filled_quantity > 0]
            deals = await self._real_deals(filled) if filled else {}
            fees = await self._real_fees(filled) if filled else {}
        else:
            deals = {v.broker_order_id: await self._sim_fills_of(v) for v in views}
            fees = {}
        out = []
        for v in views:
            v = self._book.merge(v)
            out.append(OrderResult(
                client_order_id=v.client_order_id, broker_order_id=v.broker_order_id, symbol=v.symbol, side=v.side,
                order_type=v.order_type, quantity=v.quantity, limit_price=v.limit_price, status=v.status,
                filled_quantity=v.filled_quantity, avg_fill_price=v.avg_fill_price,
                fees=fees.get(v.broker_order_id, Decimal(0)), reason=v.reason, submitted_at=v.submitted_at,
                updated_at=v.updated_at, fills=tuple(deals.get(v.broker_order_id, ()))))
        return out

    async def _real_deals(self, views: list[_OrderView]) -> dict[str, list[Fill]]:
        """Deals by order: today's deal list (and history for older orders) plus deals seen by push."""
        today = self.clock.now().astimezone(HKT).date()
        rows = _records(await self._call("deal_list_query", self._t().deal_list_query, **self._acc()))
        oldest = min((v.submitted_at for v in views if v.submitted_at), default=None)
        if oldest is not None and oldest.astimezone(HKT).date() < today:
            rows += _records(await self._call(
                "history_deal_list_query", self._t().history_deal_list_query,
                start=f"{oldest.astimezone(HKT).date()} 00:00:00", end=f"{today} 23:59:59", **self._acc()))
        out: dict[str, list[Fill]] = {}
        for v in views:
            mine = {str(d["deal_id"]): d for d in rows + self._book.deals_of(v.broker_order_id)
                    if str(d["order_id"]) == v.broker_order_id and d.get("status") != "CANCELLED"}
            out[v.broker_order_id] = sorted(
                (Fill(fill_id=deal_id, client_order_id=v.client_order_id, symbol=v.symbol, side=v.side,
                      quantity=int(float(d["qty"])), price=_dec(d["price"]), fee=Decimal(0),
                      timestamp=_hkt(d["create_time"]) or v.updated_at) for deal_id, d in mine.items()),
                key=lambda f: (f.timestamp, f.fill_id))
        return out

    async def _real_fees(self, views: list[_OrderView]) -> dict[str, Decimal]:
        ids = [v.broker_order_id for v in views]
        fees: dict[str, Decimal] = {}
        for i in range(0, len(ids), 400):
            data = await self._call("order_fee_query", self._t().order_fee_query, order_id_list=ids[i:i + 400],
                                    **self._acc())
            for row in _records(data):
                fees[str(row["order_id"])] = _dec(row["fee_amount"]) or Decimal(0)
        return fees

    async def _sim_fills_of(self, view: _OrderView) -> list[Fill]:
        """Paper accounts report no deals: one fill per board lot of the filled quantity, ids fixed by lot number,
        each new lot priced so that all fills average to OpenD's average fill price."""
        view = self._book.merge(view)
        known = self._sim_fills.setdefault(view.broker_order_id, [])
        if view.filled_quantity <= sum(f.quantity for f in known) or view.avg_fill_price is None:
            return list(known)
        lot = (await self.get_instrument(view.symbol)).lot_size
        done_qty = sum(f.quantity for f in known)
        done_value = sum((f.price * f.quantity for f in known), Decimal(0))
        remaining = view.filled_quantity - done_qty
        price = ((view.avg_fill_price * view.filled_quantity - done_value) / remaining).quantize(PRICE_Q)
        when = view.updated_at or self.clock.now()
        n = len(known)
        while remaining > 0:              # an odd lot only ever ends the list (HKEX fills in board lots)
            size, n = min(lot, remaining), n + 1
            known.append(Fill(fill_id=f"{view.broker_order_id}-L{n}" + ("" if size == lot else f"+{size}"),
                              client_order_id=view.client_order_id, symbol=view.symbol, side=view.side,
                              quantity=size, price=price, fee=Decimal(0), timestamp=when))
            remaining -= size
        return list(known)

    # ------------------------------------------------------------ pushes (SDK callback thread)
    def _on_order_push(self, row: dict[str, Any]) -> None:
        try:
            self._book.merge(_view(row))
        except Exception:   # a push must never kill the SDK's callback thread
            log.exception("moomoo order push not understood: %r", row)

    def _on_deal_push(self, row: dict[str, Any]) -> None:
        self._book.add_deal(row)


# ---------------------------------------------------------------- small helpers

def _check_order(order: OrderRequest, inst: Instrument) -> None:
    """What OpenD would refuse anyway, said before the network: board lots and the HKEX spread table."""
    if order.quantity % inst.lot_size:
        raise OrderRejected(f"quantity {order.quantity} is not a multiple of the board lot {inst.lot_size} for "
                            f"{order.symbol}", client_order_id=order.client_order_id)
    price = order.limit_price
    if price is not None and not is_on_tick(price, inst.tick_scheme):
        raise OrderRejected(f"limit price {price} is not on the HKEX tick grid for {order.symbol} (nearest valid: "
                            f"{round_to_tick(price, inst.tick_scheme, 'down')} or "
                            f"{round_to_tick(price, inst.tick_scheme, 'up')})", client_order_id=order.client_order_id)


def _quote(symbol: str, row: dict[str, Any], now: datetime) -> Quote:
    """A snapshot row -> Quote; a missing side (no orders on it) is shown at the last price."""
    last = _dec(row["last_price"])
    bid, ask = _dec(row.get("bid_price")), _dec(row.get("ask_price"))
    if bid is None or ask is None:
        log.warning("moomoo snapshot of %s has no %s; using the last price", symbol, "bid" if bid is None else "ask")
    return Quote(symbol=symbol, bid=bid or last, ask=ask or last, last=last, volume=int(float(row["volume"])),
                 timestamp=_hkt(row.get("update_time")) or now)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:      # the loop is gone: nobody is waiting any more
        pass


_handler_cache: dict[int, tuple[type, type]] = {}


def _push_handlers(sdk: ModuleType, broker: MoomooBroker) -> tuple[Any, Any]:
    """SDK push handlers that feed `broker` (only for its own account)."""
    if id(sdk) not in _handler_cache:
        query = importlib.import_module("moomoo.trade.trade_query")

        class OrderPushes(sdk.TradeOrderHandlerBase):
            def __init__(self, target: MoomooBroker) -> None:
                super().__init__()
                self.target = target

            def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
                ret, data = query.UpdateOrderPush.unpack_rsp(rsp_pb)
                if ret == sdk.RET_OK and rsp_pb.s2c.header.accID == self.target._acc_id:
                    self.target._on_order_push(data)
                return ret, data

        class DealPushes(sdk.TradeDealHandlerBase):
            def __init__(self, target: MoomooBroker) -> None:
                super().__init__()
                self.target = target

            def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
                ret, data = query.UpdateDealPush.unpack_rsp(rsp_pb)
                if ret == sdk.RET_OK and rsp_pb.s2c.header.accID == self.target._acc_id:
                    self.target._on_deal_push(data)
                return ret, data

        _handler_cache[id(sdk)] = (OrderPushes, DealPushes)
    orders, deals = _handler_cache[id(sdk)]
    return orders(broker), deals(broker)
