"""Shared fixtures: a real embedded PostgreSQL for the whole session, settings, unique agent ids, the agent's
services."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402
from core.environment import Environment
from core.settings import load_settings  # noqa: E402

PYTHON = sys.executable
# Agent processes started by tests share one calendar cache (core/calendar.py), as a server's cron runs share var/cache.
CACHE_DIR = Path(tempfile.gettempdir()) / f"catalyst-test-cache-{os.getuid()}"
os.environ["CATALYST_CACHE_DIR"] = str(CACHE_DIR)       # and so does this process (never the checkout's var/)


def pytest_asyncio_loop_factories(config, item):
    """Async tests and fixtures run on the event loop the agent's processes run on (uvloop's)."""
    from runtime.bootstrap import new_event_loop
    return {"process-loop": new_event_loop}


@pytest.fixture(scope="session")
def pg_root():
    root = Path(tempfile.mkdtemp(prefix="catalyst-pg-"))
    yield root
    for pgdata in root.glob("*"):
        try:
            database.stop_embedded(pgdata)
        except Exception:
            pass
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_root) -> str:
    """URL of the session's embedded server, database `catalyst`."""
    return database.start_embedded(pg_root / "main")


@pytest.fixture(scope="session")
async def pool(pg_url):
    p = await database.create_pool(pg_url, max_size=8)
    await database.ensure_schema(p)
    yield p
    await p.close()


@pytest.fixture
def agent_id() -> str:
    """A fresh agent id per test: every row carries agent_id, so tests never see each other's rows."""
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def services(pool, agent_id):
    """The whole agent for a fresh agent id: paper broker on the simulated market, clock at a Tuesday 10:30 HKT."""
    from tests.agent_fixtures import agent_services
    return await agent_services(pool, agent_id)


@pytest.fixture
def make_env(tmp_path, pg_url):
    def _make(**extra: str) -> Environment:
        values = {"DATABASE_URL": pg_url, "CATALYST_VAR_DIR": str(tmp_path / "var"),
                  "CATALYST_LOG_DIR": str(tmp_path / "logs")}
        values.update(extra)
        return Environment(values={k: v for k, v in values.items() if v is not None})
    return _make


@pytest.fixture
def settings(make_env, agent_id):
    return load_settings(env=make_env(AGENT_ID=agent_id))


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for running the agent as a separate process against test resources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALYST_", "DATABASE_URL", "ANTHROPIC_",
                                                                    "ALPACA_", "MOOMOO_", "AGENT_ID"))}
    env.update({"CATALYST_VAR_DIR": str(tmp_path / "var"), "CATALYST_LOG_DIR": str(tmp_path / "logs"),
                "CATALYST_ENV_FILE": str(tmp_path / "no.env"), "CATALYST_CACHE_DIR": str(CACHE_DIR),
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    return env


def venv_is_current() -> bool:
    """run.sh reuses .venv only when its stamp matches the requirements; otherwise running it would reinstall."""
    stamp = ROOT / ".venv" / ".requirements.sha256"
    python = ROOT / ".venv" / "bin" / "python"
    if not stamp.is_file() or not python.exists():
        return False
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()
                            + (ROOT / "requirements-dev.txt").read_bytes()).hexdigest()
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return stamp.read_text().strip() == f"{digest}-{version}"


async def forget_dataset(pool, dataset: str) -> None:
    """Market data is shared by every agent of an installation (the test database is one): a test that syncs a
    venue's dataset starts, and leaves, it empty so other tests of that venue see only their own market."""
    for table in ("bars", "bar_series", "securities", "data_syncs"):
        await pool.execute(f"DELETE FROM {table} WHERE dataset = $1", dataset)
