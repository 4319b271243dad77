"""The agent's trading state (ACTIVE / REDUCING / HALTED), stored so every process agrees on it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import safety

if TYPE_CHECKING:
    from services import Services


async def current_trading_state(services: "Services") -> "safety.TradingState":
    row = await services.pool.fetchrow("SELECT state FROM agent_state WHERE agent_id = $1 "
                                       "ORDER BY set_at DESC, state_id DESC LIMIT 1", services.agent_id)
    return safety.TradingState[row["state"]] if row else safety.TradingState.ACTIVE


async def set_trading_state(services: "Services", state: "safety.TradingState", reason: str, set_by: str) -> None:
    await services.pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                                "VALUES ($1, $2, $3, $4, $5)", services.agent_id, state.name, reason, set_by,
                                services.clock.now())
