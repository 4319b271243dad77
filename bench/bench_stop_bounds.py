"""How long stopping takes when the database misbehaves, and what logging costs the caller meanwhile: the timing
half of tests/test_db_logger.py and tests/test_position_monitor_service.py (the tests assert behaviour only; the
wall-clock bounds live here, where a loaded machine makes a FAIL a thing to look at rather than a red build).

  LogWriter.close(timeout=T) after 500 records, against the same close with no database configured (baseline):
      the database refuses connections        T = 5 s    bound < T + 0.5 s
      the database accepts and never answers   T = 1 s    bound < T + 0.5 s
  the caller's cost per log call while the writer is stuck connecting, against the same calls with no database
  configured (baseline)                                  bound <= 1.5x
  position_monitor_service.py told SIGTERM in the middle of an hour-long sleep, from the signal to its exit,
  against a bare asyncio process that waits for SIGTERM (baseline)
                                                          bound < 5 s (systemd's stop deadline for the unit)

Run: ./run.sh bench stop_bounds   (starts its own embedded PostgreSQL in a temporary directory)
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from logpipe.handler import DatabaseLogHandler  # noqa: E402
from db_logger import LogWriter  # noqa: E402
from runtime import database  # noqa: E402

RECORDS = 500
RUNS = 3
BURST = 500
BURSTS = 40
OPEN_AT = "2026-11-24T02:30:00+00:00"          # a Tuesday 10:30 HKT: the market is open

BARE_DAEMON = """
import asyncio, signal, sys
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
asyncio.run(main())
"""


def report(results: list[bool], case: str, took: float, base: float, *, below: float) -> None:
    ok = took < below
    results.append(ok)
    print(f"{case:<58} {took:7.3f} s  (bound < {below:5.1f} s; {took / base:7.1f}x baseline)  "
          f"{'PASS' if ok else 'FAIL'}")


def logger_for(writer: LogWriter) -> logging.Logger:
    logger = logging.getLogger(f"bench.stop.{uuid.uuid4().hex[:6]}")
    logger.handlers[:] = [DatabaseLogHandler(writer)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def close_seconds(dsn: str | None, log_dir: Path, timeout: float) -> float:
    writer = LogWriter(dsn=dsn, agent_id="bench_stop", log_dir=log_dir).start()
    logger = logger_for(writer)
    for i in range(RECORDS):
        logger.info("record %d", i)
    t0 = time.perf_counter()
    writer.close(timeout=timeout)
    return time.perf_counter() - t0


def silent_server() -> socket.socket:
    """A 'database' that accepts connections (the kernel does) and never says a word."""
    return socket.create_server(("127.0.0.1", 0), backlog=64)


def caller_cost(writer: LogWriter) -> float:
    """Median per-call seconds over bursts of log calls."""
    logger = logger_for(writer)
    per_call = []
    for _ in range(BURSTS):
        t0 = time.perf_counter()
        for i in range(BURST):
            logger.info("tick %d price %s", i, "320.20")
        per_call.append((time.perf_counter() - t0) / BURST)
    return statistics.median(per_call)


def sigterm_seconds(cmd: list[str], env: dict[str, str], ready) -> float:
    """From SIGTERM to exit, once `ready(proc)` says the process is waiting."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready(proc)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        return time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def daemon_sigterm_seconds(url: str, tmp: Path) -> float:
    """The monitor daemon at real speed with an hour between polls, told to stop after its first pass."""
    import yaml
    config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    config["monitor"]["poll_interval_seconds"] = 3600
    config_path = tmp / "trading_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    notify_path = tmp / f"notify-{uuid.uuid4().hex[:6]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(60)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALYST_", "DATABASE_URL", "AGENT_ID"))}
    env.update(DATABASE_URL=url, AGENT_ID=f"bench_stop_{uuid.uuid4().hex[:6]}", NOTIFY_SOCKET=str(notify_path),
               CATALYST_VAR_DIR=str(tmp / "var"), CATALYST_LOG_DIR=str(tmp / "logs"),
               CATALYST_ENV_FILE=str(tmp / "none.env"), CATALYST_SIMULATED_START=OPEN_AT,
               CATALYST_SIMULATED_SPEED="1")

    def first_pass(proc) -> None:
        while True:
            message = sock.recv(4096).decode()
            if message.startswith("STATUS=monitoring"):
                return
            if message.startswith("STATUS=degraded"):
                raise SystemExit(f"the monitor daemon could not run a pass: {message}")

    try:
        return sigterm_seconds([sys.executable, "position_monitor_service.py", "--config", str(config_path)], env,
                               first_pass)
    finally:
        sock.close()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-stop-"))
    results: list[bool] = []
    try:
        base = statistics.median(close_seconds(None, tmp / f"none{i}", 5) for i in range(RUNS))
        print(f"baseline: close() with no database configured, median of {RUNS}: {base * 1000:.1f} ms")
        refused = statistics.median(close_seconds("postgresql://u:pw@127.0.0.1:1/x", tmp / f"refused{i}", 5)
                                    for i in range(RUNS))
        report(results, "close(timeout=5), the database refuses connections", refused, base, below=5.5)
        server = silent_server()
        silent = f"postgresql://u:pw@127.0.0.1:{server.getsockname()[1]}/x"
        try:
            hangs = statistics.median(close_seconds(silent, tmp / f"silent{i}", 1) for i in range(RUNS))
            report(results, "close(timeout=1), the database accepts and never answers", hangs, base, below=1.5)
            quiet = LogWriter(dsn=None, agent_id="bench_stop", log_dir=tmp / "quiet").start()
            c_base = caller_cost(quiet)
            quiet.close()
            stuck = LogWriter(dsn=silent, agent_id="bench_stop", log_dir=tmp / "stuck").start()
            c_stuck = caller_cost(stuck)
            stuck.close(timeout=0.1)
        finally:
            server.close()
        ok = c_stuck / c_base <= 1.5
        results.append(ok)
        print(f"{'caller cost per log call, the writer stuck on the database':<58} {c_stuck * 1e6:7.2f} us "
              f"(bound <= 1.5x; {c_stuck / c_base:7.2f}x baseline {c_base * 1e6:.2f} us)  {'PASS' if ok else 'FAIL'}")

        url = database.start_embedded(tmp / "pg")
        bare = statistics.median(sigterm_seconds([sys.executable, "-c", BARE_DAEMON], dict(os.environ),
                                                 lambda p: p.stdout.readline()) for _ in range(RUNS))
        print(f"baseline: a bare asyncio process from SIGTERM to exit, median of {RUNS}: {bare * 1000:.1f} ms")
        daemon = statistics.median(daemon_sigterm_seconds(url, tmp) for _ in range(RUNS))
        report(results, "monitor daemon: SIGTERM mid an hour-long sleep, to exit", daemon, bare, below=5)
        ok = all(results)
        print(f"targets ({sum(results)}/{len(results)} within their bounds): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        database.stop_embedded(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
