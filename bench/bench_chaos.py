"""The chaos run: SIGKILLs at random moments across trade cycles and monitor exits, restarts after random delays,
then the broker against our records.

Each round starts a step (tests/workers/chaos_step.py: a trade cycle that closes what it holds and buys the rest
of three symbols, or a monitor pass that exits every position) as a separate process on the paper broker, and
SIGKILLs it after a random 0.8-1.8 s (start-up takes about one) (or lets it finish), like a machine losing power; the next round is the
restart, 0-120 simulated seconds later (often under the 60 s grace for in-flight orders). At the end one clean
trade cycle reconciles, then:
  duplicate orders     orders at the broker with no row of ours, or one intent (cycle, symbol, side) sent twice
  position mismatches  symbols whose quantity differs between the broker and our open positions
  fills lost           broker fills with no row in our fills
  P&L vs cash          our realised P&L (all positions, net of fees) against the broker's cash movement plus the
                       cost of what is still held
  cycles running       trading_cycles of the agent left 'running' (the dead ones are marked 'interrupted')
Rounds go on until KILLS steps were killed (at most 5 x KILLS rounds).
Target: all zero (P&L within 0.01). Run: ./run.sh bench chaos [KILLS]   (default 50)
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import database  # noqa: E402


async def step(agent: str, dsn: str, seconds: int, lock_dir: Path, action: str, symbols: list[str],
               kill_after: float | None, env: dict) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.workers.chaos_step", agent, dsn, str(seconds), str(lock_dir), action,
        ",".join(symbols), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        await proc.wait()
        return "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
    try:
        await asyncio.wait_for(proc.wait(), kill_after)
        return "finished" if proc.returncode == 0 else f"exit {proc.returncode}"
    except asyncio.TimeoutError:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        return "killed"


async def main(kills: int) -> int:
    rng = random.Random(20261202)
    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    dsn = database.start_embedded(tmp / "pgdata")
    pool = await database.create_pool(dsn, max_size=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALYST_", "ANTHROPIC_", "DATABASE_URL"))}
    env.update({"CATALYST_VAR_DIR": str(tmp / "var"), "CATALYST_LOG_DIR": str(tmp / "logs"),
                "CATALYST_ENV_FILE": str(tmp / "no.env"), "LOG_LEVEL": "WARNING"})
    try:
        await database.ensure_schema(pool)
        agent = f"chaos_{uuid.uuid4().hex[:6]}"
        from core.clock import SimulatedClock
        from runtime.wiring import build_services
        from tests.agent_fixtures import OPEN_AT, agent_settings
        probe = await build_services(agent_settings(agent), pool, SimulatedClock(OPEN_AT))
        universe = [i.symbol for i in probe.universe.instruments()
                    if 5 <= probe.universe.quote(i.symbol, OPEN_AT).last * i.lot_size <= 6000][:12]
        lock_dir = tmp / "var" / "locks"
        seconds, outcomes, n = 0, {"killed": 0, "finished": 0}, 0
        while outcomes["killed"] < kills and n < 5 * kills:
            action = "monitor" if rng.random() < 0.3 else "trade"
            symbols = rng.sample(universe, 3)
            kill_after = None if rng.random() < 0.1 else rng.uniform(0.8, 1.8)
            result = await step(agent, dsn, seconds, lock_dir, action, symbols, kill_after, env)
            outcomes[result if result in outcomes else "finished"] += 1
            seconds += rng.randint(0, 120)                   # the restart: sometimes within the 60 s grace
            n += 1
            print(f"\rround {n}: {action:<7} {result:<8} ({outcomes['killed']} kills, +{seconds}s)", end="",
                  file=sys.stderr)
        print(file=sys.stderr)
        seconds += 61                                        # a last clean cycle, past every grace period
        final = await step(agent, dsn, seconds, lock_dir, "trade", [], None, env)
        figures = await compare(pool, agent)
        print(f"{n} rounds: {outcomes['killed']} SIGKILLs, {outcomes['finished']} finished; final cycle {final}")
        for key, value in figures.items():
            print(f"  {key:<22} {value}")
        ok = (outcomes["killed"] >= 50 and figures["duplicate orders"] == 0 and figures["position mismatches"] == 0
              and figures["fills lost"] == 0 and abs(figures["P&L - cash movement"]) <= Decimal("0.01")
              and figures["cycles running"] == 0)
        print("target (>= 50 kills; 0 duplicates, mismatches, lost fills, running cycles; P&L = cash): "
              + ("PASS" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        await pool.close()
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)


async def compare(pool, agent: str) -> dict:
    ours = {r["client_order_id"] for r in await pool.fetch("SELECT client_order_id FROM orders WHERE agent_id = $1",
                                                           agent)}
    broker = await pool.fetch("SELECT client_order_id FROM paper_orders WHERE agent_id = $1", agent)
    unknown = sum(1 for r in broker if r["client_order_id"] not in ours)
    twice = await pool.fetchval(
        "SELECT count(*) FROM (SELECT cycle_id, symbol, side FROM orders WHERE agent_id = $1 AND cycle_id IS NOT NULL "
        "AND status NOT IN ('rejected') GROUP BY 1, 2, 3 HAVING count(*) > 1) x", agent)
    held = {r["symbol"]: r["quantity"] for r in await pool.fetch(
        "SELECT symbol, quantity FROM paper_positions WHERE agent_id = $1 AND quantity > 0", agent)}
    mine = {r["symbol"]: r["quantity"] for r in await pool.fetch(
        "SELECT symbol, quantity FROM positions WHERE agent_id = $1 AND status = 'open'", agent)}
    mismatches = sum(1 for s in set(held) | set(mine) if held.get(s) != mine.get(s))
    lost = await pool.fetchval("SELECT count(*) FROM paper_fills pf WHERE pf.agent_id = $1 AND NOT EXISTS "
                               "(SELECT 1 FROM fills f WHERE f.agent_id = $1 AND f.broker_fill_id = pf.fill_id)", agent)
    account = await pool.fetchrow("SELECT cash, initial_cash FROM paper_accounts WHERE agent_id = $1", agent)
    cost_held = await pool.fetchval("SELECT coalesce(sum(avg_entry_price * quantity), 0) FROM positions "
                                    "WHERE agent_id = $1 AND status = 'open'", agent)
    realised = await pool.fetchval("SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1", agent)
    cash_pnl = account["cash"] - account["initial_cash"] + cost_held
    running = await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND status = 'running'",
                                  agent)
    interrupted = await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 "
                                      "AND status = 'interrupted'", agent)
    fills = await pool.fetchval("SELECT count(*) FROM fills WHERE agent_id = $1", agent)
    return {"orders at the broker": len(broker), "fills": fills, "duplicate orders": unknown + twice,
            "position mismatches": mismatches, "fills lost": lost, "realised P&L": realised,
            "P&L - cash movement": (realised - cash_pnl).quantize(Decimal("0.000001")),
            "cycles running": running, "cycles interrupted": interrupted}


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)))
