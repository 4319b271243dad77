"""Benchmark db_logger against baselines measured in the same run.

1. Sustained rows/s from `logger.info` to rows in `agent_logs` (end to end, flush included),
   against one awaited INSERT per record.            targets: >= 40,000 rows/s and >= 15x the baseline
2. The caller's cost per log call, against a handler that only lets logging create the record (emit does
   nothing) and against a stdlib FileHandler.      target: <= 1.5x the create-only handler

The writer runs as in production: redacting three secrets (in every form, one with a .env newline) and making each
record storable (controls escaped, long fields truncated, lone surrogates replaced).

Run: ./run.sh bench logger   (starts its own embedded PostgreSQL in a temporary directory)
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import database  # noqa: E402
from logpipe.handler import DatabaseLogHandler  # noqa: E402
from db_logger import LogWriter  # noqa: E402
from core.redaction import Redactor  # noqa: E402
from core.logcontext import log_context  # noqa: E402

N_END_TO_END = 200_000
N_BASELINE = 4_000
BURST = 500
BURSTS = 60
SECRETS = ("sk-ant-api03-BENCHBENCHBENCH", "alpaca-secret-BENCH123\n", "p@ss/w:rd+BENCH")


class CreateOnlyHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def fresh_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


async def end_to_end(url: str, log_dir: Path) -> float:
    agent = f"bench_{uuid.uuid4().hex[:6]}"
    writer = LogWriter(dsn=url, agent_id=agent, log_dir=log_dir, redactor=Redactor(SECRETS)).start()
    logger = fresh_logger("bench.e2e", DatabaseLogHandler(writer))
    logger.info("warm up")
    writer.flush(30)
    t0 = time.perf_counter()
    with log_context(cycle_id="c1", symbol="0700", tool="get_quote"):
        for i in range(N_END_TO_END):
            logger.info("tick %d price %s", i, "320.20")
    assert writer.flush(120)
    seconds = time.perf_counter() - t0
    writer.close()
    pool = await database.create_pool(url)
    stored = await pool.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1", agent)
    await pool.close()
    assert stored == N_END_TO_END + 1, stored
    return N_END_TO_END / seconds


async def one_insert_per_record(url: str) -> float:
    pool = await database.create_pool(url)
    agent = f"bench_{uuid.uuid4().hex[:6]}"
    from datetime import datetime, timezone
    t0 = time.perf_counter()
    for i in range(N_BASELINE):
        await pool.execute("INSERT INTO agent_logs (id, timestamp, agent_id, level, logger, message, context) "
                           "VALUES ($1, $2, $3, 'INFO', 'bench', $4, $5)", uuid.uuid4(),
                           datetime.now(timezone.utc), agent, f"tick {i} price 320.20",
                           {"cycle_id": "c1", "symbol": "0700", "tool": "get_quote"})
    seconds = time.perf_counter() - t0
    await pool.close()
    return N_BASELINE / seconds


def caller_cost(logger: logging.Logger, settle) -> float:
    """Median per-call seconds over bursts (a trading cycle logs in bursts; the writer drains between them)."""
    per_call = []
    with log_context(cycle_id="c1", symbol="0700"):
        for _ in range(BURSTS):
            t0 = time.perf_counter()
            for i in range(BURST):
                logger.info("tick %d price %s", i, "320.20")
            per_call.append((time.perf_counter() - t0) / BURST)
            settle()
    return statistics.median(per_call)


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-"))
    url = await asyncio.to_thread(database.start_embedded, tmp / "pg")
    try:
        pool = await database.create_pool(url)
        await database.ensure_schema(pool)
        await pool.close()

        ours = await end_to_end(url, tmp / "logs")
        base = await one_insert_per_record(url)
        print(f"end to end   db_logger: {ours:>10,.0f} rows/s   one INSERT per record: {base:>8,.0f} rows/s   "
              f"ratio {ours / base:.1f}x")

        writer = LogWriter(dsn=url, agent_id="bench_caller", log_dir=tmp / "logs2", redactor=Redactor(SECRETS)).start()
        c_ours = caller_cost(fresh_logger("bench.ours", DatabaseLogHandler(writer)), lambda: writer.flush(30))
        writer.close()
        c_create = caller_cost(fresh_logger("bench.create", CreateOnlyHandler()), lambda: None)
        fh = logging.FileHandler(tmp / "stdlib.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        c_file = caller_cost(fresh_logger("bench.file", fh), lambda: None)
        fh.close()
        print(f"caller cost  db_logger: {c_ours * 1e6:.2f} us/call   create-only: {c_create * 1e6:.2f} us/call   "
              f"stdlib FileHandler: {c_file * 1e6:.2f} us/call")
        print(f"             ratio to create-only {c_ours / c_create:.2f}x   ratio to FileHandler "
              f"{c_ours / c_file:.2f}x")
        ok = ours >= 40_000 and ours / base >= 15 and c_ours / c_create <= 1.5
        print(f"targets (>= 40,000 rows/s, >= 15x baseline, <= 1.5x create-only): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        database.stop_embedded(tmp / "pg")
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
