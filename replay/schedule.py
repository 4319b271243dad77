"""The schedule of a trading day, read from the market's cron file: the one reader `day` and `replay` share.

`config/cron.d` is the HKEX schedule (times in UTC); `config/cron-us.d` the NYSE/NASDAQ one (times in New York time,
`CRON_TZ=America/New_York`, so daylight saving needs no edit). A `CRON_TZ=` line sets the zone of the lines after it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone, tzinfo
from zoneinfo import ZoneInfo

from core.paths import PROJECT_ROOT

CRON = re.compile(r"^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+.*\./run\.sh\s+(scan|trade|close)\b")
CRON_TZ = re.compile(r"^\s*CRON_TZ\s*=\s*(\S+)\s*$")

# The cron file of each market, relative to the project root.
SCHEDULE_FILES = {"HKEX": "config/cron.d", "NYSE": "config/cron-us.d", "NASDAQ": "config/cron-us.d"}


def schedule_path(exchange: str):
    return PROJECT_ROOT / SCHEDULE_FILES[exchange]

@dataclass(frozen=True)
class CronEntry:
    minutes: frozenset[int]
    hours: frozenset[int]
    weekdays: frozenset[int]          # cron numbering: 0 = Sunday ... 6 = Saturday
    mode: str
    tz: tzinfo = timezone.utc         # the zone its hours and minutes are in (CRON_TZ)


def _field(spec: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for part in spec.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            a, b = lo, hi
        elif "-" in body:
            a, b = (int(x) for x in body.split("-", 1))
        else:
            a = b = int(body)
        out.update(range(a, b + 1, int(step) if step else 1))
    if hi == 7:                      # day of week: 7 is Sunday too
        out = {x % 7 for x in out}
    return frozenset(out)


def parse_cron(text: str) -> list[CronEntry]:
    """The scan / trade / close lines of a cron.d file (day-of-month and month must be '*')."""
    entries = []
    tz: tzinfo = timezone.utc
    for line in text.splitlines():
        zone = CRON_TZ.match(line)
        if zone:
            tz = ZoneInfo(zone.group(1))
            continue
        m = CRON.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        minute, hour, dom, month, dow, mode = m.groups()
        if dom != "*" or month != "*":
            raise ValueError(f"cron line not supported by replay (day of month / month must be '*'): {line}")
        entries.append(CronEntry(_field(minute, 0, 59), _field(hour, 0, 23), _field(dow, 0, 7), mode, tz))
    if not entries:
        raise ValueError("no scan/trade/close lines found in the cron file")
    return entries


def read_schedule(exchange: str, text: str | None = None) -> list[CronEntry]:
    """The market's schedule (`text` instead of its file, when given)."""
    return parse_cron(text if text is not None else schedule_path(exchange).read_text())


def day_schedule(entries: list[CronEntry], day: date) -> list[tuple[datetime, str]]:
    """(UTC instant, mode) of every cycle cron would start on `day` (a calendar date in each line's CRON_TZ,
    UTC by default), in time order."""
    cron_dow = (day.weekday() + 1) % 7
    out = [(datetime.combine(day, time(h, m), tzinfo=e.tz).astimezone(timezone.utc), e.mode)
           for e in entries if cron_dow in e.weekdays for h in e.hours for m in e.minutes]
    return sorted(out)
