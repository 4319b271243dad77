"""How long a year of replay takes, against commit e409bb7 in the same run: every HKEX trading day of a year on a
100-symbol simulated market, the full config/cron.d schedule (scan, 11 trade cycles, close), the position monitor
every 5 minutes, the rules engine, embedded PostgreSQL — the production path.

Each side runs in its own subprocess (its own interpreter and embedded PostgreSQL), one after the other: this
checkout, then e409bb7 checked out in a git worktree (BASE_DIR, made with `git worktree add` and this checkout's
.venv when missing). The time is the replay's own wall time (run_replay: history sync, every day, the report),
not the interpreter's start or the database's.

With --rounds R the two sides alternate R times (head, base, head, base, ...) and each side's best time is compared:
this host's speed drifts by tens of percent over minutes, and alternating keeps a slow spell from landing on one
side only. Every round's times are printed.

Beside the wall time, each side prints the CPU it used (this process, and its PostgreSQL server's processes) and
the CPU time the host's hypervisor stole while it ran (/proc/stat, all CPUs). Steal is what makes this host's wall
times drift; CPU seconds drift much less, so the CPU ratio is printed too, as a check on the wall ratio (the target
is the wall ratio).

Target: this checkout takes at most a quarter of e409bb7's time (ratio <= 0.25).
Run: ./run.sh bench replay [--days N] [--rounds R] [--base DIR] [--only head|base]   (N trading days instead of a year)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
BASE_COMMIT = "e409bb7"
BASE_DIR = Path("/tmp/base")
TARGET_RATIO = 0.25
END = "2026-11-20"


def _arg(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


# ---------------------------------------------------------------- one side, in its own process

def worker(root: Path, days: int | None) -> dict:
    """Replay `days` trading days (a year when None) with the code under `root`; what happened, as a dict."""
    import asyncio
    import shutil
    import tempfile
    import time
    from datetime import date, timedelta

    sys.path.insert(0, str(root))
    os.chdir(root)
    try:                                    # this layout (runtime/, replay/runner.py, core/calendar.py)
        from runtime import database
        from core.calendar import MarketCalendar
        from replay.runner import run_replay
        from runtime.wiring import builder
        wired = True
    except ImportError:                     # e409bb7's layout (top-level modules)
        import database  # type: ignore[no-redef]
        from data.calendar import MarketCalendar  # type: ignore[no-redef]
        from replay import run_replay  # type: ignore[no-redef]
        wired = False
    from tests.agent_fixtures import agent_settings

    async def main() -> dict:
        cal = MarketCalendar("HKEX")
        end = date.fromisoformat(END)
        year = cal.trading_days(end - timedelta(days=365), end)
        chosen = year[-days:] if days else year
        tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-replay-"))
        try:
            url = database.start_embedded(tmp / "pgdata")
            pool = await database.create_pool(url, max_size=4, durable=False)    # as ./run.sh replay opens it
            await database.ensure_schema(pool)
            settings = agent_settings("bench_replay", market_data={"universe_size": 100})
            extra = {"build": builder(pool)} if wired else {}
            steal0, cpu0, pg0 = _steal_seconds(), time.process_time(), _server_cpu(tmp / "pgdata")
            result = await run_replay(settings, pool, start=chosen[0], end=chosen[-1], progress=False, out_dir=tmp,
                                      run_id="bench", **extra)
            cpu, steal = time.process_time() - cpu0, _steal_seconds() - steal0
            pg_cpu = _server_cpu(tmp / "pgdata") - pg0
            counts = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM orders WHERE agent_id = $1) AS orders, "
                "(SELECT count(*) FROM fills WHERE agent_id = $1) AS fills", result.agent_id)
            await pool.close()
        finally:
            database.stop_embedded(tmp / "pgdata")
            shutil.rmtree(tmp, ignore_errors=True)
        return {"seconds": result.wall_seconds, "days": result.days, "cycles": result.cycles,
                "monitor_passes": result.monitor_passes, "orders": counts["orders"], "fills": counts["fills"],
                "final_equity": str(result.curve[-1].equity), "cpu": cpu, "pg_cpu": pg_cpu, "steal": steal}

    if wired:                               # the loop ./run.sh replay runs on (uvloop's)
        from runtime.bootstrap import run
        return run(main())
    return asyncio.run(main())


def _steal_seconds() -> float:
    """CPU time the hypervisor has stolen from this host so far, all CPUs (0 where /proc/stat has no such field)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def _server_cpu(pgdata: Path) -> float:
    """CPU seconds used so far by the PostgreSQL server of `pgdata`: the postmaster with the children it has reaped,
    and the processes still running under it (its backends). 0 when it cannot be read (not Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue                       # ended meanwhile
        pid, ppid = int(proc.name), int(stat[1])
        if pid == postmaster:
            total += sum(int(x) for x in stat[11:15])   # utime, stime, and those of reaped children
        elif ppid == postmaster:
            total += int(stat[11]) + int(stat[12])
    return total / tick


# ---------------------------------------------------------------- the comparison

def ensure_base(base: Path) -> None:
    """The e409bb7 worktree with this checkout's .venv, made when missing."""
    if not (base / "replay.py").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), BASE_COMMIT], check=True)
    venv = base / ".venv"
    if venv.is_symlink() and not venv.exists():      # a link left to a checkout since removed
        venv.unlink()
    if not venv.exists():
        venv.symlink_to(ROOT / ".venv")


