"""The eleven tools (seed §4.2): one pydantic input model each, and the JSON Schema Claude sees is generated
from that model — one source of truth for the model's contract and our validation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator

from core.symbols import canonical_symbol


def _canonical(value: str, info: ValidationInfo) -> str:
    """Every alias of a ticker becomes the market's one form (the executor passes the exchange as context)."""
    exchange = (info.context or {}).get("exchange")
    return canonical_symbol(value, exchange) if exchange else value


Symbol = Annotated[str, Field(min_length=1, max_length=16,
                              description="Ticker, e.g. '0700' (also 00700, 0700.HK, HK.00700) or 'AAPL'"),
                   AfterValidator(_canonical)]
Price = Annotated[Decimal, Field(gt=0, lt=1_000_000, max_digits=16, decimal_places=6),
                  WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000})]
Money = Annotated[Decimal, Field(gt=0, lt=100_000_000, max_digits=18, decimal_places=2),
                  WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 100_000_000})]
Quantity = Annotated[int, Field(gt=0, le=10_000_000, strict=True)]
Reason = Annotated[str, Field(min_length=3, max_length=2_000)]


# C0 controls but tab, newline and carriage return; DEL; the C1 block. (Lone surrogates are caught separately.)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ToolInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _printable_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Every text field: no NUL or other control character, no unpaired surrogate (they cannot be stored,
        logged or shown); the field is named in the error that goes back to the model."""
        if isinstance(value, str):
            bad = _CONTROL.search(value)
            if bad:
                raise ValueError(f"contains the control character U+{ord(bad.group()):04X} at position "
                                 f"{bad.start()}; send plain text")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"contains an unpaired surrogate at position {exc.start}; send plain text") from None
        return value


class ScanMarketInput(ToolInput):
    """Rank the whole universe now (price, turnover, momentum, gap, volume surge, technical state)."""
    limit: int = Field(default=10, ge=1, le=50, strict=True, description="How many top candidates to return")


class GetQuoteInput(ToolInput):
    """Current bid, ask, last price and today's volume."""
    symbol: Symbol


# What get_technicals can return (data/technicals.py compute_technicals; rsi_state comes with rsi14).
INDICATORS = ("rsi14", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "bb_position", "atr14",
              "vwap", "sma20", "sma50", "ema20", "ema50", "volume_ratio20")


class GetTechnicalsInput(ToolInput):
    """RSI(14), MACD(12,26,9), Bollinger(20,2), ATR(14), SMA/EMA 20 and 50, volume ratio, VWAP (intraday)."""
    symbol: Symbol
    timeframe: Literal["1d", "5m", "15m", "1h"] = "1d"
    indicators: tuple[Literal[INDICATORS], ...] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, max_length=len(INDICATORS),
        description="Only these indicators (default: all of them); rsi_state comes with rsi14")


class DetectPatternsInput(ToolInput):
    """Chart and candlestick patterns with direction, confidence, key levels and the bars they rest on."""
    symbol: Symbol
    timeframe: Literal["1d", "5m", "15m", "1h"] = "1d"


class GetNewsInput(ToolInput):
    """Recent headlines and a transparent sentiment score, or a plain statement that no source is configured."""
    symbol: Symbol
    limit: int = Field(default=5, ge=1, le=20, strict=True)


class GetPortfolioInput(ToolInput):
    """Cash, buying power, equity, open positions with P&L, open orders, today's P&L and the trading state."""


class _OrderIntentFields(ToolInput):
    symbol: Symbol
    side: Literal["buy"] = Field(default="buy", description="Entries are long only; exits use close_position")
    quantity: Quantity | None = Field(default=None, description="Shares (rounded down to whole board lots); "
                                                                "give quantity or value, not both")
    value: Money | None = Field(default=None, description="Amount of money to invest instead of a quantity")
    order_type: Literal["limit", "market"] | None = Field(default=None, description="Default from config")
    limit_price: Price | None = Field(default=None, description="Required for a limit order")
    stop_loss: Price | None = Field(default=None, description="Stop price; default entry x (1 - stop loss pct)")
    take_profit: Price | None = None

    def model_post_init(self, _context: Any) -> None:
        if (self.quantity is None) == (self.value is None):
            raise ValueError("give exactly one of quantity or value")
        if self.order_type == "market" and self.limit_price is not None:
            raise ValueError("limit_price must be omitted for a market order")


