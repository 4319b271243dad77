"""brokers/base.py: `both` asks a remote broker beside our read, and a broker whose books are in our database (the
paper venue) one after the other."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from brokers.base import both


class _Broker:
    def __init__(self, shares: bool) -> None:
        self.shares_our_database = shares


async def _step(log: list, name: str, fail: bool = False) -> str:
    log.append(f"{name} start")
    await asyncio.sleep(0.01)
    log.append(f"{name} end")
    if fail:
        raise RuntimeError(f"{name} failed")
    return name


async def test_a_remote_brokers_answer_is_awaited_beside_our_read():
    log: list = []
    assert await both(_Broker(False), _step(log, "broker"), _step(log, "ours")) == ("broker", "ours")
    assert log[:2] == ["broker start", "ours start"]


async def test_a_broker_in_our_database_is_asked_first_then_our_read():
    log: list = []
    assert await both(_Broker(True), _step(log, "broker"), _step(log, "ours")) == ("broker", "ours")
    assert log == ["broker start", "broker end", "ours start", "ours end"]


async def test_a_failed_broker_read_leaves_our_read_unstarted_and_closed():
    """Closed, not left for the garbage collector to warn about ("coroutine ... was never awaited")."""
    log: list = []
    ours = _step(log, "ours")
    with pytest.raises(RuntimeError, match="broker failed"):
        await both(_Broker(True), _step(log, "broker", fail=True), ours)
    assert log == ["broker start", "broker end"]
    assert inspect.getcoroutinestate(ours) == inspect.CORO_CLOSED
