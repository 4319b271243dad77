"""The logging handler: it only enqueues (record, current log context) for the writer; no formatting, no I/O."""
from __future__ import annotations

import logging
from typing import Any

from core.logcontext import _context


class DatabaseLogHandler(logging.Handler):
    """Enqueue-only handler; the `LogWriter` does everything else."""

    def __init__(self, writer: Any, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self._put = writer.queue.put
        self._get_context = _context.get

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: the queue is thread-safe
        if record.levelno >= self.level and (not self.filters or self.filter(record)):
            self._put((record, self._get_context()))
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        self._put((record, self._get_context()))
