"""The monitor daemon: sleeps when the market is shut, survives a database outage without losing a stop or a log
record, speaks sd_notify, and stops promptly on SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

import signals
from core.clock import SimulatedClock
from position_monitor_service import MonitorService, Notifier, SimulatedTime
from runtime import database
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings, executor
from tests.conftest import PYTHON, ROOT, subprocess_env


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
    assert any(t.astimezone(cal.tz).weekday() >= 5 for t, _ in time_source.sleeps)      # it slept through Sat/Sun
    # Polls happen only in the sessions: Friday's last minutes before lunch, its afternoon, Monday morning; none in
    # the lunch break.
    assert {t.astimezone(cal.tz).strftime("%a %p") for t, _ in open_sleeps} == {"Fri AM", "Fri PM", "Mon AM"}
    assert not [t for t, _ in open_sleeps if t.astimezone(cal.tz).hour == 12]
    assert notifier.messages[0].startswith("READY=1") and notifier.messages[-1] == "STOPPING=1"
    assert sum(m == "WATCHDOG=1" for m in notifier.messages) == len(time_source.sleeps)
    rows = await pool.fetch("SELECT status, details FROM service_health WHERE agent_id = $1 AND "
                            "service = 'position_monitor' ORDER BY health_id", agent_id)
    assert {r["details"].get("state") for r in rows} >= {"sleeping", "monitoring"} and rows[-1]["status"] == "stopped"


class NotifySocket:
    """systemd's end of sd_notify: the datagrams the daemon sends to $NOTIFY_SOCKET, in order."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def count(self, prefix: str) -> int:
        return sum(m.startswith(prefix) for m in self.drain())

    async def wait_for(self, what: str, ready, proc: subprocess.Popen, limit: float = 60) -> None:
        """Until `ready(messages)`; the limit only keeps a broken daemon from hanging the suite."""
        async def until_ready() -> None:
            while not ready(self.drain()):
                assert proc.poll() is None, f"the daemon exited ({proc.returncode}) before {what}: " + \
                    proc.stderr.read().decode()[-2000:]
                await asyncio.sleep(0.002)
        try:
            await asyncio.wait_for(until_ready(), limit)
        except asyncio.TimeoutError:
            pytest.fail(f"no {what} (hang guard); last messages {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP, returning once the kernel has stopped it (so nothing it sends later is missed or early)."""
    proc.send_signal(signal.SIGSTOP)
    for _ in range(10_000):                       # polls, not a clock: only a hang guard
        if Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.001)
    pytest.fail("the daemon did not stop on SIGSTOP")


