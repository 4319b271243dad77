"""Cycles that died are marked: a cycle whose process is gone (its agent's lock is free) becomes `interrupted`
at the next run of any agent of this installation, with what it had written; a live one is left alone."""
from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import uuid

from runtime.cycle import mark_interrupted
from tests.conftest import PYTHON, ROOT

HOLDER = textwrap.dedent("""
    import asyncio, sys, uuid, time
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from runtime import database
    from runtime.lock import AgentLock

    async def main():
        AgentLock(Path({lock_dir!r}), {agent!r}).acquire("trade")
        pool = await database.create_pool({dsn!r}, max_size=1)
        cycle = uuid.UUID({cycle!r})
        await pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, 'trade')",
                           cycle, {agent!r})
        await pool.execute("INSERT INTO orders (agent_id, client_order_id, cycle_id, symbol, side, order_type, "
                           "intent, quantity, status, created_at, updated_at) VALUES ($1, $2, $3, 'S0001', 'buy', "
                           "'market', 'entry', 100, 'pending_submit', now(), now())", {agent!r},
                           {agent!r} + "-x-1", cycle)
        print("ready", flush=True)
        await asyncio.sleep(600)
    asyncio.run(main())
""")


def start_holder(pg_url: str, lock_dir, agent: str, cycle: uuid.UUID) -> subprocess.Popen:
    code = HOLDER.format(root=str(ROOT), lock_dir=str(lock_dir), agent=agent, dsn=pg_url, cycle=str(cycle))
    proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def test_a_killed_cycle_is_marked_interrupted_with_what_it_wrote(pool, pg_url, tmp_path):
    lock_dir = tmp_path / "locks"
    agent, cycle = f"victim_{uuid.uuid4().hex[:6]}", uuid.uuid4()
    proc = start_holder(pg_url, lock_dir, agent, cycle)
    try:
        from datetime import datetime, timezone
        now = datetime.now(timezone.utc)
        assert cycle not in await mark_interrupted(pool, lock_dir, now, found_by="test")      # alive: left alone
        assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", cycle) == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert cycle in await mark_interrupted(pool, lock_dir, now, found_by="test")
        row = await pool.fetchrow("SELECT status, error, finished_at FROM trading_cycles WHERE cycle_id = $1", cycle)
        assert row["status"] == "interrupted" and row["finished_at"] == now
        assert "1 pending_submit" in row["error"] and agent in row["error"]
        assert cycle not in await mark_interrupted(pool, lock_dir, now, found_by="test")     # once only
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_cycle_of_an_agent_that_never_ran_here_is_not_touched(pool, tmp_path):
    """Another machine's agent sharing the database has no lock file here: its running cycle is not ours to judge."""
    from datetime import datetime, timezone
    cycle = uuid.uuid4()
    await pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, 'trade')", cycle,
                       f"elsewhere_{uuid.uuid4().hex[:6]}")
    assert cycle not in await mark_interrupted(pool, tmp_path / "locks", datetime.now(timezone.utc), found_by="test")
    await pool.execute("UPDATE trading_cycles SET status = 'completed' WHERE cycle_id = $1", cycle)


async def test_the_next_cycle_of_any_agent_marks_it(pool, pg_url, services):
    lock_dir = services.settings.var_dir / "locks"
    agent, cycle = f"dayrun-day-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    proc = start_holder(pg_url, lock_dir, agent, cycle)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    outcome = await services.run_cycle("close")
    assert outcome.status != "failed"
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", cycle) == "interrupted"


async def test_the_agents_own_next_run_marks_its_dead_cycle(pool, pg_url, services):
    """The restarted cron run holds its agent's lock itself; a cycle of that agent still `running` from before is
    from a run that died (one run at a time), so it is marked too."""
    from runtime.lock import AgentLock
    lock_dir = services.settings.var_dir / "locks"
    cycle = uuid.uuid4()
    proc = start_holder(pg_url, lock_dir, services.agent_id, cycle)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    lock = AgentLock(lock_dir, services.agent_id).acquire("trade")        # as unified_agent does
    try:
        await services.run_cycle("close")
    finally:
        lock.release()
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", cycle) == "interrupted"


async def test_a_process_looks_for_dead_cycles_on_its_first_cycle_only(pool, pg_url, services):
    """A cron run is one cycle; a process running many (replay, day, eval) looks once: what dies later is found
    by the next process, as it would be by the dead agent's own next run."""
    from tests.agent_fixtures import agent_services
    await services.run_cycle("close")                      # the first cycle of this process: it looked
    lock_dir = services.settings.var_dir / "locks"
    agent, cycle = f"dayrun-day-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    proc = start_holder(pg_url, lock_dir, agent, cycle)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    await services.run_cycle("close")
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", cycle) == "running"
    later = await agent_services(pool, f"t_{uuid.uuid4().hex[:10]}")        # the next process
    await later.run_cycle("close")
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", cycle) == "interrupted"


async def test_the_rules_engine_is_made_once_for_the_same_settings(services):
    """Made per cycle it cost a repr of its whole configuration each time; it keeps nothing of a cycle, so the
    same settings get the same engine, and settings replaced (replay widens the quote age) a new one."""
    from dataclasses import replace
    first, _ = await services.choose_engine("trade")
    again, _ = await services.choose_engine("scan")
    assert first is again and first.name == "rules"
    services.settings = replace(services.settings)
    other, _ = await services.choose_engine("trade")
    assert other is not first and other.cfg is services.settings.config
