"""The simulated market: the default data source for people with no broker account.

It behaves like an exchange, not a random toy: real sessions (HKEX lunch break, holidays, half days), board
lots, the tick table, volatility that clusters, trends that come and go, overnight gaps and news jumps, a
U-shaped intraday volume curve — and it is a pure function of (seed, symbol, time). Two processes that ask
for the same symbol at the same instant get the same price, with no shared state and no dependence on call
order or on which other symbols exist. That is what lets the agent, the position monitor and a replay agree.

How a price is made is `price_paths.py`'s (per-symbol traits, a daily path with clustered volatility, a market
factor, trend regimes and jumps, and a minute path per session that aggregates exactly to the day); this module
keeps what it computed (the daily path of the whole universe, whole blocks at a time; an LRU of session minute
paths) and answers the market's questions from it. Every price is put on the exchange tick grid (`tick_grid.py`:
integers in units of 0.0001 internally; `Decimal` outside).
A quote at t is the close of the last minute completed by t (bid/ask one tick either side); at lunch it is the
morning close, overnight (and in a session's first minute) the previous close.

"Same numbers everywhere" holds for processes on the same numpy and exchange_calendars versions: the random
streams are numpy's, and the trading days come from the calendar. Prices before EPOCH do not exist (ValueError).
Every symbol trades every session: there are no listings, delistings or halts in this market.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from brokers.paper.price_paths import (BLOCK, EPOCH, NS_MIN, Daily, Minutes, daily_rows, display_name,
                                       market_factor, minute_path, symbol_names, traits)
from brokers.paper.tick_grid import UNITS, TickGrid, price, touch
from core import array_cache
from core.calendar import MarketCalendar, exchange_code, from_ns, to_ns
from core.errors import UnknownSymbol
from core.instruments import DAILY_FIELDS, Bar, Instrument, Quote, Timeframe
from core.ticks import TickScheme

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EPOCH", "SimulatedMarket"]

_DAILY_FIELDS = ("open", "high", "low", "close", "lots", "sigma_in")
_DAILY_DTYPES = {"open": np.dtype(np.int32), "high": np.dtype(np.int32), "low": np.dtype(np.int32),
                 "close": np.dtype(np.int32), "lots": np.dtype(np.int64), "sigma_in": np.dtype(np.float32)}
_PATH_SOURCES = tuple(Path(__file__).resolve().parent / f for f in ("price_paths.py", "tick_grid.py", "simulated.py"))
_CHUNK = 24                      # symbols computed together (bounds transient memory)
_TIMEFRAME_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
_MARKETS = {  # exchange code -> currency, tick scheme, minimum price
    "XHKG": ("HKD", "hkex", Decimal("0.01")),
    "XNYS": ("USD", "us", Decimal("0.01")),
}


# ---------------------------------------------------------------- the market

class SimulatedMarket:
    """A deterministic simulated exchange; implements `data.source.MarketDataSource`."""

    def __init__(self, seed: int, exchange: str = "HKEX", n_symbols: int = 240,
                 calendar: MarketCalendar | None = None, *, minute_cache_size: int = 2048) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be positive, got {n_symbols}")
        code = exchange_code(exchange)
        self.calendar = calendar or MarketCalendar(exchange)
        if self.calendar.code != code:
            raise ValueError(f"calendar {self.calendar.code} does not match exchange {exchange} ({code})")
        self.seed = seed
        self._quote_minute: int | None = None     # quote(): answers for the current minute, by symbol
        self._quotes: dict[str, Quote] = {}
        self._quote_where: tuple = (-1, 0, None)   # quote(): where the current minute lies (_where)
        self._where_starts: tuple = (None, None)   # _where(): (session, its minute starts)
        self._starts: dict[int, datetime] = {}      # session open instants, by calendar row
        self.exchange = exchange.upper()
        self._code = code
        currency, scheme, min_price = _MARKETS[code]
        self._scheme: TickScheme = scheme  # type: ignore[assignment]
        self._grid = TickGrid(self._scheme, min_price)
        symbols = symbol_names(code, n_symbols)
        self._traits = [traits(seed, s, code) for s in symbols]
        self._instruments = [Instrument(symbol=s, exchange=self.exchange, currency=currency, lot_size=tr.lot,
                                        name=display_name(i), tick_scheme=self._scheme)
                             for i, (s, tr) in enumerate(zip(symbols, self._traits))]
        self._row = {s: i for i, s in enumerate(symbols)}

        table = self.calendar.table
        first = int(np.searchsorted(table.dates, np.datetime64(EPOCH, "D")))
        if first == 0 and table.dates[0] > np.datetime64(EPOCH, "D"):
            raise ValueError(f"the calendar must start on or before {EPOCH} (the simulated market's epoch)")
        self._first = first                       # calendar index of the first simulated session
        self._n_sessions = len(table.dates) - first
        self._daily: Daily | None = None
        self._lock = threading.RLock()
        self._minutes: OrderedDict[tuple[int, int], Minutes] = OrderedDict()
        self._minute_cache_size = minute_cache_size
        # minute paths worked out ahead by another process (replay/prefetch.py): `take(key, default)`, keys as
        # session_minutes gives them
        self.prefetched = None

    # ------------------------------------------------------------ universe

    def instruments(self) -> list[Instrument]:
        return list(self._instruments)

    def instrument(self, symbol: str) -> Instrument:
        return self._instruments[self._index(symbol)]

    def _index(self, symbol: str) -> int:
        try:
            return self._row[symbol]
        except KeyError:
            first, last = self._instruments[0].symbol, self._instruments[-1].symbol
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the simulated {self.exchange} market (seed "
                                f"{self.seed}) lists {len(self._instruments)} symbols, {first}..{last}") from None

    # ------------------------------------------------------------ daily path

    def _ensure(self, j: int) -> Daily:
        """Daily bars computed at least through simulated session `j` (whole blocks, whole universe)."""
        if j >= self._n_sessions:
            raise ValueError(f"{self.calendar.code} calendar loaded here ends {self.calendar.last_day}; "
                             f"the simulated market cannot go past it")
        daily = self._daily
        if daily is not None and j < daily.close.shape[1]:
            return daily
        with self._lock:
            daily = self._daily
            if daily is None or j >= daily.close.shape[1]:
                self._daily = daily = self._compute(j)
        return daily

    def _compute(self, j: int) -> Daily:
        """The whole universe's daily bars through session `j`: from the disk cache when this code and numpy made
        them before (core/array_cache.py; ~2 s of CPU saved in every process that trades on the paper venue),
        else computed and cached."""
        n_blocks = j // BLOCK + 1
        t_len = min(n_blocks * BLOCK, self._n_sessions)
        n = len(self._instruments)
        family = f"{self._code}_seed{self.seed}_n{n}_b{n_blocks}_t{t_len}_"
        name = f"{family}np{np.__version__}_{array_cache.source_digest(*_PATH_SOURCES)}"
        cached = array_cache.load("simulated", name, _DAILY_FIELDS)
        if cached is not None and all(a.shape == (n, t_len) and a.dtype == _DAILY_DTYPES[f]
                                      for f, a in cached.items()):
            return Daily(**cached)
        daily = self._compute_daily(n_blocks, t_len)
        array_cache.store("simulated", name, {f: getattr(daily, f) for f in _DAILY_FIELDS}, replaces=family)
        return daily

    def _compute_daily(self, n_blocks: int, t_len: int) -> Daily:
        """The universe's daily bars for `t_len` sessions, computed CHUNK symbols at a time: the recursion is
        elementwise per symbol, so chunking changes no number and caps the transient memory (the draws and the
        float64 intermediates) at a few MB — it matters on a 1 GB droplet running the monitor daemon."""
        market = market_factor(self.seed, n_blocks, t_len)
        n = len(self._instruments)
        out = Daily(open=np.empty((n, t_len), np.int32), high=np.empty((n, t_len), np.int32),
                    low=np.empty((n, t_len), np.int32), close=np.empty((n, t_len), np.int32),
                    lots=np.empty((n, t_len), np.int64), sigma_in=np.empty((n, t_len), np.float32))
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            symbols = [inst.symbol for inst in self._instruments[a:b]]
            part = daily_rows(self.seed, symbols, self._traits[a:b], n_blocks, t_len, market, self._grid)
            for name in _DAILY_FIELDS:
                getattr(out, name)[a:b] = getattr(part, name)
        return out

    # ------------------------------------------------------------ minute path

    def _session_of(self, t_ns: int) -> int:
        """Simulated session index of the last session that opened at or before t (may be -1)."""
        return int(np.searchsorted(self.calendar.table.opens, t_ns, "right")) - 1 - self._first

    def _minute_path(self, row: int, j: int) -> Minutes:
        key = (row, j)
        with self._lock:
            hit = self._minutes.get(key)
            if hit is not None:
                self._minutes.move_to_end(key)
                return hit
        daily = self._ensure(j)
        inst = self._instruments[row]
        made = None if self.prefetched is None else self.prefetched.take(self._minutes_key(inst.symbol, j), None)
        if made is None:
            made = minute_path(self.seed, inst.symbol, inst.lot_size, self.calendar.table, self._first + j, daily,
                               row, j, self._grid)
        with self._lock:
            self._minutes[key] = made
            if len(self._minutes) > self._minute_cache_size:
                self._minutes.popitem(last=False)
        return made

    def _minutes_key(self, symbol: str, j: int) -> tuple:
        return symbol, "minutes", self.calendar.table.dates[self._first + j].astype(date), False

    def session_minutes(self, symbol: str, at: datetime) -> tuple[tuple, Minutes]:
        """(key, minute path) of `symbol`'s session open at `at`: what another process works out ahead for this
        market's `prefetched` (the same numbers: a minute path is a function of the seed, the symbol and the day)."""
        row, j = self._index(symbol), self._session_of(to_ns(at))
        return self._minutes_key(symbol, j), self._minute_path(row, j)

    # ------------------------------------------------------------ MarketDataSource

    def quote(self, symbol: str, at: datetime) -> Quote:
        """Last completed minute's close as of `at`, one tick either side for bid/ask.

        Between sessions (lunch included) it is the last close before the break; `volume` is the cumulative
        volume of the session that price belongs to, and `timestamp` the end of the minute that set it.
        """
        t = to_ns(at)
        minute = t // NS_MIN                    # minutes complete on minute boundaries: one answer per minute
        if minute != self._quote_minute:
            self._quote_minute, self._quotes, self._quote_where = minute, {}, self._where(t)
        hit = self._quotes.get(symbol)
        if hit is None:
            hit = self._quotes[symbol] = self._quote(symbol, at, self._quote_where)
        return hit

    def _where(self, t: int) -> tuple[int, int, datetime | None]:
        """(session j, k, timestamp) of a quote at t, the same for every symbol (sessions open and close, and every
        symbol's minutes start, on the same minute boundaries): k > 0, the close of minute k-1 of session j, which
        ended at `timestamp`; k == 0, session j's close (j < 0: before the first session)."""
        j = self._session_of(t)
        table = self.calendar.table
        if j >= 0 and t < table.closes[self._first + j]:
            if self._where_starts[0] != j:                             # the session's minute starts, kept
                self._where_starts = (j, table.minute_starts_ns(self._first + j))
            starts = self._where_starts[1]
            k = int(starts.searchsorted(t - NS_MIN, "right"))          # minutes that ended at or before t
            if k > 0:
                return j, k, from_ns(int(starts[k - 1]) + NS_MIN)
            j -= 1                          # opened less than a minute ago: still yesterday's close
        return j, 0, from_ns(int(table.closes[self._first + j])) if j >= 0 else None

    def _quote(self, symbol: str, at: datetime, where: tuple[int, int, datetime | None]) -> Quote:
        row = self._index(symbol)
        j, k, ts = where
        if k:
            mins = self._minute_path(row, j)
            last, vol = int(mins.close[k - 1]), int(mins.cum_volume[k - 1])
        else:
            if j < 0:
                raise ValueError(f"no simulated prices before the first session on or after {EPOCH} "
                                 f"(asked for {at.isoformat()})")
            daily = self._ensure(j)
            last = int(daily.close[row, j])
            vol = int(daily.lots[row, j]) * self._instruments[row].lot_size
        bid, last_price, ask = touch(last, self._scheme)
        return Quote(symbol=symbol, bid=bid, ask=ask, last=last_price, volume=vol, timestamp=ts)

    def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> list[Bar]:
        """Bars starting in [start, end) that completed at or before `end`, oldest first.

        Daily bars start at the session open (UTC); intraday bars are aligned to the start of each continuous
        interval (HKEX: 09:30 and 13:00 local), so the last bar before a break may be shorter.
        """
        row = self._index(symbol)
        if timeframe != "1d" and timeframe not in _TIMEFRAME_MINUTES:
            raise ValueError(f"unknown timeframe {timeframe!r}; expected 1m, 5m, 15m, 30m, 1h or 1d")
        t0, t1 = to_ns(start), to_ns(end)
        if t1 <= t0:
            return []
        table = self.calendar.table
        first_j = max(self._session_of(t0), 0)
        last_j = self._session_of(t1 - 1)
        if last_j < first_j:
            return []
        if timeframe == "1d":
            opens = table.opens[self._first + first_j:self._first + last_j + 1]
            closes = table.closes[self._first + first_j:self._first + last_j + 1]
            keep = np.flatnonzero((opens >= t0) & (closes <= t1))
            if len(keep) == 0:
                return []
            daily = self._ensure(first_j + int(keep[-1]))
            lot = self._instruments[row].lot_size
            js = first_j + keep
            starts = [self._session_start(self._first + j) for j in js.tolist()]
            o, h, lo, c = (a[row, js].tolist() for a in (daily.open, daily.high, daily.low, daily.close))
            lots = daily.lots[row, js].tolist()
            return [Bar(symbol, starts[n], price(o[n]), price(h[n]), price(lo[n]), price(c[n]), int(lots[n]) * lot)
                    for n in range(len(starts))]
        size = _TIMEFRAME_MINUTES[timeframe]
        out: list[Bar] = []
        for j in range(first_j, last_j + 1):
            if table.closes[self._first + j] <= t0:
                continue
            out.extend(self._aggregate(symbol, self._minute_path(row, j), size, t0, t1))
        return out

    def _session_start(self, k: int) -> datetime:
        hit = self._starts.get(k)
        if hit is None:
            hit = self._starts[k] = from_ns(int(self.calendar.table.opens[k]))
        return hit

    @staticmethod
    def _aggregate(symbol: str, mins: Minutes, size: int, t0: int, t1: int) -> list[Bar]:
        if size == 1:                       # the minutes themselves: those starting in [t0, t1 - 1 minute]
            lo = int(mins.starts.searchsorted(t0, "left"))
            hi = int(mins.starts.searchsorted(t1 - NS_MIN, "right"))
            return [Bar(symbol, from_ns(mins.starts[b]), price(mins.open[b]), price(mins.high[b]), price(mins.low[b]),
                        price(mins.close[b]), int(mins.volume[b])) for b in range(lo, hi)]
        key = mins.interval * 100_000 + mins.offset // size
        edges = np.flatnonzero(np.diff(key)) + 1
        first = np.concatenate([[0], edges])
        last = np.concatenate([edges - 1, [len(key) - 1]])
        bar_start = mins.starts[first]
        done = (bar_start >= t0) & (mins.starts[last] + NS_MIN <= t1)
        if not done.any():
            return []
        high = np.maximum.reduceat(mins.high, first)
        low = np.minimum.reduceat(mins.low, first)
        vol = np.add.reduceat(mins.volume, first)
        return [Bar(symbol, from_ns(bar_start[b]), price(mins.open[first[b]]), price(high[b]), price(low[b]),
                    price(mins.close[last[b]]), int(vol[b])) for b in np.flatnonzero(done)]

    def daily_frame(self, symbols: Sequence[str], end: datetime, lookback_days: int) -> dict[str, "pd.DataFrame"]:
        """The last `lookback_days` completed sessions (close at or before `end`) as float frames,
        session date x symbol. Every simulated symbol trades every session, so there are no gaps."""
        import pandas as pd

        rows = [self._index(s) for s in symbols]
        table = self.calendar.table
        done = int(np.searchsorted(table.closes, to_ns(end), "right")) - self._first   # sessions completed
        lo = max(done - int(lookback_days), 0)
        if done <= 0 or lookback_days <= 0:
            empty = pd.DataFrame(index=pd.DatetimeIndex([], name="date"), columns=list(symbols), dtype=float)
            return {f: empty.copy() for f in DAILY_FIELDS}
        daily = self._ensure(done - 1)
        index = pd.DatetimeIndex(table.dates[self._first + lo:self._first + done], name="date")
        lots = np.array([self._instruments[r].lot_size for r in rows], dtype=np.float64)
        sel = (rows, slice(lo, done))
        values = {"open": daily.open[sel].T / UNITS, "high": daily.high[sel].T / UNITS,
                  "low": daily.low[sel].T / UNITS, "close": daily.close[sel].T / UNITS,
                  "volume": daily.lots[sel].T * lots}
        return {f: pd.DataFrame(values[f], index=index, columns=list(symbols)) for f in DAILY_FIELDS}
