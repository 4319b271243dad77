"""A replay's daily analytics (and the simulated market's minute paths) worked out a day ahead, in a process of its
own (the host's other core).

What the tools and the monitor read of the daily bars (get_technicals, detect_patterns, the monitor's RSI and
patterns, the scan's ranking) is a pure function of the bars completed before the session, and a replay's bar
store holds every one of them before the clock starts (replay/runner.py prepare_history). So while the replay
runs day D, this process works out day D+1's: the scan's ranking and, for the symbols day D+1 can ask about, the
indicator sets the rules engine and the monitor ask for. A symbol is asked about on day D+1 only when it is held
then or is among that day's top candidates, and a position held at D+1's start was held at D's start or entered
on D from D's top candidates (the rules enter nothing else): so those three lists are worked out. The replay tells
this process, as each day starts, which symbols it holds; until it has, the process works up to DAYS_AHEAD days
further ahead on the same rule (held then is within what was held when the replay last said, and the top candidates
of the days since), so a day whose work takes longer than the replay's day before it is still ready in time, and
tops a day up with any held symbol it did not foresee.

The answers come back under MarketData's own cache keys ((symbol, kind, local date, closed?)) and the scan's
((None, "scan", local date, closed?)); MarketData and Scanner take an answer instead of working it out (`take`).
On the simulated market, the same symbols' minute paths of the day (what their quotes and the paper venue's
fills read) come too, and the market takes them the same way.
The same code on the same bars gives the same numbers, bit for bit, so a replay's orders do not depend on
whether an answer came from here. An answer is used only while the replay's bar store has written nothing since
this process started (its `generation`), and what is not here in time (day one, a symbol no list named, an
engine that asks for other indicator sets, a process that died) is worked out by the replay as before.

Run as `python -m replay.prefetch`, this module is that process: it imports what it needs, then reads pickled
frames on stdin (the request, then one (day index, held symbols) per day) and writes one frame of answers per
day on stdout.
"""
from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import sys
from datetime import date
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
CLOSE_SECONDS = 5.0               # how long the process may take to end once the replay is done
MINUTE_PATHS_KEPT = 8             # the process's own LRU of minute paths: each is sent once, never read again
DAYS_AHEAD = 2                    # how many days beyond the next one the process may work out before it is told
# With pandas loaded here: a daily-bar replay alone / with the process, measured on real GOOG bars: 62 days 1.06 s /
# 1.51 s, 125 days 1.96 s / 1.87 s, 1800 days 13.4 s / 9.2 s (a 38-day MSFT replay 0.7 s / 1.0-1.4 s).
WARM_MIN_DAYS = 120
FIRST_DAY_SECONDS = 10.0          # how long the replay waits for the first day's answers before working them out
_LEN = struct.Struct(">I")


def _pandas_loaded() -> bool:
    return "pandas" in sys.modules


def worth_starting(days: int) -> bool:
    """Whether a replay of `days` trading days gains from the process. Always when pandas is not loaded here (the
    process spares this one its import and works out the days while it runs); with pandas loaded already (bar
    files read, backtesting.py beside it), only from WARM_MIN_DAYS on: a shorter replay is over before the
    process, importing and competing for the host's two cores, pays for its start."""
    return not _pandas_loaded() or days >= WARM_MIN_DAYS


def _frame(obj: Any) -> bytes:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(blob)) + blob


