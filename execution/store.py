"""The SQL of orders, positions, decisions and the trading state, in one place.

`WORKING` is the one "working order" status set (an order that may still change the account); every query that
asks for working orders embeds it. `LATEST_STATE` is the one rule for the recorded trading state.
"""
from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from core.clock import Clock
from core.orders import WORKING_STATUSES
from core.state import TradingState

if TYPE_CHECKING:
    import asyncpg

# The working statuses as an SQL list, for `status IN (...)`.
WORKING = "(" + ", ".join(f"'{s.value}'" for s in sorted(WORKING_STATUSES, key=lambda s: s.value)) + ")"

# The latest state recorded for agent $1 (NULL when none): a scalar subquery other statements embed.
LATEST_STATE = "SELECT state FROM agent_state WHERE agent_id = $1 ORDER BY set_at DESC, state_id DESC LIMIT 1"


# Realised P&L (net of fees) since $2, the trading day's start: positions closed since, and positions opened since
# (their entry fees, any partial sells). The safety gate's daily loss and the live report both count it this way.
REALIZED_SINCE = """SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1
       AND ((status = 'closed' AND closed_at >= $2) OR (status = 'open' AND opened_at >= $2))"""


def state_from(stored: str | None) -> TradingState:
    """The state a LATEST_STATE value means: ACTIVE until something else is recorded."""
    return TradingState[stored] if stored else TradingState.ACTIVE


def to_json(data: Any) -> str:
    """Compact JSON with Decimal as strings and datetimes as ISO text (what the model and jsonb columns get)."""
    return json.dumps(data, default=_default, separators=(",", ":"))


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


