"""runtime.bootstrap: the event loop every entry point runs on."""
from __future__ import annotations

import asyncio

import uvloop

from runtime import bootstrap


def test_entry_points_run_on_uvloop():
    async def loop_type():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert issubclass(bootstrap.run(loop_type()), uvloop.Loop)


def test_run_returns_the_coroutines_result_and_raises_its_error():
    async def answer():
        return 42

    async def fail():
        raise LookupError("gone")

    assert bootstrap.run(answer()) == 42
    try:
        bootstrap.run(fail())
    except LookupError as exc:
        assert str(exc) == "gone"
    else:
        raise AssertionError("the coroutine's error was swallowed")


async def test_the_tests_run_on_the_loop_the_processes_run_on():
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
