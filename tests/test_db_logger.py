"""db_logger: enqueue-only handler, batched COPY, spool through outages, redaction, bounded shutdown."""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


from runtime import database
from tests.log_helpers import make_logger, spooled_lines
from logpipe.files import DailyFile
from db_logger import LogWriter, setup_logging
from core.redaction import Redactor
from core.logcontext import log_context

SECRETS = ("sk-ant-api03-SECRETSECRETSECRET", "alpaca-secret-XYZ123", "dbpass-42-hunter")


async def test_records_reach_the_table_with_context_and_all_levels(pool, pg_url, agent_id, tmp_path):
    writer = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.ctx.{agent_id}", writer)
    with log_context(cycle_id="c-1", mode="trade"):
        with log_context(symbol="0700", tool="get_quote"):
            logger.debug("debug line")
            logger.info("quote %s at %s", "0700", "320.2")
        logger.warning("warn")
        logger.error("err")
        logger.critical("crit")
    assert writer.flush(10)
    writer.close()
    rows = await pool.fetch("SELECT level, message, context FROM agent_logs WHERE agent_id = $1 ORDER BY id", agent_id)
    assert [r["level"] for r in rows] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    assert rows[1]["message"] == "quote 0700 at 320.2"
    assert rows[1]["context"] == {"cycle_id": "c-1", "mode": "trade", "symbol": "0700", "tool": "get_quote"}
    assert rows[2]["context"] == {"cycle_id": "c-1", "mode": "trade"}
    lines = (tmp_path / "agent.log").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], lines
    assert lines[1].endswith(f"t.ctx.{agent_id}: quote 0700 at 320.2 "
                             '{"cycle_id": "c-1", "mode": "trade", "symbol": "0700", "tool": "get_quote"}')


async def test_no_record_lost_when_database_stops_mid_burst(tmp_path, agent_id):
    pgdata = tmp_path / "pg"
    url = await _start(pgdata)
    p = await database.create_pool(url)
    await database.ensure_schema(p)
    await p.close()
    writer = LogWriter(dsn=url, agent_id=agent_id, log_dir=tmp_path / "logs", retry_max=0.5).start()
    logger = make_logger(f"t.burst.{agent_id}", writer)
    n = 0
    for _ in range(3000):
        logger.info("burst %d", n); n += 1
    database.stop_embedded(pgdata)                    # the database goes away in the middle of the burst
    for _ in range(3000):
        logger.info("burst %d", n); n += 1
    assert writer.flush(30)                           # everything so far is in the table or the spool
    assert writer.stats["spooled"] > 0 and len(spooled_lines(tmp_path / "logs")) == writer.stats["spooled"], \
        "records should be spooled while the db is down"
    url2 = await _start(pgdata)                      # ... and comes back
    assert url2 == url
    for _ in range(1000):
        logger.info("burst %d", n); n += 1
    deadline = time.monotonic() + 30
    p = await database.create_pool(url)
    try:
        while time.monotonic() < deadline:
            writer.flush(5)
            got = await p.fetchval("SELECT count(DISTINCT message) FROM agent_logs WHERE agent_id = $1", agent_id)
            if got == n:
                break
            time.sleep(0.3)
        total = await p.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1", agent_id)
    finally:
        await p.close()
        writer.close()
        database.stop_embedded(pgdata)
    assert got == n == 7000
    assert total == n, "a replayed batch must not be stored twice"
    assert not spooled_lines(tmp_path / "logs"), "a replayed spool is deleted"


