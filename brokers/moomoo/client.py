"""`MoomooBroker`: Moomoo (Futu) through the OpenD gateway, a `BrokerClient` over moomoo-api, HKEX securities only.

The trading environment is SIMULATE (moomoo's paper account) unless the config says `trade_env: real`; then
`unlock_trade` runs with MOOMOO_TRADE_PASSWORD from `.env` (missing -> ConfigError).

Money safety on a margin account (a moomoo securities account usually is one): `Account.buying_power` is OpenD's
`power` capped at the cash (`power` is about twice the net assets there, a 50% financing margin) unless margin is
allowed (`allow_margin`, config `trading.allow_margin`); a sell larger than the shares free to sell (held, less
those in open sell orders) is refused with OrderRejected before it is sent, as OpenD would take it and go short.

Protective stops (`supports_stop_orders`): REAL accounts take a STOP order (OpenD's `OrderType.STOP`, a stop-market
order: `aux_price` is the trigger; it becomes a market order when the price trades at or through it, in the
continuous session) placed GTC (OpenD keeps a GTC order for at most 90 calendar days, then cancels it); it is listed
as a working order (order_type STOP, stop_price) and fills like a market order. Paper (SIMULATE) accounts take limit
and market day orders only, so there a STOP is refused before it is sent. A resting stop freezes no position at
OpenD until it triggers, so the oversell guard counts the shares in our working sells, stops included, itself.

Our client_order_id travels in the order's `remark` (OpenD has no client id field; at most 64 UTF-8 bytes).
`place_order` first looks for the remark in today's orders (idempotency); after a timeout or a lost connection
it looks again before giving up, so an order is never sent twice. `get_order_by_client_id` scans today's orders,
then the last 90 days of history. What we know about an order is merged from queries and pushes (`book.py`).

Fills: in the REAL environment from `deal_list_query` and deal pushes, `fill_id` = OpenD's deal id, fees from
`order_fee_query` (order level; OpenD has no per-deal fee, so `Fill.fee` is 0). OpenD's paper accounts answer
neither deals nor fees, so in SIMULATE fills are derived from the order's filled quantity, one per board lot
(`fill_id` "<order id>-L<n>"): every process sees the same ids for the same shares, so nothing is counted twice;
fees are 0.

Market data for the bar store (`list_securities`, `daily_history`) is `history.py`'s, inside OpenD's documented
limits (`limits.py`); waits go through the injected `sleep` on the injected clock. Pushed quotes for the monitor
(`open_quote_stream`) are `stream.py`'s: QUOTE subscriptions within the account's quota, kept at least a minute.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from brokers.base import BrokerClient, QuoteStream, SellCheckReads
from brokers.moomoo import mapping
from brokers.moomoo.book import OrderBook
from brokers.moomoo.history import OpenDHistory
from brokers.moomoo.limits import SNAPSHOT_CODES_MAX, Sleep
from brokers.moomoo.mapping import HKT, KLINE_TYPES, OrderView, to_moomoo_code
from brokers.moomoo.sdk import OpenDSession, is_unknown_symbol, push_handlers
from brokers.moomoo.stream import OpenDQuoteStream
from core.account import Account, Position
from core.clock import Clock, RealClock
from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.feeds import Listing, UniverseSpec
from core.instruments import Bar, Instrument, Quote, Timeframe
from core.orders import Fill, OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from core.errors import ConfigError
from core.config_model import MoomooConfig
from core.ticks import is_on_tick, round_to_tick

if TYPE_CHECKING:
    from core.calendar import MarketCalendar
    from core.settings import Settings

log = logging.getLogger(__name__)

REMARK_MAX_BYTES = 64
HISTORY_DAYS = 90
PRICE_Q = Decimal("0.000001")
STOP_ACCOUNTS = ("paper trading supports limit and market orders only, day orders only (moomoo OpenAPI docs, "
                 "Transaction related Q1); REAL accounts hold stop orders")


class MoomooBroker(BrokerClient):
    name = "moomoo"

    def __init__(self, config: MoomooConfig, *, log_dir: Path | str, clock: Clock, calendar: "MarketCalendar",
                 trade_password: str | None = None, request_timeout_seconds: float = 15.0,
                 reconnect_interval_seconds: float = 6.0, rate_clock: Clock | None = None, sleep: Sleep | None = None,
                 snapshot_batch: int = SNAPSHOT_CODES_MAX, allow_margin: bool = False) -> None:
        """`rate_clock` and `sleep` time OpenD's request-frequency windows and history quota: real time and
        asyncio.sleep unless given (a test passes a simulated clock and a sleep that moves it; `clock` stays the
        market's). `snapshot_batch` is the codes per snapshot request (400; 20 under HK BMP quote rights).
        `allow_margin`: report OpenD's margin `power` as buying power (otherwise it is capped at the cash)."""
        if config.trade_env == "real" and not trade_password:
            raise ConfigError("MOOMOO_TRADE_PASSWORD is not set: moomoo.trade_env is 'real', and OpenD needs the "
                              "trade password to unlock trading (put it in .env)")
        self.config = config
        self.environment = config.trade_env
        self.allow_margin = allow_margin
        self.log_dir = Path(log_dir)
        self.clock = clock
        self.calendar = calendar
        self._password = trade_password
        self._opend = OpenDSession(config, log_dir=self.log_dir, request_timeout_seconds=request_timeout_seconds,
                                   reconnect_interval_seconds=reconnect_interval_seconds)
        self._acc_id = 0
        self._book = OrderBook()
        self._instruments: dict[str, Instrument] = {}
        self._sim_fills: dict[str, list[Fill]] = {}
        # code -> (today's orders of the code, its position row): what an exit's get_position read, for the sell's
        # checks that follow
        self.sell_checks = SellCheckReads()
        self._rate_clock = rate_clock or RealClock()
        self.history = OpenDHistory(self._opend, clock=clock, calendar=calendar, rate_clock=self._rate_clock,
                                    sleep=sleep or asyncio.sleep, snapshot_batch=snapshot_batch)

    @classmethod
    def from_settings(cls, settings: "Settings", *, clock: Clock | None = None,
                      calendar: "MarketCalendar | None" = None, rate_clock: Clock | None = None,
                      sleep: Sleep | None = None) -> "MoomooBroker":
        """From config `moomoo:` (MOOMOO_HOST / MOOMOO_PORT in the environment override host and port) and
        `trading.allow_margin`, the trade password from MOOMOO_TRADE_PASSWORD, SDK logs under
        `settings.log_dir / "moomoo"`; `rate_clock` and `sleep` as in the constructor."""
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
                   request_timeout_seconds=config.request_timeout_seconds, rate_clock=rate_clock, sleep=sleep,
                   allow_margin=settings.config.trading.allow_margin)

    # ------------------------------------------------------------ lifecycle
    async def _connect(self) -> None:
        if self._opend.is_open:
            return
        await self._opend.open()
        try:
            for handler in push_handlers(self._opend.sdk, account_id=lambda: self._acc_id,
                                         on_order=self._on_order_push, on_deal=self._on_deal_push):
                self._t().set_handler(handler)
            self._acc_id = await self._pick_account()
            if self.environment == "real":
                try:
                    await self._opend.call("unlock_trade", self._t().unlock_trade, password=self._password)
                except BrokerUnavailable as exc:
                    raise BrokerUnavailable(f"{exc} (check MOOMOO_TRADE_PASSWORD)") from None
        except BaseException:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        await self._opend.close()

    async def _pick_account(self) -> int:
        """The first HK securities account of our environment (a paper STOCK account, not the option one)."""
        env = self._env
        for row in mapping.records(await self._opend.call("get_acc_list", self._t().get_acc_list)):
            if row["trd_env"] != env or "HK" not in row["trdmarket_auth"]:
                continue
            if env == "SIMULATE" and row["sim_acc_type"] not in ("STOCK", "STOCK_AND_OPTION"):
                continue
            return int(row["acc_id"])
        raise BrokerUnavailable(f"OpenD lists no {env} HK securities account for {self.config.security_firm}")

    def _q(self) -> Any:
        return self._opend.quote_context()

    def _t(self) -> Any:
        return self._opend.trade_context()

    def _acc(self) -> dict[str, Any]:
        return {"trd_env": self._env, "acc_id": self._acc_id}

    @property
    def _env(self) -> str:
        return "REAL" if self.environment == "real" else "SIMULATE"

    # ------------------------------------------------------------ market data
    async def _get_instrument(self, symbol: str) -> Instrument:
        code = to_moomoo_code(symbol)
        if code not in self._instruments:
            await self._snapshots([code])
        return self._instruments[code]

    async def _snapshots(self, codes: list[str]) -> dict[str, dict[str, Any]]:
        try:
            data = await self._opend.call("get_market_snapshot", self._q().get_market_snapshot, codes)
        except BrokerUnavailable as exc:
            if is_unknown_symbol(exc):
                raise InvalidRequest(f"unknown symbol: {exc}") from None
            raise
        rows = {row["code"]: row for row in mapping.records(data)}
        for code, row in rows.items():
            self._instruments[code] = mapping.instrument(code, row)
        missing = [c for c in codes if c not in rows]
        if missing:
            raise InvalidRequest(f"unknown symbol(s) at OpenD: {', '.join(missing)}")
        return rows

    async def _get_quote(self, symbol: str) -> Quote:
        code = to_moomoo_code(symbol)
        return mapping.quote(symbol, (await self._snapshots([code]))[code], self.clock.now())

    async def _get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """One snapshot request per 400 symbols; a batch refused for an unknown symbol is asked one by one, a batch
        that cannot be answered (OpenD down) is left out."""
        out: dict[str, Quote] = {}
        wanted = list(dict.fromkeys(symbols))
        for i in range(0, len(wanted), 400):
            chunk = wanted[i:i + 400]
            try:
                rows = await self._snapshots([to_moomoo_code(s) for s in chunk])
                out.update({s: mapping.quote(s, rows[to_moomoo_code(s)], self.clock.now()) for s in chunk})
            except InvalidRequest:
                out.update(await super()._get_quotes(chunk))
            except BrokerUnavailable as exc:
                log.warning("moomoo quotes for %d symbols unavailable: %s", len(chunk), exc)
        return out

    async def _get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        if timeframe not in KLINE_TYPES:
            raise InvalidRequest(f"unknown timeframe {timeframe!r}; expected one of {', '.join(KLINE_TYPES)}")
        ktype, minutes = KLINE_TYPES[timeframe]
        code = to_moomoo_code(symbol)
        end = min(end, self.clock.now())
        if end <= start:
            return []
        data = await self._opend.call("request_history_kline", self._q().request_history_kline, code,
                                      start=start.astimezone(HKT).strftime("%Y-%m-%d"),
                                      end=end.astimezone(HKT).strftime("%Y-%m-%d"), ktype=ktype, max_count=None)
        bars = []
        for row in mapping.records(data):
            label = mapping.hkt(row["time_key"])
            begin = mapping.bar_start(label, minutes, self.calendar)
            if begin is None or not start <= begin < end:
                continue
            done_at = label if minutes else self.calendar.session_bounds(self.calendar.local_date(begin))[-1][1]
            if done_at > end:
                continue
            bars.append(Bar(symbol=symbol, start=begin, open=mapping.dec(row["open"]), high=mapping.dec(row["high"]),
                            low=mapping.dec(row["low"]), close=mapping.dec(row["close"]),
                            volume=int(float(row["volume"]))))
        return sorted(bars, key=lambda b: b.start)

    async def _open_quote_stream(self) -> QuoteStream:
        """Pushed quotes over a connection of their own (stream.py): QUOTE subscriptions within the account's
        quota, each kept at least OpenD's minute."""
        if not self._opend.is_open:
            raise BrokerUnavailable("moomoo broker is not connected (call connect() first)")
        return await OpenDQuoteStream(self._opend, clock=self.clock, rate_clock=self._rate_clock).start()

    # ------------------------------------------------------------ history for the bar store (history.py)
    async def _list_securities(self, spec: UniverseSpec) -> list[Listing]:
        return await self.history.list_securities(spec)

    def _daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        return self.history.daily_history(wanted, end)

    # ------------------------------------------------------------ account
    async def _get_account(self) -> Account:
        data = await self._opend.call("accinfo_query", self._t().accinfo_query, currency="HKD", **self._acc())
        return mapping.account(mapping.records(data)[0], allow_margin=self.allow_margin)

    async def _get_positions(self) -> list[Position]:
        data = await self._opend.call("position_list_query", self._t().position_list_query, currency="HKD",
                                      **self._acc())
        out = [p for p in map(mapping.position, mapping.records(data)) if p is not None]
        return sorted(out, key=lambda p: p.symbol)

    async def _get_position(self, symbol: str) -> Position | None:
        """Trd_GetPositionList filtered to the symbol's code (filterConditions.codeList): one row, not the book.
        What an exit reads before it sells, so today's orders of the code are asked in the same round trip's wait
        and both are kept for that sell's checks (`_sell_check`): the exit waits for OpenD twice before its order
        leaves, not three times."""
        code = to_moomoo_code(symbol)
        today, row = reads = await self._orders_and_position(code)
        self.sell_checks.keep(code, reads)
        return None if row is None else mapping.position(row)

    async def _sell_check(self, code: str) -> tuple[list[OrderView], dict[str, Any] | None]:
        """Today's orders of `code` and its position row for a sell's checks: what get_position read for this code
        less than `sell_checks.fresh` seconds ago (used once: a second sell asks OpenD again), else asked now."""
        fresh, reads = self.sell_checks.take(code)
        return reads if fresh else await self._orders_and_position(code)

    async def _orders_and_position(self, code: str) -> tuple[list[OrderView], dict[str, Any] | None]:
        """Today's orders of `code` and its position row, asked together: one round trip's wait."""
        today, row = await asyncio.gather(self._today_orders(code), self._position_row(code))
        return today, row

    async def _position_row(self, code: str) -> dict[str, Any] | None:
        data = await self._opend.call("position_list_query", self._t().position_list_query, code=code,
                                      currency="HKD", **self._acc())
        return next((row for row in mapping.records(data) if row["code"] == code), None)

    # ------------------------------------------------------------ orders
    async def _place_order(self, order: OrderRequest) -> OrderResult:
        code = to_moomoo_code(order.symbol)
        if len(order.client_order_id.encode("utf-8")) > REMARK_MAX_BYTES:
            raise InvalidRequest(f"client_order_id {order.client_order_id!r} is longer than OpenD's remark "
                                 f"({REMARK_MAX_BYTES} bytes of UTF-8)")
        stop = order.order_type is OrderType.STOP
        if stop and not self._supports_stop_orders():
            raise OrderRejected(f"a stop order cannot be held by a moomoo {self.environment} account: {STOP_ACCOUNTS}",
                                client_order_id=order.client_order_id)
        _check_order(order, await self._get_instrument(order.symbol))
        # this code's orders and (a sell) its position, OpenD filtering both: asked together, one round trip's wait
        if order.side is OrderSide.SELL:
            today, held = await self._sell_check(code)
        else:
            self.sell_checks.drop(code)
            today, held = await self._today_orders(code), None

        # day orders are found in today's list; a GTC stop placed on an earlier day may be history already
        existing = _first(today, order.client_order_id) or (
            await self._find(order.client_order_id) if stop else None)
        if existing is not None:
            return await self._finish(existing)
        if order.side is OrderSide.SELL:
            self._check_sellable(order, today, held)
        sdk = self._opend.sdk
        kind = {OrderType.MARKET: sdk.OrderType.MARKET, OrderType.STOP: sdk.OrderType.STOP}.get(
            order.order_type, sdk.OrderType.NORMAL)
        trigger = {} if not stop else {"aux_price": float(order.stop_price)}
        try:
            data = await self._opend.call(
                "place_order", self._t().place_order, price=float(order.limit_price or order.stop_price or 0),
                qty=order.quantity, code=code,
                trd_side=sdk.TrdSide.BUY if order.side is OrderSide.BUY else sdk.TrdSide.SELL, order_type=kind,
                remark=order.client_order_id,
                time_in_force=sdk.TimeInForce.GTC if stop else sdk.TimeInForce.DAY, idempotent=False,
                order=True, **trigger, **self._acc())
        except OrderRejected as exc:
            raise OrderRejected(exc.reason, client_order_id=order.client_order_id) from None
        except BrokerUnavailable:
            found = await self._find(order.client_order_id, history=False)   # lost the reply, not the order?
            if found is None:
                raise
            log.warning("place_order %s: reply lost, found the order by its remark", order.client_order_id)
            return await self._finish(found)
        for row in mapping.records(data):      # the SDK's own follow-up query; just {order_id} if that failed
            if isinstance(row.get("code"), str) and isinstance(row.get("order_status"), str):
                self._book.merge(mapping.order_view(row))
        view = self._book.by_remark(order.client_order_id) or await self._find(order.client_order_id,
                                                                                  history=False)
        if view is None:
            raise BrokerUnavailable(f"moomoo place_order {order.client_order_id}: accepted, but OpenD does not "
                                    "list it yet; reconcile by client_order_id")
        return await self._finish(view)

    def _check_sellable(self, order: OrderRequest, today: list[OrderView], row: dict[str, Any] | None) -> None:
        """OrderRejected unless the position's shares free to sell cover the sell: on a margin account OpenD takes a
        larger one and the account goes short. Free: OpenD's `can_sell_qty` (`row`, the code's position row), and
        never more than the shares held less every working sell of ours, stops included (a conditional order freezes
        no position at OpenD until it triggers, so `can_sell_qty` does not count a resting stop; taking the smaller of
        the two counts no order twice whichever way OpenD counts it)."""
        code = to_moomoo_code(order.symbol)
        held, free = mapping.sellable(row) if row is not None else (0, 0)
        working = sum(v.quantity - v.filled_quantity for v in map(self._book.merge, today)
                      if to_moomoo_code(v.symbol) == code and v.side is OrderSide.SELL and v.status.is_open)
        free = max(min(free, held - working), 0)
        if order.quantity > free:
            raise OrderRejected(f"cannot sell {order.quantity} {order.symbol}: {held} held, {held - free} already in "
                                f"open sell orders (short selling is not supported); not sent to OpenD",
                                client_order_id=order.client_order_id)

    def _supports_stop_orders(self) -> bool:
        """REAL accounts hold stop orders (OrderType.STOP, trigger in aux_price, GTC for up to 90 days); paper
        (SIMULATE) accounts take limit and market day orders only."""
        return self.environment == "real"

    async def _cancel_order(self, order_id: str) -> bool:
        view = await self._find(order_id)
        if view is None:
            return False
        if view.status.is_terminal:
            return view.status is OrderStatus.CANCELLED
        try:
            await self._opend.call("modify_order(CANCEL)", self._t().modify_order,
                                   self._opend.sdk.ModifyOrderOp.CANCEL, view.broker_order_id, 0, 0,
                                   idempotent=False, order=True, **self._acc())
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

    async def _get_orders(self, *, open_only: bool) -> list[OrderResult]:
        views = await self._today_orders()
        if open_only:
            views = [v for v in views if v.status.is_open]
        return await self._results(views)

    async def _get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        view = await self._find(client_order_id)
        return None if view is None else (await self._results([view]))[0]

    # ------------------------------------------------------------ order internals
    async def _today_orders(self, code: str = "") -> list[OrderView]:
        """Today's orders; of one OpenD code when given (Trd_GetOrderList's filterConditions.codeList)."""
        data = await self._opend.call("order_list_query", self._t().order_list_query, code=code, **self._acc())
        return [self._book.merge(mapping.order_view(row)) for row in mapping.records(data)]

    async def _history_orders(self) -> list[OrderView]:
        today = self.clock.now().astimezone(HKT).date()
        data = await self._opend.call("history_order_list_query", self._t().history_order_list_query,
                                      start=f"{today - timedelta(days=HISTORY_DAYS)} 00:00:00",
                                      end=f"{today} 23:59:59", **self._acc())
        return [self._book.merge(mapping.order_view(row)) for row in mapping.records(data)]

    async def _find(self, client_order_id: str, *, history: bool = True) -> OrderView | None:
        """Our order by remark: today's orders (only its code's, when this process has seen the order: its code
        never changes), then all of today's, then (history=True) the last HISTORY_DAYS days."""
        known = self._book.by_remark(client_order_id)
        loads = [self._today_orders, self._history_orders][:2 if history else 1]
        if known is not None:
            code = to_moomoo_code(known.symbol)
            loads.insert(0, lambda: self._today_orders(code))
        for load in loads:
            found = _first(await load(), client_order_id)
            if found is not None:
                return self._book.merge(found)
        return None

    async def _finish(self, view: OrderView) -> OrderResult:
        result = (await self._results([view]))[0]
        if result.status is OrderStatus.REJECTED:
            raise OrderRejected(result.reason or "rejected by OpenD", client_order_id=result.client_order_id)
        return result

    async def _results(self, views: list[OrderView]) -> list[OrderResult]:
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
                updated_at=v.updated_at, fills=tuple(deals.get(v.broker_order_id, ())), stop_price=v.stop_price))
        return out

    async def _real_deals(self, views: list[OrderView]) -> dict[str, list[Fill]]:
        """Deals by order: today's deal list (and history for older orders) plus deals seen by push."""
        today = self.clock.now().astimezone(HKT).date()
        rows = mapping.records(await self._opend.call("deal_list_query", self._t().deal_list_query, **self._acc()))
        oldest = min((v.submitted_at for v in views if v.submitted_at), default=None)
        if oldest is not None and oldest.astimezone(HKT).date() < today:
            rows += mapping.records(await self._opend.call(
                "history_deal_list_query", self._t().history_deal_list_query,
                start=f"{oldest.astimezone(HKT).date()} 00:00:00", end=f"{today} 23:59:59", **self._acc()))
        out: dict[str, list[Fill]] = {}
        for v in views:
            mine = {str(d["deal_id"]): d for d in rows + self._book.deals_of(v.broker_order_id)
                    if str(d["order_id"]) == v.broker_order_id and d.get("status") != "CANCELLED"}
            out[v.broker_order_id] = sorted((mapping.deal_fill(deal_id, d, v) for deal_id, d in mine.items()),
                                            key=lambda f: (f.timestamp, f.fill_id))
        return out

    async def _real_fees(self, views: list[OrderView]) -> dict[str, Decimal]:
        ids = [v.broker_order_id for v in views]
        fees: dict[str, Decimal] = {}
        for i in range(0, len(ids), 400):
            data = await self._opend.call("order_fee_query", self._t().order_fee_query,
                                          order_id_list=ids[i:i + 400], **self._acc())
            for row in mapping.records(data):
                fees[str(row["order_id"])] = mapping.dec(row["fee_amount"]) or Decimal(0)
        return fees

    async def _sim_fills_of(self, view: OrderView) -> list[Fill]:
        """Paper accounts report no deals: one fill per board lot of the filled quantity, ids fixed by lot number,
        each new lot priced so that all fills average to OpenD's average fill price."""
        view = self._book.merge(view)
        known = self._sim_fills.setdefault(view.broker_order_id, [])
        if view.filled_quantity <= sum(f.quantity for f in known) or view.avg_fill_price is None:
            return list(known)
        lot = (await self._get_instrument(view.symbol)).lot_size
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
            self._book.merge(mapping.order_view(row))
        except Exception:   # a push must never kill the SDK's callback thread
            log.exception("moomoo order push not understood: %r", row)

    def _on_deal_push(self, row: dict[str, Any]) -> None:
        self._book.add_deal(row)


