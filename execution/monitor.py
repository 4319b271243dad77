"""One pass over the open positions: quotes, exit signals, a decision, and exits through the one order path.

Order of work, so a crossed stop is never waiting behind slow analytics:
  1. quotes for every open position; the high-water mark rises with them (stored with the pass's status rows,
     in the same statement); price-only signals (the position's stop,
     stop loss, take profit, trailing stop) are evaluated and every "exit" is sent at once;
  1b. the protective stops at the broker follow the positions (execution/protection.py): placed where missing,
     raised with the trailing stop;
  2. for the rest, RSI(14) and patterns of the daily bars (cached per symbol until the next session close, the
     only time daily bars change) join the evaluation; "exit" is sent; "uncertain" (exactly one moderate signal) goes to the advisor.
The advisor is a cheap model (`ai.monitor_model`) within its own daily budget (`ai.monitor_daily_budget_usd`,
recorded in ai_usage with purpose 'monitor'); with no key, no budget left or an unusable answer it holds and
says why, and a "hold" stands for `monitor.advice_hold_minutes` while the signals stay the same. Every position
gets a `position_monitor_status` row per pass; every exit and every fresh answer in the uncertain band a
`decisions` row (engine 'monitor').

Between passes, pushed prices (execution/quote_watch.py) come to `on_price`: the price-only signals of that one
position are evaluated on each price and an exit is sent at once. One exit per symbol at a time (a lock per
symbol), whichever path saw the crossing first.

Used by the daemon (position_monitor_service.py) and right after every trade cycle that placed orders.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Protocol

import signals
from core.clock import Clock
from core.instruments import Quote
from core.logcontext import log_context
from execution.protection import Protection
from execution.store import Store

if TYPE_CHECKING:
    from data.market import MarketData
    from execution.trader import Trader

log = logging.getLogger("catalyst.monitor")

YIELD_EVERY = 20          # positions judged in a pass between chances for the pushed-price path to run

EXIT_INTENT = {"hard_stop": "stop_loss", "stop_loss": "stop_loss", "take_profit": "take_profit",
               "trailing_stop": "trailing_stop"}


@dataclass
class PassResult:
    checked: int = 0
    exits: list[dict] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Advisor(Protocol):
    """Asked about a position in the uncertain band (engines/advisor.py is the real one)."""

    async def advise(self, view: signals.PositionView, report: signals.SignalReport) -> Any: ...


class PositionMonitor:
    """Holds what outlives one pass: the advisor and its standing "hold" answers. (Indicators are cached per
    session by MarketData.) Exits go through the Trader it is given, never around it."""

    def __init__(self, *, trader: "Trader", market: "MarketData", store: Store, clock: Clock,
                 thresholds: signals.SignalThresholds, advisor: Advisor, advice_hold: timedelta,
                 protection: Protection | None = None) -> None:
        self.trader = trader
        self.market = market
        self.store = store
        self.clock = clock
        self.thresholds = thresholds
        self.advisor = advisor
        self.advice_hold = advice_hold
        self.protection = protection
        # position_id -> (the signals a "hold" was about, when it lapses)
        self._standing: dict[int, tuple[tuple, datetime]] = {}
        # symbol -> its position row as of the last pass (what pushed prices are judged against)
        self._rows: dict[str, Any] = {}
        self._watched: frozenset[str] | None = None     # watched_symbols(), until _rows changes
        # position_id -> the highest price pushed since the position was opened (the high-water mark rises with
        # every pushed price, not only with the prices a pass sees; the next pass stores it)
        self._highs: dict[int, Any] = {}
        # position_id -> (what its last price-only report was worked out from, the view, the report): _judge
        self._judged: dict[int, tuple] = {}
        # symbol -> (the high-water mark, low, high): the row's price-only exit band (signals.price_exit_band) as of
        # that high; a pushed price inside it is no exit, and only one outside it is evaluated
        self._bands: dict[str, tuple[Any, Any, Any]] = {}
        self._exit_locks: dict[str, asyncio.Lock] = {}
        # symbol -> (MarketData's (rsi, patterns) pair, the RSI reading, the PatternSet): see _indicators
        self._ready: dict[str, tuple] = {}
        self._pushed: Callable[[], dict[str, Quote]] | None = None
        self.stream_exits = 0

    def use_pushed_quotes(self, source: Callable[[], dict[str, Quote]]) -> None:
        """`source()`: the latest price a healthy quote stream pushed, by symbol. A pass takes those instead of
        asking the venue again and asks only for the rest (what the stream does not hold), so the poll's cost no
        longer grows with the streamed positions."""
        self._pushed = source

    # ------------------------------------------------------------ pushed prices
    def watched_symbols(self) -> frozenset[str]:
        """The symbols whose prices should be pushed: open positions with no exit working. The same object until the
        positions change (the quote watch asks on every pushed price)."""
        if self._watched is None:
            self._watched = frozenset(s for s, r in self._rows.items() if not r["exit_working"])
        return self._watched

    async def on_price(self, quote: Quote) -> dict | None:
        """One pushed price: the position's price-only signals, and an exit at once when one is strong."""
        crossed = self.judge(quote)
        return None if crossed is None else await self.exit_pushed(*crossed)

    def judge(self, quote: Quote) -> tuple[Any, signals.SignalReport] | None:
        """The price-only verdict on one pushed price, without waiting for anything: (the position's row, the report)
        when it says exit (the symbol is then taken out of the watched rows: one attempt per symbol until the next
        pass re-reads it), else None. The exit itself is `exit_pushed`: the quote watch runs it beside the stream so
        the next pushed price (another position's stop, in a falling market) is judged meanwhile."""
        row = self._rows.get(quote.symbol)
        if row is None or row["exit_working"] or quote.last <= 0:
            return None
        hwm = self._high(row, quote.last)
        view = None
        band = self._bands.get(quote.symbol)
        if band is None or band[0] != hwm:          # worked out again only when the high has risen
            view = self._view(row, quote.last, hwm)
            band = self._bands[quote.symbol] = (hwm, *signals.price_exit_band(view, self.thresholds))
        if band[1] < quote.last < band[2]:
            return None                    # inside the band: no price-only exit (most pushed prices end here)
        view = view or self._view(row, quote.last, hwm)
        report = signals.evaluate(view, self.thresholds, now=self.clock.now())
        if report.action != "exit" or self._rows.pop(quote.symbol, None) is None:
            return None                    # popped: one attempt per symbol until the next pass re-reads it
        self._watched = None
        return row, report

    async def exit_pushed(self, row, report: signals.SignalReport) -> dict | None:
        """The exit `judge` called for, through the one order path."""
        result = PassResult(checked=1)
        await self._exit(row, report, result, source="pushed price")
        self.stream_exits += len(result.exits)
        return result.exits[0] if result.exits else None

    @staticmethod
    def _view(row, price, high) -> signals.PositionView:
        return signals.PositionView(symbol=row["symbol"], quantity=row["quantity"], entry_price=row["avg_entry_price"],
                                    price=price, high_water=high, stop_loss=row["stop_loss"],
                                    take_profit=row["take_profit"], opened_at=row["opened_at"])

    def _judge(self, row, price, high, now: datetime) -> tuple[signals.PositionView, signals.SignalReport]:
        """The position's view and price-only report: worked out again only when the price, the high-water mark or
        the position changed since the last pass (about half the positions' prices do not move between two passes),
        otherwise the last report as of now (signals.as_of)."""
        key = (str(price), str(high), row["quantity"], row["avg_entry_price"], row["stop_loss"], row["take_profit"],
               row["opened_at"], self.thresholds)        # (prices as text: 10.5 and 10.50 read differently)
        last = self._judged.get(row["position_id"])
        if last is not None and last[0] == key:
            return last[1], signals.as_of(last[2], last[1], now)
        view = self._view(row, price, high)
        report = signals.evaluate(view, self.thresholds, now=now)
        self._judged[row["position_id"]] = (key, view, report)
        return view, report

    def _high(self, row, price):
        """The position's high-water mark with `price` seen: the stored mark (the entry before any), every price
        pushed since, and this one."""
        pid = row["position_id"]
        high = max(row["high_water_mark"] or row["avg_entry_price"], self._highs.get(pid, price), price)
        self._highs[pid] = high
        return high

    async def check_gap(self, since: datetime) -> PassResult:
        """After a stream failed: did a price cross a stop between the last pushed price and now? The lowest
        minute-bar low of each watched position since `since` is judged like a price (an exit if it was through a
        stop: a stop at the venue would have fired on it)."""
        result = PassResult()
        now = self.clock.now()
        for symbol in sorted(self.watched_symbols()):
            row = self._rows[symbol]
            try:
                bars = await self.trader.broker.get_bars(symbol, "1m", since - timedelta(minutes=1), now)
            except Exception as exc:
                result.errors.append(f"{symbol}: bars for the stream gap unavailable ({exc})")
                continue
            lows = [b.low for b in bars if b.low > 0]
            if not lows:
                continue
            low = min(lows)
            result.checked += 1
            view = signals.PositionView(symbol=symbol, quantity=row["quantity"], entry_price=row["avg_entry_price"],
                                        price=low, high_water=self._high(row, low),
                                        stop_loss=row["stop_loss"], take_profit=row["take_profit"])
            report = signals.evaluate(view, self.thresholds, now=now)
            if report.action == "exit" and report.strong:
                await self._exit(row, report, result, source=f"the stream gap since {since:%H:%M:%S} (low {low})")
        return result

    async def run_pass(self) -> PassResult:
        t0 = time.perf_counter()
        result = PassResult()
        rows = await self.store.positions_to_monitor()
        if not rows:
            self._rows, self._watched, self._bands, self._highs, self._ready = {}, None, {}, {}, {}
            self._judged = {}
            if self.protection is not None:        # stops whose position is gone
                await self._protect([], {}, {}, result)
            result.seconds = time.perf_counter() - t0
            return result
        now = self.clock.now()
        open_ids = {r["position_id"] for r in rows}
        self._standing = {k: v for k, v in self._standing.items() if k in open_ids}
        self._highs = {k: v for k, v in self._highs.items() if k in open_ids}
        self._judged = {k: v for k, v in self._judged.items() if k in open_ids}
        self._rows, self._watched, self._bands = {r["symbol"]: r for r in rows}, None, {}
        self._ready = {k: v for k, v in self._ready.items() if k in self._rows}
        quotes = await self._quotes([r["symbol"] for r in rows], result)
        pending: list[tuple[Any, signals.PositionView, signals.SignalReport]] = []
        # position_id -> its status row; every evaluated position has one (and its raised high-water mark), written
        # even when something later in the pass fails
        statuses: dict[int, tuple] = {}
        try:
            # 1. prices first: a crossed stop is sent before anything slower happens
            for i, row in enumerate(rows):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)         # a pushed price waiting to be judged goes first
                quote = quotes.get(row["symbol"])
                if quote is None:
                    continue
                if quote.last <= 0:
                    result.errors.append(f"{row['symbol']}: unusable quote (last {quote.last})")
                    continue
                hwm = self._high(row, quote.last)             # stored with the status
                view, report = self._judge(row, quote.last, hwm, now)
                result.checked += 1
                pid = row["position_id"]
                if row["exit_working"]:           # an exit is already at the broker: watch it, do not repeat it
                    statuses[pid] = self._status_row(row, view, report, "exit working")
                elif report.action == "exit":
                    statuses[pid] = self._status_row(row, view, report, await self._exit(row, report, result))
                else:
                    statuses[pid] = self._status_row(row, view, report, "not finished: the pass stopped before its indicators")
                    pending.append((row, view, report))
            # 1b. the protective stops at the broker follow the positions
            if self.protection is not None:
                exited = {e["symbol"] for e in result.exits}
                await self._protect([r for r in rows if r["symbol"] not in exited],
                                    {s: q.last for s, q in quotes.items()},
                                    {pid: st[6] for pid, st in statuses.items()}, result)
            # 2. indicators for the rest
            for i, (row, view, report) in enumerate(pending):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                rsi, patterns = await self._indicators(row["symbol"])
                if signals.indicators_matter(self.thresholds, rsi=rsi, patterns=patterns):
                    report = signals.with_indicators(report, view, self.thresholds, rsi=rsi, patterns=patterns)
                recommendation = report.action
                if report.action == "exit":
                    recommendation = await self._exit(row, report, result)
                elif report.action == "uncertain":
                    result.uncertain.append(row["symbol"])
                    recommendation = await self._uncertain(row, view, report, result, now)
                statuses[row["position_id"]] = self._status_row(row, view, report, recommendation)
        finally:
            await self._write_statuses(list(statuses.values()))
        result.seconds = time.perf_counter() - t0
        if result.exits or result.errors:
            log.info("monitor pass: %d checked, %d exits, %d uncertain, %d errors in %.0f ms", result.checked,
                     len(result.exits), len(result.uncertain), len(result.errors), result.seconds * 1000)
        return result

    async def _uncertain(self, row, view, report, result: PassResult, now: datetime) -> str:
        """Ask the advisor, unless its "hold" on these same signals still stands (one call and one decision row
        per `advice_hold_minutes`, not one per poll)."""
        signature = tuple((s.kind, s.strength) for s in report.signals)
        standing = self._standing.get(row["position_id"])
        if standing is not None and standing[0] == signature and now < standing[1]:
            return f"uncertain -> hold (standing advice until {standing[1]:%H:%M} UTC)"
        advice = await self.advisor.advise(view, report)
        await self.trader.record_decision(row["symbol"], f"monitor_{advice.action}", advice.reason,
                                            details={"signals": report.to_dict(), "advisor": advice.source})
        if advice.action == "exit":
            self._standing.pop(row["position_id"], None)
            return await self._exit(row, report, result, advised=advice.reason)
        if self.advice_hold:
            self._standing[row["position_id"]] = (signature, now + self.advice_hold)
        return f"uncertain -> {advice.action}"

    async def _quotes(self, symbols: list[str], result: PassResult) -> dict:
        """The streamed symbols' latest pushed prices; one batch request for the rest; on failure, one by one so a
        single bad symbol costs only itself."""
        failures: dict[str, str] = {}
        pushed = self._pushed() if self._pushed is not None else {}
        quotes = {s: pushed[s] for s in symbols if s in pushed}
        asked = [s for s in symbols if s not in quotes]
        try:
            if asked:
                quotes.update(await self.trader.broker.get_quotes(asked))
        except Exception as exc:
            log.warning("monitor: batch quote failed (%s); asking one by one", exc)
            for symbol in asked:
                try:
                    quotes[symbol] = await self.trader.broker.get_quote(symbol)
                except Exception as one:           # one bad quote never stops the pass
                    failures[symbol] = f"{type(one).__name__}: {one}"
                    log.warning("monitor: quote for %s failed: %s", symbol, one)
        for symbol in symbols:
            if symbol not in quotes:
                result.errors.append(f"{symbol}: quote failed ({failures.get(symbol, 'no quote returned')})")
        return quotes

    async def _indicators(self, symbol: str) -> tuple[Decimal | None, signals.PatternSet | tuple]:
        """Daily RSI(14) and patterns, from MarketData's per-session cache (shared with the tools), read for the
        signals once per session (RSI as a Decimal, the patterns as a PatternSet), not once per pass."""
        try:
            found = await self.market.monitor_indicators(symbol)
            ready = self._ready.get(symbol)
            if ready is None or ready[0] is not found:      # a new session's pair (held here: its id is not reused)
                rsi, patterns = found
                ready = self._ready[symbol] = (found, signals.rsi_reading(rsi), signals.PatternSet.of(patterns))
            return ready[1], ready[2]
        except Exception as exc:
            log.warning("monitor: indicators for %s unavailable (%s); deciding on price alone", symbol, exc)
            return None, ()

    async def _protect(self, rows, prices, high_water, result: PassResult) -> None:
        try:
            report = await self.protection.ensure(rows, prices=prices, high_water=high_water)
        except Exception as exc:           # the stops are retried next pass; the pass goes on
            result.errors.append(f"protective stops: {type(exc).__name__}: {exc}")
            log.error("protective stops failed: %s", exc)
            return
        result.errors.extend(report.errors)

    async def _exit(self, row, report, result: PassResult, advised: str | None = None, source: str = "") -> str:
        lock = self._exit_locks.setdefault(row["symbol"], asyncio.Lock())
        async with lock:                   # one exit per symbol at a time (a pass and a pushed price may race)
            return await self._exit_locked(row, report, result, advised, source)

    async def _exit_locked(self, row, report, result: PassResult, advised: str | None, source: str) -> str:
        kinds = [s.kind for s in report.signals if s.strength == "strong"] or [s.kind for s in report.signals]
        intent = EXIT_INTENT.get(kinds[0], "signal_exit") if kinds else "signal_exit"
        reason = report.reason + (f"; advisor: {advised}" if advised else "") + (f"; seen on {source}" if source
                                                                                  else "")
        with log_context(symbol=row["symbol"]):
            try:
                outcome = await self.trader.exit_position(row["symbol"], None, reason, intent=intent)
            except Exception as exc:   # the broker or database failed mid-exit: reported, retried next pass
                result.errors.append(f"{row['symbol']}: exit failed: {type(exc).__name__}: {exc}")
                log.error("monitor exit %s failed: %s", row["symbol"], exc)
                return "exit (failed; retried next pass)"
        result.exits.append({"symbol": row["symbol"], "intent": intent, "status": outcome.get("status"),
                             "reason": reason, "sent": "order" in outcome})   # sent: an order went to the broker
        log.warning("monitor exit %s (%s): %s -> %s", row["symbol"], intent, reason, outcome.get("status"))
        return f"exit ({outcome.get('status')})"

    def _status_row(self, row, view, report, recommendation: str) -> tuple:
        top = report.signals[0] if report.signals else None
        return (row["position_id"], self.store.agent_id, row["symbol"], view.price,
                (view.price - view.entry_price) * view.quantity, report.pnl_pct, view.high_water,
                top.kind if top else None, top.strength if top else None, recommendation, report.reason[:1000],
                self.clock.now())

    async def _write_statuses(self, rows: list[tuple]) -> None:
        await self.store.write_monitor_statuses(rows)
