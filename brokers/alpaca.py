"""Alpaca (US equities) behind `BrokerClient`, through the official alpaca-py SDK.

Endpoints: orders and account through `TradingClient` (Alpaca's paper endpoint unless config `alpaca.paper` is
false; ALPACA_BASE_URL overrides it), bars and quotes through `StockHistoricalDataClient` (ALPACA_DATA_URL
overrides https://data.alpaca.markets; the feed is config `alpaca.data_feed`). alpaca-py is synchronous
(requests), so every call runs in `asyncio.to_thread`. Two SDK knobs are private and set here on purpose:
each client's `requests.Session` gets the configured timeout (alpaca-py sets none, so a silent server would
hang a worker thread forever), and alpaca-py's own retry (3 x 3 s on 429/504, blind to Retry-After) is off
in favour of ours.

Status table (`STATUS_MAP`, one entry per value of alpaca-py's `OrderStatus`):

    new, accepted, pending_new, accepted_for_bidding, pending_review,  -> SUBMITTED   (working, or about to)
    held, stopped, suspended, pending_replace, done_for_day, calculated
    partially_filled                                                    -> PARTIALLY_FILLED
    filled                                                              -> FILLED
    pending_cancel                                                      -> CANCEL_PENDING
    canceled                                                            -> CANCELLED
    replaced                                                            -> CANCELLED   (we never replace orders;
                                                                                        this id no longer works)
    expired                                                             -> EXPIRED
    rejected                                                            -> REJECTED
plus one rule (`map_status`): an order the table calls SUBMITTED reads PARTIALLY_FILLED once shares are filled,
and FILLED when all are (done_for_day and calculated report a finished day that way). done_for_day, stopped,
suspended and calculated stay open: Alpaca still has the last word on them.

Fills: one `Fill` per execution, read from the account's FILL activities (GET /v2/account/activities/FILL);
`fill_id` is Alpaca's activity id ("<time>::<uuid>"). Every process reads the same list, so the order path's
dedupe by broker fill id counts each share exactly once. Fills are not synthesised from the order's cumulative
filled_qty ("<order id>-<filled_qty>" per observed change): two processes that saw different steps (A saw 100
then 300, B only 300) would record the same id with different quantities, or different ids for the same shares
(A's "-100" plus B's "-300" = 400 shares for 300 filled). If the activity list lags the order (filled_qty above
the executions visible), a finished order is reported PARTIALLY_FILLED until they appear, so the order path
syncs it again instead of closing it short. Alpaca charges no commission and reports no fee per order or fill
(regulatory fees on sells post later as FEE activities), so `Fill.fee` and `OrderResult.fees` are 0.

Orders are DAY orders, whole shares, our client_order_id sent and used for every lookup
(GET /v2/orders:by_client_order_id). Before the network: a sub-penny limit price (data/ticks.py "us") is refused
with OrderRejected, a market order outside the session is refused as the paper broker does (Alpaca would queue
it for the next open), and a sell larger than the position's unencumbered shares is refused (short selling is
not supported; Alpaca would open a short on a margin account). A repeated client_order_id returns the existing
order (Alpaca answers "client_order_id must be unique"). When the answer to an order is lost (timeout, dropped
connection, 5xx) the order is looked up by client_order_id before anything is concluded: never sent twice.

Errors: 429 is retried up to `retry_attempts` times, waiting Retry-After (or X-RateLimit-Reset, or a backoff;
a wait above `max_retry_wait_seconds` is not made), then BrokerUnavailable. Network errors, timeouts, 5xx,
401 (and 403 outside order entry: bad keys) -> BrokerUnavailable; a refused order (403 insufficient buying
power, 422 invalid ...) -> OrderRejected with Alpaca's message; other 4xx -> InvalidRequest. A read whose
connection dropped is resent once; an order submission never is (it is looked up instead).

Buying power is capped at cash: we never trade on margin. Daily bars are stamped with the session open (Alpaca
stamps midnight New York) and, like every bar, returned only once complete by the clock.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

import requests

from core.account import Account, Position
from core.instruments import Bar, Instrument, Quote, Timeframe
from brokers.base import BrokerClient
from core.errors import BrokerError, BrokerUnavailable, InvalidRequest, OrderRejected
from core.orders import Fill, OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.clock import Clock, RealClock
from core.settings import AlpacaConfig, ConfigError
from core.ticks import is_on_tick, round_to_tick

if TYPE_CHECKING:
    from core.settings import Settings
    from core.calendar import MarketCalendar

log = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
US_EXCHANGES = ("NYSE", "NASDAQ")
ORDERS_PAGE = 500                 # Alpaca's maximum `limit` for GET /v2/orders
ACTIVITIES_PAGE = 100             # ... and `page_size` for account activities
SNAPSHOTS_PER_REQUEST = 200
DUPLICATE_ID = "client_order_id must be unique"

_S = OrderStatus
STATUS_MAP: dict[str, OrderStatus] = {
    "new": _S.SUBMITTED, "accepted": _S.SUBMITTED, "pending_new": _S.SUBMITTED,
    "accepted_for_bidding": _S.SUBMITTED, "pending_review": _S.SUBMITTED, "held": _S.SUBMITTED,
    "stopped": _S.SUBMITTED, "suspended": _S.SUBMITTED, "pending_replace": _S.SUBMITTED,
    "done_for_day": _S.SUBMITTED, "calculated": _S.SUBMITTED,
    "partially_filled": _S.PARTIALLY_FILLED,
    "filled": _S.FILLED,
    "pending_cancel": _S.CANCEL_PENDING,
    "canceled": _S.CANCELLED, "replaced": _S.CANCELLED,
    "expired": _S.EXPIRED,
    "rejected": _S.REJECTED,
}
_REASONS = {"canceled": "cancelled at Alpaca", "replaced": "replaced by another order at Alpaca",
            "expired": "expired at Alpaca (a day order past its session)", "rejected": "rejected by Alpaca"}

# our timeframe -> (amount, alpaca-py TimeFrameUnit name, bar length; None = one session)
_TIMEFRAMES: dict[str, tuple[int, str, timedelta | None]] = {
    "1m": (1, "Minute", timedelta(minutes=1)), "5m": (5, "Minute", timedelta(minutes=5)),
    "15m": (15, "Minute", timedelta(minutes=15)), "30m": (30, "Minute", timedelta(minutes=30)),
    "1h": (1, "Hour", timedelta(hours=1)), "1d": (1, "Day", None),
}


def map_status(alpaca_status: str, *, filled: int = 0, quantity: int = 0) -> OrderStatus:
    """Our status for an Alpaca order status string (the table in the module docstring)."""
    try:
        status = STATUS_MAP[alpaca_status]
    except KeyError:
        raise BrokerUnavailable(f"alpaca: unknown order status {alpaca_status!r} (not in alpaca-py's table)") \
            from None
    if status is _S.SUBMITTED and filled > 0:
        return _S.FILLED if quantity and filled >= quantity else _S.PARTIALLY_FILLED
    return status


class AlpacaRefused(InvalidRequest):
    """Alpaca answered 4xx: `status`, Alpaca's `code` and `message`. Order entry turns it into OrderRejected."""

    def __init__(self, what: str, status: int, code: Any, message: str) -> None:
        super().__init__(f"alpaca refused {what}: {message} (HTTP {status}" + (f", code {code})" if code else ")"))
        self.status, self.code, self.message = status, code, message


