"""The position monitor daemon: `python position_monitor_service.py` (systemd: config/position-monitor.service).

While the market is in continuous trading it runs a monitor pass (execution/monitor.py) every
`monitor.poll_interval_seconds`, and beside it (`monitor.stream`) a quote stream for the open positions
(execution/quote_watch.py) that judges every pushed price at once and falls back to the poll when it drops or
stalls; through the HKEX lunch break, nights, weekends and holidays (the exchange
calendar) it sleeps until the next open, waking every `monitor.heartbeat_seconds` to tell systemd it is alive.
A failed pass (database down, broker down, a bad quote) is logged and retried with exponential backoff up to
`monitor.max_backoff_seconds`; nothing but SIGTERM/SIGINT stops it, and then it stops within a second or two.

Under systemd `Type=notify` it sends READY=1 once started, WATCHDOG=1 on every loop, STATUS=<what it is doing>
and STOPPING=1 (sd_notify protocol: datagrams to $NOTIFY_SOCKET; no library needed).
A `service_health` row (service 'position_monitor') is written every heartbeat.

For tests and rehearsal only: CATALYST_SIMULATED_START=<ISO instant> runs it on a simulated clock that moves
CATALYST_SIMULATED_SPEED (default 100) times faster than real time.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger("catalyst.monitor.service")


class Notifier:
    """sd_notify: one datagram per message to $NOTIFY_SOCKET ('@' = Linux abstract namespace). No-op without it."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._sock: socket.socket | None = None

    def send(self, message: str) -> None:
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


class RealTime:
    def __init__(self, stop: asyncio.Event) -> None:
        from core.clock import RealClock
        self.clock = RealClock()
        self.stop = stop

    async def sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=max(seconds, 0))
        except asyncio.TimeoutError:
            pass


class SimulatedTime:
    """A simulated clock that advances by each sleep, taking 1/speed of it in real time."""

    def __init__(self, start: datetime, stop: asyncio.Event, speed: float = 100.0) -> None:
        from core.clock import SimulatedClock
        self.clock = SimulatedClock(start)
        self.stop = stop
        self.speed = speed

    async def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds / self.speed)
            seconds = min(seconds, (loop.time() - t0) * self.speed)    # stopped early: only the time that passed
        except asyncio.TimeoutError:
            pass
        self.clock.advance(timedelta(seconds=seconds))


