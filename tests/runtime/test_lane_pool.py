"""The pool's fast lane (runtime/lane_pool.py): single statements skip acquire/release, and nothing else changes."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from runtime import database
from runtime.lane_pool import LanePool

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def lane_pool(pool, pg_url):          # `pool`: the schema applied
    p = await database.create_pool(pg_url, max_size=2, durable=False)
    yield p
    await p.close()


async def test_single_statements_run_on_one_connection_outside_the_pool(lane_pool):
    assert isinstance(lane_pool, LanePool)
    await lane_pool.fetchval("SELECT 1")                 # the lane is made on first use
    pids = {await lane_pool.fetchval(PID) for _ in range(5)}
    assert len(pids) == 1
    async with lane_pool.acquire() as a, lane_pool.acquire() as b:    # max_size=2: both pooled ones still free
        assert len({await a.fetchval(PID), await b.fetchval(PID)} | pids) == 3
    # connected as the pool's connections are: server settings and codecs
    assert await lane_pool.fetchval("SHOW synchronous_commit") == "off"
    assert await lane_pool.fetchval("SELECT '{\"a\": 1}'::jsonb") == {"a": 1}


async def test_concurrent_statements_all_run(lane_pool):
    await lane_pool.fetchval("SELECT 1")
    pids = await asyncio.gather(*[lane_pool.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
                                  for _ in range(3)])
    assert len(set(pids)) >= 2                           # the lane was busy: the others went through the pool


async def test_a_server_error_keeps_the_lane_and_a_cancelled_statement_drops_it(lane_pool):
    await lane_pool.fetchval("SELECT 1")
    pid = await lane_pool.fetchval(PID)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await lane_pool.fetchval("SELECT 1 / 0")
    assert await lane_pool.fetchval(PID) == pid
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(lane_pool.execute("SELECT pg_sleep(5)"), 0.1)
    await lane_pool.fetchval("SELECT 1")                 # through the pool, while a new lane is made
    assert await lane_pool.fetchval(PID) != pid          # the new lane, not the one cancelled mid-statement
    assert await lane_pool.fetchval("SELECT 2") == 2


async def test_statements_commit_as_they_return(lane_pool, agent_id):
    await lane_pool.fetchval("SELECT 1")
    await lane_pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                            "VALUES ($1, 'HALTED', 'lane', 'test', now())", agent_id)
    async with lane_pool.acquire() as other:             # another connection sees it at once
        assert await other.fetchval("SELECT count(*) FROM agent_state WHERE agent_id = $1", agent_id) == 1


async def test_a_transaction_takes_the_free_lane_and_a_busy_lane_leaves_it_to_the_pool(lane_pool, agent_id):
    """`take` gives the lane when it is free (its start and end each a change), a pooled connection while a statement
    holds the lane; a lane given back inside a transaction (its caller failed to end it) is dropped, never reused."""
    await lane_pool.fetchval("SELECT 1")
    lane_pid = await lane_pool.fetchval(PID)
    before = lane_pool.changes
    conn = await lane_pool.take()
    try:
        async with conn.transaction():
            assert await conn.fetchval(PID) == lane_pid
            await conn.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                               "VALUES ($1, 'HALTED', 'lane', 'test', now())", agent_id)
            # meanwhile a single statement goes through the pool, not onto the transaction's connection
            assert await lane_pool.fetchval(PID) != lane_pid
    finally:
        await lane_pool.give(conn)
    assert lane_pool.changes >= before + 2
    assert await lane_pool.fetchval(PID) == lane_pid          # the lane is back for single statements
    assert await lane_pool.fetchval("SELECT count(*) FROM agent_state WHERE agent_id = $1", agent_id) == 1

    busy = asyncio.create_task(lane_pool.execute("SELECT pg_sleep(0.2)"))
    await asyncio.sleep(0.05)
    pooled = await lane_pool.take()
    try:
        assert await pooled.fetchval(PID) != lane_pid
    finally:
        await lane_pool.give(pooled)
    await busy

    left_open = await lane_pool.take()
    await left_open.execute("BEGIN")
    await lane_pool.give(left_open)
    assert left_open.is_closed()
    assert await lane_pool.fetchval("SELECT 1") == 1           # a new lane is made; nothing runs inside that one


async def test_close_closes_the_lane(pg_url):
    p = await database.create_pool(pg_url, max_size=1)
    await p.fetchval("SELECT 1")
    pid = await p.fetchval(PID)
    await p.close()
    async with await database.create_pool(pg_url, max_size=1) as q:
        for _ in range(50):
            if not await q.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                break
            await asyncio.sleep(0.02)
        assert not await q.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


async def test_sole_reads_serve_a_read_again_until_anything_is_written(lane_pool, agent_id):
    from runtime.lane_pool import SoleReads
    reads = SoleReads(lane_pool)
    q = "SELECT count(*) FROM agent_state WHERE agent_id = $1"
    assert await reads.fetchval(q, agent_id) == 0
    async with lane_pool.acquire() as other:          # a change only another connection could see...
        await other.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                            "VALUES ($1, 'HALTED', 'x', 'test', now())", agent_id)
        assert await reads.fetchval(q, agent_id) == 0  # (still inside: its end is what counts)
    assert await reads.fetchval(q, agent_id) == 1     # ...counts once the connection is given back
    assert reads.hits == 1
    await lane_pool.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                            "VALUES ($1, 'ACTIVE', 'y', 'test', now())", agent_id)
    assert await reads.fetchval(q, agent_id) == 2     # a statement through the pool: asked again
    assert await reads.fetchval(q, agent_id) == 2 and reads.hits == 2
    await lane_pool.execute_apart("SELECT 1")         # a statement that writes nothing read: still served
    assert await reads.fetchval(q, agent_id) == 2 and reads.hits == 3
    assert await reads.fetch("SELECT $1::text[] AS a", ["x"]) != []       # unhashable arguments: asked each time


async def test_sole_reads_on_a_plain_pool_always_ask(pg_url, agent_id):
    import asyncpg
    from runtime.lane_pool import SoleReads
    async with asyncpg.create_pool(pg_url, min_size=1, max_size=1) as plain:
        reads = SoleReads(plain)
        assert await reads.fetchval("SELECT 1") == 1 and await reads.fetchval("SELECT 1") == 1
        assert reads.hits == 0
