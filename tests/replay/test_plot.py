"""replay/plot.py: the PNG drawn by the child process is the one drawn in process, byte for byte; a child that
cannot start, fails or is never asked costs no PNG and leaves no process behind."""
from __future__ import annotations

import os
from datetime import date
from decimal import Decimal as D

from replay.plot import Plotter, plot_curves
from replay.stats import EquityPoint

PNG = b"\x89PNG\r\n\x1a\n"


def curve(*values):
    return [EquityPoint(date(2026, 11, i + 1), D(v), D(v) / 2, D(v) / 2) for i, v in enumerate(values)]


CURVES = {"rules": curve(100000, 100412.37, 99870.01, 101200.5, 100950), "cash": curve(*[100000] * 5)}


async def test_the_child_draws_the_same_png_as_this_process(tmp_path):
    plotter = await Plotter.start()
    drawn = await plotter.draw(CURVES, tmp_path / "child.png", title="two curves")
    here = plot_curves(CURVES, tmp_path / "here.png", title="two curves")
    assert drawn == tmp_path / "child.png"
    assert drawn.read_bytes()[:8] == PNG
    assert drawn.read_bytes() == here.read_bytes()


async def test_a_child_that_cannot_start_draws_here(tmp_path):
    plotter = await Plotter.start(python=str(tmp_path / "no-such-python"))
    path = await plotter.draw(CURVES, tmp_path / "eq.png", title="t")
    assert path.read_bytes() == plot_curves(CURVES, tmp_path / "here.png", title="t").read_bytes()


async def test_a_child_that_fails_draws_here(tmp_path, caplog):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no matplotlib here' >&2\nexit 3\n")
    broken.chmod(0o755)
    plotter = await Plotter.start(python=str(broken))
    path = await plotter.draw(CURVES, tmp_path / "eq.png", title="t")
    assert path.read_bytes() == plot_curves(CURVES, tmp_path / "here.png", title="t").read_bytes()
    assert "exit 3" in caplog.text and "no matplotlib here" in caplog.text


async def test_a_child_never_asked_is_ended(tmp_path):
    plotter = await Plotter.start()
    pid = plotter._proc.pid
    await plotter.close()
    assert plotter._proc is None
    try:
        os.kill(pid, 0)                      # reaped: no such process any more
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    await plotter.close()                    # twice is harmless


async def test_a_child_that_hangs_is_ended_and_the_png_drawn_here(tmp_path, monkeypatch, caplog):
    import replay.plot
    monkeypatch.setattr(replay.plot, "DRAW_SECONDS", 0.5)
    hung = tmp_path / "python"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)
    plotter = await Plotter.start(python=str(hung))
    proc = plotter._proc
    path = await plotter.draw(CURVES, tmp_path / "eq.png", title="t")
    assert path.read_bytes() == plot_curves(CURVES, tmp_path / "here.png", title="t").read_bytes()
    assert proc.returncode == -9 and "took over" in caplog.text
