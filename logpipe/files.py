"""The daily-rotated log file under `logs/`."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path


class DailyFile:
    """`logs/<name>.log`, rotated at UTC midnight to `<name>.log.YYYY-MM-DD`, keeping `keep_days` old files."""

    def __init__(self, directory: Path, name: str, keep_days: int) -> None:
        self.directory = directory
        self.path = directory / f"{name}.log"
        self.keep_days = keep_days
        self._day: str | None = None
        self._fh = None

    def write(self, lines: list[str], when: datetime) -> None:
        day = when.strftime("%Y-%m-%d")
        if day != self._day:
            self._rotate(day)
        assert self._fh is not None
        self._fh.write("".join(lines))
        self._fh.flush()

    def _rotate(self, today: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._fh:
            self._fh.close()
        if self.path.exists():
            mday = datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
            if mday != today:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.{mday}"))
        cutoff = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=self.keep_days)).strftime("%Y-%m-%d")
        for old in self.directory.glob(f"{self.path.name}.*"):
            if old.name[len(self.path.name) + 1:] < cutoff:
                old.unlink(missing_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._day = today

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