class _NotFound(AlpacaRefused):
    """404: no such order, asset or position."""


class _AnswerLost(BrokerUnavailable):
    """No usable answer (timeout, dropped connection, 5xx): the request may or may not have been carried out."""


class AlpacaBroker(BrokerClient):
    name = "alpaca"

    def __init__(self, config: AlpacaConfig, *, api_key: str, secret_key: str, base_url: str | None = None,
                 data_url: str | None = None, clock: Clock | None = None, calendar: "MarketCalendar | None" = None,
                 retry_attempts: int = 3, max_retry_wait_seconds: float = 10.0) -> None:
        if not api_key or not secret_key:
            raise ConfigError("broker alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY")
        from core.calendar import MarketCalendar
        self.config = config
        self.environment = "paper" if config.paper else "live"
        self.base_url = _clean_url(base_url) or (PAPER_URL if config.paper else LIVE_URL)
        self.data_url = _clean_url(data_url)
        self.clock = clock or RealClock()
        self.calendar = calendar or MarketCalendar("NYSE")
        self.retry_attempts = retry_attempts
        self.max_retry_wait_seconds = max_retry_wait_seconds
        self._keys = (api_key, secret_key)
        self._sdk: SimpleNamespace | None = None
        self._trading: Any = None
        self._data: Any = None
        self._instruments: dict[str, Instrument] = {}
        self._fills: dict[str, list[Fill]] = {}          # broker order id -> executions, once complete

    def __repr__(self) -> str:  # never the keys
        return f"AlpacaBroker({self.environment}, {self.base_url}, data={self.data_url or 'default'})"

    @classmethod
    def from_settings(cls, settings: "Settings", *, clock: Clock | None = None,
                      calendar: "MarketCalendar | None" = None) -> "AlpacaBroker":
        """From config `alpaca:` and .env: ALPACA_API_KEY, ALPACA_SECRET_KEY (required), ALPACA_BASE_URL (trading
        endpoint), ALPACA_DATA_URL (market data endpoint)."""
        from core.calendar import MarketCalendar
        env, config = settings.env, settings.config.alpaca
        missing = [k for k in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY") if not env.get(k)]
        if missing:
            raise ConfigError(f"broker alpaca needs {' and '.join(missing)} in .env or the environment (API keys "
                              f"from the Alpaca dashboard: paper keys while alpaca.paper is true)")
        exchange = settings.config.market.exchange
        if exchange not in US_EXCHANGES:
            raise ConfigError(f"{settings.config_path}: broker alpaca trades US equities, but market.exchange is "
                              f"{exchange}; use NYSE or NASDAQ")
        base_url = env.get("ALPACA_BASE_URL")
        _check_endpoint(base_url, config.paper)
        return cls(config, api_key=env.get("ALPACA_API_KEY"), secret_key=env.get("ALPACA_SECRET_KEY"),
                   base_url=base_url, data_url=env.get("ALPACA_DATA_URL"), clock=clock,
                   calendar=calendar or MarketCalendar(exchange))

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Build the SDK clients and check the keys against the account endpoint."""
        if self._trading is None:
            self._sdk, self._trading, self._data = await asyncio.to_thread(self._build_clients)
        await self.get_account()

    async def disconnect(self) -> None:
        for client in (self._trading, self._data):
            if client is not None:
                client._session.close()
        self._trading = self._data = None

    def _build_clients(self) -> tuple[SimpleNamespace, Any, Any]:
        sdk = _load_sdk()                       # the SDK pulls in pandas: imported off the event loop
        key, secret = self._keys
        trading = sdk.TradingClient(api_key=key, secret_key=secret, paper=self.config.paper,
                                    url_override=self.base_url)
        data = sdk.StockHistoricalDataClient(api_key=key, secret_key=secret, url_override=self.data_url)
        for client in (trading, data):
            client._session = _TimeoutSession(self.config.timeout_seconds)
            client._retry = 0                   # our _call retries 429s, honouring Retry-After
        return sdk, trading, data

    def _clients(self) -> tuple[SimpleNamespace, Any, Any]:
        if self._trading is None:
            raise InvalidRequest("alpaca broker: call connect() first")
        return self._sdk, self._trading, self._data

    # ------------------------------------------------------------ market data
    async def get_instrument(self, symbol: str) -> Instrument:
        known = self._instruments.get(symbol)
        if known is not None:
            return known
        _, trading, _ = self._clients()
        try:
            asset = await self._call(f"asset {symbol}", trading.get_asset, symbol)
        except _NotFound:
            raise InvalidRequest(f"unknown symbol {symbol!r}: Alpaca has no such asset") from None
        if _value(asset.asset_class) != "us_equity":
            raise InvalidRequest(f"{symbol} is a {_value(asset.asset_class)} asset; only US equities are supported")
        inst = Instrument(symbol=asset.symbol, exchange=_value(asset.exchange) or "US", currency="USD", lot_size=1,
                          name=asset.name or "", tick_scheme="us")
        self._instruments[symbol] = inst
        return inst

    async def get_quote(self, symbol: str) -> Quote:
        snaps = await self._snapshots([symbol])
        if symbol not in snaps:
            raise InvalidRequest(f"unknown symbol {symbol!r}: Alpaca has no market data for it")
        quote = _quote(symbol, snaps[symbol])
        if quote is None:
            raise BrokerUnavailable(f"alpaca: no two-sided quote for {symbol} on the {self.config.data_feed} feed "
                                    f"right now")
        return quote

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """One snapshot request per SNAPSHOTS_PER_REQUEST symbols; a symbol without a usable quote is left out."""
        out: dict[str, Quote] = {}
        wanted = list(dict.fromkeys(symbols))
        for i in range(0, len(wanted), SNAPSHOTS_PER_REQUEST):
            chunk = wanted[i:i + SNAPSHOTS_PER_REQUEST]
            try:
                snaps = await self._snapshots(chunk)
            except AlpacaRefused as exc:        # one bad symbol refuses the batch: ask one by one
                log.warning("alpaca quotes for %d symbols: %s; asking one by one", len(chunk), exc)
                snaps = {}
                for symbol in chunk:
                    try:
                        snaps.update(await self._snapshots([symbol]))
                    except BrokerError:
                        continue
            except BrokerError as exc:
                log.warning("alpaca quotes for %d symbols: %s", len(chunk), exc)
                continue
            for symbol, snap in snaps.items():
                quote = _quote(symbol, snap)
                if quote is not None:
                    out[symbol] = quote
        return out

    async def _snapshots(self, symbols: list[str]) -> dict[str, Any]:
        sdk, _, data = self._clients()
        request = sdk.StockSnapshotRequest(symbol_or_symbols=symbols, feed=sdk.DataFeed(self.config.data_feed))
        return await self._call("snapshots", data.get_stock_snapshot, request)

    async def get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        if timeframe not in _TIMEFRAMES:
            raise InvalidRequest(f"unknown timeframe {timeframe!r}; expected one of {', '.join(_TIMEFRAMES)}")
        end = min(end, self.clock.now())
        if end <= start:
            return []
        await self.get_instrument(symbol)                       # an unknown symbol is an error, not []
        sdk, _, data = self._clients()
        amount, unit, _ = _TIMEFRAMES[timeframe]
        # Alpaca stamps a daily bar at midnight New York, before the session open we filter on: ask a day early.
        ask_from = start - timedelta(days=1) if timeframe == "1d" else start
        frame = sdk.TimeFrame(amount, sdk.TimeFrameUnit[unit])
        request = sdk.StockBarsRequest(symbol_or_symbols=symbol, timeframe=frame, start=ask_from, end=end,
                                       feed=sdk.DataFeed(self.config.data_feed), adjustment=sdk.Adjustment.SPLIT)
        barset = await self._call(f"{timeframe} bars {symbol}", data.get_stock_bars, request)
        out = []
        for raw in barset.data.get(symbol, []):
            bar, complete_at = self._bar(symbol, raw, timeframe)
            if start <= bar.start < end and complete_at <= end:
                out.append(bar)
        return sorted(out, key=lambda b: b.start)

    def _bar(self, symbol: str, raw: Any, timeframe: str) -> tuple[Bar, datetime]:
        """Our bar and the instant it is complete. Daily bars move from Alpaca's midnight stamp to the open."""
        stamp = raw.timestamp.astimezone(timezone.utc)
        length = _TIMEFRAMES[timeframe][2]
        if length is None:
            bounds = self.calendar.session_bounds(stamp.astimezone(self.calendar.tz).date())
            start, done = (bounds[0][0], bounds[-1][1]) if bounds else (stamp, stamp + timedelta(days=1))
        else:
            start, done = stamp, stamp + length
        return Bar(symbol=symbol, start=start, open=_dec(raw.open), high=_dec(raw.high), low=_dec(raw.low),
                   close=_dec(raw.close), volume=int(raw.volume)), done

    # ------------------------------------------------------------ account
    async def get_account(self) -> Account:
        _, trading, _ = self._clients()
        acct = await self._call("account", trading.get_account)
        cash = _dec(acct.cash)
        return Account(currency=acct.currency or "USD", cash=cash, buying_power=min(_dec(acct.buying_power), cash),
                       equity=_dec(acct.equity))

    async def get_positions(self) -> list[Position]:
        """Long positions as positive share counts; a short one (opened outside Catalyst) shows negative."""
        _, trading, _ = self._clients()
        rows = await self._call("positions", trading.get_all_positions)
        return [Position(symbol=p.symbol, quantity=_shares(p.qty), avg_price=_dec(p.avg_entry_price),
                         market_price=_dec(p.current_price) if p.current_price else None)
                for p in rows if _value(p.asset_class) == "us_equity"]

    # ------------------------------------------------------------ orders
    async def place_order(self, order: OrderRequest) -> OrderResult:
        self._refuse_before_sending(order)
        if order.side is OrderSide.SELL:
            repeat = await self._check_sellable(order)
            if repeat is not None:
                return repeat
        sdk, trading, _ = self._clients()
        coid = order.client_order_id
        try:
            raw = await self._call(f"order {coid}", trading.submit_order, self._order_request(sdk, order),
                                   resend=False, entry=True)
        except AlpacaRefused as exc:
            if DUPLICATE_ID in exc.message.lower():
                existing = await self.get_order_by_client_id(coid)
                if existing is not None:
                    return existing
            raise OrderRejected(f"{exc.message} (Alpaca HTTP {exc.status})", client_order_id=coid) from exc
        except _AnswerLost as exc:
            return await self._after_lost_answer(coid, exc)
        result = await self._result(raw)
        if result.status is OrderStatus.REJECTED:
            raise OrderRejected(result.reason or "rejected by Alpaca", client_order_id=coid)
        return result

    def _refuse_before_sending(self, order: OrderRequest) -> None:
        price = order.limit_price
        if price is not None and not is_on_tick(price, "us"):
            raise OrderRejected(
                f"limit price {price} is not on the US tick grid for {order.symbol} (sub-penny: $0.01 steps at or "
                f"above $1, $0.0001 below; nearest valid: {round_to_tick(price, 'us', 'down')} or "
                f"{round_to_tick(price, 'us', 'up')}); not sent to Alpaca", client_order_id=order.client_order_id)
        if order.order_type is OrderType.MARKET:
            state = self.calendar.state(self.clock.now())
            if not state.is_open:
                raise OrderRejected(f"market closed ({state.status}); market orders are accepted only during "
                                    f"trading hours; next open {state.next_open.isoformat()}",
                                    client_order_id=order.client_order_id)

    async def _check_sellable(self, order: OrderRequest) -> OrderResult | None:
        """None when the position covers the sell; the existing order when this is a repeat; else OrderRejected."""
        _, trading, _ = self._clients()
        try:
            pos = await self._call(f"position {order.symbol}", trading.get_open_position, order.symbol)
        except _NotFound:
            pos = None
        held = _shares(pos.qty) if pos is not None else 0
        free = _shares(pos.qty_available) if pos is not None and pos.qty_available is not None else held
        if order.quantity <= free:
            return None
        existing = await self.get_order_by_client_id(order.client_order_id)
        if existing is not None:
            return existing
        raise OrderRejected(f"cannot sell {order.quantity} {order.symbol}: {held} held, {held - free} already in "
                            f"open sell orders (short selling is not supported)",
                            client_order_id=order.client_order_id)

    async def _after_lost_answer(self, coid: str, lost: BrokerUnavailable) -> OrderResult:
        """The order may or may not have reached Alpaca: ask by client_order_id instead of guessing."""
        try:
            found = await self.get_order_by_client_id(coid)
        except BrokerError as exc:
            raise BrokerUnavailable(f"{lost}; looking the order up by client_order_id {coid} failed too ({exc}): "
                                    f"reconcile before resending") from lost
        if found is None:
            raise BrokerUnavailable(f"{lost}; Alpaca has no order {coid} (yet), so treat it as not placed: "
                                    f"resending the same client_order_id cannot make a second order") from lost
        log.warning("alpaca order %s: the answer was lost (%s) but the order is at Alpaca: %s", coid, lost,
                    found.status.value)
        return found

    @staticmethod
    def _order_request(sdk: SimpleNamespace, order: OrderRequest) -> Any:
        common = dict(symbol=order.symbol, qty=order.quantity, side=sdk.OrderSide(order.side.value),
                      time_in_force=sdk.TimeInForce.DAY, client_order_id=order.client_order_id)
        if order.order_type is OrderType.LIMIT:
            return sdk.LimitOrderRequest(limit_price=float(order.limit_price), **common)
        return sdk.MarketOrderRequest(**common)

    async def cancel_order(self, order_id: str) -> bool:
        raw = await self._raw_order(order_id)
        if raw is None:
            return False
        status = _status(raw)
        if status in (OrderStatus.CANCELLED, OrderStatus.CANCEL_PENDING):
            return True
        if status.is_terminal:
            return False
        _, trading, _ = self._clients()
        try:
            await self._call(f"cancel {order_id}", trading.cancel_order_by_id, raw.id)
        except _NotFound:
            return False
        except AlpacaRefused:                    # 422 not cancelable: it filled or finished meanwhile
            raw = await self._raw_order(order_id)
            return raw is not None and _status(raw) in (OrderStatus.CANCELLED, OrderStatus.CANCEL_PENDING)
        return True

    async def get_orders(self, *, open_only: bool = False) -> list[OrderResult]:
        raws = await self._list_orders("open" if open_only else "all")
        fills = await self._fills_for(raws)
        return [_order_result(r, fills.get(str(r.id), [])) for r in raws]

    async def get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        raw = await self._raw_order(client_order_id)
        return None if raw is None else await self._result(raw)

    # ------------------------------------------------------------ order internals
    async def _raw_order(self, client_order_id: str) -> Any | None:
        _, trading, _ = self._clients()
        try:
            return await self._call(f"order {client_order_id}", trading.get_order_by_client_id, client_order_id)
        except _NotFound:
            return None

    async def _result(self, raw: Any) -> OrderResult:
        fills = await self._fills_for([raw])
        return _order_result(raw, fills.get(str(raw.id), []))

    async def _list_orders(self, status: str) -> list[Any]:
        """Every order in `status` (open | all), oldest first, paging forward on submitted_at."""
        sdk, trading, _ = self._clients()
        seen: dict[str, Any] = {}
        after = None
        while True:
            request = sdk.GetOrdersRequest(status=sdk.QueryOrderStatus(status), limit=ORDERS_PAGE,
                                           direction=sdk.Sort.ASC, nested=False, after=after)
            page = await self._call(f"{status} orders", trading.get_orders, request)
            new = [o for o in page if str(o.id) not in seen]
            seen.update((str(o.id), o) for o in new)
            if len(page) < ORDERS_PAGE or not new:
                break
            after = max(o.submitted_at for o in page) - timedelta(microseconds=1)   # `after` is exclusive
        usable = [o for o in seen.values() if o.symbol and o.qty is not None]
        return sorted(usable, key=lambda o: (o.submitted_at, str(o.id)))

    async def _fills_for(self, raws: list[Any]) -> dict[str, list[Fill]]:
        """Executions per broker order id, from the FILL activities since the earliest of these orders."""
        want = {str(r.id): r for r in raws if _shares(r.filled_qty or 0) > 0}
        out = {oid: self._fills[oid] for oid in want if oid in self._fills}
        missing = [r for oid, r in want.items() if oid not in out]
        if not missing:
            return out
        since = min(r.submitted_at or r.created_at for r in missing) - timedelta(minutes=1)
        found: dict[str, list[Fill]] = {str(r.id): [] for r in missing}
        by_id = {str(r.id): r for r in missing}
        for act in await self._fill_activities(since):
            oid = str(act.get("order_id"))
            if oid in found:
                found[oid].append(_fill(act, by_id[oid]))
        for oid, fills in found.items():
            raw = by_id[oid]
            if _status(raw).is_terminal and sum(f.quantity for f in fills) == _shares(raw.filled_qty):
                self._fills[oid] = fills                     # a finished order's executions never change
        return {**out, **found}

    async def _fill_activities(self, since: datetime) -> list[dict[str, Any]]:
        _, trading, _ = self._clients()
        params: dict[str, Any] = {"after": since.astimezone(timezone.utc).isoformat(), "direction": "asc",
                                  "page_size": ACTIVITIES_PAGE}
        out: list[dict[str, Any]] = []
        while True:
            page = await self._call("fill activities", trading.get, "/account/activities/FILL", dict(params))
            if not isinstance(page, list):
                raise BrokerUnavailable(f"alpaca: fill activities: expected a list, got {type(page).__name__}")
            out.extend(page)
            if len(page) < ACTIVITIES_PAGE:
                return out
            params["page_token"] = page[-1]["id"]

    # ------------------------------------------------------------ transport
    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, resend: bool = True,
                    entry: bool = False) -> Any:
        """One SDK call in a worker thread, errors translated (module docstring). `resend`: a dropped
        connection may be retried once (reads and cancels; never an order submission). `entry`: order entry,
        where 403 is a refusal, not bad keys."""
        from alpaca.common.exceptions import APIError
        waited = dropped = 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except APIError as exc:
                status = exc.status_code
                if status == 429 and waited < self.retry_attempts:
                    wait = self._rate_limit_wait(exc, waited)
                    if wait is not None:
                        waited += 1
                        log.info("alpaca %s: rate limited, retry %d in %.2f s", what, waited, wait)
                        await asyncio.sleep(wait)
                        continue
                raise self._translate(what, exc, entry=entry, retries=waited) from exc
            except requests.exceptions.Timeout as exc:
                raise _AnswerLost(f"alpaca: {what}: no answer within {self.config.timeout_seconds:g} s "
                                        f"from {_host(exc)}") from exc
            except requests.exceptions.ConnectionError as exc:
                if resend and dropped == 0:
                    dropped += 1
                    continue
                raise _AnswerLost(f"alpaca: {what}: connection to {_host(exc)} failed: "
                                        f"{_root_cause(exc)}") from exc
            except requests.exceptions.RequestException as exc:
                raise _AnswerLost(f"alpaca: {what}: request failed: {exc}") from exc
            except (ValueError, TypeError, KeyError) as exc:   # pydantic's ValidationError is a ValueError
                raise BrokerUnavailable(f"alpaca: {what}: reply not understood: {exc}") from exc

    def _rate_limit_wait(self, exc: Any, attempt: int) -> float | None:
        """Seconds to wait before resending after a 429, or None when Alpaca asks for longer than we wait."""
        headers = exc.response.headers if exc.response is not None else {}
        wait = _retry_after(headers.get("Retry-After"))
        if wait is None and headers.get("X-RateLimit-Reset", "").isdigit():
            wait = max(0.0, int(headers["X-RateLimit-Reset"]) - time.time())   # epoch seconds: wall clock
        if wait is None:
            wait = min(0.25 * 2 ** attempt, self.max_retry_wait_seconds)
        return wait if wait <= self.max_retry_wait_seconds else None

    def _translate(self, what: str, exc: Any, *, entry: bool, retries: int) -> BrokerError:
        status = exc.status_code
        code, message = _error_body(str(exc))
        if status is None or status >= 500:
            return _AnswerLost(f"alpaca: {what}: server error (HTTP {status}): {message}")
        if status == 429:
            return BrokerUnavailable(f"alpaca: {what}: rate limited (HTTP 429) after {retries} retries: {message}")
        if status == 401 or (status == 403 and not entry):
            which = "paper" if self.config.paper else "live"
            return BrokerUnavailable(f"alpaca: {what}: not authorized (HTTP {status}: {message}); check "
                                     f"ALPACA_API_KEY / ALPACA_SECRET_KEY are {which} keys for {self.base_url}")
        if status == 404:
            return _NotFound(what, status, code, message)
        return AlpacaRefused(what, status, code, message)


