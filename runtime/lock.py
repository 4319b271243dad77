"""One run at a time per agent: an flock on var/locks/<agent_id>.lock.

cron can start a trade run while the previous one is still going; the second is refused at once with
`EXIT_LOCKED` and a message naming the holder. The lock dies with its process (kill -9 included).
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


class AgentBusy(Exception):
    """Another process of this agent holds the lock."""


class AgentLock:
    def __init__(self, lock_dir: Path, agent_id: str) -> None:
        self.path = lock_dir / f"{agent_id}.lock"
        self.agent_id = agent_id
        self._fd: int | None = None

    def acquire(self, mode: str) -> "AgentLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise AgentBusy(f"another Catalyst run of agent {self.agent_id!r} is in progress ({holder}); "
                            f"refusing to start a second one (lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, mode {mode}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AgentLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_gone(lock_dir: Path, agent_id: str) -> bool:
    """True when `agent_id` ran here (its lock file exists) and no other process holds its lock now: whatever it
    left `running` has no process any more. Held by this very process counts as gone too: one run at a time per
    agent, so a cycle still `running` from before this run began belongs to a run that died. False when another
    process holds it, or when the agent never ran on this machine."""
    path = lock_dir / f"{agent_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").startswith(f"pid {os.getpid()},")
    finally:
        os.close(fd)              # closing releases the probe's own lock (never the one this process holds)
    return True
