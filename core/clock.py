"""Clocks: the only place logic learns the time.

`RealClock` in production; `SimulatedClock` in tests and replay, where the clock decides what data exists.
All clocks return timezone-aware UTC datetimes.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class RealClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class SimulatedClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self._now = _utc(start)

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        when = _utc(when)
        if when < self._now:
            raise ValueError(f"a simulated clock cannot go back: {when.isoformat()} < {self._now.isoformat()}")
        self._now = when

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a simulated clock cannot go back")
        self._now += delta
        return self._now


class ScaledClock:
    """Real time running `speed` times faster (from the moment it was made): what a rehearsal or a test uses to time
    a venue's rate windows without waiting them out. `sleep` waits the matching real time."""

    def __init__(self, speed: float) -> None:
        import time
        self.speed = float(speed)
        self._start, self._t0 = datetime.now(timezone.utc), time.monotonic()

    def now(self) -> datetime:
        import time
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    async def sleep(self, seconds: float) -> None:
        import asyncio
        await asyncio.sleep(max(seconds, 0) / self.speed)


def process_clock(environ=None) -> "Clock":
    """The market clock of a process: real, unless CATALYST_SIMULATED_NOW=<ISO instant> fixes it (rehearsal and
    process tests only; the position monitor daemon has CATALYST_SIMULATED_START, a clock that moves)."""
    import os
    fixed = (environ if environ is not None else os.environ).get("CATALYST_SIMULATED_NOW")
    return SimulatedClock(datetime.fromisoformat(fixed)) if fixed else RealClock()


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("naive datetime given to a clock; pass a timezone-aware datetime")
    return when.astimezone(timezone.utc)