def test_logging_returns_while_the_writer_is_stuck_on_the_database(tmp_path, agent_id):
    """A database that accepts the connection and never answers holds the writer; the caller never waits for it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    port = server.getsockname()[1]
    writer = LogWriter(dsn=f"postgresql://u:pw@127.0.0.1:{port}/x", agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.stuck.{agent_id}", writer)
    try:
        logger.info("first")                          # the writer takes it and connects ...
        held, _ = server.accept()                     # ... to a server that will not say a word
        for i in range(1000):
            logger.info("while stuck %d", i)
        # every call above returned while the writer's one connection attempt was still unanswered
        assert writer.stats == {"written": 0, "spooled": 0, "replayed": 0, "db_errors": 0, "quarantined": 0}
        server.close()
        held.close()                                  # the attempt fails now; the writer spools
        assert writer.flush(30)
    finally:
        server.close()
        writer.close()
    assert writer.stats["spooled"] == 1001 and writer.stats["db_errors"] >= 1
    assert len(spooled_lines(tmp_path)) == 1001


async def _start(pgdata: Path) -> str:
    import asyncio
    return await asyncio.to_thread(database.start_embedded, pgdata)


async def test_shutdown_is_bounded_when_database_is_down_and_next_run_replays(pool, pg_url, agent_id, tmp_path):
    dead = "postgresql://nobody@127.0.0.1:1/catalyst"
    writer = LogWriter(dsn=dead, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.down.{agent_id}", writer)
    for i in range(500):
        logger.info("while down %d", i)
    writer.close(timeout=5)
    # close returned because the writer finished, not because the 5 s ran out: it let go of its spool
    [spool] = (tmp_path / "spool").glob("*.jsonl")
    with spool.open() as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)   # raises BlockingIOError while a writer holds it
    assert len(spooled_lines(tmp_path)) == 500 == writer.stats["spooled"]
    # The next process (a new writer on the same log dir) replays what the dead one left.
    writer2 = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger2 = make_logger(f"t.down2.{agent_id}", writer2)
    logger2.info("next run")
    assert writer2.flush(10)
    writer2.close()
    assert await pool.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1", agent_id) == 501
    assert not list((tmp_path / "spool").glob("*.jsonl"))


async def test_secrets_never_reach_table_or_files(pool, pg_url, agent_id, tmp_path):
    pipeline = setup_logging(agent_id=agent_id, log_dir=tmp_path, secrets=SECRETS, dsn=pg_url,
                             console_level=None, level="DEBUG")
    logger = logging.getLogger(f"t.secret.{agent_id}")
    try:
        logger.info("key is %s", SECRETS[0])
        logger.warning("connecting to postgresql://catalyst:%s@db.example.com/x", SECRETS[2])
        with log_context(symbol="0700", api_key=SECRETS[1], nested={"list": [SECRETS[0]]}):
            logger.error("alpaca said no for key " + SECRETS[1])
        try:
            raise RuntimeError(f"auth failed with {SECRETS[0]}")
        except RuntimeError:
            logger.exception("boom")
        logger.info("unknown key shape sk-ant-api03-abcdefghijklmnop")
        assert pipeline.flush(10)
    finally:
        pipeline.close()
    rows = await pool.fetch("SELECT message, context::text AS c, coalesce(exception, '') AS e FROM agent_logs "
                            "WHERE agent_id = $1", agent_id)
    assert len(rows) == 5
    blob = "\n".join(f"{r['message']} {r['c']} {r['e']}" for r in rows)
    files = "\n".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    for secret in SECRETS + ("sk-ant-api03-abcdefghijklmnop",):
        assert secret not in blob
        assert secret not in files
    assert "***" in blob and "RuntimeError" in blob


async def test_bad_format_arguments_never_raise_into_the_caller(pool, pg_url, agent_id, tmp_path):
    writer = LogWriter(dsn=pg_url, agent_id=agent_id, log_dir=tmp_path).start()
    logger = make_logger(f"t.fmt.{agent_id}", writer)
    logger.info("two args %s %s", "only one")          # would raise inside getMessage
    logger.info("unserialisable context")
    with log_context(obj=object()):
        logger.info("odd context value")
    assert writer.flush(10)
    writer.close()
    msgs = [r["message"] for r in await pool.fetch("SELECT message FROM agent_logs WHERE agent_id=$1", agent_id)]
    assert len(msgs) == 3 and any("format failed" in m for m in msgs)


def test_redactor_masks_url_passwords_and_known_values():
    r = Redactor(("topsecretvalue",))
    assert r.text("x topsecretvalue y") == "x *** y"
    assert r.text("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert r.value({"a": ["topsecretvalue", 1, None]}) == {"a": ["***", 1, None]}


def test_daily_file_rotates_and_keeps_seven_days(tmp_path):
    f = DailyFile(tmp_path, "agent", keep_days=7)
    for days_ago in range(12, 0, -1):
        (tmp_path / f"agent.log.{(datetime.now(timezone.utc) - timedelta(days=days_ago)):%Y-%m-%d}").write_text("x")
    old = tmp_path / "agent.log"
    old.write_text("yesterday\n")
    yesterday = time.time() - 86400
    os.utime(old, (yesterday, yesterday))
    f.write(["today\n"], datetime.now(timezone.utc))
    f.close()
    kept = sorted(p.name for p in tmp_path.glob("agent.log.*"))
    assert len(kept) == 7, kept
    assert (tmp_path / "agent.log").read_text() == "today\n"
