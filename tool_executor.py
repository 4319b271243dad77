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

import orjson
from pydantic import ValidationError

import safety
from core.errors import BrokerUnavailable, InvalidRequest
from core.logcontext import log_context
from execution.store import to_json as _json
from tools import MODE_TOOLS, TOOLS

if TYPE_CHECKING:
    from data.market import MarketData
    from data.news import NewsProvider
    from data.scan import Scanner
    from execution.trader import Trader

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
        return orjson.loads(self.content)


def _brief(text: str, limit: int = 2000) -> str:
    """A log-sized copy (the logging pipeline redacts secrets and escapes control characters)."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


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
    """One cycle's tools. Receives the Trader (entries, exits, decisions) and the agent's market view."""

    def __init__(self, *, trader: "Trader", market: "MarketData", scanner: "Scanner", news: "NewsProvider",
                 mode: str, exchange: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.trader = trader
        self.market = market
        self.scanner = scanner
        self.news = news
        self.mode = mode
        self.exchange = exchange
        self.timeout_s = timeout_s
        self.calls = 0
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "scan_market": self._scan_market, "get_quote": self._get_quote, "get_technicals": self._get_technicals,
            "detect_patterns": self._detect_patterns, "get_news": self._get_news,
            "get_portfolio": self._get_portfolio, "check_risk": self._check_risk,
            "execute_trade": self._execute_trade, "close_position": self._close_position,
            "close_all": self._close_all, "log_decision": self._log_decision,
        }

    @property
    def cycle_id(self) -> uuid.UUID | None:
        return self.trader.cycle_id

    @property
    def engine(self) -> str:
        return self.trader.engine

    @property
    def orders_placed(self) -> int:
        return self.trader.orders_placed

    def now(self):
        return self.trader.clock.now()

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
            # a copy when the input nests lists or objects: what the handlers keep of it never aliases the caller's
            # (the model's transcript); flat input (nearly every call) is only read
            nested = any(isinstance(v, (dict, list)) for v in raw_input.values())
            args = spec.model.model_validate(copy.deepcopy(raw_input) if nested else raw_input,
                                             context={"exchange": self.exchange})
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
            result = ToolResult(_json(data))
            if log.isEnabledFor(logging.DEBUG):          # seed §7.2: tool calls and their answers, at DEBUG
                log.debug("tool %s input %s -> %s", name, _brief(_json(raw_input)), _brief(result.content))
            return result

    def _error(self, name: str, symbol: Any, message: str, t0: float | None = None) -> ToolResult:
        ms = (time.perf_counter() - t0) * 1000 if t0 else 0.0
        with log_context(tool=name, **({"symbol": symbol} if isinstance(symbol, str) else {})):
            log.warning("tool %s error in %.0f ms: %s", name, ms, message)
        return ToolResult(_json({"error": message}), is_error=True)

    async def _known_symbol(self, symbol: str) -> None:
        try:
            await self.trader.broker.get_instrument(symbol)
        except InvalidRequest:
            raise ToolError(f"symbol: unknown symbol {symbol!r} on {self.exchange}") from None

    # ------------------------------------------------------------------ data tools
    async def _scan_market(self, args) -> Any:
        from data.scan import ScanUnavailable
        try:
            candidates = await self.scanner.latest_or_run(cycle_id=self.cycle_id, limit=args.limit)
        except ScanUnavailable as exc:
            raise ToolError(f"scan unavailable: {exc}") from None
        return {"as_of": self.now(), "candidates": [c.to_dict() for c in candidates]}

    async def _get_quote(self, args) -> Any:
        q = await self.market.quote(args.symbol)
        status = self.trader.market_status()
        return {"symbol": q.symbol, "bid": q.bid, "ask": q.ask, "last": q.last, "volume": q.volume,
                "time": q.timestamp, "market": status.status}

    async def _get_technicals(self, args) -> Any:
        return await self.market.technicals(args.symbol, args.timeframe, args.indicators)

    async def _detect_patterns(self, args) -> Any:
        patterns = await self.market.patterns(args.symbol, args.timeframe)
        if patterns:
            await self.trader.store.record_patterns(self.cycle_id, args.symbol, patterns)
        return {"symbol": args.symbol, "timeframe": args.timeframe, "patterns": [p.to_dict() for p in patterns]}

    async def _get_news(self, args) -> Any:
        from data.news import get_news
        return await get_news(self.news, args.symbol, limit=args.limit, now=self.now())

    async def _get_portfolio(self, args) -> Any:
        snap = await self.trader.portfolio.snapshot()
        limits = self.trader.limits()
        state = safety.trading_state(snap.realized_pnl_today, snap.unrealized_pnl, limits, snap.stored_state)
        a = snap.account
        return {"currency": a.currency, "cash": a.cash, "buying_power": a.buying_power, "equity": a.equity,
                "positions": [p.to_dict() for p in snap.positions], "open_orders": list(snap.open_orders),
                "pnl_today": {"realized": snap.realized_pnl_today,
                              "unrealized": snap.unrealized_pnl.quantize(Decimal("0.01"))},
                "trading_state": state.value, "entries_today": sorted(snap.entries_today),
                "limits": {"max_positions": limits.max_positions, "max_position_value": limits.max_position_value,
                           "daily_loss_limit": limits.daily_loss_limit}}

    # ------------------------------------------------------------------ risk and orders (the Trader's)
    def _intent(self, args) -> "safety.EntryIntent":
        return self.trader.intent(symbol=args.symbol, quantity=args.quantity, value=args.value,
                                  order_type=args.order_type, limit_price=args.limit_price,
                                  stop_loss=args.stop_loss, take_profit=args.take_profit)

    async def _check_risk(self, args) -> Any:
        verdict = await self.trader.check_entry(self._intent(args))
        return {"advice_only": True, **verdict.to_dict()}

    async def _execute_trade(self, args) -> Any:
        return await self.trader.enter(self._intent(args), args.reasoning,
                                       requested=args.model_dump(mode="json", exclude={"reasoning"}))

    async def _close_position(self, args) -> Any:
        return await self.trader.exit_position(args.symbol, args.quantity, args.reason)

    async def _close_all(self, args) -> Any:
        return await self.trader.close_all(args.reason)

    async def _log_decision(self, args) -> Any:
        details = {"confidence": args.confidence} if args.confidence is not None else {}
        decision_id = await self.record_decision(args.symbol, args.action, args.reasoning, details=details)
        return {"recorded": True, "decision_id": decision_id}

    async def record_decision(self, symbol: str | None, action: str, reasoning: str, *, verdict: dict | None = None,
                              details: dict | None = None) -> int:
        return await self.trader.record_decision(symbol, action, reasoning, verdict=verdict, details=details)
