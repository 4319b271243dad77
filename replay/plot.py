"""Equity curves and their drawdowns as a PNG (matplotlib, no display needed): one run (replay) or several (eval)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from replay.stats import EquityPoint


def plot_equity(curve: Sequence[EquityPoint], path: Path, *, title: str) -> Path:
    return plot_curves({"equity": curve}, path, title=title)


def plot_curves(curves: dict[str, Sequence[EquityPoint]], path: Path, *, title: str) -> Path:
    """Each curve on top, its drawdown from the running peak (%) below; a legend when there are several."""
    # A bare Figure on the Agg canvas (no pyplot: no backend selection, no global figure registry) and fixed
    # margins instead of tight_layout, which lays every label out twice: a third of the cost of a replay's PNG.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for label, curve in curves.items():
        days = [p.day for p in curve]
        equity = [float(p.equity) for p in curve]
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
