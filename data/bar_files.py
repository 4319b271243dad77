"""Bar files: market data from history the user brings.

Format
------
One directory, one file per symbol, named ``SYMBOL.csv`` or ``SYMBOL.parquet`` (the file name without its
extension is the symbol, e.g. ``0700.csv`` or ``AAPL.parquet``; a symbol may not have both). Columns, in any
order (header names are case-insensitive; other columns are ignored)::

    timestamp,open,high,low,close,volume
    2026-11-24T09:30:00+08:00,380.2,381.0,379.8,380.6,125400
    2026-11-24T09:31:00+08:00,380.6,380.8,380.0,380.2,98200

* ``timestamp`` is the bar's START, ISO-8601. With an offset (``+08:00``, ``-05:00``, ``Z``) it is taken as
  written; without one it is the exchange's local time (Hong Kong for HKEX, New York for NYSE/NASDAQ/US).
  Parquet files may use a timestamp column instead of text (timezone-aware, or naive = exchange local time).
* Daily bars: a date (``2026-11-24``) or any timestamp at local midnight. A file whose bars are a day or more
  apart is daily too, keyed by the local date. Intraday bars: any whole number of minutes apart (1m, 5m, 1h…),
  detected from the most common spacing. Rows may come in any order; a timestamp may not repeat.
* Prices are positive numbers with low <= open, close <= high; volume is a number >= 0 (shares).
* Prices off the symbol's tick grid (HKEX spread table, US cents above $1) are snapped onto it when the file is
  first read: open and close to the nearest tick, high up, low down (so low <= open, close <= high still holds and
  the bar never narrows). How many prices and bars moved, with examples, is logged on that first read and reported
  by ``./run.sh data import``. A price below the grid's smallest tick is refused.
* Bars outside the exchange's sessions (pre/post-market) are served to intraday requests but left out of
  daily bars.
* A daily file still answers intraday requests and quotes, from two one-minute prints per session: the bar's
  open in the session's first minute and its close in the last minute. So during a session the quote is the
  day's open once the first minute is over, and the close once the session ends; an order fills only at those
  two prints (the day's high and low are not a path anything could trade on). The closing print carries half the
  day's volume; the opening print half the previous session's (the day's own total is not known at its open),
  none on the file's first day.
* Intraday bars are combined into longer ones (1m -> 5m, 15m, 30m, 1h, 1d) aligned to the start of each trading
  interval (HKEX: 09:30 and 13:00), never split into shorter ones.

Optional ``instruments.csv`` in the same directory: ``symbol,name,lot_size,currency`` (and optionally
``tick_scheme``: hkex | us). Missing values default from the exchange: HKEX -> lot `market.default_lot_size`
(100 unless configured), HKD, hkex ticks (HKEX board lots differ by stock: set ``lot_size``); NYSE/NASDAQ/US ->
lot 1, USD, us ticks.

What you get back: a bar only once it has completed at or before the caller's ``end``; a quote is the close of
the last bar completed at or before ``at`` (bid and ask one tick either side, on the exchange's tick grid, but
never beyond that bar's low and high: a daily file's prints are one price each, so at a print bid = ask = last,
and the paper venue fills there at that price, as in an opening or closing auction). A
malformed file is a `BarFileError` naming the file, the line (CSV, counting the header as line 1) or row
(Parquet), and the column.
"""
from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from core.calendar import MarketCalendar, exchange_code, from_ns, to_ns
from core.errors import UnknownSymbol
from core.instruments import DAILY_FIELDS, Bar, Instrument, Quote, Timeframe
from core.symbols import InvalidSymbol, canonical_symbol
from core.ticks import round_to_tick, tick_above, tick_below
from data.bar_file_reader import (_DEFAULTS, _NS_MIN, _TIMEFRAME_MINUTES, BarFileError, BarFileReader, Snapped, _dec,
                                  _Series)

if TYPE_CHECKING:
    import pandas as pd




