"""Helpers the logging tests share: a logger feeding one writer, and what a writer left in logs/spool."""
from __future__ import annotations

import logging
from pathlib import Path

from db_logger import LogWriter
from logpipe.handler import DatabaseLogHandler


def make_logger(name: str, writer: LogWriter) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [DatabaseLogHandler(writer)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def spooled_lines(log_dir: Path) -> list[str]:
    return [line for f in sorted((log_dir / "spool").glob("*.jsonl")) for line in f.read_text().splitlines()]
