"""Spool files under `logs/spool/`: the rows a process could not store, kept for whichever process replays them.

Each process appends to a file of its own, held with flock while it lives; a file whose owner is gone (unlocked)
is claimed by the next process that replays, read line by line and deleted once its rows are in the table.
"""
from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

from logpipe.rows import _spool_form


class SpoolFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = self.new_path()          # this process's own spool
        self._fh = None
        self.rows_written = 0

    def new_path(self) -> Path:
        return self.directory / f"agent_logs.{os.getpid()}.{uuid.uuid4().hex[:12]}.jsonl"

    def pending(self) -> bool:
        """Anything to replay: our open spool, or any spool file at all."""
        return self._fh is not None or (self.directory.exists() and any(self.directory.glob("*.jsonl")))

    def append(self, rows: list[tuple]) -> None:
        """Append to this process's spool (held with flock while the process lives)."""
        if self._fh is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write(self._fh, rows)

    def write_apart(self, rows: list[tuple]) -> None:
        """A spool file of its own, closed (and so unlocked: any later process replays it) when written."""
        path = self.new_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._write(fh, rows)

    def _write(self, fh, rows: list[tuple]) -> None:
        fh.write("".join(json.dumps(_spool_form(r), default=str) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())
        self.rows_written += len(rows)

    def replay(self, replay_file: Callable[[Path], bool]) -> bool:
        """Hand our spool and every spool whose owner is gone to `replay_file`; delete each it finished. False as
        soon as one could not be finished (the database stopped answering): the rest wait for the next time."""
        if not self.directory.exists():
            return True
        for path, release in self._claimable():
            try:
                done = replay_file(path)
            finally:
                release()
            if not done:
                return False
            path.unlink(missing_ok=True)
        return True

    def _claimable(self) -> Iterator[tuple[Path, Callable[[], None]]]:
        for path in sorted(self.directory.glob("*.jsonl")):
            if path == self.path and self._fh is not None:
                yield path, self.close
                continue
            try:
                fh = open(path, "r+", encoding="utf-8")
            except OSError:
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue                     # a live process owns it
            yield path, fh.close

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def quarantine(path: Path, entry: dict) -> None:
    """A row the table refuses (or a spool line that is no row) goes to logs/quarantine/, never lost."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
    except OSError:
        pass
