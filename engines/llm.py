"""Anthropic, in one place: the client factory, the prices of a model, and what one response cost.

Claude (engines/claude.py) and the monitor's advisor (engines/advisor.py) both build their client and cost their
responses here, so a change of SDK options or of the pricing rule is made once.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

MTOK = Decimal(1_000_000)
USD_Q = Decimal("0.000001")


@dataclass(frozen=True)
class Prices:
    """USD per million tokens."""
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    def cost(self, *, input_tokens: int, output_tokens: int, cache_write_tokens: int = 0,
             cache_read_tokens: int = 0) -> Decimal:
        total = (self.input * input_tokens + self.output * output_tokens + self.cache_write * cache_write_tokens
                 + self.cache_read * cache_read_tokens) / MTOK
        return total.quantize(USD_Q, rounding=ROUND_HALF_UP)

    def worst_case(self, *, prompt_tokens: int, max_tokens: int) -> Decimal:
        return self.cost(input_tokens=0, output_tokens=max_tokens, cache_write_tokens=prompt_tokens)

    @classmethod
    def of(cls, ai_config: Any, model: str) -> "Prices":
        """The configured prices of `model` (config `ai.prices`)."""
        p = ai_config.prices[model]
        return cls(p.input, p.output, p.cache_write, p.cache_read)


@dataclass(frozen=True)
class Usage:
    """One response's tokens and what they cost."""
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost: Decimal


def usage_of(response: Any, prices: Prices) -> Usage:
    """Tokens and USD of an SDK response (cache fields may be absent or None); None (a recorded answer): zero."""
    if response is None:
        return Usage(0, 0, 0, 0, Decimal(0))
    u = response.usage
    cw = getattr(u, "cache_creation_input_tokens", 0) or 0
    cr = getattr(u, "cache_read_input_tokens", 0) or 0
    cost = prices.cost(input_tokens=u.input_tokens, output_tokens=u.output_tokens, cache_write_tokens=cw,
                       cache_read_tokens=cr)
    return Usage(u.input_tokens, u.output_tokens, cw, cr, cost)


def anthropic_client(env: Any, *, max_retries: int, timeout: float, middleware: Sequence[Any] = ()) -> Any:
    """The SDK's async client for this installation (key and optional base URL from the environment)."""
    import anthropic
    extra = {"middleware": list(middleware)} if middleware else {}
    return anthropic.AsyncAnthropic(api_key=env.get("ANTHROPIC_API_KEY"), base_url=env.get("ANTHROPIC_BASE_URL"),
                                    max_retries=max_retries, timeout=timeout, **extra)