# ---------------------------------------------------------------- conversions

def _order_result(raw: Any, fills: list[Fill]) -> OrderResult:
    quantity, filled = _shares(raw.qty), _shares(raw.filled_qty or 0)
    status = map_status(_value(raw.status), filled=filled, quantity=quantity)
    if status.is_terminal and sum(f.quantity for f in fills) < filled:
        status = OrderStatus.PARTIALLY_FILLED        # executions not visible yet: keep the order open for now
    kind = OrderType.LIMIT if _value(raw.type or raw.order_type) in ("limit", "stop_limit") else OrderType.MARKET
    return OrderResult(
        client_order_id=raw.client_order_id, broker_order_id=str(raw.id), symbol=raw.symbol,
        side=OrderSide(_value(raw.side)), order_type=kind,
        quantity=quantity, limit_price=_dec(raw.limit_price) if raw.limit_price not in (None, "") else None,
        status=status, filled_quantity=filled,
        avg_fill_price=_dec(raw.filled_avg_price) if filled and raw.filled_avg_price not in (None, "") else None,
        fees=Decimal(0), reason=_REASONS.get(_value(raw.status)), submitted_at=raw.submitted_at,
        updated_at=raw.updated_at, fills=tuple(sorted(fills, key=lambda f: (f.timestamp, f.fill_id))))


