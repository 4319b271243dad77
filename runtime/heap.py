"""The long-running daemon's heap, settled once it is warm.

A full (oldest-generation) garbage collection walks every container object the process holds. After the imports
(pandas, the venue SDKs) and the first pass, the monitor daemon holds about a million of them, and a full
collection stops the event loop for ~150 ms on a small VM: a pushed price through a stop waits that long before it
is judged. `settle()` collects once and moves everything alive to the interpreter's permanent generation
(`gc.freeze()`), which later collections skip; they then walk only what was made since. Objects made before the
freeze that later become cyclic garbage are not reclaimed, so it is called once, when the daemon is warm, and not
again.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

_settled = False


def settle() -> int:
    """Collect, then freeze what is alive; once per process (later calls do nothing). The number of objects frozen."""
    global _settled
    if _settled:
        return 0
    _settled = True
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap settled: %d objects frozen out of later collections (%.0f ms)", frozen,
             (time.perf_counter() - t0) * 1000)
    return frozen
