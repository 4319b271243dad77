"""A fake of Alpaca's real-time stock data stream (wss://stream.data.alpaca.markets/v2/{feed}) at the socket, so
tests run alpaca-py's own StockDataStream against it. What it speaks is Alpaca's protocol as documented
(docs.alpaca.markets/docs/streaming-market-data, .../real-time-stock-pricing-data, .../about-market-data-api):

- On connect: [{"T":"success","msg":"connected"}]. Frames are msgpack when the client sent
  `Content-Type: application/msgpack` (alpaca-py does), JSON text otherwise; every frame is an array of messages,
  control messages alone in theirs.
- {"action":"auth","key","secret"} within 10 s -> [{"T":"success","msg":"authenticated"}]; wrong keys -> error 402
  "auth failed"; none in time -> 404 "auth timeout" and the socket closes; a second authenticated connection of the
  same key -> 406 "connection limit exceeded" and that socket closes; auth twice -> 403 "already authenticated".
- {"action":"subscribe"|"unsubscribe", "trades": [...], "quotes": [...], "bars": [...], ...} adds to / subtracts
  from the session's subscriptions and is answered with the whole list ({"T":"subscription", "trades", "quotes",
  "bars", "updatedBars", "dailyBars", "statuses", "lulds", "corrections", "cancelErrors"}; corrections and
  cancelErrors follow trades). Before auth -> 401 "not authenticated"; a malformed message or symbol -> 400
  "invalid syntax"; more distinct symbols on trades and quotes than the plan allows (`symbol_limit`: the Basic
  plan's 30; None = Algo Trader Plus, unlimited) -> 405 "symbol limit exceeded" and the subscriptions stay as they
  were.
- Data: a quote {"T":"q","S","bx","bp","bs","ax","ap","as","c","z","t"} and a trade {"T":"t","S","i","x","p","s",
  "c","z","t"} ("t" a msgpack timestamp, or RFC 3339 in JSON) for subscribed symbols, priced by the feed at the
  clock's now: at once when the feed announces a move (`on_move`, a MovableMarket listener: a move is a print at
  the new price), and every `interval` seconds (a quote each time, a trade when the feed's session volume grew; None
  = only on moves). A trade's size is the feed's volume traded since the last one sent (at least 1 on a move).

Test controls: `stall()` keeps every socket open and sends nothing at all (the websocket library still answers
pings, as a mute server's would) until `resume()`; `drop()` aborts every connection (no close frame);
`subscriptions()`, `errors_sent` and `connections` show what the clients did.

Not like Alpaca: only trades and quotes carry data (other channels are accepted and listed, never fed); "*" is
refused on a plan with a symbol limit; header authentication is not offered.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from core.instruments import Quote

CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
LIMITED = ("trades", "quotes")              # the channels the plan's symbol limit counts
FEEDS = ("iex", "sip", "test")
AUTH_SECONDS = 10.0
_SYMBOL = re.compile(r"^(\*|[A-Z][A-Z0-9.]{0,13})$")


@dataclass(eq=False)
class _Session:
    ws: ServerConnection
    binary: bool
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    key: str | None = None                 # set once authenticated
    subs: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})
    volume: dict[str, int] = field(default_factory=dict)       # feed volume at the last trade sent, per symbol


class FakeAlpacaStream:
    def __init__(self, *, market: Any, clock: Any, api_key: str, secret_key: str, symbol_limit: int | None = 30,
                 interval: float | None = 1.0) -> None:
        self.market, self.clock = market, clock
        self.api_key, self.secret_key = api_key, secret_key
        self.symbol_limit = symbol_limit
        self.interval = interval
        self.errors_sent: list[tuple[int, str]] = []
        self.errors: list[BaseException] = []          # unexpected exceptions inside the fake (a test bug)
        self._stalled = False
        self._sessions: set[_Session] = set()
        self._trade_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ticker: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle (any thread but the fake's loop)
    def start(self) -> "FakeAlpacaStream":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-alpaca-stream", daemon=True)
        self._thread.start()
        self._call(self._startup())
        return self

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, feed: str = "iex") -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}/v2/{feed}"

    async def _startup(self) -> None:
        self._server = await serve(self._serve, "127.0.0.1", 0, process_request=self._check_path)
        self._ticker = asyncio.create_task(self._tick())

    async def _shutdown(self) -> None:
        self._ticker.cancel()
        self._server.close()
        await self._server.wait_closed()

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------ test controls and observation (any thread)
    def stall(self) -> None:
        """From now on nothing is sent on any socket (frames not yet written are dropped) until `resume`."""
        self._call(self._set_stalled(True))

    def resume(self) -> None:
        self._call(self._set_stalled(False))

    def drop(self) -> None:
        """Abort every connection: the client sees the socket die without a close frame."""
        self._call(self._drop())

    def subscriptions(self) -> list[dict[str, set[str]]]:
        """The subscriptions of each authenticated connection."""
        return self._call(self._subscriptions())

    @property
    def connections(self) -> int:
        return sum(1 for s in list(self._sessions) if s.key is not None)

    def on_move(self, symbol: str, quote: Quote) -> None:
        """MovableMarket's listener (the mover's thread): the move prints now; push it to every subscriber."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._push_symbol, symbol, True)

    async def _set_stalled(self, stalled: bool) -> None:
        self._stalled = stalled
        if stalled:
            for s in self._sessions:
                while not s.outbox.empty():
                    s.outbox.get_nowait()

    async def _drop(self) -> None:
        for s in list(self._sessions):
            s.ws.transport.abort()

    async def _subscriptions(self) -> list[dict[str, set[str]]]:
        return [{c: set(v) for c, v in s.subs.items()} for s in self._sessions if s.key is not None]

    # ------------------------------------------------------------ one connection (the fake's loop)
    def _check_path(self, ws: ServerConnection, request: Any) -> Response | None:
        parts = request.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] != "v2" or parts[1] not in FEEDS:
            return ws.respond(404, "not found\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        content_type = ws.request.headers.get("Content-Type", "")
        session = _Session(ws, binary=content_type.startswith("application/msgpack"))
        self._sessions.add(session)
        sender = asyncio.create_task(self._send_loop(session))
        try:
            self._send(session, {"T": "success", "msg": "connected"})
            try:
                async with asyncio.timeout(AUTH_SECONDS):
                    while session.key is None:
                        await self._handle(session, await ws.recv())
            except TimeoutError:
                await self._fail(session, 404, "auth timeout")
                return
            async for raw in ws:
                await self._handle(session, raw)
        except ConnectionClosed:
            pass
        except Exception as exc:                            # a bug in the fake: say so loudly
            self.errors.append(exc)
        finally:
            self._sessions.discard(session)
            sender.cancel()

    async def _handle(self, session: _Session, raw: str | bytes) -> None:
        try:
            msg = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        except (ValueError, msgpack.UnpackException):
            msg = None
        action = msg.get("action") if isinstance(msg, dict) else None
        if action == "auth":
            await self._auth(session, msg)
        elif action in ("subscribe", "unsubscribe"):
            self._subscribe(session, msg, action == "subscribe")
        else:
            self._error(session, 400, "invalid syntax")

    async def _auth(self, session: _Session, msg: dict[str, Any]) -> None:
        if session.key is not None:
            self._error(session, 403, "already authenticated")
        elif msg.get("key") != self.api_key or msg.get("secret") != self.secret_key:
            self._error(session, 402, "auth failed")
        elif any(s.key == self.api_key for s in self._sessions if s is not session):
            await self._fail(session, 406, "connection limit exceeded")
        else:
            session.key = self.api_key
            self._send(session, {"T": "success", "msg": "authenticated"})

    def _subscribe(self, session: _Session, msg: dict[str, Any], add: bool) -> None:
        if session.key is None:
            self._error(session, 401, "not authenticated")
            return
        asked: dict[str, set[str]] = {}
        for channel in CHANNELS:
            symbols = msg.get(channel)
            if symbols is None:
                continue
            if not isinstance(symbols, list) or not all(isinstance(s, str) and _SYMBOL.match(s) for s in symbols):
                self._error(session, 400, "invalid syntax")
                return
            asked[channel] = set(symbols)
        after = {c: (v | asked.get(c, set())) if add else (v - asked.get(c, set())) for c, v in session.subs.items()}
        limited = set().union(*(after[c] for c in LIMITED))
        if self.symbol_limit is not None and ("*" in limited or len(limited) > self.symbol_limit):
            self._error(session, 405, "symbol limit exceeded")         # the subscriptions stay as they were
            return
        for symbol in set().union(*asked.values()) - set().union(*session.subs.values()):
            session.volume[symbol] = self._volume(symbol)
        session.subs = after
        trades = sorted(after["trades"])
        self._send(session, {"T": "subscription", **{c: sorted(v) for c, v in after.items()},
                             "corrections": trades, "cancelErrors": trades})

    def _error(self, session: _Session, code: int, text: str) -> None:
        self.errors_sent.append((code, text))
        self._send(session, {"T": "error", "code": code, "msg": text})

    async def _fail(self, session: _Session, code: int, text: str) -> None:
        """An error, then the server closes the socket."""
        self._error(session, code, text)
        await asyncio.sleep(0.05)                 # let the sender write it
        await session.ws.close()

    # ------------------------------------------------------------ sending
    def _send(self, session: _Session, *messages: dict[str, Any]) -> None:
        if not self._stalled and messages:
            session.outbox.put_nowait(list(messages))

    async def _send_loop(self, session: _Session) -> None:
        while True:
            batch = await session.outbox.get()
            if self._stalled:
                continue
            try:
                await session.ws.send(msgpack.packb(batch, datetime=False, default=_msgpack_default)
                                      if session.binary else json.dumps(batch, default=_json_default))
            except ConnectionClosed:
                return

    def _push_symbol(self, symbol: str, moved: bool) -> None:
        for session in list(self._sessions):
            if session.key is None:
                continue
            out = self._data(session, symbol, moved)
            if out:
                self._send(session, *out)

    def _data(self, session: _Session, symbol: str, traded: bool) -> list[dict[str, Any]]:
        """The quote (and the trade, when one printed) of `symbol` for this session's subscriptions."""
        wants_q, wants_t = symbol in session.subs["quotes"], symbol in session.subs["trades"]
        if not (wants_q or wants_t):
            return []
        try:
            q = self.market.quote(symbol, self.clock.now())
        except KeyError:                         # a symbol the feed does not trade: nothing ever prints
            return []
        out = []
        if wants_q:
            out.append({"T": "q", "S": symbol, "bx": "V", "bp": float(q.bid), "bs": 1, "ax": "V", "ap": float(q.ask),
                        "as": 1, "c": ["R"], "z": "A", "t": q.timestamp})
        size = q.volume - session.volume.get(symbol, q.volume)
        if wants_t and (size > 0 or traded):
            self._trade_id += 1
            session.volume[symbol] = q.volume
            out.append({"T": "t", "S": symbol, "i": self._trade_id, "x": "V", "p": float(q.last),
                        "s": max(size, 1), "c": ["@"], "z": "A", "t": q.timestamp})
        return out

    def _volume(self, symbol: str) -> int:
        try:
            return self.market.quote(symbol, self.clock.now()).volume
        except KeyError:
            return 0

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval if self.interval is not None else 0.05)
            if self.interval is None or self._stalled:
                continue
            try:
                for session in list(self._sessions):
                    if session.key is None:
                        continue
                    out = [m for symbol in sorted(session.subs["quotes"] | session.subs["trades"])
                           for m in self._data(session, symbol, False)]
                    if out:
                        self._send(session, *out)
            except Exception as exc:                   # a bug in the fake: say so loudly
                self.errors.append(exc)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return msgpack.Timestamp.from_datetime(obj.astimezone(timezone.utc))
    if isinstance(obj, Decimal):
        return float(obj)
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(obj).__name__}")
