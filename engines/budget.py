"""A daily USD budget for AI calls, shared by every process of an agent through the `ai_usage` table.

Before each call the caller reserves the most the call can cost (its input priced as a cache write, plus
max_tokens of output) under a transaction-scoped advisory lock; the reservation is refused when today's settled
cost plus open reservations plus this one would pass the limit. After the call the row is settled with the
real usage. Two processes racing for the last dollars therefore cannot overspend by more than the error of one
estimate, and never by a whole extra call. "Today" is the UTC calendar day.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timezone
from decimal import Decimal
from typing import TYPE_CHECKING
import uuid

from core.clock import Clock

if TYPE_CHECKING:
    import asyncpg

    from engines.llm import Usage

@dataclass(frozen=True)
class Reservation:
    usage_id: int
    amount: Decimal


class AIBudget:
    def __init__(self, pool: "asyncpg.Pool", clock: Clock, agent_id: str, *, daily_limit: Decimal,
                 purpose: str = "trade", total_limit: Decimal | None = None, total_scope: str | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.agent_id = agent_id
        self.daily_limit = Decimal(daily_limit)
        self.purpose = purpose
        # an eval's cap over all its runs: every agent id starting with total_scope, whatever the day
        self.total_limit = Decimal(total_limit) if total_limit is not None else None
        self.total_scope = total_scope
        digest = hashlib.sha256(f"ai-budget:{agent_id}:{purpose}".encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)

    def _day_start(self) -> datetime:
        now = self.clock.now()
        return datetime.combine(now.date(), time(0), tzinfo=timezone.utc)

    async def spent_today(self, conn=None) -> Decimal:
        """Settled cost plus open reservations since UTC midnight."""
        return await (conn or self.pool).fetchval(
            "SELECT coalesce(sum(CASE WHEN status = 'reserved' THEN reserved_usd ELSE cost_usd END), 0) FROM ai_usage "
            "WHERE agent_id = $1 AND purpose = $2 AND created_at >= $3", self.agent_id, self.purpose,
            self._day_start())

    def describe(self) -> str:
        cap = f"{self.daily_limit} USD a day"
        return cap + (f", {self.total_limit} USD in all for {self.total_scope}*" if self.total_limit is not None else "")

    async def remaining(self) -> Decimal:
        return self.daily_limit - await self.spent_today()

    async def reserve(self, amount: Decimal, *, model: str, cycle_id: uuid.UUID | None) -> Reservation | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
            spent = await self.spent_today(conn)
            if spent + amount > self.daily_limit:
                return None
            if self.total_limit is not None:
                total = await conn.fetchval(
                    "SELECT coalesce(sum(CASE WHEN status = 'reserved' THEN reserved_usd ELSE cost_usd END), 0) "
                    "FROM ai_usage WHERE agent_id LIKE $1 || '%'", self.total_scope or self.agent_id)
                if total + amount > self.total_limit:
                    return None
            usage_id = await conn.fetchval(
                "INSERT INTO ai_usage (agent_id, cycle_id, purpose, model, status, reserved_usd, created_at) "
                "VALUES ($1, $2, $3, $4, 'reserved', $5, $6) RETURNING usage_id",
                self.agent_id, cycle_id, self.purpose, model, amount, self.clock.now())
        return Reservation(usage_id, amount)

    async def settle(self, reservation: Reservation, usage: "Usage") -> None:
        await self.pool.execute(
            """UPDATE ai_usage SET status = 'settled', cost_usd = $2, input_tokens = $3, output_tokens = $4,
                   cache_write_tokens = $5, cache_read_tokens = $6, settled_at = $7 WHERE usage_id = $1""",
            reservation.usage_id, usage.cost, usage.input_tokens, usage.output_tokens, usage.cache_write_tokens,
            usage.cache_read_tokens, self.clock.now())

    async def release(self, reservation: Reservation) -> None:
        """The call failed before the API billed anything."""
        await self.pool.execute("UPDATE ai_usage SET status = 'failed', settled_at = $2 WHERE usage_id = $1",
                                reservation.usage_id, self.clock.now())
