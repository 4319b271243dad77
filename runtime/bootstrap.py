"""Process bootstrap, once for every entry point: settings, the run lock, the database and logging.

Exit codes (also in the README):
  0 done / healthy            2 configuration error        3 database unavailable
  4 broker unavailable        5 reconciliation needs a person (entries stopped)
  75 another run of this agent is in progress
  1 unexpected error (see agent_logs / logs/agent.log)
"""
from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Coroutine, Iterator, TypeVar

from core.errors import ConfigError
from core.settings import Settings, load_settings
from core.logcontext import bind_log_context
from db_logger import LogPipeline, setup_logging
from runtime.database import DatabaseTarget, DatabaseUnavailable, create_pool, ensure_schema, resolve_target
from runtime.lock import EXIT_LOCKED, AgentBusy, AgentLock

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_BROKER = 4
EXIT_ACTION_NEEDED = 5


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop every process runs on: uvloop's (libuv underneath; a database round trip through asyncpg is
    ~30% shorter on it than on asyncio's own loop, and a year's replay ~10% faster), asyncio's own where uvloop is
    not installed (it is pinned in requirements.txt; it has no Windows build). The tests run on the same loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop above: what every entry point calls."""
    return asyncio.run(main, loop_factory=new_event_loop)


def settings_or_exit(config_path: str | Path | None) -> Settings:
    """The validated settings; a configuration error is printed and ends the process with EXIT_CONFIG."""
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


@contextmanager
def run_lock(settings: Settings, mode: str, *, take: bool = True, name: str | None = None) -> Iterator[None]:
    """One run at a time per agent (flock; `name` for a lock of its own); a busy one ends with EXIT_LOCKED."""
    lock = AgentLock(settings.var_dir / "locks", name or settings.agent_id)
    if take:
        try:
            lock.acquire(mode)
        except AgentBusy as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(EXIT_LOCKED) from None
    try:
        yield
    finally:
        lock.release()


async def database_target(settings: Settings) -> tuple[DatabaseTarget | None, str | None]:
    """(target, None), or (None, why) when it cannot be reached; a configuration error ends with EXIT_CONFIG."""
    try:
        return await asyncio.to_thread(resolve_target, settings), None
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except DatabaseUnavailable as exc:
        return None, str(exc)


def start_logging(settings: Settings, target: DatabaseTarget | None, mode: str, *, level: str | None = None,
                  console_level: str = "WARNING") -> LogPipeline:
    pipeline = setup_logging(agent_id=settings.agent_id, log_dir=settings.log_dir, secrets=settings.env.secrets,
                             level=level or settings.config.logging.level, dsn=target.url if target else None,
                             file_keep_days=settings.config.logging.file_retention_days,
                             console_level=console_level)
    bind_log_context(mode=mode)
    for warning in settings.warnings:
        logging.getLogger("catalyst.config").warning(warning)
    return pipeline


@dataclass
class Process:
    settings: Settings
    target: DatabaseTarget | None
    pool: "asyncpg.Pool | None"
    database_error: str | None


@asynccontextmanager
async def process(settings: Settings, mode: str, *, level: str | None = None, console_level: str = "WARNING",
                  durable: bool = True, min_size: int = 1, max_size: int = 5) -> AsyncIterator[Process]:
    """Logging started and the database opened (schema current); both closed on the way out. A database that
    cannot be reached leaves `pool` None and says why in `database_error`."""
    target, error = await database_target(settings)
    pipeline = start_logging(settings, target, mode, level=level, console_level=console_level)
    pool = None
    try:
        if target is not None:
            try:
                pool = await create_pool(target.url, durable=durable, min_size=min_size, max_size=max_size)
                await ensure_schema(pool)
            except DatabaseUnavailable as exc:
                error = str(exc)
                if pool is not None:
                    await pool.close()
                pool = None
        yield Process(settings, target, pool, error)
    finally:
        if pool is not None:
            await pool.close()
        pipeline.close(timeout=5.0)