class BarFileSource:
    """Market data read from per-symbol bar files; implements `core.feeds.MarketDataSource`."""

    def __init__(self, directory: str | Path, exchange: str = "HKEX", *,
                 calendar: MarketCalendar | None = None, default_lot: int | None = None) -> None:
        self.directory = Path(directory).expanduser()
        code = exchange_code(exchange)
        self.exchange = exchange.upper()
        self.calendar = calendar or MarketCalendar(exchange)
        if self.calendar.code != code:
            raise ValueError(f"calendar {self.calendar.code} does not match exchange {exchange} ({code})")
        if not self.directory.is_dir():
            raise BarFileError(f"bar file directory {self.directory} does not exist or is not a directory")
        self._files = self._scan_files()
        lot, currency, scheme = _DEFAULTS[code]
        self._instruments = self._load_instruments(default_lot or lot, currency, scheme)
        self._series: dict[str, _Series] = {}
        self._reader = BarFileReader(self.calendar)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ files and instruments

    def _scan_files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in sorted(self.directory.iterdir()):
            if (path.suffix.lower() not in (".csv", ".parquet") or path.name.lower() == "instruments.csv"
                    or not path.is_file()):
                continue
            try:                      # 00700.csv, 0700.HK.csv and 700.csv are all 0700 on HKEX
                symbol = canonical_symbol(path.stem, self.exchange)
            except InvalidSymbol as exc:
                raise BarFileError(f"{path}: the file name is not a symbol of {self.exchange}: {exc}") from None
            if symbol in files:
                raise BarFileError(f"{self.directory}: symbol {symbol} has two files, {files[symbol].name} and "
                                   f"{path.name}; keep one")
            files[symbol] = path
        if not files:
            raise BarFileError(f"{self.directory}: no SYMBOL.csv or SYMBOL.parquet bar files found")
        return files

    def _load_instruments(self, lot: int, currency: str, scheme: str) -> dict[str, Instrument]:
        meta: dict[str, dict[str, str]] = {}
        path = self.directory / "instruments.csv"
        if path.exists():
            import pandas as pd
            try:
                table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
            except Exception as e:  # noqa: BLE001 — pandas raises several types for unreadable CSV
                raise BarFileError(f"{path}: cannot read: {e}") from e
            table.columns = [str(c).strip().lower() for c in table.columns]
            if "symbol" not in table.columns:
                raise BarFileError(f"{path}: needs a 'symbol' column (symbol,name,lot_size,currency); "
                                   f"found {list(table.columns)}")
            for i, row in enumerate(table.to_dict("records")):
                where = f"{path} line {i + 2}"
                entry = {k: str(v).strip() for k, v in row.items()}
                if entry.get("lot_size"):
                    if not entry["lot_size"].isdigit() or int(entry["lot_size"]) <= 0:
                        raise BarFileError(f"{where}, column 'lot_size': {entry['lot_size']!r} is not a positive "
                                           f"whole number")
                if entry.get("tick_scheme") and entry["tick_scheme"] not in ("hkex", "us"):
                    raise BarFileError(f"{where}, column 'tick_scheme': {entry['tick_scheme']!r}; use hkex or us")
                try:
                    meta[canonical_symbol(entry["symbol"], self.exchange)] = entry
                except InvalidSymbol as exc:
                    raise BarFileError(f"{where}, column 'symbol': {exc}") from None
        out = {}
        for symbol in self._files:
            m = meta.get(symbol, {})
            out[symbol] = Instrument(symbol=symbol, exchange=self.exchange,
                                     currency=(m.get("currency") or currency).upper(),
                                     lot_size=int(m.get("lot_size") or lot), name=m.get("name") or symbol,
                                     tick_scheme=m.get("tick_scheme") or scheme)  # type: ignore[arg-type]
        return out

    def instruments(self) -> list[Instrument]:
        return list(self._instruments.values())

    def instrument(self, symbol: str) -> Instrument:
        try:
            return self._instruments[symbol]
        except KeyError:
            raise UnknownSymbol(f"unknown symbol {symbol!r}: no {symbol}.csv or {symbol}.parquet in "
                                f"{self.directory} ({len(self._files)} symbols there)") from None

    def path(self, symbol: str) -> Path:
        """The file a symbol's bars come from."""
        self.instrument(symbol)
        return self._files[symbol]

    def resolution(self, symbol: str) -> str:
        """'daily' or 'intraday': what the symbol's file holds (reads the file once)."""
        return self._get(symbol).kind

    def snapped(self, symbol: str) -> Snapped:
        """The prices of the symbol's file that were off its tick grid and were put on it (reads the file once)."""
        return self._get(symbol).snapped

    def bar_minutes(self, symbol: str) -> int:
        """The bar size a venue trades this symbol's file on: its own (a daily file's prints are one minute)."""
        series = self._get(symbol)
        return series.minutes if series.kind == "intraday" and series.minutes else 1

    @property
    def coarsest_minutes(self) -> int | None:
        """The longest intraday bar among the files (None when every file is daily): a price is that old at worst."""
        sizes = [self._get(s).minutes for s in self._files if self._get(s).kind == "intraday"]
        return max(sizes) if sizes else None

    @property
    def daily_only(self) -> bool:
        """Every file holds daily bars: replay then runs its cycles at each bar's open and close."""
        return all(self._get(symbol).kind == "daily" for symbol in self._files)

    def validate(self) -> None:
        """Read every file now, so a malformed one fails at startup rather than mid-session."""
        for symbol in self._files:
            self._get(symbol)

    # ------------------------------------------------------------ reading one file

    def _get(self, symbol: str) -> _Series:
        self.instrument(symbol)
        series = self._series.get(symbol)
        if series is None:
            series = self._reader.read(self._files[symbol], self._instruments[symbol].tick_scheme)
            with self._lock:
                self._series[symbol] = series
        return series

    # ------------------------------------------------------------ MarketDataSource

    def quote(self, symbol: str, at: datetime) -> Quote:
        """Close of the last bar completed at or before `at`, bid and ask one tick either side but inside that bar's
        [low, high]; volume is that session's volume so far."""
        series = self._get(symbol)
        bars = series.bars
        t = to_ns(at)
        k = int(np.searchsorted(bars.end, t, "right")) - 1
        if k < 0:
            raise ValueError(f"{series.path}: no bar of {symbol} has completed by {at.isoformat()} "
                             f"(the first ends {from_ns(bars.end[0]).isoformat()})")
        volume = series.cum_volume[k] if series.cum_volume is not None else bars.volume[k]
        last = _dec(bars.close[k])
        scheme = self._instruments[symbol].tick_scheme
        try:
            bid = tick_below(last, scheme)
        except ValueError:
            bid = last
        # the touch stays inside the bar it comes from: no one traded that bar beyond its low or high
        bid = min(last, max(bid, round_to_tick(_dec(bars.low[k]), scheme, "up")))
        ask = max(last, min(tick_above(last, scheme), round_to_tick(_dec(bars.high[k]), scheme, "down")))
        return Quote(symbol=symbol, bid=bid, ask=ask, last=last, volume=int(volume), timestamp=from_ns(bars.end[k]))

    def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> list[Bar]:
        """Bars starting in [start, end) that completed at or before `end`, oldest first."""
        series = self._get(symbol)
        t0, t1 = to_ns(start), to_ns(end)
        if timeframe == "1d":
            b = series.daily
            keep = np.flatnonzero((b.start >= t0) & (b.start < t1) & (b.end <= t1))
            return [self._bar(symbol, b.start[i], b.open[i], b.high[i], b.low[i], b.close[i], b.volume[i])
                    for i in keep]
        if timeframe not in _TIMEFRAME_MINUTES:
            raise ValueError(f"unknown timeframe {timeframe!r}; expected 1m, 5m, 15m, 30m, 1h or 1d")
        want = _TIMEFRAME_MINUTES[timeframe]            # (a daily file answers from its opening/closing prints)
        if want % series.minutes:
            raise ValueError(f"{series.path} holds {series.minutes}-minute bars; {timeframe} bars cannot be "
                             f"built from them")
        b = series.bars
        lo = int(np.searchsorted(b.start, t0, "left"))     # a bin that starts before t0 is not wanted
        hi = int(np.searchsorted(b.start, t1, "left"))
        if hi <= lo:
            return []
        sl = slice(lo, hi)
        if want == series.minutes:                         # the file's own bars, as they are
            keep = lo + np.flatnonzero(b.end[sl] <= t1)
            return [self._bar(symbol, b.start[i], b.open[i], b.high[i], b.low[i], b.close[i], b.volume[i])
                    for i in keep]
        size = want * _NS_MIN
        anchor = series.anchor[sl]
        bin_start = anchor + (b.start[sl] - anchor) // size * size
        bin_end = np.minimum(bin_start + size, series.interval_end[sl])
        heads = np.concatenate([[0], np.flatnonzero(np.diff(bin_start)) + 1])
        tails = np.concatenate([heads[1:] - 1, [hi - lo - 1]])
        # a bin is complete only when every bar in it is: clock-aligned bars re-binned to the session's open
        # (10:00-11:00 in a 09:30-10:30 bin) must not hand out their close before 11:00
        starts, ends = bin_start[heads], np.maximum(bin_end[heads], np.maximum.reduceat(b.end[sl], heads))
        high = np.maximum.reduceat(b.high[sl], heads)
        low = np.minimum.reduceat(b.low[sl], heads)
        vol = np.add.reduceat(b.volume[sl], heads)
        opens, closes = b.open[sl][heads], b.close[sl][tails]
        keep = np.flatnonzero((starts >= t0) & (starts < t1) & (ends <= t1))
        return [self._bar(symbol, starts[i], opens[i], high[i], low[i], closes[i], vol[i]) for i in keep]

    @staticmethod
    def _bar(symbol: str, start, o, h, lo, c, v) -> Bar:
        return Bar(symbol, from_ns(start), _dec(o), _dec(h), _dec(lo), _dec(c), int(round(float(v))))

    def daily_frame(self, symbols: Sequence[str], end: datetime, lookback_days: int) -> dict[str, "pd.DataFrame"]:
        """The last `lookback_days` sessions that closed at or before `end`, session date x symbol, float;
        NaN where a file has no bar for a session."""
        import pandas as pd

        table = self.calendar.table
        t = to_ns(end)
        done = int(np.searchsorted(table.closes, t, "right"))
        dates = table.dates[max(done - max(int(lookback_days), 0), 0):done]
        out = {f: np.full((len(dates), len(symbols)), np.nan) for f in DAILY_FIELDS}
        for j, symbol in enumerate(symbols):
            b = self._get(symbol).daily
            ok = np.flatnonzero(b.end <= t)
            if not len(ok) or not len(dates):
                continue
            pos = np.searchsorted(dates, b.day[ok])
            hit = (pos < len(dates)) & (dates[np.minimum(pos, len(dates) - 1)] == b.day[ok])
            rows, src = pos[hit], ok[hit]
            for f in DAILY_FIELDS:
                out[f][rows, j] = getattr(b, f)[src]
        index = pd.DatetimeIndex(dates, name="date")
        return {f: pd.DataFrame(out[f], index=index, columns=list(symbols)) for f in DAILY_FIELDS}