class CheckRiskInput(_OrderIntentFields):
    """Ask the safety rules about an entry without placing it. Advice only: execute_trade checks again itself."""


class ExecuteTradeInput(_OrderIntentFields):
    """Place an entry. The safety rules run inside this tool and may reduce or refuse the order."""
    reasoning: Reason = Field(description="Why this trade; stored in the decisions audit trail")


class ClosePositionInput(ToolInput):
    """Exit a position (all of it unless quantity is given). Never blocked by entry limits."""
    symbol: Symbol
    quantity: Quantity | None = None
    reason: Reason


class CloseAllInput(ToolInput):
    """Emergency exit of every open position and cancel of every open order (the kill switch)."""
    reason: Reason
    confirm: Annotated[bool, Field(strict=True)] = Field(description="Must be true (the JSON value true)",
                                                         json_schema_extra={"const": True})

    @field_validator("confirm")
    @classmethod
    def _confirmed(cls, value: bool) -> bool:
        if value is not True:
            raise ValueError("must be true to close everything")
        return value


class LogDecisionInput(ToolInput):
    """Record a decision (including deciding to do nothing) with its reasoning in the audit trail."""
    action: Literal["buy", "sell", "hold", "skip", "watch", "close", "no_trade"]
    symbol: Symbol | None = None
    reasoning: Reason
    confidence: float | None = Field(default=None, ge=0, le=1)

    @field_validator("confidence")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and v != v:
            raise ValueError("confidence must be a number between 0 and 1")
        return v


@dataclass(frozen=True)
class ToolSpec:
    name: str
    model: type[ToolInput]
    places_orders: bool = False
    exits_only: bool = False

    @property
    def description(self) -> str:
        return " ".join((self.model.__doc__ or "").split())


TOOLS: dict[str, ToolSpec] = {s.name: s for s in (
    ToolSpec("scan_market", ScanMarketInput),
    ToolSpec("get_quote", GetQuoteInput),
    ToolSpec("get_technicals", GetTechnicalsInput),
    ToolSpec("detect_patterns", DetectPatternsInput),
    ToolSpec("get_news", GetNewsInput),
    ToolSpec("get_portfolio", GetPortfolioInput),
    ToolSpec("check_risk", CheckRiskInput),
    ToolSpec("execute_trade", ExecuteTradeInput, places_orders=True),
    ToolSpec("close_position", ClosePositionInput, places_orders=True, exits_only=True),
    ToolSpec("close_all", CloseAllInput, places_orders=True, exits_only=True),
    ToolSpec("log_decision", LogDecisionInput),
)}

READ_TOOLS = frozenset({"scan_market", "get_quote", "get_technicals", "detect_patterns", "get_news",
                        "get_portfolio", "check_risk", "log_decision"})

# Which tools each mode may use (seed §4.1). scan: no order tools; close: reads and exits only; heartbeat: none.
MODE_TOOLS: dict[str, frozenset[str]] = {
    "scan": READ_TOOLS,
    "trade": frozenset(TOOLS),
    "close": READ_TOOLS | {"close_position", "close_all"},
    "heartbeat": frozenset(),
}


def _schema(model: type[ToolInput]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)
    props = schema.get("properties", {})
    for name, prop in list(props.items()):
        prop.pop("title", None)
        alts = [a for a in prop.get("anyOf", []) if a.get("type") != "null"]
        if "anyOf" in prop and len(alts) == 1:   # optional field: say "may be omitted", not "may be null"
            del prop["anyOf"]
            prop.update(alts[0])
            if prop.get("default", 0) is None:
                del prop["default"]
    schema["additionalProperties"] = False
    return schema


def anthropic_tools(mode: str) -> list[dict[str, Any]]:
    """Tool definitions for the Messages API, restricted to what `mode` allows (stable order for caching)."""
    allowed = MODE_TOOLS[mode]
    return [{"name": s.name, "description": s.description, "input_schema": _schema(s.model)}
            for s in TOOLS.values() if s.name in allowed]
