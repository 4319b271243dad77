"""db_logger under hostile input: one record PostgreSQL refuses never blocks logging, a poisoned spool is replayed
without holding back what follows, a row the table still refuses is quarantined, and close() spools what a silent
database holds."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from logpipe.handler import DatabaseLogHandler
from db_logger import LogWriter
from core.logcontext import log_context
from runtime import database
from tests.log_helpers import make_logger, spooled_lines

CONTROLS = "".join(chr(c) for c in (*range(0x20), *range(0x7f, 0xa0)))


def quarantined(log_dir: Path) -> list[dict]:
    path = log_dir / "quarantine" / "agent_logs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


HOSTILE = {
    "NUL in the context": dict(context={"note": "a\x00b"}),
    "a symbol over 8 KB": dict(context={"symbol": os.urandom(4500).hex()}),
    "a lone surrogate in the message": dict(message="price \ud800 seen"),
    "NaN in the context": dict(context={"pnl": math.nan, "limit": math.inf}),
    "NUL in the logger name": dict(logger="catalyst.\x00odd"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_record_postgres_refuses_never_blocks_logging(pool, pg_url, agent_id, tmp_path, case):
    bad = HOSTILE[case]
    writer = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.hostile.{agent_id}", writer)
    try:
        with log_context(**bad.get("context", {})):
            record = logging.LogRecord(bad.get("logger", logger.name), logging.INFO, __file__, 1,
                                       bad.get("message", "the hostile one"), None, None)
            logger.handle(record)
        logger.info("the one after it")
        assert writer.flush(10)
    finally:
        writer.close()
    # a later process sharing logs/ is not held back either
    writer2 = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    make_logger(f"t.hostile2.{agent_id}", writer2).info("the next process")
    assert writer2.flush(10)
    writer2.close()
    messages = {r["message"] for r in await pool.fetch("SELECT message FROM agent_logs WHERE agent_id = $1",
                                                       agent_id)}
    assert {"the one after it", "the next process"} <= messages, messages
    assert len(messages) == 3, "the hostile record is stored too, made storable"
    assert not spooled_lines(tmp_path) and not quarantined(tmp_path)


async def test_stored_text_is_escaped_truncated_and_marked(pool, pg_url, agent_id, tmp_path):
    writer = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.clean.{agent_id}", writer)
    with log_context(symbol="0700\x00" + "9" * 10_000, tool="get\nquote", half="\udc80x"):
        logger.info("bell\x07 nul\x00 line\nnext " + "y" * 200_000)
    assert writer.flush(10)
    writer.close()
    row = await pool.fetchrow("SELECT message, context FROM agent_logs WHERE agent_id = $1", agent_id)
    message, context = row["message"], row["context"]
    assert message.startswith("bell\\x07 nul\\x00 line\nnext yyy")         # controls escaped, newlines kept
    assert len(message) < 40_000 and "truncated" in message[-60:]
    assert context["symbol"].startswith("0700\\x009999") and len(context["symbol"]) < 400
    assert "truncated" in context["symbol"]
    assert context["tool"] == "get\\nquote"                                 # one-line fields escape newlines too
    assert context["half"] == "\ufffdx"                                     # lone surrogates replaced


def old_spool_line(agent_id: str, message: str, context: dict) -> str:
    """A spool line as the writer wrote it before it sanitised anything."""
    from datetime import datetime, timezone
    return json.dumps([str(uuid.uuid4()), datetime.now(timezone.utc).isoformat(), agent_id, "INFO", "old", message,
                       context, None]) + "\n"


async def test_a_poisoned_spool_left_by_another_process_is_replayed_and_never_holds_back_the_rest(
        pool, pg_url, agent_id, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = [old_spool_line(agent_id, f"before {i}", {}) for i in range(5)]
    lines.append(old_spool_line(agent_id, "poison", {"note": "a\x00b", "symbol": os.urandom(4500).hex()}))
    lines += [old_spool_line(agent_id, f"after {i}", {}) for i in range(5)]
    lines.append('["torn line from a killed proc')
    (spool / "agent_logs.999999.deadbeef.jsonl").write_text("".join(lines))
    writer = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.poison.{agent_id}", writer)
    logger.info("new record")
    assert writer.flush(10)
    logger.info("and another")
    assert writer.flush(10)
    writer.close()
    messages = {r["message"] for r in await pool.fetch("SELECT message FROM agent_logs WHERE agent_id = $1",
                                                       agent_id)}
    assert {"new record", "and another", "poison"} | {f"before {i}" for i in range(5)} \
        | {f"after {i}" for i in range(5)} <= messages
    assert not list(spool.glob("*.jsonl")), "a replayed spool is deleted"
    [torn] = quarantined(tmp_path)                                          # the torn line is kept, not dropped
    assert "torn line" in torn["line"]


@pytest.fixture
async def strict_db(pool, pg_url):
    """A database of its own whose agent_logs refuses messages equal to 'poison' (a CHECK violation: a row no
    sanitising can fix)."""
    name = f"strict_{uuid.uuid4().hex[:8]}"
    await pool.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.replace("/catalyst?", f"/{name}?", 1)
    p = await database.create_pool(url)
    await database.ensure_schema(p)
    await p.execute("ALTER TABLE agent_logs ADD CONSTRAINT no_poison CHECK (message <> 'poison')")
    try:
        yield url, p
    finally:
        await p.close()
        await pool.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_a_row_the_table_refuses_is_quarantined_and_the_rest_of_its_batch_stored(strict_db, agent_id,
                                                                                        tmp_path):
    url, p = strict_db
    writer = LogWriter(dsn=url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.quarantine.{agent_id}", writer)
    for i in range(200):
        logger.info("poison" if i == 57 else f"fine {i}")
    assert writer.flush(10)
    logger.info("later")
    assert writer.flush(10)
    assert writer.flush(10)                                  # the warning about the quarantined row is stored too
    writer.close()
    rows = await p.fetch("SELECT level, message FROM agent_logs WHERE agent_id = $1", agent_id)
    messages = {r["message"] for r in rows}
    assert {f"fine {i}" for i in range(200) if i != 57} | {"later"} <= messages and "poison" not in messages
    [row] = quarantined(tmp_path)
    assert row["row"][5] == "poison" and "no_poison" in row["error"]
    assert writer.stats["quarantined"] == 1
    [warning] = [r for r in rows if r["level"] == "WARNING"]
    assert "1 log record" in warning["message"] and "quarantine" in warning["message"]
    assert not spooled_lines(tmp_path)


def test_close_spools_what_a_silent_database_holds(tmp_path, agent_id):
    """A database that accepts the connection and never answers: close(timeout) returns in time and has spooled
    every record it could not store."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    writer = LogWriter(dsn=f"postgresql://u:pw@127.0.0.1:{port}/x", agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.silent.{agent_id}", writer)
    try:
        for i in range(500):
            logger.info("while silent %d", i)
        writer.close(timeout=1)
        lines = spooled_lines(tmp_path)
    finally:
        server.close()
    assert len(lines) == 500 == len({json.loads(line)[5] for line in lines})
    assert writer.stats["spooled"] == 500


