"""The equity curve and its drawdowns as a PNG (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from replay.stats import EquityPoint


def plot_equity(curve: Sequence[EquityPoint], path: Path, *, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [p.day for p in curve]
    equity = [float(p.equity) for p in curve]
    peak, drawdown = equity[0], []
    for e in equity:
        peak = max(peak, e)
        drawdown.append((e / peak - 1) * 100 if peak else 0.0)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), dpi=100,
                                      gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot(days, equity, color="tab:blue", linewidth=1.5, marker="o" if len(days) < 40 else None,
                 markersize=3)
        top.set_title(title, fontsize=10)
        top.set_ylabel("equity")
        top.grid(alpha=0.3)
        bottom.fill_between(days, drawdown, 0, color="tab:red", alpha=0.4)
        bottom.set_ylabel("drawdown %")
        bottom.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