class MonitorService:
    def __init__(self, settings, *, time_source, notifier: Notifier, database_url: str | None = None) -> None:
        from core.calendar import MarketCalendar
        self.settings = settings
        self.cfg = settings.config.monitor
        self.time = time_source
        self.clock = time_source.clock
        self.notifier = notifier
        self.calendar = MarketCalendar(settings.config.market.exchange)
        self.database_url = database_url
        self.pool = None
        self.services = None
        self.monitor = None
        self.watch = None
        self._watch_task: asyncio.Task | None = None
        self.passes = 0
        self.exits = 0
        self.failures = 0
        self._last_heartbeat: datetime | None = None

    async def _ensure_monitor(self) -> None:
        if self.monitor is not None:
            return
        from runtime import database
        from runtime.wiring import build_services
        if self.pool is None:
            self.pool = await database.create_pool(self.database_url, min_size=1, max_size=3)
            await database.ensure_schema(self.pool)
        self.services = await build_services(self.settings, self.pool, self.clock)
        self.monitor = self.services.monitor()

    def _start_watch(self, stop: asyncio.Event) -> None:
        if not self.cfg.stream or self._watch_task is not None or self.monitor is None:
            return
        from execution.quote_watch import QuoteWatch
        from runtime import heap
        heap.settle()                     # warm now: a full collection must not hold a pushed price for ~150 ms
        self.watch = QuoteWatch(broker=self.services.broker, monitor=self.monitor, clock=self.clock,
                                stall_seconds=self.cfg.stream_stall_seconds,
                                max_backoff=float(self.cfg.max_backoff_seconds), on_change=self._stream_changed)
        self._watch_task = asyncio.create_task(
            self.watch.run(stop, lambda: self.calendar.state(self.clock.now()).status == "open"),
            name="quote-watch")

    async def _stream_changed(self, watch) -> None:
        """The stream went down or came back: STATUS and service_health say so at once."""
        self.notifier.send(f"STATUS={watch.status_text()}")
        await self._heartbeat("degraded" if watch.state == "polling" else "healthy",
                              {"state": "monitoring", **watch.health()}, force=True)

    def _stream_text(self) -> str:
        return f"; {self.watch.status_text()}" if self.watch is not None else ""

    async def _heartbeat(self, status: str, detail: dict[str, Any], *, force: bool = False) -> None:
        now = self.clock.now()
        if not force and self._last_heartbeat and now - self._last_heartbeat < timedelta(
                seconds=self.cfg.heartbeat_seconds):
            return
        if self.pool is None:
            return
        try:
            from core.redaction import redact_row
            await self.pool.execute(
                "INSERT INTO service_health (agent_id, service, status, details, checked_at) "
                "VALUES ($1, 'position_monitor', $2, $3, $4)", self.settings.agent_id, status,
                redact_row(json.loads(json.dumps(detail, default=str))), now)
            self._last_heartbeat = now
        except Exception as exc:
            log.warning("monitor heartbeat not written: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        self.notifier.send("READY=1\nSTATUS=started")
        log.info("position monitor started (agent %s, poll %ds)", self.settings.agent_id,
                 self.cfg.poll_interval_seconds)
        backoff = 1.0
        try:
            while not stop.is_set():
                self.notifier.send("WATCHDOG=1")
                now = self.clock.now()
                state = self.calendar.state(now)
                if state.status != "open":
                    wait = (state.next_open - now).total_seconds()
                    text = f"market {state.status}; sleeping until {state.next_open.isoformat()}"
                    self.notifier.send(f"STATUS={text}")
                    await self._heartbeat("healthy", {"state": "sleeping", "market": state.status,
                                                      "next_open": state.next_open})
                    await self.time.sleep(min(wait, self.cfg.heartbeat_seconds))
                    continue
                try:
                    await self._ensure_monitor()
                    result = await self.monitor.run_pass()
                    self._start_watch(stop)
                except Exception as exc:
                    self.failures += 1
                    log.error("monitor pass failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, backoff)
                    self.notifier.send(f"STATUS=degraded: {type(exc).__name__}; retrying")
                    await self._heartbeat("degraded", {"error": f"{type(exc).__name__}: {exc}"[:500]}, force=True)
                    await self.time.sleep(backoff)
                    backoff = min(backoff * 2, float(self.cfg.max_backoff_seconds))
                    continue
                backoff = 1.0
                self.passes += 1
                self.exits += len(result.exits)
                self.notifier.send(f"STATUS=monitoring {result.checked} positions; {self.exits} exits so far"
                                   f"{self._stream_text()}")
                stream_down = self.watch is not None and self.watch.state == "polling"
                await self._heartbeat("healthy" if not result.errors and not stream_down else "degraded",
                                      {"state": "monitoring", "checked": result.checked, "exits": len(result.exits),
                                       "errors": result.errors[:5], "pass_ms": round(result.seconds * 1000, 1),
                                       **(self.watch.health() if self.watch is not None else {})})
                wait = max(float(self.cfg.poll_interval_seconds) - result.seconds, 0.0)   # keep the cadence
                if state.interval_end is not None:
                    wait = min(wait, max((state.interval_end - now).total_seconds(), 0.0) + 0.001)
                await self.time.sleep(wait)
        finally:
            if self._watch_task is not None:
                self._watch_task.cancel()
                try:
                    await self._watch_task
                except (asyncio.CancelledError, Exception):
                    pass
            self.notifier.send("STOPPING=1")
            await self._heartbeat("stopped", {"passes": self.passes, "exits": self.exits,
                                              "failures": self.failures}, force=True)
            if self.monitor is not None:
                try:
                    await self.services.broker.disconnect()
                except Exception:
                    pass
            if self.pool is not None:
                await self.pool.close()
            log.info("position monitor stopped after %d passes, %d exits", self.passes, self.exits)


async def _main(settings) -> int:
    from runtime.bootstrap import start_logging
    from runtime.database import resolve_target

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    target = None
    while target is None and not stop.is_set():
        try:
            target = await asyncio.to_thread(resolve_target, settings)
        except Exception as exc:          # the database is not there yet: wait, never die
            print(f"database not available yet ({exc}); retrying in 10 s", file=sys.stderr)
            try:
                await asyncio.wait_for(stop.wait(), 10)
            except asyncio.TimeoutError:
                pass
    if target is None:
        return 0
    pipeline = start_logging(settings, target, "monitor")
    start = os.environ.get("CATALYST_SIMULATED_START")
    if start:
        time_source: Any = SimulatedTime(datetime.fromisoformat(start), stop,
                                         float(os.environ.get("CATALYST_SIMULATED_SPEED", "100")))
    else:
        time_source = RealTime(stop)
    service = MonitorService(settings, time_source=time_source, notifier=Notifier(), database_url=target.url)
    try:
        await service.run(stop)
    finally:
        pipeline.close(timeout=3.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from runtime.bootstrap import run, settings_or_exit
    parser = argparse.ArgumentParser(prog="position_monitor_service.py", description="Catalyst position monitor")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    try:
        settings = settings_or_exit(args.config)
    except SystemExit as exc:
        return int(exc.code or 0)
    if settings.config.market_data.source != "files" and "pandas" not in sys.modules:
        # The daemon reads no Parquet; without this pandas loads pyarrow anyway (~35 MB of a small droplet's RAM).
        sys.modules["pyarrow"] = None  # type: ignore[assignment]
    return run(_main(settings))


if __name__ == "__main__":
    sys.exit(main())
