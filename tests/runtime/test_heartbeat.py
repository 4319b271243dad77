"""`--mode heartbeat` as a user runs it: a separate process, real database, exit codes that mean something."""
from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.heartbeat import EXIT_BROKER
from runtime.lock import EXIT_LOCKED, AgentLock
from tests.conftest import PYTHON, ROOT, subprocess_env


def run_agent(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(ROOT / "unified_agent.py"), *args], capture_output=True, text=True,
                          env=subprocess_env(tmp_path, **env), timeout=60, cwd=ROOT)


async def test_heartbeat_healthy_writes_service_health_and_log(tmp_path, pg_url, pool, agent_id):
    out = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL=pg_url, AGENT_ID=agent_id)
    assert out.returncode == 0, out.stderr
    assert "HEALTHY" in out.stdout and "schema v" in out.stdout
    row = await pool.fetchrow("SELECT status, details FROM service_health WHERE agent_id = $1", agent_id)
    assert row["status"] == "healthy" and row["details"]["database"]["ok"] is True
    logs = await pool.fetch("SELECT level, message, context FROM agent_logs WHERE agent_id = $1", agent_id)
    assert any(r["message"] == "heartbeat: healthy" and r["context"]["mode"] == "heartbeat" for r in logs)


def test_heartbeat_fails_and_says_why_when_database_is_unreachable(tmp_path, agent_id):
    out = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL="postgresql://catalyst:pw-secret-9@127.0.0.1:1/x",
                    AGENT_ID=agent_id)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "UNHEALTHY" in out.stdout
    assert "database" in out.stdout and "unreachable" in out.stdout
    assert "pw-secret-9" not in out.stdout + out.stderr
    # the error line is not lost: it waits in the spool for the database to come back
    spooled = "".join(p.read_text() for p in (tmp_path / "logs" / "spool").glob("*.jsonl"))
    assert "heartbeat: unhealthy" in spooled and "pw-secret-9" not in spooled


def test_remote_database_without_tls_is_a_config_error(tmp_path, agent_id):
    out = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL="postgresql://u:p@db.example.com/x",
                    AGENT_ID=agent_id)
    assert out.returncode == 2 and "sslmode=require" in out.stderr


def test_bad_config_exits_2_naming_file_and_key(tmp_path, agent_id):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "trading_config.yaml").read_text().replace("max_positions: 15",
                                                                                 "max_positions: -1"))
    out = run_agent(tmp_path, "--mode", "heartbeat", "--config", str(bad), AGENT_ID=agent_id)
    assert out.returncode == 2
    assert f"{bad}: trading.max_positions must be > 0" in out.stderr


def test_second_concurrent_run_is_refused(tmp_path, pg_url, agent_id):
    held = AgentLock(tmp_path / "var" / "locks", agent_id).acquire("trade")   # a run in progress
    try:
        out = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL=pg_url, AGENT_ID=agent_id)
    finally:
        held.release()
    assert out.returncode == EXIT_LOCKED
    assert "in progress" in out.stderr and "mode trade" in out.stderr
    again = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL=pg_url, AGENT_ID=agent_id)
    assert again.returncode == 0, again.stderr


def test_two_real_processes_racing_one_is_refused(tmp_path, pg_url, agent_id):
    """Two agent processes started together: while one holds the lock, the other exits 75 at once."""
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent_id)
    holder = subprocess.Popen([PYTHON, "-c", (
        "import sys, time; sys.path.insert(0, %r); from runtime.lock import AgentLock; from pathlib import Path; "
        "AgentLock(Path(%r), %r).acquire('trade'); print('held', flush=True); time.sleep(30)")
        % (str(ROOT), str(tmp_path / "var" / "locks"), agent_id)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL=pg_url, AGENT_ID=agent_id)
        assert out.returncode == EXIT_LOCKED
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock
    assert run_agent(tmp_path, "--mode", "heartbeat", DATABASE_URL=pg_url, AGENT_ID=agent_id).returncode == 0


def test_heartbeat_with_moomoo_and_no_opend_fails_with_the_seed_message(tmp_path, pg_url, agent_id):
    """How soon it gives up is measured in bench/bench_broker_timeouts.py, not here."""
    import socket

    import yaml
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    config["broker"] = "moomoo"
    config["market_data"]["source"] = "broker"          # a live broker trades on its own market data
    config["moomoo"].update(port=port, connect_timeout_seconds=2)
    path = tmp_path / "moomoo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_agent(tmp_path, "--mode", "heartbeat", "--config", str(path), DATABASE_URL=pg_url, AGENT_ID=agent_id)
    lines = out.stdout.splitlines()
    [broker] = [line for line in lines if line.startswith("  FAIL broker")]
    assert "MoomooClient not initialized: OpenD not running (systemctl start opend)" in broker, out.stdout
    # a fresh machine has no bars from moomoo either; the broker being down is what the exit code says
    assert any(line.startswith("  FAIL market data") for line in lines), out.stdout
    assert out.returncode == EXIT_BROKER, out.stdout + out.stderr
