"""The offline decision engine: deterministic rules (config `rules`) acting only through the tool executor.

It calls the same tools Claude would, so an offline run exercises the same validation, safety gate, order path
and audit trail. It runs when no ANTHROPIC_API_KEY is set or the AI budget is spent.

trade:  1. get_portfolio; for each position, get_technicals (RSI alone) + detect_patterns, then the one exit policy of
           signals.evaluate (the position monitor's): close_position on "exit" (a strong signal — the position's
           stop, stop_loss_strong, the trailing stop, take_profit_strong or the recorded take-profit — or two
           moderate ones); "uncertain" (one moderate signal, e.g. RSI(14) at or above signals.rsi_overbought
           alone) holds: the rules engine has no advisor to ask.
        2. (get_portfolio again only if step 1 closed something) when the trading state is ACTIVE and there is
           room: scan_market, then for each candidate not held and
           not entered today, get_technicals + detect_patterns; enter when RSI(14) is within
           [rules.rsi_min, rules.rsi_max], the close is above SMA(20) (if rules.require_above_sma20), MACD's
           histogram is positive or a bullish pattern is present, and no bearish pattern is present. The entry is a
           limit order at the ask plus rules.limit_offset_pct, for rules.entry_value of money, with a take profit
           at signals.take_profit_strong. At most rules.max_new_entries_per_cycle entries. A candidate whose quote
           is older than trading.max_quote_age_seconds (at the bell every quote is still the last session's
           close) is not sent: the gate would refuse it; one no_trade decision names them for the cycle.
scan:   scan_market; log_decision 'watch' for the top candidates.
close:  get_portfolio; exit every position when trading.intraday_only, otherwise only positions whose price alone
        says "exit" under signals.evaluate (get_portfolio again only if something was closed); log_decision with
        the day's summary.
Every skip and every refusal is recorded with its reason.

Daily bars change only when a session closes, so what the rules read from them (a candidate's entry verdict, a
position's RSI(14) and patterns) cannot change between the trade cycles of one session: the engine remembers them
per agent and session (`SessionMemo`) and does not ask the tools again, and a skip is recorded once per session
(the first cycle that judged it), not once per cycle. A tool that failed is asked again next cycle.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import safety
import signals
from core.calendar import MarketCalendar

if TYPE_CHECKING:
    from tool_executor import ToolExecutor

log = logging.getLogger("catalyst.rules")

from engines.base import EngineResult


@dataclass
class SessionMemo:
    """What the rules judged on one session's daily bars: (local date, session closed yet?) names them, as
    data/market.py's daily cache does, so a verdict here is what the tools would answer again."""
    session: tuple
    entries: dict[str, tuple[str | None, str]] = field(default_factory=dict)   # symbol -> (why not, why yes)
    indicators: dict[str, tuple[float | None, tuple]] = field(default_factory=dict)   # symbol -> (RSI, patterns)


_CALENDARS: dict[str, MarketCalendar] = {}
# What the entry rules read of get_technicals (close comes with any): only these are worked out.
ENTRY_INDICATORS = ("rsi14", "sma20", "macd_hist")


def session_of(exchange: str, now: datetime) -> tuple:
    """(local date, closed yet?) of `now`: daily bars are the same everywhere inside one of these."""
    calendar = _CALENDARS.get(exchange)
    if calendar is None:
        calendar = _CALENDARS[exchange] = MarketCalendar(exchange)
    return calendar.session_key(now)


