"""What text may leave the process: secrets redacted, and text PostgreSQL can store.

Redaction: secret values, in every form text can carry them, and secret-shaped strings become *** before any log
line, console line or table row is written. One `Redactor` serves every sink. `setup_logging` installs the process's
own (`install`), built from the settings' secrets; `redact_row` redacts a value about to be written to a table with
it (text, or JSON as dicts and lists).

A secret is matched stripped (a `.env` value often ends in a newline) and as it was given, each as is, JSON-escaped,
repr-escaped (one or two levels: a repr of a JSON string, JSON of a repr, ...) and URL-encoded.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, Mapping
from urllib.parse import quote, quote_plus

_MIN_SECRET = 4
_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),                 # Anthropic keys
    re.compile(r"(?<=://)([^:/@\s]+):([^@\s]+)(?=@)"),         # user:password@ in URLs
)
_ANCHOR = re.compile(r"[A-Za-z0-9]+")
_PERCENT = re.compile(r"%[0-9A-F]{2}")
# Control characters are escaped as \n, \t, \r or \xNN (PostgreSQL refuses NUL; the others forge or garble log
# lines); lone surrogates become U+FFFD (UTF-8 cannot encode them). Multi-line fields keep their tabs and newlines.
_BAD_MULTI_LINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escapes(text: str) -> set[str]:
    """`text` as JSON and Python write it inside quotes."""
    return {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1], repr(text)[1:-1],
            repr(text + '"')[1:-2], ascii(text)[1:-1]}


def _url_forms(text: str) -> set[str]:
    encoded = {quote(text, safe=""), quote(text), quote_plus(text)}
    return encoded | {_PERCENT.sub(lambda m: m.group().lower(), e) for e in encoded}


def secret_forms(secret: str) -> set[str]:
    """Every form of `secret` that redaction replaces (stripped and as given; plain, escaped, URL-encoded)."""
    plain = {secret, secret.strip()}
    once = {e for p in plain for e in _escapes(p)}
    twice = {e for o in once for e in _escapes(o)}
    urls = {u for p in plain | once for u in _url_forms(p)}
    return {f for f in plain | once | twice | urls if len(f.strip()) >= _MIN_SECRET}


class Redactor:
    """Replaces secret values (in all their forms) and secret-shaped strings with ***."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        given = {s for s in secrets if s and len(s.strip()) >= _MIN_SECRET}
        self.secrets = tuple(sorted({s.strip() for s in given}, key=len, reverse=True))
        checks = []
        for secret in self.secrets:
            forms = set().union(*(secret_forms(g) for g in given if g.strip() == secret))
            # Every form keeps the secret's letters and digits: one `in` on its longest run decides whether the
            # (slower) alternation needs to run at all.
            runs = _ANCHOR.findall(secret)
            anchor = max(runs, key=len) if runs else ""
            pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
            checks.append((anchor, pattern))
        self._checks = tuple(checks)

    def text(self, value: str) -> str:
        for anchor, pattern in self._checks:
            if anchor in value:
                value = pattern.sub("***", value)
        if "sk-ant-" in value or "://" in value:
            value = _PATTERNS[0].sub("***", value)
            value = _PATTERNS[1].sub(lambda m: f"{m.group(1)}:***", value)
        return value

    def value(self, value: Any) -> Any:
        """A log context value, redacted: strings (keys too) redacted, containers copied, anything else as text."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.text(str(value))


# ---------------------------------------------------------------- the process's redactor

_installed = Redactor()


def install(redactor: Redactor) -> None:
    """Make `redactor` the one `redact`, `redact_row` and the console use (setup_logging calls this)."""
    global _installed
    _installed = redactor


def installed() -> Redactor:
    return _installed


def redact(text: str) -> str:
    return _installed.text(text)


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return "\ufffd" if char >= "\ud800" else _NAMED.get(char) or f"\\x{ord(char):02x}"


def storable(text: str, limit: int | None = None, *, one_line: bool = False) -> str:
    """`text` as PostgreSQL stores it and a log line shows it: control characters escaped (\\x07; one_line escapes
    tabs and newlines too), lone surrogates replaced, at most `limit` characters followed by a marker."""
    if (limit is None or len(text) <= limit) and text.isprintable():      # the common case, in C
        return text
    full = len(text)
    cut = limit is not None and full > limit
    if cut:
        text = text[:limit]
    bad = _BAD_ONE_LINE if one_line else _BAD_MULTI_LINE
    if bad.search(text):
        text = bad.sub(_escape, text)
        if limit is not None and len(text) > limit:                       # escapes are longer than what they show
            text, cut = text[:limit], True
    return f"{text}… [truncated, {full:,} characters]" if cut else text


def _storable(text: str) -> str:
    return storable(_installed.text(text))


def _walk(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {(fn(k) if isinstance(k, str) else k): _walk(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, fn) for v in value]
    return value


def redact_row(value: Any) -> Any:
    """A text or JSON (dict/list) value for a table row, redacted with the installed redactor; the shape and
    non-text values are kept. NUL becomes the text \\x00 and lone surrogates U+FFFD, which PostgreSQL refuses."""
    return _walk(value, _storable)


# ---------------------------------------------------------------- logging

class RedactingFormatter(logging.Formatter):
    """For synchronous handlers (the console): the whole formatted record — message, traceback, stack — redacted."""

    def __init__(self, fmt: str | None = None, redactor: Redactor | None = None) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return (self.redactor or _installed).text(super().format(record))

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        return (self.redactor or _installed).text(super().formatException(ei))


class RedactingFilter(logging.Filter):
    """Redacts the record's message in place (kept for handlers that format it themselves; the console uses
    RedactingFormatter, which covers tracebacks too)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True