def _status(raw: Any) -> OrderStatus:
    return map_status(_value(raw.status), filled=_shares(raw.filled_qty or 0), quantity=_shares(raw.qty))


def _fill(act: dict[str, Any], raw: Any) -> Fill:
    return Fill(fill_id=str(act["id"]), client_order_id=raw.client_order_id, symbol=act.get("symbol") or raw.symbol,
                side=OrderSide(_value(raw.side)), quantity=_shares(act["qty"]), price=_dec(act["price"]),
                fee=Decimal(0), timestamp=datetime.fromisoformat(act["transaction_time"]).astimezone(timezone.utc))


def _quote(symbol: str, snap: Any) -> Quote | None:
    q, t = snap.latest_quote, snap.latest_trade
    if q is None or t is None or not q.bid_price or not q.ask_price:
        return None
    volume = int(snap.daily_bar.volume) if snap.daily_bar is not None else 0
    return Quote(symbol=symbol, bid=_dec(q.bid_price), ask=_dec(q.ask_price), last=_dec(t.price), volume=volume,
                 timestamp=max(q.timestamp, t.timestamp).astimezone(timezone.utc))


def _dec(value: Any) -> Decimal:
    """Alpaca sends money as strings (trading API) or JSON numbers (data API); str() keeps a float's short form."""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def _shares(value: Any) -> int:
    """Whole shares (fractions are not part of our contract: truncated toward zero)."""
    return int(_dec(value).to_integral_value(rounding=ROUND_DOWN))


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def _error_body(text: str) -> tuple[Any, str]:
    try:
        body = json.loads(text)
    except ValueError:
        return None, text.strip()[:300] or "(empty body)"
    if isinstance(body, dict):
        return body.get("code"), str(body.get("message") or body)
    return None, str(body)[:300]


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (wall clock)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _host(exc: Any) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None) or ""
    return urlsplit(url).netloc or "alpaca"


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return f"{type(exc).__name__}: {exc}"


