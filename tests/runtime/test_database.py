"""The schema: idempotent, constrained, and indexed for the seed's queries (README "Useful queries")."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from runtime import database

ROOT = Path(__file__).resolve().parents[2]

CATALOG_SNAPSHOT = """
SELECT 'col' AS k, table_name || '.' || column_name || ':' || data_type || ':' || is_nullable AS v
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'idx', indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'con', conrelid::regclass || ':' || conname || ':' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'ver', version::text || ':' || applied_at::text FROM schema_version
ORDER BY 1, 2
"""

TEN_TABLES = {"securities", "positions", "orders", "decisions", "scan_results", "trading_cycles", "patterns",
              "agent_logs", "service_health", "position_monitor_status"}


@pytest.fixture
async def fresh_db(pg_url):
    """A brand-new empty database on the session server."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    url = pg_url.replace("/catalyst?", f"/{name}?")
    pool = await database.create_pool(url)  # creates the database
    yield pool
    await pool.close()


async def test_schema_applies_twice_and_changes_nothing(fresh_db):
    sql = database.SCHEMA_PATH.read_text()
    await fresh_db.execute(sql)
    first = await fresh_db.fetch(CATALOG_SNAPSHOT)
    await fresh_db.execute(sql)
    second = await fresh_db.fetch(CATALOG_SNAPSHOT)
    assert first == second
    tables = {r["tablename"] for r in await fresh_db.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert TEN_TABLES <= tables
    assert await database.current_schema_version(fresh_db) == database.schema_file_version()


# Shared by every agent of an installation: market data by dataset, model answers by request.
SHARED_TABLES = {"schema_version", "securities", "bars", "bar_series", "data_syncs", "ai_answers"}


async def test_every_agent_table_carries_agent_id_and_market_data_its_dataset(fresh_db):
    await database.ensure_schema(fresh_db)
    columns = {(r["table_name"], r["column_name"]) for r in await fresh_db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")}
    tables = {t for t, _ in columns}
    assert [t for t in sorted(tables - SHARED_TABLES) if (t, "agent_id") not in columns] == []
    assert [t for t in ("securities", "bars", "bar_series", "data_syncs") if (t, "dataset") not in columns] == []


async def test_money_is_numeric_and_times_are_timestamptz(fresh_db):
    await database.ensure_schema(fresh_db)
    rows = await fresh_db.fetch("""SELECT table_name, column_name, data_type FROM information_schema.columns
                                   WHERE table_schema='public'""")
    for r in rows:
        name = r["column_name"]
        if re.search(r"price|pnl|cost_usd|fee|stop_loss|take_profit|high_water|score", name):
            assert r["data_type"] == "numeric", (r["table_name"], name)
        if name.endswith("_at") or name == "timestamp" or name in {"bar_start", "bar_end"}:
            assert r["data_type"] == "timestamp with time zone", (r["table_name"], name)


async def _cycle(pool, agent_id):
    cid = uuid.uuid4()
    await pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, 'trade')", cid, agent_id)
    return cid


async def test_orders_constraints_refuse_bad_rows(pool, agent_id):
    base = dict(side="buy", order_type="limit", qty=100, price="10.5", intent="entry")

    async def insert(coid, side="buy", order_type="limit", qty=100, price="10.5", intent="entry"):
        await pool.execute(
            """INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, limit_price)
               VALUES ($1, $2, '0700', $3, $4, $5, $6, $7::numeric)""",
            agent_id, coid, side, order_type, intent, qty, price)

    await insert(f"{agent_id}-ok", **base)
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert(f"{agent_id}-ok", **base)
    with pytest.raises(asyncpg.CheckViolationError):
        await insert(f"{agent_id}-side", side="short")
    with pytest.raises(asyncpg.CheckViolationError):
        await insert(f"{agent_id}-qty", qty=0)
    with pytest.raises(asyncpg.CheckViolationError):
        await insert(f"{agent_id}-mkt", order_type="market")          # market order with a limit price
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE orders SET status = 'lost' WHERE client_order_id = $1", f"{agent_id}-ok")


async def test_orders_reference_positions(pool, agent_id):
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            """INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, position_id)
               VALUES ($1, $2, '0700', 'sell', 'market', 'exit', 100, -1)""", agent_id, f"{agent_id}-fk")


async def test_one_open_position_per_symbol(pool, agent_id):
    q = "INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price) VALUES ($1, '0700', 100, 300)"
    await pool.execute(q, agent_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(q, agent_id)


def readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Useful queries", 1)[1].split("\n## ", 1)[0]
    return [q.strip() for q in re.findall(r"```sql\n(.*?)```", section, re.S)]


async def _seed_logs(pool, agent_id, n=30_000):
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(n):
        level = "ERROR" if i % 200 == 0 else ("WARNING" if i % 50 == 0 else "INFO")
        symbol = f"{i % 1000:04d}"
        rows.append((uuid.uuid4(), now - timedelta(seconds=i * 7), agent_id, level, "catalyst.test",
                     f"message {i}", {"symbol": symbol, "tool": "get_quote"}, None))
    async with pool.acquire() as conn:
        await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                                  encoder=lambda v: b"\x01" + __import__("json").dumps(v).encode(),
                                  decoder=lambda b: b)
        try:
            await conn.copy_records_to_table("agent_logs", records=rows,
                                             columns=("id", "timestamp", "agent_id", "level", "logger", "message",
                                                      "context", "exception"))
        finally:   # the connection goes back to the shared pool: give it back its usual codecs
            await conn.reset_type_codec("jsonb", schema="pg_catalog")
            await database._init_connection(conn)
    await pool.execute("ANALYZE agent_logs")


async def test_readme_queries_run_and_use_indexes(pool, agent_id):
    queries = readme_queries()
    assert len(queries) >= 3
    await _seed_logs(pool, agent_id)
    seed_three = queries[:3]
    for q in seed_three:
        rows = await pool.fetch(q)
        assert rows, q
        plan = "\n".join(r[0] for r in await pool.fetch("EXPLAIN " + q))
        assert "Seq Scan on agent_logs" not in plan, f"{q}\n{plan}"
        assert "Index" in plan, plan
    for q in queries[3:]:
        await pool.fetch(q)  # the README's other queries are valid SQL against this schema


async def test_a_released_connection_loses_its_open_transaction(pg_url, agent_id):
    """The pool skips asyncpg's RESET ALL round trip, but an open transaction never survives a release."""
    p = await database.create_pool(pg_url, max_size=1)
    try:
        conn = await p.acquire()
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                           "VALUES ($1, 'HALTED', 'never committed', 'test', now())", agent_id)
        await p.release(conn)
        async with p.acquire() as again:                       # max_size=1: the same connection
            assert again.is_in_transaction() is False
            assert await again.fetchval("SELECT count(*) FROM agent_state WHERE agent_id = $1", agent_id) == 0
    finally:
        await p.close()


async def test_only_simulated_runs_give_up_commit_durability(pg_url):
    durable, simulated = await database.create_pool(pg_url), await database.create_pool(pg_url, durable=False)
    try:
        assert await durable.fetchval("SHOW synchronous_commit") == "on"
        assert await simulated.fetchval("SHOW synchronous_commit") == "off"
    finally:
        await durable.close()
        await simulated.close()
