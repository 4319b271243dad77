"""Redaction: known secret values and secret-shaped strings become *** before any log line or row is written."""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping


_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),                 # Anthropic keys
    re.compile(r"(?<=://)([^:/@\s]+):([^@\s]+)(?=@)"),         # user:password@ in URLs
)


class Redactor:
    """Replaces known secret values and secret-shaped strings with ***."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True))

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, "***")
        if "sk-ant-" in value or "://" in value:
            value = _PATTERNS[0].sub("***", value)
            value = _PATTERNS[1].sub(lambda m: f"{m.group(1)}:***", value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.text(str(value))


class RedactingFilter(logging.Filter):
    """For synchronous handlers (console): redacts the record in place."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True
