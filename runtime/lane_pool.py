"""A connection pool with a fast lane: single statements run on one connection the pool keeps aside.

asyncpg's `Pool.execute/fetch/fetchrow/fetchval/executemany` acquire a connection and release it for every
statement; the release goes through `asyncio.shield` (a new Task) and futures, which costs about as much CPU as
the statement itself (measured here: ~170 us a statement through the pool, ~95 us on a connection held). Almost
every statement this code sends is one of those single autocommit statements, so `LanePool` runs them on a
connection of its own (the lane, outside `max_size`, connected as the pool's are: same settings, same codecs),
and falls back to the ordinary pooled path whenever the lane is busy (another task is using it) or gone.
Transactions (`async with pool.acquire() as conn, conn.transaction()`) are untouched; a caller that opens
transactions often may `take` the lane for one (and `give` it back) instead of a pooled connection.

Each statement still commits on its own, in the order the caller awaited them, so nothing a reader or another
process sees changes. A lane that failed in a way that may leave it unusable (cancelled mid-statement, the
connection lost) is dropped — the error is raised as the pooled path would raise it — and a new one is made on
a later call (not before LANE_RETRY_S when making one failed).

`changes` counts what may have changed the database: every statement sent through these methods (as it starts
and as it ends) and every pooled connection given back (a transaction's end). `SoleReads` serves a read again
from memory while `changes` has not moved since it was read: for a process that is the only writer of the rows
read (a replay holds its agent id's lock and nobody else writes under that id), an answer nothing of ours could
have changed is the answer the database would give.
"""
from __future__ import annotations

import asyncio

import asyncpg
import asyncpg.pool

LANE_RETRY_S = 5.0


class LanePool(asyncpg.pool.Pool):
    __slots__ = ("_lane", "_lane_busy", "_lane_retry_at", "changes", "_quiet")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lane: asyncpg.Connection | None = None
        self._lane_busy = False
        self._lane_retry_at = 0.0
        self.changes = 0                  # see the module's docstring
        self._quiet: set = set()          # pooled connections running a read for SoleReads (no change to count)

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
        self.changes += 1
        try:
            return await self._send(name, *args, **kwargs)
        finally:
            self.changes += 1

    async def _send(self, name: str, *args, **kwargs):
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

    async def execute_apart(self, query: str, *args) -> str:
        """A statement that writes only rows no SoleReads query reads (audit rows: decisions, patterns,
        trading_cycles), so it is not counted as a change."""
        return await self.read("execute", query, *args)

    async def execute_behind(self, query: str, *args) -> str:
        """`execute_apart` on a pooled connection, never the lane: a write sent behind (execution/store.py) runs
        beside the statements that follow it, which keep the lane."""
        return await self._quiet_pooled("execute", query, *args)

    async def _quiet_pooled(self, name: str, query: str, *args):
        """`name` on a pooled connection whose release is not counted as a change."""
        con = await self.acquire()
        self._quiet.add(con)
        try:
            return await getattr(con, name)(query, *args)
        finally:
            await self.release(con)

    async def read(self, name: str, query: str, *args):
        """A read (fetch, fetchrow or fetchval) that does not count as a change: SoleReads' path."""
        lane = self._ready_lane()
        if lane is None:
            await self._make_lane()
            return await self._quiet_pooled(name, query, *args)
        try:
            out = await getattr(lane, name)(query, *args)
        except BaseException as exc:
            self._give_back(exc)
            raise
        self._give_back(None)
        return out

    async def take(self) -> asyncpg.Connection:
        """A connection for a transaction: the lane when it is free (none of the pool's acquire and release around
        it), else a pooled one. Give it back with `give` (a transaction's start and end each count as a change)."""
        lane = self._ready_lane()
        if lane is None:
            return await self.acquire()
        self.changes += 1
        return lane

    async def give(self, connection) -> None:
        """A connection from `take` given back, its transaction ended: the lane is kept for the next statement
        (dropped if a transaction is still open on it: the caller failed to end it), a pooled one is released."""
        if connection is not self._lane or not self._lane_busy:
            await self.release(connection)
            return
        self.changes += 1
        self._give_back(None if not connection.is_in_transaction() else
                        RuntimeError("the lane was given back inside a transaction"))

    async def release(self, connection, *, timeout=None):
        if connection in self._quiet:
            self._quiet.discard(connection)
        else:
            self.changes += 1             # a transaction (or any work on a pooled connection) has ended
        return await super().release(connection, timeout=timeout)

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


class SoleReads:
    """Reads served again from memory while nothing of this process has touched the database since (see the
    module's docstring). Only for rows this process alone writes; a pool that counts no changes (not a LanePool)
    is always asked."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self._at: int | None = None              # the pool's `changes` the memo belongs to
        self._memo: dict[tuple, object] = {}
        self.hits = 0

    async def _get(self, name: str, query: str, args: tuple):
        pool = self.pool
        if not isinstance(pool, LanePool):
            return await getattr(pool, name)(query, *args)
        at = pool.changes
        if at != self._at:
            self._memo.clear()
            self._at = at
        key = (name, query, args)
        try:
            hash(key)
        except TypeError:                        # an unhashable argument (a list): asked every time
            return await getattr(pool, name)(query, *args)
        if key in self._memo:
            self.hits += 1
            return self._memo[key]
        out = await pool.read(name, query, *args)
        if pool.changes == at:                   # nothing else ran meanwhile: still the database's answer
            if self._at != at:
                self._memo.clear()
                self._at = at
            self._memo[key] = out
        return out

    async def fetch(self, query: str, *args) -> list:
        return list(await self._get("fetch", query, args))

    async def fetchrow(self, query: str, *args):
        return await self._get("fetchrow", query, args)

    async def fetchval(self, query: str, *args):
        return await self._get("fetchval", query, args)
