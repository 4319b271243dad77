"""`AlpacaBroker`: Alpaca (US equities) behind `BrokerClient`, through the official alpaca-py SDK.

Fills are read from the account's FILL activities (GET /v2/account/activities/FILL). Every process reads the same
list, so the order path's dedupe by broker fill id counts each share exactly once. Fills are not synthesised from
the order's cumulative filled_qty ("<order id>-<filled_qty>" per observed change): two processes that saw
different steps (A saw 100 then 300, B only 300) would record the same id with different quantities, or
different ids for the same shares (A's "-100" plus B's "-300" = 400 shares for 300 filled).

Orders are whole shares under our client_order_id, used for every lookup (GET /v2/orders:by_client_order_id):
market and limit orders for the DAY, STOP orders (protective sell stops) good till cancelled, so they outlive the
session (Alpaca's aged-order policy cancels a GTC order 90 days after it was created). Before the network: a
sub-penny limit or stop price (core/ticks.py "us", Alpaca's rule for both) is refused with OrderRejected, a market
order outside the session is refused as the paper broker does (Alpaca would queue it for the next open), a buy stop
is refused (Alpaca would turn it into a stop-limit order 2.5-4% above the stop, not the stop-market order asked
for), and a sell larger than the position's unencumbered shares is refused (short selling is not supported;
Alpaca would open a short on a margin account; shares a resting stop holds are not free to sell, and shares an
order being cancelled holds are waited for: the monitor cancels its stop, then sells). A repeated client_order_id returns the existing
order (Alpaca answers "client_order_id must be unique"). When the answer to an order is lost (timeout, dropped
connection, 5xx) the order is looked up by client_order_id before anything is concluded: never sent twice.
A refused order (403 insufficient buying power, 422 invalid ...) -> OrderRejected with Alpaca's message.

Bars, like every bar, are returned only once complete by the clock.

Pushed quotes (`open_quote_stream`) come from Alpaca's real-time stock data stream through alpaca-py's
StockDataStream (stream.py): wss://stream.data.alpaca.markets/v2/{alpaca.data_feed} unless ALPACA_STREAM_URL
overrides it, at most `stream_symbol_limit` symbols (the Basic plan's 30 by default).

Market data for the bar store (`list_securities`, `daily_history`) is `history.py`'s; 429 waits go through the
injected `sleep` (asyncio.sleep by default).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence

from brokers.alpaca import mapping
from brokers.alpaca.history import AlpacaHistory
from brokers.alpaca.sdk import (LIVE_URL, PAPER_URL, AlpacaRefused, AlpacaSession, AnswerLost, NotFound,
                                check_endpoint, clean_url)
from brokers.alpaca.stream import STREAM_SYMBOL_LIMIT, STREAM_URL, AlpacaQuoteStream
from brokers.base import BrokerClient, QuoteStream, SellCheckReads
from core.account import Account, Position
from core.clock import Clock, RealClock
from core.errors import BrokerError, BrokerUnavailable, InvalidRequest, OrderRejected
from core.feeds import Listing, UniverseSpec
from core.instruments import Bar, Instrument, Quote, Timeframe
from core.orders import Fill, OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.config_model import AlpacaConfig
from core.errors import ConfigError
from core.ticks import is_on_tick, round_to_tick

if TYPE_CHECKING:
    from core.calendar import MarketCalendar
    from core.settings import Settings

log = logging.getLogger(__name__)

US_EXCHANGES = ("NYSE", "NASDAQ")
ORDERS_PAGE = 500                 # Alpaca's maximum `limit` for GET /v2/orders
ACTIVITIES_PAGE = 100             # ... and `page_size` for account activities
SNAPSHOTS_PER_REQUEST = 200
DUPLICATE_ID = "client_order_id must be unique"
CANCEL_POLL_SECONDS = 0.2         # how often a sell waiting for a pending cancel reads the position again
_CANCELLING = (OrderStatus.CANCELLED, OrderStatus.CANCEL_PENDING)


class AlpacaBroker(BrokerClient):
    name = "alpaca"

    def __init__(self, config: AlpacaConfig, *, api_key: str, secret_key: str, base_url: str | None = None,
                 data_url: str | None = None, clock: Clock | None = None, calendar: "MarketCalendar | None" = None,
                 retry_attempts: int = 3, max_retry_wait_seconds: float = 10.0, rate_clock: Clock | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None, stream_url: str | None = None,
                 stream_symbol_limit: int | None = STREAM_SYMBOL_LIMIT) -> None:
        """`rate_clock` and `sleep` time the waits Alpaca's 429s ask for: real time and asyncio.sleep unless given
        (a test passes a simulated clock and a sleep that moves it; `clock` stays the market's). `stream_url`
        overrides the quote stream's endpoint; `stream_symbol_limit` is the market data plan's websocket symbol
        limit (None: unlimited, Algo Trader Plus)."""
        if not api_key or not secret_key:
            raise ConfigError("broker alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY")
        from core.calendar import MarketCalendar
        self.config = config
        self.environment = "paper" if config.paper else "live"
        self.base_url = clean_url(base_url) or (PAPER_URL if config.paper else LIVE_URL)
        self.data_url = clean_url(data_url)
        self.clock = clock or RealClock()
        self.calendar = calendar or MarketCalendar("NYSE")
        self._session = AlpacaSession(config, api_key=api_key, secret_key=secret_key, base_url=self.base_url,
                                      data_url=self.data_url, retry_attempts=retry_attempts,
                                      max_retry_wait_seconds=max_retry_wait_seconds,
                                      clock=rate_clock or RealClock(), sleep=sleep)
        self.history = AlpacaHistory(self._session, config=config, clock=self.clock, calendar=self.calendar)
        self.stream_url = (stream_url or "").strip() or STREAM_URL.format(feed=config.data_feed)
        self.stream_symbol_limit = stream_symbol_limit
        self._stream_keys = (api_key, secret_key)
        self._instruments: dict[str, Instrument] = {}
        self._fills: dict[str, list[Fill]] = {}          # broker order id -> executions, once complete
        # symbol -> its position row or None: what an exit's get_position read, for the sell's check that follows
        self.sell_checks = SellCheckReads()

    def __repr__(self) -> str:  # never the keys
        return f"AlpacaBroker({self.environment}, {self.base_url}, data={self.data_url or 'default'})"

    @classmethod
    def from_settings(cls, settings: "Settings", *, clock: Clock | None = None,
                      calendar: "MarketCalendar | None" = None, rate_clock: Clock | None = None,
                      sleep: Callable[[float], Awaitable[None]] | None = None) -> "AlpacaBroker":
        """From config `alpaca:` and .env: ALPACA_API_KEY, ALPACA_SECRET_KEY (required), ALPACA_BASE_URL (trading
        endpoint), ALPACA_DATA_URL (market data endpoint), ALPACA_STREAM_URL (the real-time quote stream);
        `rate_clock` and `sleep` as in the constructor."""
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
        check_endpoint(base_url, config.paper)
        return cls(config, api_key=env.get("ALPACA_API_KEY"), secret_key=env.get("ALPACA_SECRET_KEY"),
                   base_url=base_url, data_url=env.get("ALPACA_DATA_URL"), clock=clock,
                   calendar=calendar or MarketCalendar(exchange), rate_clock=rate_clock, sleep=sleep,
                   stream_url=env.get("ALPACA_STREAM_URL"), stream_symbol_limit=config.stream_symbol_limit)

    # ------------------------------------------------------------ lifecycle
    async def _connect(self) -> None:
        """Build the SDK clients and check the keys against the account endpoint."""
        await self._session.open()
        await self._get_account()

    async def _disconnect(self) -> None:
        self._session.close()

    # ------------------------------------------------------------ market data
    async def _get_instrument(self, symbol: str) -> Instrument:
        known = self._instruments.get(symbol)
        if known is not None:
            return known
        _, trading, _ = self._session.clients()
        try:
            asset = await self._session.call(f"asset {symbol}", trading.get_asset, symbol)
        except NotFound:
            raise InvalidRequest(f"unknown symbol {symbol!r}: Alpaca has no such asset") from None
        if mapping.value(asset.asset_class) != "us_equity":
            raise InvalidRequest(f"{symbol} is a {mapping.value(asset.asset_class)} asset; only US equities are "
                                 f"supported")
        inst = self._instruments[symbol] = mapping.instrument(asset)
        return inst

    async def _get_quote(self, symbol: str) -> Quote:
        snaps = await self._snapshots([symbol])
        if symbol not in snaps:
            raise InvalidRequest(f"unknown symbol {symbol!r}: Alpaca has no market data for it")
        quote = mapping.quote(symbol, snaps[symbol])
        if quote is None:
            raise BrokerUnavailable(f"alpaca: no two-sided quote for {symbol} on the {self.config.data_feed} feed "
                                    f"right now")
        return quote

    async def _get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
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
                quote = mapping.quote(symbol, snap)
                if quote is not None:
                    out[symbol] = quote
        return out

    async def _open_quote_stream(self) -> QuoteStream:
        """A new connection to Alpaca's stock data stream (Alpaca allows one per account); BrokerUnavailable when
        it cannot connect or log in."""
        self._session.clients()                                  # connect() first
        stream = AlpacaQuoteStream(url=self.stream_url, feed=self.config.data_feed, keys=self._stream_keys,
                                   seed=self.get_quotes, limit=self.stream_symbol_limit,
                                   timeout=self.config.timeout_seconds)
        await stream.start()
        return stream

    async def _snapshots(self, symbols: list[str]) -> dict[str, Any]:
        sdk, _, data = self._session.clients()
        request = sdk.StockSnapshotRequest(symbol_or_symbols=symbols, feed=sdk.DataFeed(self.config.data_feed))
        return await self._session.call("snapshots", data.get_stock_snapshot, request)

    async def _get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        if timeframe not in mapping.TIMEFRAMES:
            raise InvalidRequest(f"unknown timeframe {timeframe!r}; expected one of "
                                 f"{', '.join(mapping.TIMEFRAMES)}")
        end = min(end, self.clock.now())
        if end <= start:
            return []
        await self._get_instrument(symbol)                      # an unknown symbol is an error, not []
        sdk, _, data = self._session.clients()
        amount, unit, _ = mapping.TIMEFRAMES[timeframe]
        # Alpaca stamps a daily bar at midnight New York, before the session open we filter on: ask a day early.
        ask_from = start - timedelta(days=1) if timeframe == "1d" else start
        frame = sdk.TimeFrame(amount, sdk.TimeFrameUnit[unit])
        request = sdk.StockBarsRequest(symbol_or_symbols=symbol, timeframe=frame, start=ask_from, end=end,
                                       feed=sdk.DataFeed(self.config.data_feed), adjustment=sdk.Adjustment.SPLIT)
        barset = await self._session.call(f"{timeframe} bars {symbol}", data.get_stock_bars, request)
        out = []
        for raw in barset.data.get(symbol, []):
            bar, complete_at = mapping.bar(symbol, raw, timeframe, self.calendar)
            if start <= bar.start < end and complete_at <= end:
                out.append(bar)
        return sorted(out, key=lambda b: b.start)

    # ------------------------------------------------------------ history for the bar store (history.py)
    async def _list_securities(self, spec: UniverseSpec) -> list[Listing]:
        return await self.history.list_securities(spec)

    def _daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        return self.history.daily_history(wanted, end)

    # ------------------------------------------------------------ account
    async def _get_account(self) -> Account:
        _, trading, _ = self._session.clients()
        return mapping.account(await self._session.call("account", trading.get_account))

    async def _get_positions(self) -> list[Position]:
        """Long positions as positive share counts; a short one (opened outside Catalyst) shows negative."""
        _, trading, _ = self._session.clients()
        rows = await self._session.call("positions", trading.get_all_positions)
        return [mapping.position(p) for p in rows if mapping.value(p.asset_class) == "us_equity"]

    async def _get_position(self, symbol: str) -> Position | None:
        """GET /v2/positions/{symbol}: one position, however many the account holds (404: none). What an exit reads
        before it sells: the row is kept for that sell's check of the shares free (`_shares`), so the exit waits for
        Alpaca once before its order leaves, not twice."""
        row = await self._position_row(symbol)
        self.sell_checks.keep(symbol, row)
        if row is None:
            return None
        return mapping.position(row) if mapping.value(row.asset_class) == "us_equity" else None

    async def _position_row(self, symbol: str) -> Any | None:
        _, trading, _ = self._session.clients()
        try:
            return await self._session.call(f"position {symbol}", trading.get_open_position, symbol)
        except NotFound:
            return None

    # ------------------------------------------------------------ orders
    async def _place_order(self, order: OrderRequest) -> OrderResult:
        self._refuse_before_sending(order)
        if order.side is OrderSide.SELL:
            repeat = await self._check_sellable(order)
            if repeat is not None:
                return repeat
        sdk, trading, _ = self._session.clients()
        coid = order.client_order_id
        try:
            raw = await self._session.call(f"order {coid}", trading.submit_order, mapping.order_request(sdk, order),
                                   resend=False, entry=True)
        except AlpacaRefused as exc:
            if DUPLICATE_ID in exc.message.lower():
                existing = await self._get_order_by_client_id(coid)
                if existing is not None:
                    return existing
            raise OrderRejected(f"{exc.message} (Alpaca HTTP {exc.status})", client_order_id=coid) from exc
        except AnswerLost as exc:
            return await self._after_lost_answer(coid, exc)
        result = await self._result(raw)
        if result.status is OrderStatus.REJECTED:
            raise OrderRejected(result.reason or "rejected by Alpaca", client_order_id=coid)
        return result

    def _supports_stop_orders(self) -> bool:
        return True

    def _refuse_before_sending(self, order: OrderRequest) -> None:
        for name, price in (("limit price", order.limit_price), ("stop price", order.stop_price)):
            if price is not None and not is_on_tick(price, "us"):
                raise OrderRejected(
                    f"{name} {price} is not on the US tick grid for {order.symbol} (sub-penny: $0.01 steps at or "
                    f"above $1, $0.0001 below; nearest valid: {round_to_tick(price, 'us', 'down')} or "
                    f"{round_to_tick(price, 'us', 'up')}); not sent to Alpaca", client_order_id=order.client_order_id)
        if order.order_type is OrderType.STOP and order.side is OrderSide.BUY:
            raise OrderRejected(f"buy stop orders are not sent to Alpaca: it turns them into stop-limit orders (a limit "
                                f"4% above a stop under $50, 2.5% above one at or over $50), not the stop-market order "
                                f"asked for", client_order_id=order.client_order_id)
        if order.order_type is OrderType.MARKET:
            state = self.calendar.state(self.clock.now())
            if not state.is_open:
                raise OrderRejected(f"market closed ({state.status}); market orders are accepted only during "
                                    f"trading hours; next open {state.next_open.isoformat()}",
                                    client_order_id=order.client_order_id)

    async def _check_sellable(self, order: OrderRequest) -> OrderResult | None:
        """None when the position covers the sell; the existing order when this is a repeat; else OrderRejected.
        Shares an order being cancelled still holds (Alpaca's cancel is asynchronous: pending_cancel) are waited
        for, up to the request timeout: the monitor cancels its stop, then sells."""
        held, free = await self._shares(order.symbol)
        if order.quantity > free:
            held, free = await self._after_pending_cancels(order, held, free)
        if order.quantity <= free:
            return None
        existing = await self._get_order_by_client_id(order.client_order_id)
        if existing is not None:
            return existing
        raise OrderRejected(f"cannot sell {order.quantity} {order.symbol}: {held} held, {held - free} already in "
                            f"open sell orders (short selling is not supported)",
                            client_order_id=order.client_order_id)

    async def _shares(self, symbol: str) -> tuple[int, int]:
        """(shares held, shares free to sell: not held by open sell orders)."""
        fresh, pos = self.sell_checks.take(symbol)     # what an exit's get_position read just now, used once
        if not fresh:
            pos = await self._position_row(symbol)
        if pos is None:
            return 0, 0
        held = mapping.shares(pos.qty)
        return held, mapping.shares(pos.qty_available) if pos.qty_available is not None else held

    async def _after_pending_cancels(self, order: OrderRequest, held: int, free: int) -> tuple[int, int]:
        """(held, free) once the sells being cancelled that stand between `order` and enough free shares are gone,
        or as they stand when none do (or after the request timeout)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.timeout_seconds
        while loop.time() < give_up:
            cancelling = sum(mapping.shares(o.qty) - mapping.shares(o.filled_qty or 0)
                             for o in await self._list_orders("open")
                             if o.symbol == order.symbol and mapping.value(o.side) == "sell"
                             and mapping.order_status(o) is OrderStatus.CANCEL_PENDING)
            if not cancelling or free + cancelling < order.quantity:
                break
            log.info("alpaca sell %s: waiting for %d %s shares an order being cancelled still holds",
                     order.client_order_id, cancelling, order.symbol)
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            held, free = await self._shares(order.symbol)
            if order.quantity <= free:
                break
        return held, free

    async def _after_lost_answer(self, coid: str, lost: BrokerUnavailable) -> OrderResult:
        """The order may or may not have reached Alpaca: ask by client_order_id instead of guessing."""
        try:
            found = await self._get_order_by_client_id(coid)
        except BrokerError as exc:
            raise BrokerUnavailable(f"{lost}; looking the order up by client_order_id {coid} failed too ({exc}): "
                                    f"reconcile before resending") from lost
        if found is None:
            raise BrokerUnavailable(f"{lost}; Alpaca has no order {coid} (yet), so treat it as not placed: "
                                    f"resending the same client_order_id cannot make a second order") from lost
        log.warning("alpaca order %s: the answer was lost (%s) but the order is at Alpaca: %s", coid, lost,
                    found.status.value)
        return found

    async def _cancel_order(self, order_id: str) -> bool:
        raw = await self._raw_order(order_id)
        if raw is None:
            return False
        status = mapping.order_status(raw)
        if status in _CANCELLING:
            return True
        if status.is_terminal:
            return False
        _, trading, _ = self._session.clients()
        try:
            await self._session.call(f"cancel {order_id}", trading.cancel_order_by_id, raw.id)
        except NotFound:
            return False
        except AlpacaRefused:                    # 422 not cancelable: it filled or finished meanwhile
            raw = await self._raw_order(order_id)
            return raw is not None and mapping.order_status(raw) in _CANCELLING
        return True

    async def _get_orders(self, *, open_only: bool) -> list[OrderResult]:
        raws = await self._list_orders("open" if open_only else "all")
        fills = await self._fills_for(raws)
        return [mapping.order_result(r, fills.get(str(r.id), [])) for r in raws]

    async def _get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        raw = await self._raw_order(client_order_id)
        return None if raw is None else await self._result(raw)

    # ------------------------------------------------------------ order internals
    async def _raw_order(self, client_order_id: str) -> Any | None:
        _, trading, _ = self._session.clients()
        try:
            return await self._session.call(f"order {client_order_id}", trading.get_order_by_client_id, client_order_id)
        except NotFound:
            return None

    async def _result(self, raw: Any) -> OrderResult:
        fills = await self._fills_for([raw])
        return mapping.order_result(raw, fills.get(str(raw.id), []))

    async def _list_orders(self, status: str) -> list[Any]:
        """Every order in `status` (open | all), oldest first, paging forward on submitted_at."""
        sdk, trading, _ = self._session.clients()
        seen: dict[str, Any] = {}
        after = None
        while True:
            request = sdk.GetOrdersRequest(status=sdk.QueryOrderStatus(status), limit=ORDERS_PAGE,
                                           direction=sdk.Sort.ASC, nested=False, after=after)
            page = await self._session.call(f"{status} orders", trading.get_orders, request)
            new = [o for o in page if str(o.id) not in seen]
            seen.update((str(o.id), o) for o in new)
            if len(page) < ORDERS_PAGE or not new:
                break
            after = max(o.submitted_at for o in page) - timedelta(microseconds=1)   # `after` is exclusive
        usable = [o for o in seen.values() if o.symbol and o.qty is not None]
        return sorted(usable, key=lambda o: (o.submitted_at, str(o.id)))

    async def _fills_for(self, raws: list[Any]) -> dict[str, list[Fill]]:
        """Executions per broker order id, from the FILL activities since the earliest of these orders."""
        want = {str(r.id): r for r in raws if mapping.shares(r.filled_qty or 0) > 0}
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
                found[oid].append(mapping.fill(act, by_id[oid]))
        for oid, fills in found.items():
            raw = by_id[oid]
            if (mapping.order_status(raw).is_terminal
                    and sum(f.quantity for f in fills) == mapping.shares(raw.filled_qty)):
                self._fills[oid] = fills                     # a finished order's executions never change
        return {**out, **found}

    async def _fill_activities(self, since: datetime) -> list[dict[str, Any]]:
        _, trading, _ = self._session.clients()
        params: dict[str, Any] = {"after": since.astimezone(timezone.utc).isoformat(), "direction": "asc",
                                  "page_size": ACTIVITIES_PAGE}
        out: list[dict[str, Any]] = []
        while True:
            page = await self._session.call("fill activities", trading.get, "/account/activities/FILL", dict(params))
            if not isinstance(page, list):
                raise BrokerUnavailable(f"alpaca: fill activities: expected a list, got {type(page).__name__}")
            out.extend(page)
            if len(page) < ACTIVITIES_PAGE:
                return out
            params["page_token"] = page[-1]["id"]
