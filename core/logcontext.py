"""The log context of the current task or thread (agent_id, cycle_id, mode, symbol, tool, ...), in a contextvar.

`log_context(symbol="0700")` adds keys for a block; every log record carries the context it was made in
(db_logger.py stores it in `agent_logs.context`).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Iterator, Mapping

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("catalyst_log_context", default=_EMPTY)


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add keys to the log context of this task/thread for the duration of the block."""
    token = _context.set(MappingProxyType({**_context.get(), **values}))
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**values: Any) -> None:
    """Add keys to the log context of the current task/thread from here on."""
    _context.set(MappingProxyType({**_context.get(), **values}))


def current_log_context() -> Mapping[str, Any]:
    return _context.get()
