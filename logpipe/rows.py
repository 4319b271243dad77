"""What an `agent_logs` row may hold: levels, time-ordered ids, the spool form of a row, which errors are the rows'
fault (and not the connection's)."""
from __future__ import annotations

import itertools
import json
import os
import uuid
from datetime import datetime
from typing import Mapping

from core.logcontext import NAME_MAX, storable_context
from core.logcontext import text_of as _text_of
from core.redaction import Redactor, storable

# What one stored record may hold.
MESSAGE_MAX = 32_000
EXCEPTION_MAX = 64_000


_LEVELS = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (0, "DEBUG"))
_UNSET = object()


def _encode_jsonb(value: bytes) -> bytes:
    """Rows carry their context already encoded (storable_context): version byte 1 + JSON text."""
    return value


def _level_name(levelno: int) -> str:
    for floor, name in _LEVELS:
        if levelno >= floor:
            return name
    return "DEBUG"


def _rows_at_fault(exc: BaseException) -> bool:
    """The rows are at fault (PostgreSQL refuses a value: data exception, integrity, program limit; or the client
    cannot encode one), not the connection, the server or the schema."""
    import asyncpg
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "")[:2] in ("22", "23", "54")
    if isinstance(exc, asyncpg.DataError):                 # the driver refused to encode a value
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return False
    return isinstance(exc, (UnicodeError, ValueError, TypeError, OverflowError))


def _spool_form(row: tuple) -> list:
    """A row as one JSON line of a spool or quarantine file."""
    context = json.loads(row[6][1:]) if isinstance(row[6], bytes) else row[6]
    return [str(row[0]), row[1].isoformat(), row[2], row[3], row[4], row[5], context, row[7]]


class _IdMaker:
    """Time-ordered UUIDs (48-bit ms timestamp, then a per-process random prefix and a counter)."""

    def __init__(self) -> None:
        self._prefix = int.from_bytes(os.urandom(5), "big")
        self._counter = itertools.count()

    def __call__(self, created: float) -> uuid.UUID:
        ms = int(created * 1000) & ((1 << 48) - 1)
        n = next(self._counter) & ((1 << 40) - 1)
        return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (self._prefix << 40) | n)


def row_from_spool(v: list, red: Redactor) -> tuple:
    """A spool line as a row, made storable again (spools written before sanitising may hold anything)."""
    agent, text = storable_context(v[6] if isinstance(v[6], Mapping) else {}, red)
    return (uuid.UUID(v[0]), datetime.fromisoformat(v[1]),
            agent or storable(red.text(_text_of(v[2])), NAME_MAX, one_line=True), _text_of(v[3]),
            storable(red.text(_text_of(v[4])), NAME_MAX, one_line=True),
            storable(red.text(_text_of(v[5])), MESSAGE_MAX), b"\x01" + (text or "{}").encode(),
            None if v[7] is None else storable(red.text(_text_of(v[7])), EXCEPTION_MAX))