# -------------------------------------------------------------- any text, in any field

def hostile_text() -> st.SearchStrategy[str]:
    every_char = st.characters(exclude_categories=())                      # surrogates included
    return st.one_of(
        st.text(every_char, max_size=40),
        st.just(CONTROLS),
        st.just("\x00"),
        st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\x00\ud800" * 3]),
        st.integers(90_000, 110_000).map(lambda n: ("☃\x00\ud800\n\x1b" * (n // 5 + 1))[:n]),   # ~100 KB
        st.integers(8_000, 12_000).map(lambda n: os.urandom(n // 2 + 1).hex()[:n]),               # over 8 KB
    )


FIELDS = ("symbol", "tool", "cycle_id", "mode", "agent_id", "other key", "nested", "key", "message", "logger",
          "exception")


class _Db:
    """A connection of its own for a synchronous (hypothesis) test."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(url))

    def fetch(self, sql: str, *args):
        return self.loop.run_until_complete(self.conn.fetch(sql, *args))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture(scope="module")
def hostile_writer(pg_url, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("hostile-logs")
    agent = f"t_{uuid.uuid4().hex[:10]}"
    writer = LogWriter(dsn=pg_url, agent_id=agent, log_dir=log_dir).start()
    db = _Db(pg_url)
    yield writer, agent, log_dir, db
    writer.close()
    db.close()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), text=hostile_text())
def test_any_text_in_any_logged_field_is_stored_and_logging_goes_on(hostile_writer, field, text):
    writer, agent, log_dir, db = hostile_writer
    handler = DatabaseLogHandler(writer)
    marker = uuid.uuid4().hex
    context = {"cycle_id": marker}
    if field in ("symbol", "tool", "cycle_id", "mode", "agent_id", "other key"):
        context[field] = text
    elif field == "nested":
        context["nested"] = {"list": [text, {"deep": text}], text[:50]: 1}
    elif field == "key":
        context[text] = "value"
    context.setdefault("agent_id", agent)
    context["mark"] = marker
    exc_info = None
    if field == "exception":
        try:
            raise ValueError(text)
        except ValueError:
            exc_info = sys.exc_info()
    with log_context(**context):
        handler.handle(logging.LogRecord(text if field == "logger" else "t.any", logging.ERROR, __file__, 1,
                                         text if field == "message" else "hostile %s", None if field == "message"
                                         else (field,), exc_info))
    with log_context(agent_id=agent, mark=marker):
        handler.handle(logging.LogRecord("t.any", logging.INFO, __file__, 1, "normal after %s", (marker,), None))
    assert writer.flush(30)                                                # one flush
    rows = db.fetch("SELECT message FROM agent_logs WHERE context->>'mark' = $1", marker)
    messages = [r["message"] for r in rows]
    assert f"normal after {marker}" in messages
    assert len(messages) == 2, "the hostile record is stored as well, made storable"
    assert writer.stats["quarantined"] == 0 and writer.stats["spooled"] == 0
