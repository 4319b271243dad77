"""How long `unified_agent.py --mode heartbeat` takes as a fresh process, against bare interpreter start-up.

Cases: the embedded database already initialised and running (the usual cron case), and initialised but stopped
(first run after a reboot: the server is started by the heartbeat). Target: <= 1.5 s for both.
Run: ./run.sh bench heartbeat
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402

RUNS = 5


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{cmd} failed: {out.stdout}{out.stderr}")
    return took


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-hb-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CATALYST_ENV_FILE"}}
    env.update(CATALYST_VAR_DIR=str(tmp / "var"), CATALYST_LOG_DIR=str(tmp / "logs"), AGENT_ID="bench_hb",
               CATALYST_ENV_FILE=str(tmp / "none.env"))
    hb = [sys.executable, "unified_agent.py", "--mode", "heartbeat"]
    try:
        timed(hb, env)                                     # initdb + schema, not measured
        bare = statistics.median(timed([sys.executable, "-c", "pass"], env) for _ in range(RUNS))
        warm = statistics.median(timed(hb, env) for _ in range(RUNS))
        cold = []
        for _ in range(3):
            database.stop_embedded(tmp / "var" / "pgdata")
            cold.append(timed(hb, env))
        cold_s = statistics.median(cold)
        print(f"python -c pass: {bare:.3f} s   heartbeat, server running: {warm:.3f} s ({warm / bare:.1f}x)   "
              f"heartbeat, server stopped: {cold_s:.3f} s ({cold_s / bare:.1f}x)")
        ok = warm <= 1.5 and cold_s <= 1.5
        print(f"target (<= 1.5 s): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        database.stop_embedded(tmp / "var" / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
