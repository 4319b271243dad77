"""A disk cache of numpy arrays for deterministic, costly tables: the exchange's session table and the simulated
market's daily paths. Each process (every cron run, every test subprocess) would otherwise rebuild them.

A cache, never a source of truth: an entry's name carries everything its content depends on (inputs and the
versions of the code and libraries that made it), so a changed input is a different file; files are written
whole or not at all (a temporary file renamed into place); anything missing, truncated or of the wrong shape is
built again. It lives in CATALYST_CACHE_DIR, else `cache/` in the var directory (CATALYST_VAR_DIR, else the
checkout's `var/`) — the one place the systemd units may write besides logs/. Where it cannot be written, each
process builds its own tables, as before.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    explicit = os.environ.get("CATALYST_CACHE_DIR")
    if explicit:
        return Path(explicit)
    var = os.environ.get("CATALYST_VAR_DIR")
    return (Path(var) if var else _ROOT / "var") / "cache"


def source_digest(*paths: Path) -> str:
    """A short digest of source files' bytes: a cache entry made by other code has another name."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def load(kind: str, name: str, fields: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays stored under kind/name, or None when there is no whole, readable entry."""
    try:
        with np.load(cache_dir() / kind / f"{name}.npz", allow_pickle=False) as data:
            return {f: data[f] for f in fields}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):   # missing, unreadable, truncated
        return None


def store(kind: str, name: str, arrays: dict[str, np.ndarray], *, replaces: str | None = None) -> None:
    """Write the entry atomically; a directory that cannot be written is not an error (the caller has the data).
    `replaces`: a name prefix whose other entries this one supersedes (made by an older library or source), removed
    so that upgrades do not pile up files."""
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, folder / f"{name}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if replaces:
            for old in folder.glob(f"{replaces}*.npz"):
                if old.stem != name:
                    old.unlink(missing_ok=True)
    except OSError:
        pass