class RulesEngine:
    name = "rules"
    # (agent id, rules and thresholds) -> its memo; an engine is made per cycle, the memo outlives it
    _memos: dict[tuple, SessionMemo] = {}
    MAX_MEMOS = 64

    def __init__(self, settings) -> None:
        self.cfg = settings.config
        self.rules = settings.config.rules
        self.thresholds = signals.SignalThresholds.from_config(self.cfg.signals, self.cfg.trading.trailing_stop_pct)
        self._memo_key = (settings.agent_id, repr(self.rules), repr(self.thresholds), self.cfg.market.exchange)

    def _session_memo(self) -> SessionMemo:
        session = session_of(self.cfg.market.exchange, self._ex.now())
        memo = self._memos.get(self._memo_key)
        if memo is None or memo.session != session:
            if len(self._memos) >= self.MAX_MEMOS:
                self._memos.pop(next(iter(self._memos)))
            memo = self._memos[self._memo_key] = SessionMemo(session)
        return memo

    async def run(self, mode: str, ex: "ToolExecutor") -> EngineResult:
        result = EngineResult(engine=self.name)
        self._ex = ex
        self._calls = 0
        self._memo = self._session_memo()
        if mode == "scan":
            result.summary = await self._scan()
        elif mode == "trade":
            result.summary = await self._trade()
        elif mode == "close":
            result.summary = await self._close()
        result.turns = self._calls
        return result

    async def _call(self, name: str, args: dict) -> tuple[Any, bool]:
        self._calls += 1
        r = await self._ex.execute(name, args)
        return r.data, r.is_error

    # ------------------------------------------------------------------ modes
    async def _scan(self) -> dict:
        data, err = await self._call("scan_market", {"limit": self.rules.watchlist_size})
        if err:
            return {"error": data["error"]}
        picks = data["candidates"]
        for c in picks:
            await self._call("log_decision", {"action": "watch", "symbol": c["symbol"],
                                              "reasoning": f"scan rank {c['rank']}, score {c['score']}: "
                                                           f"{'; '.join(c.get('reasons', []))[:400]}"})
        return {"candidates": [c["symbol"] for c in picks]}

    async def _trade(self) -> dict:
        exits = await self._review_positions(end_of_day=False)
        portfolio, err = self._reviewed, False
        if exits or portfolio is None:             # the review changed something (or saw nothing): look again
            portfolio, err = await self._call("get_portfolio", {})
        if err:
            return {"exits": exits, "error": portfolio["error"]}
        entries: list[str] = []
        skipped: dict[str, str] = {}
        stale_quotes: list[str] = []
        if portfolio["trading_state"] != "ACTIVE":
            await self._call("log_decision", {"action": "no_trade", "reasoning":
                                              f"trading state {portfolio['trading_state']}: no new entries"})
            return {"exits": exits, "entries": entries, "state": portfolio["trading_state"]}
        room = self.cfg.trading.max_positions - len(portfolio["positions"])
        held = {p["symbol"] for p in portfolio["positions"]} | set(portfolio["entries_today"])
        held |= {o["symbol"] for o in portfolio["open_orders"]}
        if room <= 0:
            return {"exits": exits, "entries": entries, "note": "at max_positions"}
        scan, err = await self._call("scan_market", {"limit": self.rules.candidates_per_cycle})
        if err:
            return {"exits": exits, "error": scan["error"]}
        for cand in scan["candidates"]:
            if len(entries) >= min(room, self.rules.max_new_entries_per_cycle):
                break
            symbol = cand["symbol"]
            if symbol in held:
                continue
            known = self._memo.entries.get(symbol)
            if known is not None:                  # judged earlier this session on the same daily bars
                why_not, self._last_reason = known
                if why_not:
                    skipped[symbol] = why_not
                    continue
            else:
                why_not = await self._entry_check(symbol)
                if why_not:
                    skipped[symbol] = why_not
                    await self._call("log_decision", {"action": "skip", "symbol": symbol, "reasoning": why_not})
                    continue
            quote, err = await self._call("get_quote", {"symbol": symbol})
            if err:
                continue
            stale = self._stale(quote)
            if stale:                              # the gate would refuse it: not sent, said once for the cycle
                skipped[symbol] = stale
                stale_quotes.append(symbol)
                continue
            ask = Decimal(str(quote["ask"]))
            limit = ask * (1 + self.rules.limit_offset_pct)
            take_profit = ask * (1 + self.cfg.signals.take_profit_strong)
            order, err = await self._call("execute_trade", {
                "symbol": symbol, "value": float(self.rules.entry_value), "order_type": "limit",
                "limit_price": float(round(limit, 4)), "take_profit": float(round(take_profit, 4)),
                "reasoning": f"rules entry: scan rank {cand['rank']} score {cand['score']}; {self._last_reason}"})
            if not err and order.get("status") not in {"refused", "rejected"}:
                entries.append(symbol)
            elif not err:
                failed = order.get("failed") or order.get("order", {}).get("reason")
                skipped[symbol] = f"refused: {failed}"
        summary = {"exits": exits, "entries": entries, "skipped": skipped}
        if stale_quotes:
            await self._call("log_decision", {"action": "no_trade", "reasoning": (
                f"no entry on a stale price for {', '.join(stale_quotes)}: "
                f"{skipped[stale_quotes[0]]}; waiting for fresh quotes")})
            summary["stale_quotes"] = stale_quotes
        return summary

    def _stale(self, quote: dict) -> str | None:
        """Why this quote is too old to enter on (the safety gate's own rule, asked first so an entry the gate would
        refuse is not sent: at the bell every quote is still the last session's close), else None."""
        if not quote.get("time"):
            return None
        return safety.stale_quote(self._ex.now(), datetime.fromisoformat(quote["time"]), quote.get("market"),
                                  self.cfg.trading.max_quote_age_seconds)

    async def _close(self) -> dict:
        exits = await self._review_positions(end_of_day=True)
        portfolio, err = self._reviewed, False
        if exits or portfolio is None:             # the review changed something (or saw nothing): look again
            portfolio, err = await self._call("get_portfolio", {})
        if not err:
            await self._call("log_decision", {
                "action": "hold" if portfolio["positions"] else "no_trade",
                "reasoning": (f"end of day: equity {portfolio['equity']} {portfolio['currency']}, realized today "
                              f"{portfolio['pnl_today']['realized']}, unrealized {portfolio['pnl_today']['unrealized']}, "
                              f"{len(portfolio['positions'])} positions held overnight, exits {exits or 'none'}")})
        return {"exits": exits, "positions_overnight": [p["symbol"] for p in portfolio.get("positions", [])]
                if not err else None}

    # ------------------------------------------------------------------ rules
    async def _review_positions(self, *, end_of_day: bool) -> list[str]:
        """Exits by the rules; the portfolio it looked at stays in self._reviewed for the entries that follow."""
        self._reviewed = None
        portfolio, err = await self._call("get_portfolio", {})
        if err:
            return []
        self._reviewed = portfolio
        exits: list[str] = []
        for p in portfolio["positions"]:
            symbol = p["symbol"]
            reason = await self._exit_reason(p, with_indicators=not end_of_day)
            if reason is None and end_of_day and self.cfg.trading.intraday_only:
                reason = "trading.intraday_only: no position is held overnight"
            if reason:
                out, cerr = await self._call("close_position", {"symbol": symbol, "reason": f"rules exit: {reason}"})
                if not cerr and out.get("status") not in {"refused", "rejected"}:
                    exits.append(symbol)
        return exits

    async def _exit_reason(self, p: dict, *, with_indicators: bool) -> str | None:
        """Why to exit this position under signals.evaluate, or None (hold, or too little known to judge)."""
        if "price" not in p:
            return None
        price, avg = Decimal(p["price"]), Decimal(p["avg_price"])
        if price <= 0 or avg <= 0:
            return None
        view = signals.PositionView(
            symbol=p["symbol"], quantity=p["quantity"], entry_price=avg, price=price,
            high_water=max(Decimal(p.get("high_since_entry") or avg), price),
            stop_loss=Decimal(p["stop_loss"]) if "stop_loss" in p else None,
            take_profit=Decimal(p["take_profit"]) if "take_profit" in p else None)
        report = signals.evaluate(view, self.thresholds)
        if report.action != "exit" and with_indicators:
            rsi, patterns = await self._indicators(p["symbol"])
            if signals.indicators_matter(self.thresholds, rsi=rsi, patterns=patterns):
                report = signals.with_indicators(report, view, self.thresholds, rsi=rsi, patterns=patterns)
        return report.reason if report.action == "exit" else None

    async def _indicators(self, symbol: str) -> tuple[Decimal | None, signals.PatternSet | tuple]:
        """A held symbol's daily RSI(14) and patterns, asked of the tools once per session."""
        known = self._memo.indicators.get(symbol)
        if known is not None:
            return known
        tech, terr = await self._call("get_technicals", {"symbol": symbol, "indicators": ["rsi14"]})
        pats, perr = await self._call("detect_patterns", {"symbol": symbol})
        found = (None if terr else signals.rsi_reading(tech.get("rsi14")),
                 () if perr else signals.PatternSet.of(pats["patterns"]))      # read for the signals once
        if not terr and not perr:
            self._memo.indicators[symbol] = found
        return found

    async def _entry_check(self, symbol: str) -> str | None:
        """None when the entry rules pass (with self._last_reason set), else why not. A verdict the tools gave
        without an error is remembered for the rest of the session."""
        self._last_reason = ""
        why_not, complete = await self._judge_entry(symbol)
        if complete:
            self._memo.entries[symbol] = (why_not, self._last_reason)
        return why_not

    async def _judge_entry(self, symbol: str) -> tuple[str | None, bool]:
        """(why not or None, judged on complete answers?)"""
        r = self.rules
        tech, err = await self._call("get_technicals", {"symbol": symbol, "indicators": list(ENTRY_INDICATORS)})
        if err:
            return f"no technicals: {tech['error']}", False
        rsi, close, sma20, hist = tech.get("rsi14"), tech.get("close"), tech.get("sma20"), tech.get("macd_hist")
        if rsi is None or close is None:
            return "not enough history for RSI(14)", True
        if not (float(r.rsi_min) <= rsi <= float(r.rsi_max)):
            return f"RSI(14) {rsi:.1f} outside [{r.rsi_min}, {r.rsi_max}]", True
        if r.require_above_sma20 and (sma20 is None or close <= sma20):
            return f"close {close} not above SMA(20) {sma20}", True
        pats, perr = await self._call("detect_patterns", {"symbol": symbol})
        found = [] if perr else pats["patterns"]
        bearish = [p["name"] for p in found if p["direction"] == "bearish"]
        bullish = [p["name"] for p in found if p["direction"] == "bullish"]
        if bearish:
            return f"bearish pattern(s): {', '.join(bearish)}", not perr
        if not bullish and (hist is None or hist <= 0):
            return "no bullish pattern and MACD histogram not positive", not perr
        self._last_reason = (f"RSI {rsi:.1f}, close {close} > SMA20 {sma20}, MACD hist {hist}, "
                             f"patterns: {', '.join(bullish) or 'none'}")
        return None, not perr
