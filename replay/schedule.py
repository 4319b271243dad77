"""The schedule of a trading day, read from `config/cron.d`: the one reader `day` and `replay` share."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

CRON = re.compile(r"^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+.*\./run\.sh\s+(scan|trade|close)\b")



@dataclass(frozen=True)
class CronEntry:
    minutes: frozenset[int]
    hours: frozenset[int]
    weekdays: frozenset[int]          # cron numbering: 0 = Sunday ... 6 = Saturday
    mode: str


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
    for line in text.splitlines():
        m = CRON.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        minute, hour, dom, month, dow, mode = m.groups()
        if dom != "*" or month != "*":
            raise ValueError(f"cron line not supported by replay (day of month / month must be '*'): {line}")
        entries.append(CronEntry(_field(minute, 0, 59), _field(hour, 0, 23), _field(dow, 0, 7), mode))
    if not entries:
        raise ValueError("no scan/trade/close lines found in the cron file")
    return entries


def day_schedule(entries: list[CronEntry], day: date) -> list[tuple[datetime, str]]:
    """(UTC instant, mode) of every cycle cron would start on `day` (a UTC calendar date), in time order."""
    cron_dow = (day.weekday() + 1) % 7
    out = [(datetime.combine(day, time(h, m), tzinfo=timezone.utc), e.mode)
           for e in entries if cron_dow in e.weekdays for h in e.hours for m in e.minutes]
    return sorted(out)
