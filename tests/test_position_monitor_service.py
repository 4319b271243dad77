"""The monitor daemon: sleeps when the market is shut, survives a database outage without losing a stop or a log
record, speaks sd_notify, and stops promptly on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from runtime import database
from core.clock import SimulatedClock
from position_monitor_service import MonitorService, Notifier, SimulatedTime
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.test_paper_broker import liquid_symbols
from tests.test_tool_executor import executor


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(address="")
        self.messages: list[str] = []

    def send(self, message: str) -> None:
        self.messages.append(message)


class StopAt(SimulatedTime):
    """Simulated time that stops the service once the clock passes `until`, recording every sleep."""

    def __init__(self, start, stop, until):
        super().__init__(start, stop, speed=1e9)
        self.until = until
        self.sleeps: list[tuple[datetime, float]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.clock.now(), seconds))
        await super().sleep(seconds)
        if self.clock.now() >= self.until:
            self.stop.set()


async def test_it_sleeps_through_lunch_and_the_weekend_and_monitors_when_open(pool, pg_url, agent_id):
    settings = agent_settings(agent_id)
    # Friday 2026-11-27 11:58 HKT -> through lunch, the afternoon, the weekend, to Monday 09:40 HKT.
    start = datetime(2026, 11, 27, 3, 58, tzinfo=timezone.utc)
    until = datetime(2026, 11, 30, 1, 40, tzinfo=timezone.utc)
    stop = asyncio.Event()
    time_source = StopAt(start, stop, until)
    notifier = RecordingNotifier()
    service = MonitorService(settings, time_source=time_source, notifier=notifier, database_url=pg_url)
    await service.run(stop)
    cal = service.calendar
    open_sleeps = [(t, s) for t, s in time_source.sleeps if cal.is_open(t)]
    shut_sleeps = [(t, s) for t, s in time_source.sleeps if not cal.is_open(t)]
    assert service.passes == len(open_sleeps) > 0
    # While shut it never polls: it wakes at most every heartbeat and otherwise waits for the next open.
    assert all(s <= settings.config.monitor.heartbeat_seconds for _, s in shut_sleeps)
    assert not any(cal.is_open(t) for t, _ in shut_sleeps)
    weekend = [t for t, _ in time_source.sleeps if t.astimezone(cal.tz).weekday() >= 5]
    assert weekend and service.passes == len(open_sleeps)
    # Polls happen only in the sessions: Friday afternoon and Monday morning, none in the lunch break.
    lunch = [t for t, _ in open_sleeps if t.astimezone(cal.tz).hour == 12]
    assert not lunch
    assert notifier.messages[0].startswith("READY=1") and notifier.messages[-1] == "STOPPING=1"
    assert sum(m == "WATCHDOG=1" for m in notifier.messages) == len(time_source.sleeps)
    rows = await pool.fetch("SELECT status, details FROM service_health WHERE agent_id = $1 AND "
                            "service = 'position_monitor' ORDER BY health_id", agent_id)
    assert {r["details"].get("state") for r in rows} >= {"sleeping", "monitoring"} and rows[-1]["status"] == "stopped"


async def test_sigterm_stops_it_promptly_and_sd_notify_is_spoken(pg_url, agent_id, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent_id, NOTIFY_SOCKET=path,
                         CATALYST_SIMULATED_START=OPEN_AT.isoformat(), CATALYST_SIMULATED_SPEED="30")
    proc = subprocess.Popen([PYTHON, "position_monitor_service.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m in messages) < 3:
            await asyncio.sleep(0.05)
            try:
                while True:
                    messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                pass
        assert messages and messages[0].startswith("READY=1"), (messages, proc.poll())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)             # systemd's stop deadline for us is 5 s
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    assert "STOPPING=1" in messages and any(m.startswith("STATUS=") for m in messages)


def stop_crossing_later(source, symbol: str, start: datetime, after: timedelta, within: timedelta):
    """A stop level the last price stays above until `after`, and reaches before `within` (deterministic market)."""
    bars = source.bars(symbol, "1m", start, start + within)
    early = [b.close for b in bars if b.start + timedelta(minutes=1) <= start + after]
    late = [b.close for b in bars if b.start + timedelta(minutes=1) > start + after]
    if not early or not late or min(late) >= min(early):
        return None
    return min(late)


@pytest.mark.slow
async def test_a_database_outage_loses_neither_a_stop_nor_a_log_record(pg_root, agent_id, tmp_path):
    pgdata = pg_root / "outage"
    url = database.start_embedded(pgdata)
    pool = await database.create_pool(url)
    await database.ensure_schema(pool)
    proc = None
    try:
        settings = agent_settings(agent_id)
        s = await build_services(settings, pool, SimulatedClock(OPEN_AT))
        stop_level = None
        for symbol in liquid_symbols(s.universe, OPEN_AT):
            stop_level = stop_crossing_later(s.universe, symbol, OPEN_AT, timedelta(minutes=10),
                                             timedelta(minutes=80))
            if stop_level is not None:
                break
        assert stop_level is not None
        ex = await executor(s)
        r = await ex.execute("execute_trade", {"symbol": symbol, "value": 3000, "order_type": "market",
                                               "reasoning": "position for the outage test"})
        assert r.data["status"] == "filled", r.data
        await pool.execute("UPDATE positions SET stop_loss = $2 WHERE agent_id = $1", agent_id, stop_level)
        await pool.close()
        pool = None
        # The daemon on a simulated clock 100x real time: 30 s of outage is 50 simulated minutes.
        env = subprocess_env(tmp_path, DATABASE_URL=url, AGENT_ID=agent_id,
                             CATALYST_SIMULATED_START=OPEN_AT.isoformat(), CATALYST_SIMULATED_SPEED="100")
        proc = subprocess.Popen([PYTHON, "position_monitor_service.py"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await asyncio.sleep(3)
        database.stop_embedded(pgdata)
        await asyncio.sleep(30)
        assert proc.poll() is None, "the daemon died during the outage"
        database.start_embedded(pgdata)
        pool = await database.create_pool(url)
        deadline = time.monotonic() + 60
        exit_row = None
        while time.monotonic() < deadline and exit_row is None:
            await asyncio.sleep(0.5)
            exit_row = await pool.fetchrow("SELECT * FROM orders WHERE agent_id = $1 AND side = 'sell'", agent_id)
        assert exit_row is not None and exit_row["intent"] == "stop_loss", "the crossed stop never exited"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        # Every "pass failed" record logged while the database was down reached agent_logs afterwards.
        spooled = await pool.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1 AND level = 'ERROR' AND "
                                      "message LIKE 'monitor pass failed%'", agent_id)
        stderr_failures = proc.stderr.read().decode().count("monitor pass failed")
        file_failures = sum(p.read_text().count("monitor pass failed") for p in (tmp_path / "logs").glob("agent*.log"))
        assert spooled >= 1 and spooled == file_failures, (spooled, file_failures, stderr_failures)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if pool is not None:
            await pool.close()
        database.stop_embedded(pgdata)