def config_with(tmp_path: Path, **monitor) -> Path:
    config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    config["monitor"].update(monitor)
    path = tmp_path / "trading_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_sigterm_ends_an_hour_long_sleep_and_sd_notify_is_spoken(pool, pg_url, agent_id, tmp_path):
    # Real time (speed 1) and a poll every hour: after its first pass the daemon sleeps for an hour. It can only
    # exit within the wait below if SIGTERM ends that sleep.
    notify = NotifySocket(tmp_path / "notify.sock")
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent_id, NOTIFY_SOCKET=notify.path,
                         CATALYST_SIMULATED_START=OPEN_AT.isoformat(), CATALYST_SIMULATED_SPEED="1")
    proc = subprocess.Popen([PYTHON, "position_monitor_service.py", "--config",
                             str(config_with(tmp_path, poll_interval_seconds=3600))], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await notify.wait_for("a first monitoring pass", lambda m: any(x.startswith("STATUS=monitoring") for x in m),
                              proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)                   # far less than the hour it would otherwise sleep
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    messages = notify.drain()
    notify.close()
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    # the quote watch starts after the first pass; whether it said "streaming" before SIGTERM is a race
    assert [m for m in messages if not m.startswith("STATUS=streaming")] == [
        "READY=1\nSTATUS=started", "WATCHDOG=1", "STATUS=monitoring 0 positions; 0 exits so far; stream starting",
        "STOPPING=1"], messages
    rows = await pool.fetch("SELECT status, details FROM service_health WHERE agent_id = $1 AND "
                            "service = 'position_monitor' ORDER BY health_id", agent_id)
    # the same race for the row the stream's coming up writes (`_stream_changed`)
    rows = [r for r in rows if r["details"].get("stream") != "streaming"]
    assert [r["status"] for r in rows] == ["healthy", "stopped"]
    assert rows[0]["details"]["state"] == "monitoring"
    assert rows[1]["details"] == {"passes": 1, "exits": 0, "failures": 0}


async def a_stop_the_price_falls_through_later(s, *, not_before: timedelta, below_for: timedelta):
    """(symbol, lot, when, stop, holds): a stop the last price stays above (with no other exit signal) from OPEN_AT
    until `when`, and stays at or below for `below_for` after it (deterministic market, minute quotes); `holds(entry)`
    says whether that is still so for the price the entry actually paid."""
    src = s.universe
    cfg = s.settings.config
    thresholds = signals.SignalThresholds.from_config(cfg.signals, cfg.trading.trailing_stop_pct)
    window = int(below_for.total_seconds() // 60)
    for inst in src.instruments():
        first = src.quote(inst.symbol, OPEN_AT)
        if not (Decimal(5) <= first.last <= Decimal(60) and 2500 <= first.ask * inst.lot_size <= 9000):
            continue
        last = [src.quote(inst.symbol, OPEN_AT + timedelta(minutes=k)).last for k in range(90)]
        rsi, patterns = await s.market.monitor_indicators(inst.symbol)
        for k in range(int(not_before.total_seconds() // 60), 90 - window):
            stop = max(last[k:k + window + 1])
            def holds(entry, symbol=inst.symbol, before=last[:k], stop=stop, rsi=rsi, patterns=patterns) -> bool:
                return holds_until(symbol, entry, before, stop, thresholds, rsi, patterns)
            if stop < min(last[:k]) and holds(first.ask):
                return inst.symbol, inst.lot_size, OPEN_AT + timedelta(minutes=k), stop, holds
    raise AssertionError("no symbol in the simulated market crosses a stop that way")


def holds_until(symbol, entry, prices, stop, thresholds, rsi, patterns) -> bool:
    """No pass of the monitor at these prices would exit (the high-water mark as high as it can have been)."""
    high = entry
    for price in prices:
        high = max(high, price)
        view = signals.PositionView(symbol=symbol, quantity=1, entry_price=entry, price=price, high_water=high,
                                    stop_loss=stop)
        if signals.evaluate(view, thresholds, rsi=rsi, patterns=patterns).action == "exit":
            return False
    return True


@pytest.mark.slow
async def test_a_stop_crossed_during_a_database_outage_is_sent_when_it_returns_and_no_log_record_is_lost(
        pg_root, agent_id, tmp_path):
    """The daemon runs on a simulated clock that moves only by its own waits: a pass every poll interval, and
    after each failed pass a backoff of 1, 2, 4 ... max_backoff seconds. Counting its sd_notify messages tells
    where its clock is, so the outage is made to span the moment the price falls through the stop."""
    pgdata = pg_root / "outage"
    url = database.start_embedded(pgdata)
    pool = await database.create_pool(url)
    await database.ensure_schema(pool)
    settings = agent_settings(agent_id)
    poll = settings.config.monitor.poll_interval_seconds
    backoff = [min(2 ** k, settings.config.monitor.max_backoff_seconds) for k in range(1000)]
    below_for = timedelta(minutes=20)
    proc = None
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        s = await build_services(settings, pool, SimulatedClock(OPEN_AT))
        symbol, lot, crossed_at, stop, holds = await a_stop_the_price_falls_through_later(
            s, not_before=timedelta(minutes=10), below_for=below_for)
        ex = await executor(s)
        r = await ex.execute("execute_trade", {"symbol": symbol, "quantity": lot, "order_type": "market",
                                               "stop_loss": str(stop), "reasoning": "position for the outage test"})
        assert r.data["status"] == "filled", r.data
        entered = await pool.fetchrow("SELECT stop_loss, avg_entry_price FROM positions WHERE agent_id = $1", agent_id)
        assert entered["stop_loss"] == stop and holds(entered["avg_entry_price"])
        await pool.close()
        pool = None
        env = subprocess_env(tmp_path, DATABASE_URL=url, AGENT_ID=agent_id, NOTIFY_SOCKET=notify.path,
                             CATALYST_SIMULATED_START=OPEN_AT.isoformat(), CATALYST_SIMULATED_SPEED="1000")
        # the poll path is what is tested: no stream beside it, no stop at the (paper) broker, whose book is in
        # the same database and would sell at the crossing once it is back (tests/execution/test_protection.py)
        config = config_with(tmp_path, stream=False, broker_stops=False)
        proc = subprocess.Popen([PYTHON, "position_monitor_service.py", "--config", str(config)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # 1. it monitors the position, then the database goes away (while it is frozen, so we know its clock)
        await notify.wait_for("a pass over the position", lambda m: "STATUS=monitoring 1 positions; 0 exits so far"
                              in m, proc)
        freeze(proc)
        passes = notify.count("STATUS=monitoring")
        assert OPEN_AT + timedelta(seconds=poll * passes) < crossed_at, "it reached the crossing before the outage"
        database.stop_embedded(pgdata)
        proc.send_signal(signal.SIGCONT)
        # 2. it fails and backs off until its clock is surely past the crossing (it was at OPEN_AT or later)
        needed = next(n for n in range(1, 1000) if OPEN_AT + timedelta(seconds=sum(backoff[:n - 1]))
                      >= crossed_at + timedelta(minutes=1))
        await notify.wait_for(f"{needed} failed passes", lambda m: sum(x.startswith("STATUS=degraded") for x in m)
                              >= needed, proc)
        freeze(proc)
        failed = notify.count("STATUS=degraded")
        latest = OPEN_AT + timedelta(seconds=poll * passes + sum(backoff[:failed]))
        assert latest + timedelta(minutes=5) < crossed_at + below_for, "it would wake after the price recovered"
        # 3. the database returns: the crossed stop is sent
        database.start_embedded(pgdata)
        proc.send_signal(signal.SIGCONT)
        pool = await database.create_pool(url)
        await notify.wait_for("the exit", lambda m: any(x.endswith("1 exits so far") for x in m), proc)
        [exit_row] = await pool.fetch("SELECT * FROM orders WHERE agent_id = $1 AND side = 'sell'", agent_id)
        assert (exit_row["intent"], exit_row["status"], exit_row["quantity"]) == ("stop_loss", "filled", lot)
        assert crossed_at <= exit_row["created_at"] < crossed_at + below_for
        position = await pool.fetchrow("SELECT status, exit_reason FROM positions WHERE agent_id = $1", agent_id)
        assert tuple(position) == ("closed", "stop_loss")
        # 4. every "pass failed" record logged while the database was down reaches agent_logs afterwards
        async def stored() -> int:
            return await pool.fetchval("SELECT count(*) FROM agent_logs WHERE agent_id = $1 AND level = 'ERROR' "
                                       "AND message LIKE 'monitor pass failed%'", agent_id)
        deadline = time.monotonic() + 60
        while await stored() < notify.count("STATUS=degraded") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()[-2000:]
        failures = notify.count("STATUS=degraded")
        in_files = sum(p.read_text().count("monitor pass failed") for p in (tmp_path / "logs").glob("agent*.log"))
        assert failures >= needed and await stored() == in_files == failures
        assert not list((tmp_path / "logs" / "spool").glob("*.jsonl")), "a spool was left behind"
    finally:
        notify.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
        if pool is not None:
            await pool.close()
        database.stop_embedded(pgdata)
