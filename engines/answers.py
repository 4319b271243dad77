"""Recorded model answers, keyed by the request: free, repeatable re-runs of Claude over the same history.

The key is a hash of everything the API answers from (model, system prompt, tools, messages, max_tokens), so a
changed prompt or a different tool result is a different key and asks the model again. Every answer the API
gives is recorded; a run with `reuse` answers from the record when it holds the key (cost 0, no budget used).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg


def request_key(**request: Any) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class RecordedAnswer:
    """Enough of an SDK response to continue the loop: its content blocks and stop reason."""
    content: list[dict[str, Any]]
    stop_reason: str | None


class AnswerBook:
    def __init__(self, pool: "asyncpg.Pool", *, reuse: bool) -> None:
        self.pool = pool
        self.reuse = reuse
        self.hits = 0

    async def find(self, key: str) -> RecordedAnswer | None:
        if not self.reuse:
            return None
        row = await self.pool.fetchval("SELECT answer FROM ai_answers WHERE request_key = $1", key)
        if row is None:
            return None
        self.hits += 1
        return RecordedAnswer(row["content"], row.get("stop_reason"))

    async def record(self, key: str, model: str, content: list[dict[str, Any]], stop_reason: str | None) -> None:
        await self.pool.execute(
            "INSERT INTO ai_answers (request_key, model, answer) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            key, model, json.loads(json.dumps({"content": content, "stop_reason": stop_reason}, default=str)))