def _check_order(order: OrderRequest, inst: Instrument) -> None:
    """What OpenD would refuse anyway, said before the network: board lots and the HKEX spread table."""
    if order.quantity % inst.lot_size:
        raise OrderRejected(f"quantity {order.quantity} is not a multiple of the board lot {inst.lot_size} for "
                            f"{order.symbol}", client_order_id=order.client_order_id)
    for what, price in (("limit price", order.limit_price), ("stop price", order.stop_price)):
        if price is not None and not is_on_tick(price, inst.tick_scheme):
            raise OrderRejected(f"{what} {price} is not on the HKEX tick grid for {order.symbol} (nearest valid: "
                                f"{round_to_tick(price, inst.tick_scheme, 'down')} or "
                                f"{round_to_tick(price, inst.tick_scheme, 'up')})",
                                client_order_id=order.client_order_id)


def _first(views: list[OrderView], client_order_id: str) -> OrderView | None:
    """The first order placed under this remark (OpenD does not deduplicate remarks: more than one is logged)."""
    mine = sorted((v for v in views if v.client_order_id == client_order_id),
                  key=lambda v: (v.submitted_at or datetime.min.replace(tzinfo=timezone.utc)))
    if len(mine) > 1:
        log.error("%d moomoo orders carry remark %s; using the first (%s)", len(mine), client_order_id,
                  mine[0].broker_order_id)
    return mine[0] if mine else None
