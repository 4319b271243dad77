"""Crash points for fault-injection tests: `CATALYST_KILL_AT=name[:n]` SIGKILLs this process the n-th time (default
the first) execution reaches `kill_point(name)`. Unset (always, in production) it costs one dict lookup.

The points sit on the order path where a crash is most dangerous (tests/test_fault_injection.py):
  before_write_ahead, after_write_ahead, after_broker_call, after_fills_recorded
"""
from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get("CATALYST_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