def _clean_url(url: str | None) -> str | None:
    """alpaca-py appends /v2 itself; an endpoint written with it ('.../v2') would become '.../v2/v2'."""
    if not url:
        return None
    url = url.strip().rstrip("/")
    return url[:-3] if url.endswith("/v2") else url


def _check_endpoint(base_url: str | None, paper: bool) -> None:
    host = urlsplit(_clean_url(base_url) or "").hostname or ""
    if paper and host == urlsplit(LIVE_URL).hostname:
        raise ConfigError(f"ALPACA_BASE_URL is Alpaca's live endpoint ({base_url}) but alpaca.paper is true; "
                          f"set alpaca.paper: false and real_money: true to trade real money, or remove "
                          f"ALPACA_BASE_URL")
    if not paper and host == urlsplit(PAPER_URL).hostname:
        raise ConfigError(f"ALPACA_BASE_URL is Alpaca's paper endpoint ({base_url}) but alpaca.paper is false")


def _load_sdk() -> SimpleNamespace:
    from alpaca.common.enums import Sort
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest, StockSnapshotRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide as AlpacaSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
    return SimpleNamespace(
        Sort=Sort, Adjustment=Adjustment, DataFeed=DataFeed, StockHistoricalDataClient=StockHistoricalDataClient,
        StockBarsRequest=StockBarsRequest, StockSnapshotRequest=StockSnapshotRequest, TimeFrame=TimeFrame,
        TimeFrameUnit=TimeFrameUnit, TradingClient=TradingClient, OrderSide=AlpacaSide,
        QueryOrderStatus=QueryOrderStatus, TimeInForce=TimeInForce, GetOrdersRequest=GetOrdersRequest,
        LimitOrderRequest=LimitOrderRequest, MarketOrderRequest=MarketOrderRequest)


class _TimeoutSession(requests.Session):
    """A Session whose requests time out (alpaca-py passes no timeout)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)
