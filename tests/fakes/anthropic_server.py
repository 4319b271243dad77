"""A local stand-in for the Anthropic Messages API, at the socket, so tests run the real `anthropic` SDK.

The SDK (2.x, on `httpx2`) cannot be mocked in-process the respx way, so this is a real HTTP server on
127.0.0.1. It answers `POST /v1/messages` (plain JSON, or SSE when the request says `"stream": true`) and
`POST /v1/messages/count_tokens` from a script of turns, checks requests the way the API does where that is
cheap (400 `invalid_request_error` otherwise), simulates prompt caching with deterministic token counts, and
records every request it saw (retries included) for tests to assert on.

A turn is plain data, so a script can also come from a JSON file:
    {"content": [blocks...], "stop_reason": "tool_use"|..., "output_tokens": N}   an assistant reply
    {"error": {"status": 429, "type": "rate_limit_error", "message": ..., "retry_after": 1}}   an injected error
    {"raw": {"status": 200, "body": "...", "headers": {...}}}                       bytes exactly as given
    "some text"                                                                     shorthand for a text reply
or, in-process only, a callable `fn(request_json) -> turn` for adaptive scripts. Build them with
`reply`, `text`, `tool_use`, `error`, `rate_limited`, `overloaded`, `server_error`.

A malformed tool input is just `tool_use("execute_trade", {"qty": "lots"})`: replies are not checked against
the request's tool schemas, exactly so that a test can make the "model" send bad input.

Order of answers: an injected error at the head of the script is returned first (the API rate-limits before it
reads a request); otherwise an invalid request gets its 400 and consumes no turn. Server-side message threads
(`"thread"` in the body, the beta tool runner's default) are refused with the API's `thread_unsupported_request`,
which makes the SDK resend full histories unthreaded. With no turn left (and no `default=`) the answer is a 500
with `x-should-retry: false`, so a short script fails loudly instead of being retried.

In-process:   with FakeAnthropic([reply(text("hi"))]) as fake: AsyncAnthropic(base_url=fake.base_url, ...)
Out of process: python -m tests.fakes.anthropic_server --port 0 --script turns.json
    prints `FAKE_ANTHROPIC_URL=http://127.0.0.1:PORT`, serves until SIGTERM/SIGINT; `GET /_fake/requests`
    returns what it recorded and `POST /_fake/turns` (a JSON list) appends turns.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import re
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping, Union
from urllib.parse import urlsplit

__all__ = [
    "FakeAnthropic", "RecordedRequest", "PromptCache", "count_tokens",
    "reply", "text", "tool_use", "error", "rate_limited", "overloaded", "server_error",
]

Turn = Union[Mapping[str, Any], str, Callable[[dict[str, Any]], Any]]

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
MAX_CACHE_BREAKPOINTS = 4
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# ---------------------------------------------------------------- turn builders


def text(s: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": s}


def tool_use(name: str, input: Mapping[str, Any] | Any, *, id: str | None = None) -> dict[str, Any]:
    """A tool_use content block; `input` is sent as given (a schema mismatch is how to script bad input)."""
    block = {"type": "tool_use", "name": name, "input": copy.deepcopy(input)}
    if id is not None:
        block["id"] = id
    return block


def reply(*blocks: Mapping[str, Any] | str, stop_reason: str | None = None,
          output_tokens: int | None = None) -> dict[str, Any]:
    """An assistant reply; stop_reason defaults to `tool_use` when a block is a tool_use, else `end_turn`."""
    turn: dict[str, Any] = {"content": [text(b) if isinstance(b, str) else dict(b) for b in blocks]}
    if stop_reason is not None:
        turn["stop_reason"] = stop_reason
    if output_tokens is not None:
        turn["output_tokens"] = output_tokens
    return turn


def error(status: int, message: str | None = None, *, type: str | None = None, retry_after: float | None = None,
          retry_after_ms: float | None = None, should_retry: bool | None = None,
          details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An injected API error with the real body shape `{"type":"error","error":{"type","message"}}`;
    `details` (e.g. `{"error_code": "enforced_spend_limit_reached"}`) picks the SDK's finer error class."""
    spec: dict[str, Any] = {"status": status, "type": type or ERROR_TYPES.get(status, "api_error"),
                            "message": message or f"injected {status}"}
    if retry_after is not None:
        spec["retry_after"] = retry_after
    if retry_after_ms is not None:
        spec["retry_after_ms"] = retry_after_ms
    if should_retry is not None:
        spec["should_retry"] = should_retry
    if details is not None:
        spec["details"] = dict(details)
    return {"error": spec}


