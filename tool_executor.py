"""Routes a tool call (from Claude or the rules engine) to its implementation.

Everything the model sends is fenced here: unknown tool, a tool the mode does not allow, wrong types, extra
fields, unknown symbols, absurd numbers -> a tool result with `is_error` and a message naming the field and the
rule; never an exception out of the loop. Each call has a timeout and is logged with tool, symbol, duration and
outcome. `execute_trade` computes the safety verdict itself; the model cannot skip it.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pydantic import ValidationError

import safety
from core.errors import BrokerUnavailable, InvalidRequest
from core.orders import OrderSide, OrderType
from db_logger import log_context
from tools import MODE_TOOLS, TOOLS

if TYPE_CHECKING:
    from runtime.wiring import Services

log = logging.getLogger("catalyst.tools")

DEFAULT_TIMEOUT_S = 30.0


class ToolError(Exception):
    """A problem to report to the model as the tool's result (is_error)."""


@dataclass(frozen=True)
class ToolResult:
    content: str                 # compact JSON handed back to the model
    is_error: bool = False

    @property
    def data(self) -> Any:
        return json.loads(self.content)


def _json(data: Any) -> str:
    return json.dumps(data, default=_default, separators=(",", ":"))


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def describe_validation_error(exc: ValidationError) -> str:
    """'quantity: must be > 0 (got -5); symbol: field required' — every field, its rule, what was sent."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "input"
        if err["type"] == "extra_forbidden":
            parts.append(f"{field}: not a parameter of this tool")
            continue
        if err["type"] == "missing":
            parts.append(f"{field}: required")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:60]})"
        parts.append(f"{field}: {msg}{shown}")
    return "; ".join(parts)


class ToolExecutor:
    def __init__(self, services: "Services", *, mode: str, cycle_id: uuid.UUID | None, engine: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.s = services
        self.mode = mode
        self.cycle_id = cycle_id
        self.engine = engine
        self.timeout_s = timeout_s
        self.orders_placed = 0
        self.calls = 0
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "scan_market": self._scan_market, "get_quote": self._get_quote, "get_technicals": self._get_technicals,
            "detect_patterns": self._detect_patterns, "get_news": self._get_news,
            "get_portfolio": self._get_portfolio, "check_risk": self._check_risk,
            "execute_trade": self._execute_trade, "close_position": self._close_position,
            "close_all": self._close_all, "log_decision": self._log_decision,
        }

    # ------------------------------------------------------------------ routing
    async def execute(self, name: str, raw_input: Any) -> ToolResult:
        self.calls += 1
        spec = TOOLS.get(name)
        if spec is None:
            return self._error(name, None, f"unknown tool {name!r}; available: {', '.join(sorted(MODE_TOOLS[self.mode]))}")
        if name not in MODE_TOOLS[self.mode]:
            return self._error(name, None, f"tool {name!r} is not allowed in {self.mode} mode "
                                           f"(allowed: {', '.join(sorted(MODE_TOOLS[self.mode])) or 'none'})")
        if raw_input is None:
            raw_input = {}
        if not isinstance(raw_input, dict):
            return self._error(name, None, f"input: must be a JSON object (got {type(raw_input).__name__})")
        try:
            args = spec.model.model_validate(copy.deepcopy(raw_input))
        except ValidationError as exc:
            return self._error(name, raw_input.get("symbol"), describe_validation_error(exc))
        except (ValueError, TypeError) as exc:
            return self._error(name, raw_input.get("symbol"), f"input: {exc}")
        symbol = getattr(args, "symbol", None)
        with log_context(tool=name, **({"symbol": symbol} if symbol else {})):
            t0 = time.perf_counter()
            try:
                if symbol:
                    await self._known_symbol(symbol)
                data = await asyncio.wait_for(self._handlers[name](args), self.timeout_s)
            except ToolError as exc:
                return self._error(name, symbol, str(exc), t0)
            except asyncio.TimeoutError:
                return self._error(name, symbol, f"timed out after {self.timeout_s:.0f} s; nothing was changed by "
                                                 f"this call unless get_portfolio shows otherwise", t0)
            except BrokerUnavailable as exc:
                return self._error(name, symbol, f"broker unavailable: {exc}; try again later", t0)
            except Exception as exc:  # a bug of ours must not end the cycle; it is logged with its traceback
                log.exception("tool %s failed", name)
                return self._error(name, symbol, f"internal error in {name}: {type(exc).__name__}", t0)
            ms = (time.perf_counter() - t0) * 1000
            log.info("tool %s ok in %.0f ms", name, ms, extra={})
            return ToolResult(_json(data))

    def _error(self, name: str, symbol: Any, message: str, t0: float | None = None) -> ToolResult:
        ms = (time.perf_counter() - t0) * 1000 if t0 else 0.0
        with log_context(tool=name, **({"symbol": symbol} if isinstance(symbol, str) else {})):
            log.warning("tool %s error in %.0f ms: %s", name, ms, message)
        return ToolResult(_json({"error": message}), is_error=True)

    async def _known_symbol(self, symbol: str) -> None:
        try:
            await self.s.broker.get_instrument(symbol)
        except InvalidRequest:
            raise ToolError(f"symbol: unknown symbol {symbol!r} on {self.s.settings.config.market.exchange}") from None

    # ------------------------------------------------------------------ data tools
    async def _scan_market(self, args) -> Any:
        from data.scan import latest_or_run_scan
        candidates = await latest_or_run_scan(self.s, cycle_id=self.cycle_id, limit=args.limit)
        return {"as_of": self.s.clock.now(), "candidates": [c.to_dict() for c in candidates]}

    async def _get_quote(self, args) -> Any:
        q = await self.s.broker.get_quote(args.symbol)
        status = self.s.calendar.state(self.s.clock.now())
        return {"symbol": q.symbol, "bid": q.bid, "ask": q.ask, "last": q.last, "volume": q.volume,
                "time": q.timestamp, "market": status.status}

    async def _get_technicals(self, args) -> Any:
        return await self.s.market.technicals(args.symbol, args.timeframe)

    async def _detect_patterns(self, args) -> Any:
        patterns = await self.s.market.patterns(args.symbol, args.timeframe)
        if patterns:
            await self.s.pool.executemany(
                """INSERT INTO patterns (agent_id, cycle_id, symbol, pattern, direction, confidence, levels,
                       bar_start, bar_end, detected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                [(self.s.agent_id, self.cycle_id, args.symbol, p.name, p.direction, Decimal(str(round(p.confidence, 4))),
                  {k: float(v) for k, v in p.levels.items()}, p.start, p.end, self.s.clock.now()) for p in patterns])
        return {"symbol": args.symbol, "timeframe": args.timeframe, "patterns": [p.to_dict() for p in patterns]}

    async def _get_news(self, args) -> Any:
        from data.news import get_news
        return await get_news(self.s.news, args.symbol, limit=args.limit, now=self.s.clock.now())

    async def _get_portfolio(self, args) -> Any:
        from execution.portfolio import snapshot
        snap = await snapshot(self.s)
        limits = self.limits()
        state = safety.trading_state(snap.realized_pnl_today, snap.unrealized_pnl, limits, snap.stored_state)
        a = snap.account
        return {"currency": a.currency, "cash": a.cash, "buying_power": a.buying_power, "equity": a.equity,
                "positions": [p.to_dict() for p in snap.positions], "open_orders": list(snap.open_orders),
                "pnl_today": {"realized": snap.realized_pnl_today, "unrealized": snap.unrealized_pnl.quantize(Decimal("0.01"))},
                "trading_state": state.value, "entries_today": sorted(snap.entries_today),
                "limits": {"max_positions": limits.max_positions, "max_position_value": limits.max_position_value,
                           "daily_loss_limit": limits.daily_loss_limit}}

    # ------------------------------------------------------------------ risk and orders
    def limits(self) -> "safety.RiskLimits":
        t = self.s.settings.config.trading
        return safety.RiskLimits(
            max_positions=t.max_positions, max_position_value=t.max_position_value,
            min_position_value=t.min_position_value, daily_loss_limit=t.daily_loss_limit,
            position_stop_loss_pct=t.position_stop_loss_pct, price_collar_pct=t.price_collar_pct,
            max_orders_per_cycle=t.max_orders_per_cycle, allow_reentry_same_day=t.allow_reentry_same_day,
            max_stop_distance_pct=t.max_stop_distance_pct, max_quote_age_seconds=t.max_quote_age_seconds)

    async def _risk_context(self, symbol: str):
        from execution.portfolio import snapshot
        snap = await snapshot(self.s)
        now = self.s.clock.now()
        state = self.s.calendar.state(now)
        quote = await self.s.broker.get_quote(symbol)
        instrument = await self.s.broker.get_instrument(symbol)
        ctx = safety.RiskContext(
            now=now, account=snap.account, positions=snap.broker_positions(),
            realized_pnl_today=snap.realized_pnl_today, unrealized_pnl=snap.unrealized_pnl, quote=quote,
            instrument=instrument, market=safety.MarketStatus(status=state.status, next_open=state.next_open),
            entries_today=snap.entries_today, orders_this_cycle=self.orders_placed,
            trading_state=snap.stored_state,
            pending_buy_value=Decimal(0))   # the broker's buying power already reserves open buy orders
        return ctx, snap

    def _intent(self, args) -> "safety.EntryIntent":
        order_type = args.order_type or self.s.settings.config.trading.default_order_type
        return safety.EntryIntent(symbol=args.symbol, side=OrderSide.BUY, quantity=args.quantity, notional=args.value,
                                  order_type=OrderType(order_type), limit_price=args.limit_price,
                                  stop_loss=args.stop_loss, take_profit=args.take_profit)

    async def _check_risk(self, args) -> Any:
        ctx, _ = await self._risk_context(args.symbol)
        verdict = safety.evaluate_entry(self._intent(args), ctx, self.limits())
        return {"advice_only": True, **verdict.to_dict()}

    async def _execute_trade(self, args) -> Any:
        ctx, _ = await self._risk_context(args.symbol)
        intent = self._intent(args)
        verdict = safety.evaluate_entry(intent, ctx, self.limits())   # computed here, whatever check_risk said
        if not verdict.approved:
            await self.record_decision(args.symbol, "refused", args.reasoning, verdict=verdict.to_dict(),
                                       details={"requested": args.model_dump(mode="json", exclude={"reasoning"})})
            return {"status": "refused", **verdict.to_dict()}
        outcome = await self.s.orders.submit(
            cycle_id=self.cycle_id, symbol=args.symbol, side=OrderSide.BUY, quantity=verdict.adjusted_quantity,
            order_type=intent.order_type, limit_price=verdict.limit_price if intent.order_type is OrderType.LIMIT else None,
            stop_loss=verdict.stop_loss, take_profit=args.take_profit, intent="entry")
        if outcome.accepted:
            self.orders_placed += 1
        await self.record_decision(args.symbol, "buy" if outcome.accepted else "rejected", args.reasoning,
                                   verdict=verdict.to_dict(), details={"order": outcome.to_dict()})
        return {"status": outcome.status, "order": outcome.to_dict(), "verdict": verdict.to_dict()}

    async def exit_position(self, symbol: str, quantity: int | None, reason: str, intent: str = "exit") -> dict:
        """Sell a position through the one order path. Used by close_position, close_all and the monitor."""
        now = self.s.clock.now()
        state = self.s.calendar.state(now)
        held = {p.symbol: p for p in await self.s.broker.get_positions()}
        instrument = await self.s.broker.get_instrument(symbol)
        verdict = safety.evaluate_exit(symbol, quantity, held.get(symbol), instrument,
                                       safety.MarketStatus(status=state.status, next_open=state.next_open))
        if not verdict.approved:
            await self.record_decision(symbol, "exit_refused", reason, verdict=verdict.to_dict())
            return {"status": "refused", **verdict.to_dict()}
        # A closing position stops buying; an exit already working is not doubled.
        working = await self.s.pool.fetch(
            "SELECT client_order_id, side, quantity, filled_quantity FROM orders WHERE agent_id = $1 AND symbol = $2 "
            "AND status IN ('pending_submit', 'submitted', 'partially_filled') ORDER BY order_id",
            self.s.agent_id, symbol)
        cancelled = []
        for o in working:
            if o["side"] == "buy" and await self.s.orders.cancel(o["client_order_id"]):
                cancelled.append(o["client_order_id"])
        sells = [o for o in working if o["side"] == "sell"]
        if sells:
            await self.s.orders.sync(sells[-1]["client_order_id"])
            text = (f"an exit for {symbol} is already working ({sells[-1]['client_order_id']}, "
                    f"{sells[-1]['filled_quantity']}/{sells[-1]['quantity']} filled); not sending another")
            await self.record_decision(symbol, "exit_in_progress", reason, details={"working": sells[-1]["client_order_id"],
                                                                                  "cancelled_buys": cancelled})
            return {"status": "exit_in_progress", "detail": text, "cancelled_buy_orders": cancelled}
        if cancelled:                              # a cancelled entry may have filled more before it stopped
            held = {p.symbol: p for p in await self.s.broker.get_positions()}
            verdict = safety.evaluate_exit(symbol, quantity, held.get(symbol), instrument,
                                           safety.MarketStatus(status=state.status, next_open=state.next_open))
            if not verdict.approved:
                await self.record_decision(symbol, "exit_refused", reason, verdict=verdict.to_dict())
                return {"status": "refused", **verdict.to_dict(), "cancelled_buy_orders": cancelled}
        outcome = await self.s.orders.submit(cycle_id=self.cycle_id, symbol=symbol, side=OrderSide.SELL,
                                             quantity=verdict.adjusted_quantity, order_type=OrderType.MARKET,
                                             intent=intent)
        if outcome.accepted:
            self.orders_placed += 1
        await self.record_decision(symbol, "close" if outcome.accepted else "exit_rejected", reason,
                                   verdict=verdict.to_dict(), details={"order": outcome.to_dict(), "intent": intent})
        return {"status": outcome.status, "order": outcome.to_dict()}

    async def _close_position(self, args) -> Any:
        return await self.exit_position(args.symbol, args.quantity, args.reason)

    async def _close_all(self, args) -> Any:
        cancelled = []
        for o in await self.s.pool.fetch(
                "SELECT client_order_id FROM orders WHERE agent_id = $1 AND status IN ('submitted', 'partially_filled')",
                self.s.agent_id):
            if await self.s.orders.cancel(o["client_order_id"]):
                cancelled.append(o["client_order_id"])
        from execution.store import set_trading_state
        await set_trading_state(self.s, safety.TradingState.HALTED, f"kill switch (close_all): {args.reason}",
                                self.engine)
        results = {}
        for p in await self.s.broker.get_positions():
            results[p.symbol] = await self.exit_position(p.symbol, None, args.reason, intent="kill_switch")
        return {"cancelled_orders": cancelled, "exits": results}

    async def _log_decision(self, args) -> Any:
        decision_id = await self.record_decision(args.symbol, args.action, args.reasoning,
                                                 details={"confidence": args.confidence} if args.confidence is not None else {})
        return {"recorded": True, "decision_id": decision_id}

    async def record_decision(self, symbol: str | None, action: str, reasoning: str, *, verdict: dict | None = None,
                              details: dict | None = None) -> int:
        return await self.s.pool.fetchval(
            """INSERT INTO decisions (agent_id, cycle_id, symbol, action, engine, reasoning, verdict, details, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9) RETURNING decision_id""",
            self.s.agent_id, self.cycle_id, symbol, action, self.engine, reasoning,
            _json(verdict) if verdict is not None else None, _json(details or {}),   # JSON text, parsed by the server
            self.s.clock.now())
