"""Equity curves and their drawdowns as a PNG (matplotlib, no display needed): one run (replay) or several (eval).

`Plotter` draws in a child process started when a replay starts: importing matplotlib's Agg canvas takes ~0.7 s
of CPU here, which the child spends on the other core while the replay runs, instead of at its end. When the
child cannot be started, or fails, the PNG is drawn in this process (`plot_curves`), so a PNG is never lost to it.

Run as `python -m replay.plot`, this module is that child: it imports matplotlib, reads one JSON request on stdin
({"curves": {label: [[ISO day, equity], ...]}, "path": ..., "title": ...}), writes the PNG and prints "ok".
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import date
from pathlib import Path
from typing import Sequence

from replay.stats import EquityPoint

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# How long the child may take to draw once asked (a year's curve takes ~0.3 s); then the PNG is drawn here.
DRAW_SECONDS = 60.0


def plot_equity(curve: Sequence[EquityPoint], path: Path, *, title: str) -> Path:
    return plot_curves({"equity": curve}, path, title=title)


def plot_curves(curves: dict[str, Sequence[EquityPoint]], path: Path, *, title: str) -> Path:
    """Each curve on top, its drawdown from the running peak (%) below; a legend when there are several."""
    return _draw({label: ([p.day for p in curve], [float(p.equity) for p in curve]) for label, curve in curves.items()},
                 path, title)


def _draw(curves: dict[str, tuple[list[date], list[float]]], path: Path, title: str) -> Path:
    # A bare Figure on the Agg canvas (no pyplot: no backend selection, no global figure registry) and fixed
    # margins instead of tight_layout, which lays every label out twice: a third of the cost of a replay's PNG.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for label, (days, equity) in curves.items():
        peak, drawdown = equity[0] if equity else 0.0, []
        for e in equity:
            peak = max(peak, e)
            drawdown.append((e / peak - 1) * 100 if peak else 0.0)
        top.plot(days, equity, linewidth=1.5, label=label,
                 marker="o" if len(days) < 40 and len(curves) == 1 else None, markersize=3)
        if len(curves) == 1:
            bottom.fill_between(days, drawdown, 0, color="tab:red", alpha=0.4)
        else:
            bottom.plot(days, drawdown, linewidth=1.0, label=label)
    top.set_title(title, fontsize=10)
    top.set_ylabel("equity")
    top.grid(alpha=0.3)
    if len(curves) > 1:
        top.legend(fontsize=8)
    bottom.set_ylabel("drawdown %")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.12, hspace=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


class Plotter:
    """Draws a run's PNG in a child process started ahead of time (see the module's docstring)."""

    def __init__(self, proc: asyncio.subprocess.Process | None) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, python: str = sys.executable) -> "Plotter":
        """A child importing matplotlib from now on; a plotter that draws in this process when it cannot start."""
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "replay.plot", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.warning("the PNG is drawn in this process: its drawing process did not start (%s)", exc)
            proc = None
        return cls(proc)

    async def draw(self, curves: dict[str, Sequence[EquityPoint]], path: Path, *, title: str) -> Path:
        """The PNG of `curves` at `path`: by the child, or here when the child fails."""
        proc, self._proc = self._proc, None
        if proc is not None:
            request = {"curves": {label: [[p.day.isoformat(), float(p.equity)] for p in curve]
                                  for label, curve in curves.items()}, "path": str(path), "title": title}
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                await proc.stdin.drain()
                proc.stdin.close()
            except Exception:                  # it ended before reading: its exit and its stderr say why
                pass
            try:
                out, err = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.stderr.read()),
                                                  DRAW_SECONDS)
                await proc.wait()
                if proc.returncode == 0 and out.strip() == b"ok":
                    return path
                log.warning("the PNG is drawn in this process: its drawing process failed (exit %s): %s",
                            proc.returncode, err.decode(errors="replace")[-500:])
            except asyncio.TimeoutError:
                log.warning("the PNG is drawn in this process: its drawing process took over %.0f s", DRAW_SECONDS)
                _kill(proc)
                await proc.wait()
        return plot_curves(curves, path, title=title)

    async def close(self) -> None:
        """Ends a child that was never asked to draw (a replay that failed)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            _kill(proc)
            await proc.wait()


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _serve() -> int:
    from matplotlib.backends import backend_agg  # noqa: F401  the import this process exists to do early
    import matplotlib.figure  # noqa: F401

    line = sys.stdin.readline()
    if not line:
        return 0                            # the replay ended without asking
    request = json.loads(line)
    curves = {label: ([date.fromisoformat(d) for d, _ in points], [e for _, e in points])
              for label, points in request["curves"].items()}
    _draw(curves, Path(request["path"]), request["title"])
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
