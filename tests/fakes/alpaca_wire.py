"""The fake Alpaca's shared parts: its errors, records, faults, the HTTP/1.1 plumbing and Alpaca's JSON shapes
(trading numbers as strings, data numbers as JSON numbers, RFC 3339 UTC times, daily bars at midnight New York).

See alpaca_server.py for the fake itself and alpaca_data.py for its market data and assets routes.
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from core.instruments import Bar

NEW_YORK = ZoneInfo("America/New_York")
ID_SPACE = uuid.UUID("5f0c7a44-5d1e-4a43-9b7e-6b1a2c3d4e5f")
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
PAPER_TO_ALPACA = {"pending_submit": "pending_new", "submitted": "new", "partially_filled": "partially_filled",
                   "filled": "filled", "cancel_pending": "pending_cancel", "cancelled": "canceled",
                   "expired": "expired", "rejected": "rejected"}
TIMEFRAMES = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "30Min": "30m", "1Hour": "1h", "1Day": "1d"}


class _Answer(Exception):
    """An HTTP answer raised from deep inside a route (an error, usually)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, code: int, message: str) -> _Answer:
    return _Answer(status, {"code": code, "message": message})


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int | None = None                 # what was answered; None when the connection was dropped
    at: datetime | None = None                # when it came, by the fake's rate clock
    received: float = field(default_factory=time.perf_counter)   # when it arrived (this process's perf_counter)


@dataclass
class _Fault:
    kind: str                                 # fail | drop | delay
    match: str | None
    times: int
    status: int = 0
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after_processing: bool = False

    def applies(self, method: str, path: str) -> bool:
        if self.match is None:
            return True
        want_method, _, prefix = self.match.partition(" ") if " " in self.match else ("", "", self.match)
        return (not want_method or want_method == method) and path.startswith(prefix)



def _handler_class(fake: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"        # keep-alive, as Alpaca: a dropped connection is a reused one
        timeout = 30

        def setup(self) -> None:
            super().setup()
            with fake._lock:
                fake._sockets.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake._sockets.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            record = Recorded(method, parts.path, query, body, at=fake.rate_clock.now())
            with fake._lock:
                fake.requests.append(record)
            answer = fake.handle(method, parts.path, query, body, self.headers)
            if answer is None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status, payload, headers = answer
            record.status = status
            data = b"" if payload is None else json.dumps(payload).encode()
            try:
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:                      # the client gave up (timeout) before the answer
                self.close_connection = True

    return Handler


def _s(d: Decimal) -> str:
    """A trading-API number: a string without exponent or trailing zeros."""
    return format(d.normalize(), "f")


def _f(d: Decimal) -> float:
    return float(d)


def _number(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _error(422, 40010001, f"invalid {name} {value!r}") from None
    if not number.is_finite():
        raise _error(422, 40010001, f"invalid {name} {value!r}")
    return number


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _midnight(when: datetime) -> datetime:
    local = when.astimezone(NEW_YORK).date()
    return datetime(local.year, local.month, local.day, tzinfo=NEW_YORK).astimezone(timezone.utc)


def _bar_json(b: Bar, stamp: datetime) -> dict[str, Any]:
    return {"t": _ts(stamp), "o": _f(b.open), "h": _f(b.high), "l": _f(b.low), "c": _f(b.close), "v": b.volume,
            "n": max(1, b.volume // 100), "vw": _f((b.high + b.low + b.close) / 3)}


def _time_param(text: str | None) -> datetime | None:
    """RFC 3339, a naive ISO time (alpaca-py sends UTC without an offset) or a date (midnight New York)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=NEW_YORK).astimezone(timezone.utc)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _error(422, 40010001, f"invalid time {text!r}") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