def run_side(root: Path, days: int | None) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", str(root)] + (["--days", str(days)] if days else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the replay under {root} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    days = int(_arg("--days")) if _arg("--days") else None
    if _arg("--worker"):
        print(json.dumps(worker(Path(_arg("--worker")), days)))
        return 0
    base = Path(_arg("--base", str(BASE_DIR)))
    only = _arg("--only")
    rounds = int(_arg("--rounds", "1"))
    ensure_base(base)
    sides: dict[str, dict] = {}
    for n in range(1, rounds + 1):
        for name, root in (("head", ROOT), ("e409bb7", base)):
            if only and not name.startswith(only):
                continue
            s = run_side(root, days)
            if name not in sides or s["seconds"] < sides[name]["seconds"]:
                sides[name] = s
            print(f"{name:>8}: {s['seconds']:7.1f} s for {s['days']} days ({s['seconds'] / s['days'] * 1000:.0f} ms a "
                  f"day), {s['cycles']} cycles, {s['monitor_passes']} monitor passes, {s['orders']} orders, "
                  f"{s['fills']} fills, final equity {s['final_equity']}; CPU {s['cpu']:.1f} s + PostgreSQL "
                  f"{s['pg_cpu']:.1f} s, {s['steal']:.1f} s stolen from the host" + (f"  (round {n})" if rounds > 1 else ""),
                  flush=True)
    if len(sides) < 2:
        return 0
    ratio = sides["head"]["seconds"] / sides["e409bb7"]["seconds"]
    ok = ratio <= TARGET_RATIO
    best = f" (best of {rounds} alternating rounds: {sides['head']['seconds']:.1f} s / {sides['e409bb7']['seconds']:.1f} s)" \
        if rounds > 1 else ""
    print(f"head / e409bb7 = {ratio:.3f} ({1 / ratio:.2f}x faster){best}; target <= {TARGET_RATIO}: "
          f"{'PASS' if ok else 'FAIL'}")
    head, base_ = sides["head"], sides["e409bb7"]
    cpu = (head["cpu"] + head["pg_cpu"]) / (base_["cpu"] + base_["pg_cpu"])
    print(f"CPU (process + PostgreSQL, the same rounds): {head['cpu'] + head['pg_cpu']:.1f} s / "
          f"{base_['cpu'] + base_['pg_cpu']:.1f} s = {cpu:.3f} (a check on the wall ratio, less moved by steal)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
