"""runtime/heap.py: the daemon's heap is settled once, when warm."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_settle_freezes_what_is_alive_once_per_process():
    """Run in a process of its own: a freeze is for the life of the interpreter."""
    code = ("import gc, sys; sys.path.insert(0, %r)\n"
            "from runtime import heap\n"
            "kept = [[i] for i in range(10000)]\n"
            "first = heap.settle(); count = gc.get_freeze_count()\n"
            "second = heap.settle()\n"
            "print(first, count, second, gc.get_freeze_count())\n") % str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    first, count, second, after = map(int, out)
    assert first == count >= 10000          # the live lists (and the interpreter's own objects) are frozen
    assert second == 0 and after == count   # a second call freezes nothing more


def test_a_full_collection_after_settling_no_longer_walks_the_frozen_objects():
    """What a collection walks is what gc tracks in its generations: the frozen objects are in none of them."""
    code = ("import gc, sys; sys.path.insert(0, %r)\n"
            "from runtime import heap\n"
            "kept = [[i] for i in range(1000)]\n"
            "walked = lambda: {id(o) for o in gc.get_objects()}\n"
            "before = len(walked() & {id(k) for k in kept})\n"
            "heap.settle()\n"
            "after = len(walked() & {id(k) for k in kept})\n"
            "young = [[i] for i in range(10)]\n"
            "print(before, after, len(walked() & {id(y) for y in young}))\n") % str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert list(map(int, out)) == [1000, 0, 10]     # objects made after the freeze are collected as usual
