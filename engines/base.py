"""What every decision engine is and returns: `run(mode, executor) -> EngineResult`.

Engines propose through the tool executor; they never place orders themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tool_executor import ToolExecutor


@dataclass
class EngineResult:
    engine: str
    status: str = "completed"
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class DecisionEngine(Protocol):
    name: str

    async def run(self, mode: str, ex: "ToolExecutor") -> EngineResult: ...
