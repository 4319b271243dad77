"""A connection pool with a fast lane: single statements run on one connection the pool keeps aside.

asyncpg's `Pool.execute/fetch/fetchrow/fetchval/executemany` acquire a connection and release it for every
statement; the release goes through `asyncio.shield` (a new Task) and futures, which costs about as much CPU as
the statement itself (measured here: ~170 us a statement through the pool, ~95 us on a connection held). Almost
every statement this code sends is one of those single autocommit statements, so `LanePool` runs them on a
connection of its own (the lane, outside `max_size`, connected as the pool's are: same settings, same codecs),
and falls back to the ordinary pooled path whenever the lane is busy (another task is using it) or gone.
Transactions (`async with pool.acquire() as conn, conn.transaction()`) are untouched.

Each statement still commits on its own, in the order the caller awaited them, so nothing a reader or another
process sees changes. A lane that failed in a way that may leave it unusable (cancelled mid-statement, the
connection lost) is dropped — the error is raised as the pooled path would raise it — and a new one is made on
a later call (not before LANE_RETRY_S when making one failed).
"""
from __future__ import annotations

import asyncio

import asyncpg
import asyncpg.pool

LANE_RETRY_S = 5.0


class LanePool(asyncpg.pool.Pool):
    __slots__ = ("_lane", "_lane_busy", "_lane_retry_at")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lane: asyncpg.Connection | None = None
        self._lane_busy = False
        self._lane_retry_at = 0.0

    def _ready_lane(self) -> asyncpg.Connection | None:
        """The lane when it is free and alive (taken: busy until _give_back); None otherwise."""
        lane = self._lane
        if lane is None or self._lane_busy or lane.is_closed() or self._closing:
            return None
        self._lane_busy = True
        return lane

    async def _make_lane(self) -> None:
        """A new lane when there is none (or a dead one), unless making one failed less than LANE_RETRY_S ago."""
        if self._lane_busy or self._closing or self._closed or (self._lane is not None
                                                                and not self._lane.is_closed()):
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._lane_retry_at:
            return
        self._lane_busy = True
        try:
            self._lane = await self._get_new_connection()      # the pool's own recipe: settings, init
        except (Exception, asyncio.CancelledError):
            self._lane, self._lane_retry_at = None, loop.time() + LANE_RETRY_S   # the pooled path raises its own
        finally:
            self._lane_busy = False

    def _give_back(self, failed: BaseException | None) -> None:
        self._lane_busy = False
        if failed is not None and not isinstance(failed, asyncpg.PostgresError) and self._lane is not None:
            self._lane.terminate()            # a server error leaves the connection fine; anything else may not
            self._lane = None

    async def _run(self, name: str, *args, **kwargs):
        """`name` (execute, fetch, ...) on the lane when it is free, else through the pool as asyncpg would."""
        lane = self._ready_lane()
        if lane is None:
            await self._make_lane()
            return await getattr(super(), name)(*args, **kwargs)
        try:
            out = await getattr(lane, name)(*args, **kwargs)
        except BaseException as exc:
            self._give_back(exc)
            raise
        self._give_back(None)
        return out

    async def execute(self, query: str, *args, timeout: float | None = None) -> str:
        return await self._run("execute", query, *args, timeout=timeout)

    async def executemany(self, command: str, args, *, timeout: float | None = None):
        return await self._run("executemany", command, args, timeout=timeout)

    async def fetch(self, query, *args, timeout=None, record_class=None) -> list:
        return await self._run("fetch", query, *args, timeout=timeout, record_class=record_class)

    async def fetchval(self, query, *args, column=0, timeout=None):
        return await self._run("fetchval", query, *args, column=column, timeout=timeout)

    async def fetchrow(self, query, *args, timeout=None, record_class=None):
        return await self._run("fetchrow", query, *args, timeout=timeout, record_class=record_class)

    def _drop_lane(self) -> asyncpg.Connection | None:
        lane, self._lane = self._lane, None
        return lane

    async def close(self) -> None:
        lane = self._drop_lane()
        if lane is not None and not lane.is_closed():
            try:
                await lane.close()
            except (Exception, asyncio.CancelledError):
                lane.terminate()
        await super().close()

    def terminate(self) -> None:
        lane = self._drop_lane()
        if lane is not None:
            lane.terminate()
        super().terminate()
