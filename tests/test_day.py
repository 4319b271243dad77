"""The README's main command: `./run.sh day` — an offline trading day (scan -> trades -> close) with the rules
engine, the paper broker and embedded PostgreSQL, run as a real process, writes every table the seed's queries read."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env

SEED_QUERIES = [                       # seed §10.2 health checks
    "SELECT COUNT(*) FROM positions;",
    "SELECT * FROM agent_logs ORDER BY timestamp DESC LIMIT 10;",
]


@pytest.mark.slow
async def test_an_offline_day_writes_every_table(pool, pg_url, tmp_path):
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID="daytest")
    out = subprocess.run([PYTHON, "unified_agent.py", "--mode", "day"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    agent = re.search(r"agent id (\S+)\)", out.stdout).group(1)
    assert agent.startswith("daytest-day-")
    counts = {}
    for table in ("trading_cycles", "scan_results", "orders", "fills", "positions", "decisions", "patterns",
                  "agent_logs", "position_monitor_status"):
        counts[table] = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE agent_id = $1", agent)
    assert all(n > 0 for n in counts.values()), counts
    modes = {r["mode"]: r["n"] for r in await pool.fetch(
        "SELECT mode, count(*) AS n FROM trading_cycles WHERE agent_id = $1 GROUP BY mode", agent)}
    assert modes["scan"] == 1 and modes["close"] == 1 and modes["trade"] >= 10
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND engine = 'rules'",
                               agent) == sum(modes.values())
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND status = 'failed'",
                               agent) == 0
    # every entry carries a stop; positions came only from fills
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND intent = 'entry' "
                               "AND stop_loss IS NULL", agent) == 0
    filled = await pool.fetchval("SELECT coalesce(sum(quantity), 0) FROM fills WHERE agent_id = $1 AND side = 'buy'",
                                 agent)
    assert filled > 0
    for sql in SEED_QUERIES:
        rows = await pool.fetch(sql)
        assert rows, sql
    assert (await pool.fetchval("SELECT COUNT(*) FROM positions;")) >= counts["positions"]
    # the day logged no errors (seed §7 "recent errors", for this agent)
    assert not await pool.fetch("SELECT * FROM agent_logs WHERE level = 'ERROR' AND agent_id = $1 "
                                "ORDER BY timestamp DESC LIMIT 20", agent)