def rate_limited(retry_after: float | None = None, **kw: Any) -> dict[str, Any]:
    return error(429, "Number of request tokens has exceeded your per-minute rate limit", retry_after=retry_after,
                 **kw)


def overloaded(retry_after: float | None = None, **kw: Any) -> dict[str, Any]:
    return error(529, "Overloaded", retry_after=retry_after, **kw)


def server_error(retry_after: float | None = None, **kw: Any) -> dict[str, Any]:
    return error(500, "Internal server error", retry_after=retry_after, **kw)


# ---------------------------------------------------------------- tokens and prompt caching


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def count_tokens(obj: Any) -> int:
    """Deterministic stand-in for the tokenizer: a quarter of the canonical JSON length, rounded up, at least 1."""
    return max(1, math.ceil(len(_canonical(obj)) / 4))


class _BadRequest(Exception):
    pass


@dataclass(frozen=True)
class _Unit:
    """One cacheable block of the prompt in the API's prefix order, with its breakpoint TTL if it has one."""
    canonical: str
    tokens: int
    ttl: str | None


def _cache_ttl(block: Mapping[str, Any], where: str) -> str | None:
    cc = block.get("cache_control")
    if cc is None:
        return None
    if not isinstance(cc, Mapping) or cc.get("type") != "ephemeral":
        raise _BadRequest(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = cc.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise _BadRequest(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return ttl


def _strip(block: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _prompt_units(body: Mapping[str, Any]) -> list[_Unit]:
    """tools -> system -> messages, one unit per block; moving a breakpoint never changes the content hashed."""
    units: list[_Unit] = []

    def add(obj: Any, ttl: str | None) -> None:
        units.append(_Unit(_canonical(obj), count_tokens(obj), ttl))

    for i, tool in enumerate(body.get("tools") or []):
        add({"tool": _strip(tool)}, _cache_ttl(tool, f"tools.{i}"))
    system = body.get("system")
    if isinstance(system, str):
        add({"system": text(system)}, None)
    elif isinstance(system, list):
        for i, block in enumerate(system):
            add({"system": _strip(block)}, _cache_ttl(block, f"system.{i}"))
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        blocks = [text(content)] if isinstance(content, str) else content
        for j, block in enumerate(blocks):
            add({"role": message.get("role"), "block": _strip(block)}, _cache_ttl(block, f"messages.{i}.content.{j}"))
    explicit = sum(1 for u in units if u.ttl)
    top = body.get("cache_control")
    if top is not None:
        # Top-level cache_control marks the last cacheable block, and takes one of the four breakpoint slots.
        ttl = _cache_ttl(body, "")
        explicit += 1
        if units and units[-1].ttl is None:
            units[-1] = _Unit(units[-1].canonical, units[-1].tokens, ttl)
    if explicit > MAX_CACHE_BREAKPOINTS:
        raise _BadRequest(f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
                          f"Found {explicit}.")
    return units


class PromptCache:
    """The API's prompt cache, simulated: entries are prefix hashes written at breakpoints, kept for their TTL.

    A lookup at each breakpoint also checks up to `lookback` block boundaries before it (as the API does), the
    longest hit is read, everything from there to the last breakpoint is written, the rest is plain input.
    Prefixes shorter than `min_tokens` are never cached. Entries are per model.
    """

    def __init__(self, *, min_tokens: int = 1024, lookback: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_tokens = min_tokens
        self.lookback = lookback
        self.clock = clock
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (expires_at, ttl_seconds)

    def clear(self) -> None:
        self._entries.clear()

    def account(self, model: str, units: list[_Unit]) -> dict[str, Any]:
        now = self.clock()
        keys, cum = [], []
        h, total = hashlib.sha256(model.encode()), 0
        for u in units:
            h.update(u.canonical.encode())
            total += u.tokens
            keys.append(h.hexdigest())
            cum.append(total)
        breakpoints = [i for i, u in enumerate(units) if u.ttl and cum[i] >= self.min_tokens]

        def live(i: int) -> bool:
            entry = self._entries.get(keys[i])
            return entry is not None and entry[0] > now

        candidates = {j for b in breakpoints for j in range(max(0, b - self.lookback + 1), b + 1)}
        hit = max((j for j in candidates if live(j)), default=-1)
        if hit >= 0:
            self._entries[keys[hit]] = (now + self._entries[keys[hit]][1], self._entries[keys[hit]][1])
        read = cum[hit] if hit >= 0 else 0
        written = {"5m": 0, "1h": 0}
        start = read
        for b in breakpoints:
            if b <= hit:
                continue
            ttl = units[b].ttl or "5m"
            written[ttl] += cum[b] - start
            start = cum[b]
            self._entries[keys[b]] = (now + TTL_SECONDS[ttl], TTL_SECONDS[ttl])
        creation = written["5m"] + written["1h"]
        return {
            "input_tokens": total - read - creation,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": written["5m"],
                               "ephemeral_1h_input_tokens": written["1h"]},
        }


# ---------------------------------------------------------------- request validation


def _validate(body: Any, known_models: frozenset[str] | None, strict_alternation: bool) -> tuple[int, str] | None:
    """The API's cheap checks; returns (status, message) for the first failure, else None."""
    if not isinstance(body, dict):
        return 400, "Request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return 400, "model: Field required"
    if known_models is not None and model not in known_models:
        return 404, f"model: {model}"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return 400, "max_tokens: Field required"
    if max_tokens < 1:
        return 400, "max_tokens: Input should be greater than or equal to 1"
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 1):
        return 400, "temperature: Input should be less than or equal to 1"

    tools = body.get("tools") or []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return 400, f"tools.{i}: Input should be an object"
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return 400, f"tools.{i}.name: String should match pattern '{TOOL_NAME.pattern}'"
        if name in names:
            return 400, "tools: Tool names must be unique."
        names.add(name)
        if "type" not in tool or tool.get("type") == "custom":  # server tools (web_search...) have no input_schema
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return 400, f"tools.{i}.input_schema.type: Input should be 'object'"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in names:
        return 400, f"tool_choice.name: Tool '{choice.get('name')}' not found in the provided tools"

    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in system):
            return 400, "system: Input should be a valid string or a list of text blocks"

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "messages: at least one message is required"
    uses_tools = False
    previous_tool_ids: list[str] = []
    seen_tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return 400, f"messages.{i}: Input should be an object"
        role = message.get("role")
        if role not in ("user", "assistant"):
            return 400, f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return 400, 'messages: first message must use the "user" role'
        if strict_alternation and i > 0 and messages[i - 1].get("role") == role:
            return 400, (f'messages: roles must alternate between "user" and "assistant", '
                         f'but found multiple "{role}" roles in a row')
        content = message.get("content")
        if isinstance(content, str):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                return 400, f"messages.{i}.content: text content blocks must be non-empty"
            blocks: list[Any] = []
        elif isinstance(content, list):
            if not content:
                return 400, f"messages.{i}.content: all messages must have non-empty content"
            blocks = content
        else:
            return 400, f"messages.{i}.content: Input should be a valid string or list"

        tool_ids: list[str] = []
        answered: set[str] = set()
        for j, block in enumerate(blocks):
            where = f"messages.{i}.content.{j}"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                return 400, f"{where}.type: Field required"
            kind = block["type"]
            if kind == "text" and not isinstance(block.get("text"), str):
                return 400, f"{where}.text: Field required"
            if kind == "text" and not block["text"]:
                return 400, f"{where}.text: text content blocks must be non-empty"
            if kind == "tool_use":
                uses_tools = True
                if role != "assistant":
                    return 400, f"{where}: tool_use blocks can only be in assistant messages"
                tid = block.get("id")
                if not isinstance(tid, str) or not tid:
                    return 400, f"{where}.id: Field required"
                if tid in seen_tool_ids:
                    return 400, f"{where}: `tool_use` ids must be unique: {tid}"
                if not isinstance(block.get("input"), dict):
                    return 400, f"{where}.input: Input should be a valid dictionary"
                seen_tool_ids.add(tid)
                tool_ids.append(tid)
            if kind == "tool_result":
                uses_tools = True
                if role != "user":
                    return 400, f"{where}: tool_result blocks can only be in user messages"
                tid = block.get("tool_use_id")
                if tid not in previous_tool_ids:
                    return 400, (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {tid}. Each "
                                 "`tool_result` block must have a corresponding `tool_use` block in the previous "
                                 "message.")
                if tid in answered:
                    return 400, f"{where}: each `tool_use` block must have a single `tool_result`: {tid}"
                answered.add(tid)
        if previous_tool_ids:
            missing = [t for t in previous_tool_ids if t not in answered]
            if missing:
                return 400, (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                             f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                             "`tool_result` block in the next message.")
        previous_tool_ids = tool_ids if role == "assistant" else []
    if uses_tools and not tools:
        return 400, "Requests which include `tool_use` or `tool_result` blocks must define tools."
    return None


# ---------------------------------------------------------------- the server


@dataclass
class RecordedRequest:
    """One HTTP request as the server saw it, and what it answered."""
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    status: int
    response: Any  # parsed JSON body, or the SSE text for a stream
    at: float  # time.monotonic() when it arrived

    @property
    def retry_count(self) -> int | None:
        value = self.headers.get("x-stainless-retry-count")
        return int(value) if value is not None else None


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str]
    recorded: Any


