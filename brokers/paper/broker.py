"""The paper broker: a simulated exchange account, a peer of the live brokers behind `BrokerClient`.

State (cash, orders, fills, positions) lives in the `paper_*` tables, so cron runs, the monitor daemon and a
person with psql all see one account, and it survives restarts. Every change runs in a transaction holding
the account row lock, which serialises concurrent processes.

Matching is driven by the injected clock: whenever the broker is called, resting orders are matched against
the completed bars of the feed's resolution (`_resolution`: one minute unless the feed says otherwise) since they
were last matched. Bars (and quotes) change only at minute boundaries,
so a process that has already matched within the current minute reads without matching again: a read is then
one statement (one snapshot), with no lock, and may miss, until the next minute, a fill due to an order another
process placed meanwhile. Every change (placing, cancelling) matches everything first, under the lock, so no
decision is checked against an unmatched book.
- Market orders fill at once at the quote (ask for buys, bid for sells) worsened by `slippage_bps`, but not past
  the last completed bar the quote was built from; outside trading hours they are rejected (no surprise fill at
  tomorrow's open).
- Limit orders are day orders: they rest and fill when a bar trades through the limit (at the limit, or at the
  bar's open when it opens through it), and expire at the session's close.
- Stop orders (sells only: a protective stop) are good till cancelled. A bar that trades at or below the stop
  triggers it (`triggered_at`, the end of that bar); it then fills like a market sell: at the stop, or at the bar's
  open when the bar opened below it (a gap), slipped; what the volume cap leaves works on as a market sell.
- Every fill lies inside the bar it trades in and on the tick grid, and is never better than the quote
  (`paper.fill_prices`).
- A sell may not exceed the position less what open sell orders already hold (stops included): Alpaca's
  "insufficient qty available", as a margin venue does it; no short selling.
- No order takes more than `max_volume_participation` of a bar's volume; the rest waits for later bars
  (partial fills).
- Lot size and tick size are enforced; fees come from `paper.fees`; resubmitting a client_order_id returns the
  first order, never a second one.
- `open_quote_stream` pushes the followed symbols' quotes from the feed (`paper.stream`), no quota.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, AsyncIterator, Sequence

from core.account import Account, Position
from core.instruments import Bar, Instrument, Quote, Timeframe
from brokers.base import BrokerClient
from core.errors import BrokerUnavailable, InvalidRequest, OrderRejected
from core.feeds import Listing, PriceFeed, UniverseSpec
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from brokers.paper import fill_prices
from brokers.paper.fees import fill_fees
from brokers.paper.history import PaperHistory
from brokers.paper.ledger import (ACCOUNT, POSITION, RESTING, RESULTS, SET_STATUS, AccountLock, PaperFill, books_for,
                                  place, read_books, record_fill, to_result)
from brokers.paper.stream import PaperQuoteStream
from core.clock import Clock
from core.config_model import PaperConfig
from core.ticks import is_on_tick, round_to_tick

if TYPE_CHECKING:
    import asyncpg

    from core.calendar import MarketCalendar

# Book depth at the touch, for an order that is marketable when placed: this many minutes of recent volume.
DEPTH_MINUTES = 5
MINUTE = timedelta(minutes=1)
_TIMEFRAMES = {m: (tf, timedelta(minutes=m)) for m, tf in ((1, "1m"), (5, "5m"), (15, "15m"), (30, "30m"), (60, "1h"))}
PRICE_Q = Decimal("0.000001")
OPEN_STATUSES = ("submitted", "partially_filled")


class PaperBroker(BrokerClient):
    name = "paper"
    environment = "paper"
    shares_our_database = True           # its books are tables of our database (base.both)

    def __init__(self, pool: "asyncpg.Pool", market: PriceFeed, clock: Clock,
                 calendar: "MarketCalendar", *, account_id: str, currency: str, config: PaperConfig,
                 reads=None) -> None:
        self.pool = pool
        # where the account's rows are read outside a transaction: the pool, or (a process that alone writes this
        # account) runtime.lane_pool.SoleReads, which serves a read again while nothing has been written since
        self.reads = reads if reads is not None else pool
        self.market = market
        self.clock = clock
        self.calendar = calendar
        self.account_id = account_id
        self.currency = currency
        self.config = config
        self._matched_minute: datetime | None = None    # resting orders are matched up to this minute
        self.history = PaperHistory(market, clock=clock, calendar=calendar)     # listings and bars for the store

    # ------------------------------------------------------------ lifecycle
    async def _connect(self) -> None:
        try:
            await self.pool.execute(
                "INSERT INTO paper_accounts (agent_id, currency, cash, initial_cash) VALUES ($1, $2, $3, $3) "
                "ON CONFLICT (agent_id) DO NOTHING", self.account_id, self.currency, self.config.initial_cash)
        except OSError as exc:
            raise BrokerUnavailable(f"paper broker: database unavailable: {exc}") from exc

    async def _disconnect(self) -> None:
        return None  # the pool belongs to the caller

    # ------------------------------------------------------------ market data
    async def _get_instrument(self, symbol: str) -> Instrument:
        try:
            return self.market.instrument(symbol)
        except KeyError:
            raise InvalidRequest(f"unknown symbol {symbol!r}") from None

    async def _get_quote(self, symbol: str) -> Quote:
        await self._get_instrument(symbol)
        return self.market.quote(symbol, self.clock.now())

    async def _get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Every known symbol's quote at one instant (the monitor's batch); unknown symbols are left out."""
        now, market, out = self.clock.now(), self.market, {}
        for symbol in symbols:
            try:
                market.instrument(symbol)
            except KeyError:
                continue
            out[symbol] = market.quote(symbol, now)
        return out

    async def _open_quote_stream(self) -> PaperQuoteStream:
        return PaperQuoteStream(self.market, self.clock)

    async def _get_bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> Sequence[Bar]:
        await self._get_instrument(symbol)
        return self.market.bars(symbol, timeframe, start, min(end, self.clock.now()))

    async def _list_securities(self, spec: UniverseSpec) -> list[Listing]:
        return await self.history.list_securities(spec)

    def _daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        return self.history.daily_history(wanted, end)

    # ------------------------------------------------------------ account
    async def _get_account(self) -> Account:
        return (await self._get_account_and_positions())[0]

    async def _get_account_and_positions(self) -> tuple[Account, list[Position]]:
        """Cash, holdings and open buy orders in one statement: one consistent view, no lock."""
        now, row = await self._read_matched(ACCOUNT)
        positions = [Position(symbol=symbol, quantity=qty, avg_price=avg,
                              market_price=self.market.quote(symbol, now).last)
                     for symbol, qty, avg in row["positions"]]
        cash = row["cash"]
        value = sum((p.market_price * p.quantity for p in positions), Decimal(0))
        account = Account(currency=self.currency, cash=cash, buying_power=cash - self._reserve(row["buys"], now),
                          equity=cash + value)
        return account, positions

    async def _read_matched(self, query: str, *args) -> tuple[datetime, "asyncpg.Record"]:
        """(now, the row of `query`) over `paper_accounts a` ($1 the account, then `args`), a query that also says
        whether any order rests: when one does, it is matched up to now and the row read again."""
        now = self.clock.now()
        row = await self._fetchrow(query, self.account_id, *args)
        if row is None:
            raise InvalidRequest("paper account does not exist: call connect() first")
        if row["resting"] and self._matched_minute != _minute(now):   # orders rest: matched up to now, read again
            now = await self._catch_up(resting=True)
            row = await self._fetchrow(query, self.account_id, *args)
        else:
            await self._catch_up(resting=row["resting"])     # nothing to match: no statement
        return now, row

    async def _get_positions(self) -> list[Position]:
        return (await self._get_account_and_positions())[1]

    async def _get_position(self, symbol: str) -> Position | None:
        """One row and one quote, however many positions the account holds; read with whether any order rests (to
        be matched first), as the account is."""
        now, row = await self._read_matched(POSITION, symbol)
        if row["quantity"] is None:
            return None
        return Position(symbol=symbol, quantity=row["quantity"], avg_price=row["avg_price"],
                        market_price=self.market.quote(symbol, now).last)

    # ------------------------------------------------------------ orders
    async def _place_order(self, order: OrderRequest) -> OrderResult:
        async with self._locked(books_for(order)) as (conn, now, books):
            reason, known = await self._rejection(conn, order, now, books)
            if known is None:                  # not asked with the rejection's own read
                known = await self._order_row(conn, order.client_order_id) is not None
            if known:                          # sent before: its own answer, as it stands
                result = await self._result(conn, order.client_order_id)
            elif reason is None and order.order_type is not OrderType.STOP:   # a stop rests until a bar crosses it
                result = await self._arrive(conn, order, now)
            else:                              # refused or resting: the row as written (no fill yet)
                result = to_result(await self._insert_order(conn, order, now, reason))
        if result.status is OrderStatus.REJECTED:
            raise OrderRejected(result.reason or "rejected", client_order_id=order.client_order_id)
        return result

    def _supports_stop_orders(self) -> bool:
        return True

    async def _cancel_order(self, order_id: str) -> bool:
        async with self._locked() as (conn, now, _books):
            row = await self._order_row(conn, order_id)
            if row is None:
                return False
            if row["status"] in OPEN_STATUSES:
                await conn.execute("UPDATE paper_orders SET status = 'cancelled', reason = 'cancelled by request', "
                                   "updated_at = $3 WHERE agent_id = $1 AND client_order_id = $2",
                                   self.account_id, order_id, now)
                return True
            return row["status"] == "cancelled"

    async def _get_orders(self, *, open_only: bool) -> list[OrderResult]:
        await self._catch_up()
        rows = await self._fetch(RESULTS + ("AND o.status IN ('submitted', 'partially_filled') " if open_only else "")
                                 + "ORDER BY o.submitted_at, o.broker_order_id", self.account_id)
        return [to_result(r) for r in rows]

    async def _get_order_by_client_id(self, client_order_id: str) -> OrderResult | None:
        await self._catch_up()
        row = await self._fetchrow(RESULTS + "AND o.client_order_id = $2", self.account_id, client_order_id)
        return None if row is None else to_result(row)

    # ------------------------------------------------------------ internals
    async def _catch_up(self, resting: bool | None = None) -> datetime:
        """Match resting orders up to the clock unless this process already did within the current minute
        (`resting`: whether any order rests, when the caller has just read it; asked here otherwise)."""
        now = self.clock.now()
        if self._matched_minute != _minute(now):
            if resting is None:
                account = await self._fetchrow("SELECT " + RESTING + " FROM paper_accounts a WHERE a.agent_id = $1",
                                               self.account_id)
                if account is None:
                    raise InvalidRequest("paper account does not exist: call connect() first")
                resting = account["resting"]
            if not resting:
                self._matched_minute = _minute(now)      # nothing rests: nothing to match, no lock needed
                return now
            async with self._locked() as (_conn, now, _books):
                pass
        return now

    async def _fetch(self, query: str, *args):
        try:
            return await self.reads.fetch(query, *args)
        except OSError as exc:
            raise BrokerUnavailable(f"paper broker: database unavailable: {exc}") from exc

    async def _fetchrow(self, query: str, *args):
        rows = await self._fetch(query, *args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def _locked(self, books: tuple[str, tuple] | None = None):
        """A transaction holding the account's row lock (ledger.AccountLock), resting orders matched up to now:
        gives (connection, now, books): `books` (ledger.books_for) read with the resting orders, in a statement that
        starts once the lock is granted; the row when nothing rested (else None: read them again)."""
        now = None

        async def match(conn):
            nonlocal now
            now = self.clock.now()
            return await self._match_all(conn, now, books)

        async with AccountLock(self.pool, self.account_id, match) as (conn, found):
            yield conn, now, found
        self._matched_minute = _minute(now)

    async def _order_row(self, conn, client_order_id: str):
        return await conn.fetchrow("SELECT * FROM paper_orders WHERE agent_id = $1 AND client_order_id = $2",
                                   self.account_id, client_order_id)

    def _reserve(self, buys, now: datetime) -> Decimal:
        """Cash held back for open buy orders: (symbol, quantity left, limit or None) each, fees included."""
        total = Decimal(0)
        for symbol, left, limit in buys:
            price = limit or self.market.quote(symbol, now).ask
            value = price * left
            total += value + fill_fees(self.config.fees, value=value, is_sell=False)
        return total

    async def _rejection(self, conn, order: OrderRequest, now: datetime, books=None) -> tuple[str | None, bool | None]:
        """(why the exchange / broker would refuse this order or None, whether its client_order_id is known here
        already: asked in the same read as the cash or the holding, None when there was no read). `books`: that read
        made already (ledger.books_for), or None."""
        try:
            inst = self.market.instrument(order.symbol)
        except KeyError:
            return f"unknown symbol {order.symbol!r}", None
        if order.quantity % inst.lot_size:
            return (f"quantity {order.quantity} is not a multiple of the board lot {inst.lot_size} for "
                    f"{order.symbol}"), None
        for what, price in (("limit", order.limit_price), ("stop", order.stop_price)):
            if price is not None and not is_on_tick(price, inst.tick_scheme):
                return (f"{what} price {price} is not on the tick grid for {order.symbol} (nearest valid: "
                        f"{round_to_tick(price, inst.tick_scheme, 'down')} or "
                        f"{round_to_tick(price, inst.tick_scheme, 'up')})"), None
        if order.order_type is OrderType.MARKET and not self.calendar.is_open(now):
            state = self.calendar.state(now)
            return (f"market closed ({state.status}); market orders are accepted only during trading hours; "
                    f"next open {state.next_open.isoformat()}"), None
        quote = self.market.quote(order.symbol, now)
        if order.order_type is OrderType.STOP:
            if order.side is OrderSide.BUY:
                return "the paper venue takes sell stop orders only (a protective stop on a long position)", None
            if order.stop_price >= quote.bid:        # it would trigger at once (Alpaca: below the base price)
                return (f"a sell stop must be below the market: stop price {order.stop_price} is not below the "
                        f"bid {quote.bid} of {order.symbol}"), None
        row = books if books is not None else await read_books(conn, self.account_id, order)
        if order.side is OrderSide.BUY:
            price = order.limit_price or fill_prices.slipped(quote.ask, self.config.slippage_bps, inst.tick_scheme,
                                                             OrderSide.BUY)
            value = price * order.quantity
            need = value + fill_fees(self.config.fees, value=value, is_sell=False)
            available = row["cash"] - self._reserve(row["buys"], now)
            if need > available:
                return (f"insufficient buying power: order needs {need:.2f} {self.currency} including fees, "
                        f"{available:.2f} available"), row["known"]
        else:
            held, pending = row["held"], row["pending"]
            if order.quantity > held - pending:
                return (f"cannot sell {order.quantity} {order.symbol}: {held} held, {pending} already in open "
                        f"sell orders (short selling is not supported)"), row["known"]
        return None, row["known"]

    async def _insert_order(self, conn, order: OrderRequest, now: datetime, reason: str | None):
        """The next broker order number and the order row, in one statement; returns the row."""
        return await conn.fetchrow(
            """WITH seq AS (UPDATE paper_accounts SET order_seq = order_seq + 1, updated_at = now()
                            WHERE agent_id = $1 RETURNING order_seq)
               INSERT INTO paper_orders (agent_id, client_order_id, broker_order_id, symbol, side, order_type,
                   quantity, limit_price, stop_price, status, reason, submitted_at, matched_until, updated_at)
               SELECT $1, $2, 'PAPER-' || $1 || '-' || seq.order_seq, $3, $4, $5, $6, $7, $12, $8, $9, $10, $11, $10
               FROM seq RETURNING *""",
            self.account_id, order.client_order_id, order.symbol, order.side.value, order.order_type.value,
            order.quantity, order.limit_price, "rejected" if reason else "submitted", reason, now,
            _next_minute(now), order.stop_price)

    async def _match_all(self, conn, now: datetime, books: tuple[str, tuple] | None = None):
        """Every resting order matched up to `now` (under the lock); the `books` row (see `_locked`) when none
        rested, else None."""
        items, args = books if books is not None else ("", ())
        found = await conn.fetchrow("SELECT " + RESTING + (", " + items if items else "") + " FROM paper_accounts a "
                                    "WHERE a.agent_id = $1", self.account_id, *args)
        if found is None:
            raise InvalidRequest("paper account does not exist: call connect() first")
        if not found["resting"]:
            return found if books is not None else None
        rows = await conn.fetch("SELECT * FROM paper_orders WHERE agent_id = $1 AND status IN "
                                "('submitted', 'partially_filled') ORDER BY submitted_at, broker_order_id",
                                self.account_id)
        untouched: dict[str, datetime] = {}              # stops no bar crossed: only matched_until moves
        for row in rows:
            if row["order_type"] == "stop" and row["triggered_at"] is None:
                until = self._watch_stop(row, now)
                if until is None:
                    await self._match_order(conn, row, now)
                elif until > row["matched_until"]:
                    untouched[row["client_order_id"]] = until
            else:
                await self._match_order(conn, row, now)
        if untouched:                                    # one statement however many stops rest
            await conn.execute(
                "UPDATE paper_orders o SET matched_until = u.until FROM unnest($2::text[], $3::timestamptz[]) "
                "AS u(coid, until) WHERE o.agent_id = $1 AND o.client_order_id = u.coid", self.account_id,
                list(untouched), list(untouched.values()))

    def _watch_stop(self, row, now: datetime) -> datetime | None:
        """A resting stop's new matched_until when no bar since the last match crossed it; None when one did."""
        timeframe, size = self._resolution(row["symbol"])
        if now <= row["matched_until"]:
            return row["matched_until"]
        bars = self.market.bars(row["symbol"], timeframe, row["matched_until"], now)
        if any(bar.low <= row["stop_price"] for bar in bars):
            return None
        return bars[-1].start + size if bars else row["matched_until"]

    async def _arrive(self, conn, order: OrderRequest, now: datetime) -> OrderResult:
        """An accepted order placed: a market order, or a limit order that is marketable against the quote, takes
        liquidity now (capped by the recent minutes' volume); the rest works against later bars. Written with what
        it took, in one statement (ledger.place)."""
        inst = self.market.instrument(order.symbol)
        side, limit = order.side, order.limit_price
        quote = self.market.quote(order.symbol, now)
        touch = quote.ask if side is OrderSide.BUY else quote.bid
        marketable = limit is None or (side is OrderSide.BUY and limit >= touch) or (
            side is OrderSide.SELL and limit <= touch)
        fill, fee = None, Decimal(0)
        if marketable and self.calendar.is_open(now):
            # The depth resting at the touch is taken as the last DEPTH_MINUTES minutes of traded volume.
            timeframe, size = self._resolution(order.symbol)
            recent = self.market.bars(order.symbol, timeframe, now - max(timedelta(minutes=DEPTH_MINUTES), size), now)
            qty = min(order.quantity, self._cap(sum(b.volume for b in recent), self.config.max_volume_participation,
                                                inst.lot_size))
            if qty > 0:
                price = touch if limit is not None else fill_prices.on_arrival(
                    touch, recent[-1], self.config.slippage_bps, inst.tick_scheme, side)
                fill = PaperFill(qty, price, now)
                fee = fill_fees(self.config.fees, value=price * qty, is_sell=side is OrderSide.SELL)
        taken = fill.quantity if fill is not None else 0
        status = "filled" if taken == order.quantity else "partially_filled" if taken else "submitted"
        return to_result(await place(conn, self.account_id, order, now, fill, fee, status, _next_minute(now)))

    async def _match_order(self, conn, row, now: datetime) -> None:
        """A working order matched against the bars completed since it was last matched."""
        inst = self.market.instrument(row["symbol"])
        scheme, slippage = inst.tick_scheme, self.config.slippage_bps
        side = OrderSide(row["side"])
        limit, stop = row["limit_price"], row["stop_price"]
        is_stop = row["order_type"] == OrderType.STOP.value
        triggered_at = row["triggered_at"]
        remaining = row["quantity"] - row["filled_quantity"]
        participation = self.config.max_volume_participation
        fills: list[PaperFill] = []
        matched_until = row["matched_until"]
        # A working order takes its share of the volume that trades at prices it accepts, accumulated
        # since it was placed (a stop: since it triggered): over many small bars it fills a lot at a time, as
        # a real working order does. A stop is good till cancelled; other orders end at the session close.
        timeframe, size = self._resolution(row["symbol"])
        expiry = None if is_stop else self._expiry(row["submitted_at"])
        end = now if is_stop else min(now, expiry)
        if end <= matched_until and (is_stop or now < expiry):
            return                                   # no bar since the last match, not expiring: nothing changes
        if not is_stop:
            first = _next_minute(row["submitted_at"])
        elif triggered_at is None:
            first = matched_until                    # nothing before it crossed the stop
        else:
            first = triggered_at - size              # from the bar that triggered it
        bars = self.market.bars(row["symbol"], timeframe, first, end) if end > matched_until else []
        on_arrival = 0 if is_stop else await conn.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM paper_fills WHERE agent_id = $1 AND client_order_id = $2 "
            "AND filled_at = $3", self.account_id, row["client_order_id"], row["submitted_at"])
        worked = row["filled_quantity"] - on_arrival          # filled from bars so far
        eligible_volume = 0
        for bar in bars:
            if is_stop and triggered_at is None:
                price = fill_prices.stop_triggered(bar, stop, slippage, scheme)
                if price is None:
                    continue
                triggered_at = bar.start + size      # known once the bar that crossed it completes
            else:
                price = fill_prices.in_bar(bar, side, limit, slippage, scheme)
                if price is None:
                    continue
            eligible_volume += bar.volume
            if bar.start < matched_until or remaining <= 0:
                continue                                     # matched on an earlier call
            qty = min(remaining, self._cap(eligible_volume, participation, inst.lot_size) - worked)
            if qty > 0:
                fills.append(PaperFill(qty, price, bar.start + size))
                remaining -= qty
                worked += qty
        if bars:
            matched_until = max(matched_until, bars[-1].start + size)

        for fill in fills:
            fee = fill_fees(self.config.fees, value=fill.price * fill.quantity, is_sell=side is OrderSide.SELL)
            await record_fill(conn, self.account_id, row, fill, fee)
        status = row["status"]
        filled_now = row["quantity"] - remaining
        if remaining == 0:
            status = "filled"
        elif filled_now > 0:
            status = "partially_filled"
        reason = row["reason"]
        if remaining > 0 and not is_stop and now >= expiry:
            status, reason = "expired", "day order expired at the session close"
        await conn.execute(SET_STATUS, self.account_id, row["client_order_id"], status, matched_until, reason, now,
                           triggered_at)

    def _resolution(self, symbol: str) -> tuple[str, timedelta]:
        """The bars the venue trades on: the feed's own resolution (one minute unless it says otherwise; an
        hourly file fills on its hourly bars, at each bar's end)."""
        minutes = getattr(self.market, "bar_minutes", lambda _s: 1)(symbol)
        return _TIMEFRAMES.get(minutes, ("1m", timedelta(minutes=1)))

    def _expiry(self, submitted_at: datetime) -> datetime:
        """Day orders end at the close of the session they were placed in (or the next one, if placed off-hours)."""
        state = self.calendar.state(submitted_at)
        if state.next_close is not None:
            return state.next_close
        return self.calendar.state(state.next_open).next_close or state.next_open

    @staticmethod
    def _cap(volume: int, participation: Decimal, lot: int) -> int:
        shares = int((Decimal(volume) * participation).to_integral_value(rounding=ROUND_DOWN))
        return shares - shares % lot

    async def _result(self, conn, client_order_id: str) -> OrderResult:
        return to_result(await conn.fetchrow(RESULTS + "AND o.client_order_id = $2", self.account_id, client_order_id))


def _minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def _next_minute(when: datetime) -> datetime:
    """Resting orders match bars that start after they were placed."""
    floor = when.replace(second=0, microsecond=0)
    return floor if floor == when else floor + MINUTE
