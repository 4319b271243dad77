"""The log context of the current task or thread (agent_id, cycle_id, mode, symbol, tool, ...), in a contextvar.

`log_context(symbol="0700")` adds keys for a block; every log record carries the context it was made in
(db_logger.py stores it in `agent_logs.context`, as `storable_context` makes it: any value a caller put in, as JSON
PostgreSQL accepts).
"""
from __future__ import annotations

import itertools
import json
import math
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from core.redaction import storable

if TYPE_CHECKING:
    from core.redaction import Redactor

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


# ---------------------------------------------------------------- the context as stored

# The symbol is indexed (agent_logs_symbol_timestamp): its index row must stay far below PostgreSQL's limit, at up
# to 4 bytes a character.
NAME_MAX = 256                     # keys, agent_id
SYMBOL_MAX = 256
CONTEXT_VALUE_MAX = 2_000
CONTEXT_ITEMS_MAX = 100            # keys of a mapping, items of a list
CONTEXT_DEPTH_MAX = 4
_INT_RANGE = 1 << 63


def text_of(value: Any) -> str:
    """str(value), or a description when its __str__ fails."""
    try:
        text = str(value)
        return text if isinstance(text, str) else type(value).__name__
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def _json_value(value: Any, red: "Redactor", limit: int, depth: int) -> Any:
    """A context value as JSON PostgreSQL stores: text redacted and storable, numbers finite and in range,
    containers bounded in size and depth, anything else as its text."""
    if isinstance(value, str):
        return storable(red.text(value), limit, one_line=True)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if -_INT_RANGE <= value < _INT_RANGE else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if depth < CONTEXT_DEPTH_MAX:
        if isinstance(value, Mapping):
            return _json_mapping(value, red, depth + 1)
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(itertools.islice(value, CONTEXT_ITEMS_MAX + 1))
            out = [_json_value(v, red, CONTEXT_VALUE_MAX, depth + 1) for v in items[:CONTEXT_ITEMS_MAX]]
            if len(items) > CONTEXT_ITEMS_MAX:
                out.append(f"… [truncated, {len(value):,} items]")
            return out
    return storable(red.text(text_of(value)), limit, one_line=True)


def _json_mapping(mapping: Mapping, red: "Redactor", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(mapping.items()):
        if i == CONTEXT_ITEMS_MAX:
            out["…"] = f"truncated, {len(mapping):,} keys"
            break
        name = storable(red.text(key if isinstance(key, str) else text_of(key)), NAME_MAX, one_line=True)
        out[name] = _json_value(value, red, SYMBOL_MAX if name == "symbol" else CONTEXT_VALUE_MAX, depth)
    return out


def storable_context(context: Mapping, red: "Redactor") -> tuple[str | None, str]:
    """(the context's agent_id or None, the rest as JSON text, "" when empty), redacted and storable."""
    values = _json_mapping(context, red) if context else {}
    agent = values.pop("agent_id", None)
    if agent is not None and not isinstance(agent, str):
        agent = storable(json.dumps(agent), NAME_MAX, one_line=True)
    return agent or None, json.dumps(values, allow_nan=False) if values else ""