def _json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), {"content-type": "application/json", **(headers or {})},
                     payload)


def _error_response(status: int, kind: str, message: str, headers: Mapping[str, str] | None = None,
                    details: Mapping[str, Any] | None = None) -> _Response:
    err: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        err["details"] = dict(details)
    return _json_response(status, {"type": "error", "error": err}, headers)


def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


class FakeAnthropic:
    """The fake API on 127.0.0.1 in a background thread; a context manager (sync or async)."""

    def __init__(self, script: Iterable[Turn] = (), *, default: Turn | None = None, port: int = 0,
                 min_cache_tokens: int = 1024, cache_lookback: int = 20, models: Iterable[str] | None = None,
                 api_key: str | None = None, strict_alternation: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`default` answers once the script is used up (else a non-retryable 500 says the script ran out);
        `models`, if given, is the only set of ids accepted (others get 404 like the API);
        `api_key`, if given, is the only key accepted (others get 401)."""
        self._turns: deque[Turn] = deque(script)
        self.default = default
        self.cache = PromptCache(min_tokens=min_cache_tokens, lookback=cache_lookback, clock=clock)
        self.known_models = frozenset(models) if models is not None else None
        self.api_key = api_key
        self.strict_alternation = strict_alternation
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeAnthropic:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> FakeAnthropic:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- what tests use

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeAnthropic is not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """The `POST /v1/messages` attempts only (retries included)."""
        return [r for r in self.requests if r.path == "/v1/messages"]

    @property
    def remaining(self) -> int:
        """Scripted turns not yet consumed."""
        with self._lock:
            return len(self._turns)

    def add_turns(self, *turns: Turn) -> None:
        with self._lock:
            self._turns.extend(turns)

    # -- request handling (called from handler threads)

    def _handle(self, method: str, path: str, query: str, headers: dict[str, str], raw: bytes) -> _Response:
        body: Any = None
        try:
            body = json.loads(raw) if raw else None
            parse_error = None
        except ValueError as exc:
            parse_error = f"Request body is not valid JSON: {exc}"
        with self._lock:
            response = self._route(method, path, headers, body, parse_error)
            self._requests.append(RecordedRequest(method, path, query, headers, body, response.status,
                                                  response.recorded, time.monotonic()))
        return response

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any,
               parse_error: str | None) -> _Response:
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            return _error_response(404, "not_found_error", f"Not found: {method} {path}")
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key or (self.api_key is not None and key != self.api_key):
            return _error_response(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in headers:
            return _error_response(400, "invalid_request_error", "anthropic-version: header is required")
        if parse_error is not None:
            return _error_response(400, "invalid_request_error", parse_error)

        if path == "/v1/messages/count_tokens":
            problem = _validate({**(body or {}), "max_tokens": 1}, self.known_models, self.strict_alternation) \
                if isinstance(body, dict) else (400, "Request body must be a JSON object")
            if problem:
                return _error_response(problem[0], ERROR_TYPES[problem[0]], problem[1])
            return _json_response(200, {"input_tokens": sum(u.tokens for u in self._units_or_empty(body))})

        # An injected error stands for the API refusing before it reads the request (rate limit, overload).
        if self._turns and isinstance(self._turns[0], Mapping) and ("error" in self._turns[0]
                                                                   or "raw" in self._turns[0]):
            return self._render(self._turns.popleft(), body)
        if isinstance(body, dict) and body.get("thread") not in (None, False):
            # Server-side message threads (the beta tool runner's default) are not simulated. This is the API's own
            # refusal for a request it cannot thread; the SDK answers it by resending the full history unthreaded.
            return _error_response(400, "invalid_request_error", "thread: this server cannot thread requests",
                                   details={"error_code": "thread_unsupported_request", "unsupported": ["thread"]})
        problem = _validate(body, self.known_models, self.strict_alternation)
        if problem is None:
            try:
                units = _prompt_units(body)
            except _BadRequest as exc:
                problem = (400, str(exc))
        if problem is not None:
            # An invalid request never reaches the model, so it consumes no turn.
            return _error_response(problem[0], ERROR_TYPES[problem[0]], problem[1])
        if self._turns:
            turn = self._turns.popleft()
        elif self.default is not None:
            turn = self.default
        else:
            return _error_response(500, "api_error", "FakeAnthropic: the script has no turn left for this request",
                                   {"x-should-retry": "false"})
        if callable(turn):
            turn = turn(copy.deepcopy(body))
        return self._render(turn, body, units)

    def _units_or_empty(self, body: Mapping[str, Any]) -> list[_Unit]:
        try:
            return _prompt_units(body)
        except _BadRequest:
            return []

    def _render(self, turn: Any, body: Any, units: list[_Unit] | None = None) -> _Response:
        if isinstance(turn, str):
            turn = reply(text(turn))
        if not isinstance(turn, Mapping):
            raise TypeError(f"a turn must be a dict, a str or a callable returning one, got {turn!r}")
        if "raw" in turn:
            raw = turn["raw"]
            payload = raw.get("body", "")
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            return _Response(int(raw.get("status", 200)), data, dict(raw.get("headers") or {}), payload)
        if "error" in turn:
            spec = turn["error"]
            status = int(spec.get("status", 500))
            extra: dict[str, str] = {}
            if spec.get("retry_after") is not None:
                extra["retry-after"] = _number(spec["retry_after"])
            if spec.get("retry_after_ms") is not None:
                extra["retry-after-ms"] = _number(spec["retry_after_ms"])
            if spec.get("should_retry") is not None:
                extra["x-should-retry"] = "true" if spec["should_retry"] else "false"
            return _error_response(status, spec.get("type") or ERROR_TYPES.get(status, "api_error"),
                                   spec.get("message") or f"injected {status}", extra, spec.get("details"))
        if units is None:
            units = _prompt_units(body)
        return self._message(turn, body, units)

    def _message(self, turn: Mapping[str, Any], body: Mapping[str, Any], units: list[_Unit]) -> _Response:
        n = next(self._ids)
        content = []
        for k, block in enumerate(turn.get("content") or []):
            block = copy.deepcopy(dict(block))
            if block.get("type") == "tool_use":
                block.setdefault("id", f"toolu_fake{n:06d}{k:03d}")
                block.setdefault("input", {})
            content.append(block)
        stop_reason = turn.get("stop_reason") or (
            "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn")
        usage = self.cache.account(body["model"], units)
        output_tokens = turn.get("output_tokens") or sum(count_tokens(b) for b in content) or 1
        usage = {**usage, "output_tokens": output_tokens, "service_tier": "standard"}
        message = {"id": f"msg_fake{n:08d}", "type": "message", "role": "assistant", "model": body["model"],
                   "content": content, "stop_reason": stop_reason, "stop_sequence": turn.get("stop_sequence"),
                   "usage": usage}
        headers = {"request-id": f"req_fake{n:08d}"}
        if not body.get("stream"):
            return _json_response(200, message, headers)
        return self._stream(message, headers)

    @staticmethod
    def _stream(message: dict[str, Any], headers: dict[str, str]) -> _Response:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**usage, "output_tokens": 1}}
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
        for i, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                events.append({"type": "content_block_start", "index": i,
                               "content_block": {**block, "input": {}}})
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
            elif block["type"] == "text":
                events.append({"type": "content_block_start", "index": i,
                               "content_block": {**block, "text": ""}})
                events.append({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": block["text"]}})
            else:
                events.append({"type": "content_block_start", "index": i, "content_block": block})
            events.append({"type": "content_block_stop", "index": i})
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                       "usage": {"output_tokens": usage["output_tokens"]}})
        events.append({"type": "message_stop"})
        data = _sse(events)
        return _Response(200, data, {"content-type": "text/event-stream", "cache-control": "no-cache", **headers},
                         data.decode())

    def _control(self, method: str, path: str, body: Any) -> _Response:
        """Endpoints for a test driving this server from another process."""
        if method == "GET" and path == "/_fake/requests":
            return _json_response(200, [asdict(r) for r in self._requests])
        if method == "POST" and path == "/_fake/turns" and isinstance(body, list):
            self._turns.extend(body)
            return _json_response(200, {"remaining": len(self._turns)})
        if method == "GET" and path == "/_fake/health":
            return _json_response(200, {"ok": True, "remaining": len(self._turns)})
        return _error_response(404, "not_found_error", f"Not found: {method} {path}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    timeout = 10  # an idle keep-alive connection lets its thread go after this
    fake: FakeAnthropic

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.fake._handle(self.command, parts.path, parts.query, headers, raw)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--script", help="JSON file holding a list of turns")
    parser.add_argument("--min-cache-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    script: list[Any] = []
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            script = json.load(f)
        if not isinstance(script, list):
            parser.error("--script must hold a JSON list of turns")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeAnthropic(script, port=args.port, min_cache_tokens=args.min_cache_tokens) as fake:
        print(f"FAKE_ANTHROPIC_URL={fake.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