class Store:
    """One agent's rows: orders, positions, decisions, trading state."""

    def __init__(self, pool: "asyncpg.Pool", clock: Clock, agent_id: str) -> None:
        self.pool = pool
        self.clock = clock
        self.agent_id = agent_id

    # ------------------------------------------------------------------ trading state
    async def trading_state(self) -> TradingState:
        return state_from(await self.pool.fetchval(LATEST_STATE, self.agent_id))

    async def set_trading_state(self, state: TradingState, reason: str, set_by: str) -> None:
        await self.pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                                "VALUES ($1, $2, $3, $4, $5)", self.agent_id, state.name, reason, set_by,
                                self.clock.now())

    async def last_beat(self, service: str = "position_monitor"):
        """When `service` of this agent last wrote service_health (None: never)."""
        return await self.pool.fetchval("SELECT max(checked_at) FROM service_health WHERE agent_id = $1 "
                                        "AND service = $2", self.agent_id, service)

    # ------------------------------------------------------------------ decisions
    async def record_decision(self, *, cycle_id: uuid.UUID | None, engine: str, symbol: str | None, action: str,
                              reasoning: str, verdict: dict | None = None, details: dict | None = None) -> int:
        return await self.pool.fetchval(
            """INSERT INTO decisions (agent_id, cycle_id, symbol, action, engine, reasoning, verdict, details,
                   created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9) RETURNING decision_id""",
            self.agent_id, cycle_id, symbol, action, engine, reasoning,
            to_json(verdict) if verdict is not None else None, to_json(details or {}),  # JSON text, parsed by the server
            self.clock.now())

    async def record_patterns(self, cycle_id: uuid.UUID | None, symbol: str, patterns: list) -> None:
        await self.pool.executemany(
            """INSERT INTO patterns (agent_id, cycle_id, symbol, pattern, direction, confidence, levels,
                   bar_start, bar_end, detected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [(self.agent_id, cycle_id, symbol, p.name, p.direction, Decimal(str(round(p.confidence, 4))),
              {k: float(v) for k, v in p.levels.items()}, p.start, p.end, self.clock.now()) for p in patterns])

    async def record_model_turn(self, *, cycle_id: uuid.UUID | None, turn: int, text: str, model: str,
                                input_tokens: int, output_tokens: int, cost: Decimal) -> None:
        await self.pool.execute(
            """INSERT INTO decisions (agent_id, cycle_id, action, engine, reasoning, model, input_tokens,
                   output_tokens, cost_usd, details, created_at)
               VALUES ($1, $2, 'model_turn', 'claude', $3, $4, $5, $6, $7, $8, $9)""",
            self.agent_id, cycle_id, text[:4000], model, input_tokens, output_tokens, cost, {"turn": turn},
            self.clock.now())

    async def audit(self, symbol: str | None, action: str, reasoning: str, details: dict,
                    engine: str = "reconcile") -> None:
        """A correction's audit row (reconciliation)."""
        await self.pool.execute(
            "INSERT INTO decisions (agent_id, symbol, action, engine, reasoning, details, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", self.agent_id, symbol, action, engine, reasoning,
            json.loads(to_json(details)), self.clock.now())

    # ------------------------------------------------------------------ orders
    async def working_orders(self, symbol: str | None = None) -> list:
        """Working orders (oldest first), of one symbol or all: client_order_id, symbol, side, quantity, filled,
        intent ('protective_stop' for a stop held at the broker), stop_price."""
        return await self.pool.fetch(
            "SELECT client_order_id, symbol, side, quantity, filled_quantity, intent, stop_price, status "
            "FROM orders WHERE agent_id = $1 "
            f"AND ($2::text IS NULL OR symbol = $2) AND status IN {WORKING} ORDER BY order_id",
            self.agent_id, symbol)

    # ------------------------------------------------------------------ positions (the monitor's)
    async def positions_to_monitor(self) -> list:
        """Open positions with their stops, high-water marks and whether an exit is already working (a protective
        stop resting at the broker is not an exit in progress)."""
        return await self.pool.fetch(
            """SELECT p.position_id, p.symbol, p.quantity, p.avg_entry_price, p.stop_loss, p.take_profit,
                      p.high_water_mark, p.opened_at,
                      EXISTS (SELECT 1 FROM orders o WHERE o.agent_id = p.agent_id AND o.symbol = p.symbol
                              AND o.side = 'sell' AND o.intent <> 'protective_stop'
                              AND o.status IN """ + WORKING + """) AS exit_working
               FROM positions p WHERE p.agent_id = $1 AND p.status = 'open' ORDER BY p.position_id""",
            self.agent_id)

    async def working_stops(self) -> dict[str, list]:
        """Protective stops still working, by symbol (oldest first): client_order_id, quantity, stop_price, status."""
        out: dict[str, list] = {}
        for r in await self.pool.fetch(
                "SELECT client_order_id, symbol, quantity, filled_quantity, stop_price, status FROM orders "
                "WHERE agent_id = $1 AND intent = 'protective_stop' AND status IN " + WORKING + " ORDER BY order_id",
                self.agent_id):
            out.setdefault(r["symbol"], []).append(r)
        return out

    async def write_monitor_statuses(self, rows: list[tuple]) -> None:
        """One position_monitor_status row per position, high-water marks raised with them (one statement)."""
        if not rows:
            return
        await self.pool.execute(          # every position in one statement, high-water marks raised with it
            """WITH status AS (
               INSERT INTO position_monitor_status (position_id, agent_id, symbol, last_price, unrealized_pnl,
                   pnl_pct, high_water_mark, signal, signal_strength, recommendation, reason, checked_at)
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::numeric[], $5::numeric[],
                                    $6::numeric[], $7::numeric[], $8::text[], $9::text[], $10::text[], $11::text[],
                                    $12::timestamptz[])
               ON CONFLICT (position_id) DO UPDATE SET last_price = EXCLUDED.last_price,
                   unrealized_pnl = EXCLUDED.unrealized_pnl, pnl_pct = EXCLUDED.pnl_pct,
                   high_water_mark = EXCLUDED.high_water_mark, signal = EXCLUDED.signal,
                   signal_strength = EXCLUDED.signal_strength, recommendation = EXCLUDED.recommendation,
                   reason = EXCLUDED.reason, checked_at = EXCLUDED.checked_at
               RETURNING position_id, high_water_mark)
               UPDATE positions p SET high_water_mark = status.high_water_mark FROM status
               WHERE p.position_id = status.position_id AND p.status = 'open'
                 AND (p.high_water_mark IS NULL OR status.high_water_mark > p.high_water_mark)""",
            *(list(c) for c in zip(*rows)))
