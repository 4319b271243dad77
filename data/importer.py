"""`./run.sh data import DIR`: bar files (data/bar_files.py format) into the bar store, with what does not fit said.

A bar file is history someone else wrote, so before anything is stored each file is checked against the
configured exchange: dates that are not sessions of its calendar (GOOG daily under HKEX: US holidays and Hong
Kong holidays differ) and sessions inside the file's range that it has no bar for are counted, with examples;
prices off the symbol's tick grid are snapped onto it by the reader (open and close to the nearest tick, high up,
low down) and counted, with examples. The bars of sessions are stored as read (a bar on a non-session date is not
stored: no session can have traded it).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from core.feeds import Listing
from data.bar_file_reader import Snapped
from data.bar_files import BarFileSource
from data.store import BarStore


@dataclass
class FileReport:
    symbol: str
    bars_in_file: int = 0
    stored: int = 0
    not_sessions: list[date] = field(default_factory=list)
    missing_sessions: list[date] = field(default_factory=list)
    snapped: Snapped = field(default_factory=Snapped)

    def warnings(self, exchange: str) -> list[str]:
        out = []
        if self.not_sessions:
            out.append(f"{self.symbol}: {len(self.not_sessions)} bars on dates that are not {exchange} sessions "
                       f"(not stored), e.g. {', '.join(d.isoformat() for d in self.not_sessions[:3])}")
        if self.missing_sessions:
            out.append(f"{self.symbol}: {len(self.missing_sessions)} {exchange} sessions with no bar, e.g. "
                       f"{', '.join(d.isoformat() for d in self.missing_sessions[:3])}")
        if self.snapped.prices:
            out.append(f"{self.symbol}: {self.snapped.describe()}")
        return out


@dataclass
class ImportReport:
    dataset: str
    files: list[FileReport] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(f.stored for f in self.files)

    def render(self, exchange: str) -> str:
        lines = [f"data import into {self.dataset}: {len(self.files)} files, "
                 f"{sum(f.bars_in_file for f in self.files)} daily bars read, {self.stored} added"]
        for f in self.files:
            lines += [f"  warning: {w}" for w in f.warnings(exchange)]
        return "\n".join(lines)


def _raw_dates(path: Path, source: BarFileSource) -> list[date]:
    """The local dates a daily file's rows are stamped with, as written (before any session mapping)."""
    import pandas as pd
    frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=str)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    stamps = pd.to_datetime(frame["timestamp"], utc=False, format="mixed")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert(source.calendar.tz)
    return sorted({d for d in stamps.dt.date})


async def import_bar_files(directory: Path, store: BarStore, *, now: datetime) -> ImportReport:
    source = await asyncio.to_thread(BarFileSource, directory, store.exchange, calendar=store.calendar)
    await asyncio.to_thread(source.validate)
    report = ImportReport(store.dataset)
    await store.upsert_securities([Listing(i) for i in source.instruments()], source="files", now=now)
    calendar = store.calendar
    for inst in source.instruments():
        rep = FileReport(inst.symbol)
        if source.resolution(inst.symbol) == "daily":
            written = await asyncio.to_thread(_raw_dates, source.path(inst.symbol), source)
            rep.not_sessions = [d for d in written if not calendar.is_trading_day(d)]
            if written:
                have = set(written)
                rep.missing_sessions = [d for d in calendar.trading_days(written[0], written[-1]) if d not in have]
        first = datetime.combine(calendar.first_day, datetime.min.time(), tzinfo=calendar.tz)
        bars = await asyncio.to_thread(source.bars, inst.symbol, "1d", first, now)
        rep.bars_in_file = len(bars) + len(rep.not_sessions)
        rep.snapped = source.snapped(inst.symbol)
        rep.stored = await store.write_bars("1d", {inst.symbol: bars}, source="files", now=now)
        report.files.append(rep)
    return report