async def _read(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; None at the end of the stream."""
    try:
        head = await reader.readexactly(_LEN.size)
        return pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))
    except asyncio.IncompleteReadError:
        return None


def dsn_of(pool) -> str | None:
    """The DSN a pool (asyncpg's, or a LanePool) opens its connections with, for this process to open its own;
    None when it was made otherwise."""
    args = getattr(pool, "_connect_args", None)
    return args[0] if args and isinstance(args[0], str) else None


class Prefetch:
    """The replay's side: starts the process, sends it the request and each day's held symbols, and serves its
    answers (`take`, as the `prefetched` of MarketData, Scanner and the simulated market) while the bar store has
    not written."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._found: dict[tuple, Any] = {}
        self._store = None
        self._generation = None
        self._reader: asyncio.Task | None = None
        self._served: list = []            # the parts taking answers from this (market, scanner, simulated market)
        self._answered = asyncio.Event()   # the first day's answers arrived (or the process ended)
        self.served = 0                    # answers taken instead of worked out
        self.error: str | None = None      # why the process stopped early, when it said

    @classmethod
    async def start(cls, python: str = sys.executable) -> "Prefetch | None":
        """The process, importing from now on (its request comes with `begin`); None when it cannot start."""
        try:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "replay.prefetch", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.warning("daily analytics are worked out in this process: the prefetch process did not start (%s)",
                        exc)
            return None
        return cls(proc)

    def begin(self, *, dsn: str, settings, days: list[date], calendar, market, scanner, store,
              universe=None) -> None:
        """Send the request (the replay's days, the scan's and the indicators' settings, the database) and serve
        `market` and `scanner` from now on; and `universe`, when it is the simulated market, its minute paths."""
        cfg = settings.config
        simulated = universe is not None and hasattr(universe, "session_minutes")
        request = {"dsn": dsn, "dataset": store.dataset, "exchange": cfg.market.exchange, "scan": cfg.scan,
                   "max_position_value": cfg.trading.max_position_value,
                   "rsi": (market.rsi_overbought, market.rsi_oversold),
                   "top": max(cfg.rules.candidates_per_cycle, cfg.rules.watchlist_size),
                   "days": [(d, calendar.session_bounds(d)[0][0]) for d in days],
                   "simulated": (universe.seed, len(universe.instruments())) if simulated else None}
        if not self._send(request):
            return
        self._store, self._generation = store, store.generation
        self._reader = asyncio.create_task(self._collect())
        self._served = [market, scanner] + ([universe] if simulated else [])
        for part in self._served:
            part.prefetched = self

    def feed(self, index: int, day: date, held: Iterable[str]) -> None:
        """Day `index` (`day`) starts holding `held`: the process works out the next day's. What is kept for
        earlier days is dropped (the clock never goes back to them)."""
        self._found = {k: v for k, v in self._found.items() if k[2] >= day}
        self._send((index, sorted(held)))

    def take(self, key: tuple, default: Any) -> Any:
        if self._store is None or self._store.generation != self._generation:
            return default                 # the bar store wrote since: the answers may be of other bars
        blob = self._found.pop(key, None)
        if blob is None:
            return default
        self.served += 1
        return pickle.loads(blob)             # (each answer pickled apart: one never asked for is never unpickled)

    def _send(self, obj: Any) -> bool:
        if self._proc.returncode is not None or self._proc.stdin.is_closing():
            return False
        try:
            self._proc.stdin.write(_frame(obj))
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def first_day(self, seconds: float | None = None) -> None:
        """Wait (at most `seconds`) for the first day's answers: working them out here instead would begin by
        importing pandas (~0.5 s, more than the process takes to send them). Returns at once when the process has
        ended or was never sent its request, and when pandas is loaded here already (a caller that reads bar files
        or runs beside backtesting.py): then the first days are worked out here, sooner than the process, still
        importing, would send them, and it catches up on the days after (a 38-day replay waited 0.5 s of its
        1.25 s here)."""
        if self._reader is None or _pandas_loaded():
            return
        seconds = FIRST_DAY_SECONDS if seconds is None else seconds
        try:
            await asyncio.wait_for(self._answered.wait(), seconds)
        except asyncio.TimeoutError:
            log.warning("the prefetch process sent nothing in %.0f s: the first day is worked out here", seconds)

    async def _collect(self) -> None:
        try:
            while True:
                answer = await _read(self._proc.stdout)
                if answer is None:
                    return
                if isinstance(answer, str):
                    self.error = answer
                    log.warning("the prefetch process stopped: %s", answer)
                    return
                self._found.update(answer)
                self._answered.set()
        finally:
            self._answered.set()

    async def close(self) -> None:
        for part in self._served:
            if part.prefetched is self:   # (the simulated market outlives this run: eval's next engine)
                part.prefetched = None
        proc = self._proc
        if proc.returncode is None:
            try:
                proc.stdin.close()
                await asyncio.wait_for(proc.wait(), CLOSE_SECONDS)
            except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        self._found = {}


# ---------------------------------------------------------------- the process

class _DayClock:
    """The clock of the analytics here: the start of the day being worked out (days are worked out ahead, and a day
    before those again when the replay says what it holds: unlike a simulated clock, this one goes back)."""

    def __init__(self, at) -> None:
        self.at = at

    def now(self):
        return self.at

    def set(self, at) -> None:
        self.at = at


async def _serve() -> int:
    import traceback

    import asyncpg

    from core.calendar import MarketCalendar
    from data.market import MarketData
    from data.scan import rank_at
    from data.store import BarStore
    from engines.rules import ENTRY_INDICATORS
    from brokers.paper.simulated import SimulatedMarket

    import pandas  # noqa: F401  (the scan's frames: imported while the replay prepares its history)

    import data.patterns  # noqa: F401
    import data.technicals  # noqa: F401

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer
    request = await _read(reader)
    if request is None:
        return 0                           # the replay ended (or failed) before asking
    try:
        pool = await asyncpg.create_pool(request["dsn"], min_size=1, max_size=1)
    except Exception as exc:
        out.write(_frame(f"cannot reach the database: {exc}"))
        out.flush()
        return 1
    try:
        calendar = MarketCalendar(request["exchange"])
        store = BarStore(pool, dataset=request["dataset"], exchange=request["exchange"], calendar=calendar)
        days = request["days"]
        clock = _DayClock(days[0][1])
        overbought, oversold = request["rsi"]
        market = MarketData(broker=None, clock=clock, calendar=calendar, rsi_overbought=overbought,
                            rsi_oversold=oversold, daily=store)
        picks: dict[int, list[str]] = {}
        sim = None
        if request["simulated"] is not None:
            seed, size = request["simulated"]
            sim = SimulatedMarket(seed=seed, exchange=request["exchange"], n_symbols=size, calendar=calendar,
                                  minute_cache_size=MINUTE_PATHS_KEPT)

        covered: dict[int, set[str]] = {}          # day index -> the symbols whose answers were sent for it

        async def work(i: int, held: Iterable[str]) -> None:
            """Day i's answers not sent yet: its ranking, and for `held` (the symbols held as day i-1 started, or a
            list that contains them) and days i-1's and i's top candidates, their analytics and minute paths."""
            day, at = days[i]
            clock.set(at)
            answers: dict[tuple, Any] = {}
            if i not in picks:
                ranked = await rank_at(store, request["scan"], request["max_position_value"], at)
                picks[i] = [c.symbol for c in ranked[:request["top"]]]
                answers[(None, "scan", *calendar.session_key(at))] = ranked
            sent = covered.setdefault(i, set())
            for symbol in dict.fromkeys([*held, *picks.get(i - 1, ()), *picks[i]]):
                if symbol in sent:
                    continue
                sent.add(symbol)
                try:
                    await market.technicals(symbol, "1d", ENTRY_INDICATORS)
                    await market.technicals(symbol, "1d", ["rsi14"])
                    await market.patterns(symbol)
                    await market.monitor_indicators(symbol)
                    if sim is not None:
                        key, minutes = sim.session_minutes(symbol, at)
                        answers[key] = minutes
                except Exception:          # the replay works this one out itself (and meets the error there)
                    continue
            answers.update(market.worked_out())
            if answers:
                out.write(_frame({k: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for k, v in answers.items()}))
                out.flush()

        # the latest (day index, held) the replay sent: a day the replay has passed already is not worked out
        latest: list[Any] = [None]
        told = asyncio.Event()

        async def listen() -> None:
            while (message := await _read(reader)) is not None:
                latest[0] = message
                told.set()
            latest[0] = "end"
            told.set()

        listener = asyncio.create_task(listen())
        await work(0, [])
        # Day i's answers are worked out once the replay says what it holds as day i-1 starts; and, before it has,
        # up to DAYS_AHEAD days further ahead than it asks, so that days whose work takes longer than the replay's
        # days before them are still ready in time: held as day i-1 starts is within what was held as day s started
        # (the last the replay told) and the top candidates of days s .. i-2 (the rules enter nothing else). What
        # the replay then says it holds is topped up (symbols not worked out for the day yet).
        started, ahead, held_then = -1, 0, []       # the day the replay said it started, what it held then; the
        while True:                                 # last day worked out
            if not told.is_set() and ahead + 1 < len(days) and ahead < started + 1 + DAYS_AHEAD:
                ahead += 1
                guess = [*held_then, *(s for d in range(max(started, 0), ahead - 1) for s in picks.get(d, ()))]
                await work(ahead, guess)
                await asyncio.sleep(0)         # a message that came meanwhile is read
                continue
            await told.wait()
            told.clear()
            if latest[0] == "end":
                break
            index, held_then = latest[0]
            started = index
            for old in [k for k in covered if k <= index]:
                covered.pop(old)
            for old in [k for k in picks if k < index]:
                picks.pop(old)
            if index + 1 < len(days):
                await work(index + 1, held_then)
                ahead = max(ahead, index + 1)
        listener.cancel()
        return 0
    except Exception:
        out.write(_frame(traceback.format_exc(limit=8)))
        out.flush()
        return 1
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(_serve()))
