"""Where the project lives: the one definition of the project root (where run.sh is)."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_path(path: str | Path) -> Path:
    """Paths in the config are relative to the project root, or absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
