"""Retention of agent_logs covers every agent id of this installation: the live agent and its broker checks after
logging.db_retention_days, its day and replay runs after logging.replay_retention_days; nobody else's rows."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from core.environment import Environment
from core.config_model import LoggingConfig
from core.settings import load_settings
from runtime.retention import purge_old_logs


async def insert(pool, agent_id: str, days_old: float) -> None:
    await pool.execute("INSERT INTO agent_logs (id, timestamp, agent_id, level, logger, message) "
                       "VALUES ($1, $2, $3, 'INFO', 't', 'x')", uuid.uuid4(),
                       datetime.now(timezone.utc) - timedelta(days=days_old), agent_id)


async def test_retention_covers_day_replay_and_check_ids_and_spares_other_agents(pool):
    agent = f"t_{uuid.uuid4().hex[:8]}"
    ids = {
        "live": agent, "check": f"{agent}-check",
        "day": f"{agent}-day-20261124-ab12", "replay": f"{agent}-replay-1a2b3c4d",
        "other agent": f"{agent}-us",                                   # another agent that shares the prefix
        "like trap": agent.replace("_", "X", 1),                        # '_' is a LIKE wildcard
        "like trap day": agent.replace("_", "X", 1) + "-day-20261124-ab12",
    }
    for who in ids.values():
        for days_old in (1, 10, 40):
            await insert(pool, who, days_old)
    deleted = await purge_old_logs(pool, agent_id=agent, days=30, replay_days=7)
    left = {name: sorted(round(d) for d in [r["d"] for r in await pool.fetch(
        "SELECT extract(epoch FROM now() - timestamp) / 86400 AS d FROM agent_logs WHERE agent_id = $1", who)])
        for name, who in ids.items()}
    assert left["live"] == left["check"] == [1, 10]                     # 30 days
    assert left["day"] == left["replay"] == [1]                         # 7 days
    assert left["other agent"] == left["like trap"] == left["like trap day"] == [1, 10, 40]
    assert deleted == 2 + 4


def test_replay_retention_is_a_setting_with_a_default():
    assert LoggingConfig().replay_retention_days == 7
    assert load_settings(env=Environment()).config.logging.replay_retention_days == 7


async def test_the_heartbeat_run_purges_old_replay_rows(pool, pg_url, agent_id, tmp_path):
    import subprocess

    from tests.conftest import PYTHON, ROOT, subprocess_env
    await insert(pool, f"{agent_id}-replay-0000aaaa", 9)
    await insert(pool, f"{agent_id}-replay-0000aaaa", 2)
    out = subprocess.run([PYTHON, str(ROOT / "unified_agent.py"), "--mode", "heartbeat"], capture_output=True,
                         text=True, env=subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent_id), timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert await pool.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1",
                               f"{agent_id}-replay-0000aaaa") == 1
