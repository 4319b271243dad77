"""The agent's trading state (ACTIVE / REDUCING / HALTED), stored so every process agrees on it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import safety

if TYPE_CHECKING:
    from runtime.wiring import Services


# The latest state recorded for agent $1 (NULL when none): a scalar subquery other statements embed.
LATEST_STATE = "SELECT state FROM agent_state WHERE agent_id = $1 ORDER BY set_at DESC, state_id DESC LIMIT 1"


def state_from(stored: str | None) -> "safety.TradingState":
    """The state a LATEST_STATE value means: ACTIVE until something else is recorded."""
    return safety.TradingState[stored] if stored else safety.TradingState.ACTIVE


async def current_trading_state(services: "Services") -> "safety.TradingState":
    return state_from(await services.pool.fetchval(LATEST_STATE, services.agent_id))


async def set_trading_state(services: "Services", state: "safety.TradingState", reason: str, set_by: str) -> None:
    await services.pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                                "VALUES ($1, $2, $3, $4, $5)", services.agent_id, state.name, reason, set_by,
                                services.clock.now())
