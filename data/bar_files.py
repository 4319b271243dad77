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
the last bar completed at or before ``at`` (bid and ask one tick either side, on the exchange's tick grid). A
malformed file is a `BarFileError` naming the file, the line (CSV, counting the header as line 1) or row
(Parquet), and the column.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np

from core.instruments import Bar, Instrument, Quote, Timeframe
from core.calendar import MarketCalendar, exchange_code, to_ns, from_ns
from core.instruments import DAILY_FIELDS
from core.errors import UnknownSymbol
from core.symbols import InvalidSymbol, canonical_symbol
from core.ticks import tick_above, tick_below

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close")
_TIMEFRAME_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
_NS_MIN = 60_000_000_000
_NS_DAY = 86_400_000_000_000
_HAS_OFFSET = r"[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"

_DEFAULTS = {"XHKG": (100, "HKD", "hkex"), "XNYS": (1, "USD", "us")}


class BarFileError(ValueError):
    """A bar file (or instruments.csv) that cannot be read; the message names the file, line and column."""


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))     # shortest round-trip text: the number as the file wrote it


@dataclass(frozen=True, slots=True)
class _Bars:
    """Bars sorted by start; times are UTC ns."""
    start: np.ndarray
    end: np.ndarray          # when the bar is complete
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    day: np.ndarray          # session (local) date, datetime64[D]

    def __len__(self) -> int:
        return len(self.start)


@dataclass(frozen=True, slots=True)
class _Series:
    path: Path
    kind: Literal["daily", "intraday"]
    minutes: int | None      # bar size of an intraday file
    bars: _Bars              # as in the file
    daily: _Bars             # one bar per session
    anchor: np.ndarray | None = None        # intraday: start of the trading interval (or local midnight)
    interval_end: np.ndarray | None = None  # intraday: end of that interval
    in_session: np.ndarray | None = None
    cum_volume: np.ndarray | None = None    # intraday: volume so far in the bar's session


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
            series = self._read(self._files[symbol])
            with self._lock:
                self._series[symbol] = series
        return series

    def _read(self, path: Path) -> _Series:
        import pandas as pd

        if path.suffix.lower() == ".csv":
            try:
                raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
            except pd.errors.EmptyDataError:
                raise BarFileError(f"{path}: the file is empty; expected a header {','.join(COLUMNS)}") from None
            except Exception as e:  # noqa: BLE001
                raise BarFileError(f"{path}: cannot read as CSV: {e}") from e
            where: Callable[[int], str] = lambda i: f"{path} line {i + 2}"  # noqa: E731
        else:
            try:
                raw = pd.read_parquet(path)
            except Exception as e:  # noqa: BLE001
                raise BarFileError(f"{path}: cannot read as Parquet: {e}") from e
            where = lambda i: f"{path} row {i + 1}"  # noqa: E731
        raw.columns = [str(c).strip().lower() for c in raw.columns]
        missing = [c for c in COLUMNS if c not in raw.columns]
        if missing:
            raise BarFileError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}; "
                               f"expected {','.join(COLUMNS)}")
        if len(raw) == 0:
            raise BarFileError(f"{path}: no bars (only a header)")
        raw = raw.reset_index(drop=True)

        ts = self._parse_times(raw["timestamp"], path, where)
        values = {c: self._parse_numbers(raw[c], c, where) for c in (*_PRICES, "volume")}
        o, h, lo, c, v = (values[k] for k in (*_PRICES, "volume"))
        for name in _PRICES:
            bad = np.flatnonzero(values[name] <= 0)
            if len(bad):
                i = int(bad[0])
                raise BarFileError(f"{where(i)}, column '{name}': price {values[name][i]} must be positive")
        bad = np.flatnonzero(v < 0)
        if len(bad):
            raise BarFileError(f"{where(int(bad[0]))}, column 'volume': {v[bad[0]]} must not be negative")
        bad = np.flatnonzero((h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (lo > h))
        if len(bad):
            i = int(bad[0])
            raise BarFileError(f"{where(i)}: inconsistent bar open={o[i]} high={h[i]} low={lo[i]} close={c[i]} "
                               f"(need low <= open, close <= high)")

        order = np.argsort(ts, kind="stable")
        ts, o, h, lo, c, v = ts[order], o[order], h[order], lo[order], c[order], v[order]
        dup = np.flatnonzero(np.diff(ts) == 0)
        if len(dup):
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise BarFileError(f"{where(b)}, column 'timestamp': {raw['timestamp'].iloc[b]!s} repeats {where(a)}")

        local = pd.DatetimeIndex(ts.astype("datetime64[ns]"), tz="UTC").tz_convert(self.calendar.tz)
        midnight = (local.hour == 0) & (local.minute == 0) & (local.second == 0) & (local.microsecond == 0)
        day = np.asarray(local.tz_localize(None).normalize().values, dtype="datetime64[D]")
        spacing_ns = None
        if len(ts) > 1:
            gaps, counts = np.unique(np.diff(ts), return_counts=True)
            spacing_ns = int(gaps[counts.argmax()])      # the most common step is the bar size
        if midnight.all() or (spacing_ns is not None and spacing_ns >= 20 * 3_600_000_000_000):
            return self._daily_series(path, where, order, raw, day, o, h, lo, c, v)
        if spacing_ns is None:
            raise BarFileError(f"{path}: one intraday bar is not enough to tell the bar size")
        if spacing_ns % _NS_MIN:
            raise BarFileError(f"{path}: bars are {spacing_ns / 1e9:g}s apart; intraday bars must be a whole "
                               f"number of minutes apart")
        off = np.flatnonzero(ts % _NS_MIN)
        if len(off):
            raise BarFileError(f"{where(int(order[off[0]]))}, column 'timestamp': {local[off[0]]} is not on a whole "
                               f"minute; intraday bars start on minute boundaries")
        midnights = np.asarray(local.normalize().tz_convert("UTC").as_unit("ns").asi8, dtype=np.int64)
        return self._intraday_series(path, ts, spacing_ns // _NS_MIN, midnights, o, h, lo, c, v)

    def _parse_times(self, col: "pd.Series", path: Path, where: Callable[[int], str]) -> np.ndarray:
        import pandas as pd

        tz = self.calendar.tz
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            if col.isna().any():
                raise BarFileError(f"{where(int(np.flatnonzero(col.isna().to_numpy())[0]))}, column 'timestamp': empty")
            s = col if col.dt.tz is not None else col.dt.tz_localize(tz)
            return np.asarray(s.dt.tz_convert("UTC").dt.as_unit("ns").array.asi8, dtype=np.int64)
        if pd.api.types.is_numeric_dtype(col.dtype):
            raise BarFileError(f"{path}: column 'timestamp' holds numbers; use ISO-8601 text or a timestamp type")
        text = col.astype(str).str.strip()
        has_offset = text.str.contains(_HAS_OFFSET, regex=True).to_numpy()
        out = np.empty(len(text), dtype=np.int64)
        try:
            if has_offset.any():
                parsed = pd.DatetimeIndex(pd.to_datetime(text[has_offset], format="ISO8601", utc=True))
                out[has_offset] = parsed.as_unit("ns").asi8
            if (~has_offset).any():
                parsed = pd.DatetimeIndex(pd.to_datetime(text[~has_offset], format="ISO8601"))
                parsed = parsed.tz_localize(tz, ambiguous="raise", nonexistent="raise")
                out[~has_offset] = parsed.tz_convert("UTC").as_unit("ns").asi8
        except (ValueError, TypeError, OverflowError) as e:
            for i, value in enumerate(text):
                try:
                    datetime.fromisoformat(value)
                except ValueError:
                    raise BarFileError(f"{where(i)}, column 'timestamp': {value!r} is not an ISO-8601 date/time "
                                       f"(e.g. 2026-11-24T09:30:00+08:00)") from None
            raise BarFileError(f"{path}, column 'timestamp': {e}") from e
        nat = np.flatnonzero(out == np.iinfo(np.int64).min)
        if len(nat):
            raise BarFileError(f"{where(int(nat[0]))}, column 'timestamp': empty")
        return out

    @staticmethod
    def _parse_numbers(col: "pd.Series", name: str, where: Callable[[int], str]) -> np.ndarray:
        import pandas as pd

        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            values = col
        else:
            values = pd.to_numeric(col.astype(str).str.strip(), errors="coerce")
        arr = pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            i = int(bad[0])
            shown = col.iloc[i]
            what = "empty" if str(shown).strip() in ("", "nan", "None", "<NA>") else f"{shown!r} is not a number"
            raise BarFileError(f"{where(i)}, column '{name}': {what}")
        return arr

    def _daily_series(self, path, where, order, raw, day, o, h, lo, c, v) -> _Series:
        dup = np.flatnonzero(np.diff(day) == np.timedelta64(0, "D"))
        if len(dup):
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise BarFileError(f"{where(b)}, column 'timestamp': a second bar for {day[dup[0]]} (see {where(a)})")
        table = self.calendar.table
        idx = np.clip(np.searchsorted(table.dates, day), 0, len(table.dates) - 1)
        is_session = table.dates[idx] == day
        local_midnight = self._local_midnights(day)
        start = np.where(is_session, table.opens[idx], local_midnight)
        end = np.where(is_session, table.closes[idx], local_midnight + _NS_DAY)
        bars = _Bars(start=start, end=end, open=o, high=h, low=lo, close=c, volume=v, day=day)
        return self._with_prints(path, bars, np.flatnonzero(is_session), idx)

    def _with_prints(self, path: Path, daily: _Bars, sessions: np.ndarray, rows: np.ndarray) -> _Series:
        """A daily file's intraday view: two one-minute prints per session bar, the opening print (the bar's open,
        first minute; half the previous session's volume, as the day's is unknown then) and the closing print (its
        close, last minute; half the day's volume). What happened between them is unknown, so nothing trades in
        between; the daily bars themselves stay as the file has them."""
        table = self.calendar.table
        k = rows[sessions]
        n = len(sessions)
        ts = np.empty(2 * n, dtype=np.int64)
        ts[0::2], ts[1::2] = table.opens[k], table.closes[k] - _NS_MIN
        price = np.empty(2 * n)
        price[0::2], price[1::2] = daily.open[sessions], daily.close[sessions]
        half = np.ceil(daily.volume[sessions] / 2)
        volume = np.empty(2 * n)
        volume[1::2] = half
        if n:
            volume[0::2] = np.concatenate(([0.0], half[:-1]))
        midnights = self._local_midnights(np.repeat(daily.day[sessions], 2)) if n else np.array([], dtype=np.int64)
        prints = self._intraday_series(path, ts, 1, midnights, price, price, price, price, volume)
        return dataclasses.replace(prints, kind="daily", daily=daily)

    def _local_midnights(self, day: np.ndarray) -> np.ndarray:
        import pandas as pd
        idx = pd.DatetimeIndex(day.astype("datetime64[ns]")).tz_localize(self.calendar.tz)
        return np.asarray(idx.tz_convert("UTC").as_unit("ns").asi8, dtype=np.int64)

    def _intraday_series(self, path, ts, minutes, midnights, o, h, lo, c, v) -> _Series:
        table = self.calendar.table
        i = np.searchsorted(table.opens, ts, "right") - 1
        valid = i >= 0
        k = np.clip(i, 0, len(table.opens) - 1)
        op, bs, be, cl = table.opens[k], table.break_starts[k], table.break_ends[k], table.closes[k]
        has_break = bs != -1
        in_am = valid & has_break & (ts >= op) & (ts < bs)
        in_pm = valid & has_break & (ts >= be) & (ts < cl)
        in_full = valid & ~has_break & (ts >= op) & (ts < cl)
        in_session = in_am | in_pm | in_full
        anchor = np.where(in_am | in_full, op, np.where(in_pm, be, midnights))
        interval_end = np.where(in_am, bs, np.where(in_pm | in_full, cl, midnights + _NS_DAY))
        size = minutes * _NS_MIN
        end = np.minimum(ts + size, interval_end)
        day = np.where(in_session, table.dates[k], np.datetime64("NaT", "D"))
        bars = _Bars(start=ts, end=np.maximum.accumulate(end), open=o, high=h, low=lo, close=c, volume=v,
                     day=day)
        # the session's volume so far, bar by bar (bars outside sessions count toward their local day)
        day_key = np.where(in_session, k, -1 - ((midnights - midnights.min()) // _NS_DAY))
        firsts = np.concatenate([[0], np.flatnonzero(np.diff(day_key)) + 1])
        cum = np.cumsum(v)
        base = np.repeat(np.concatenate([[0.0], cum[firsts[1:] - 1]]), np.diff(np.concatenate([firsts, [len(v)]])))
        # daily bars from the bars inside sessions
        s = np.flatnonzero(in_session)
        if len(s):
            sess = k[s]
            heads = np.concatenate([[0], np.flatnonzero(np.diff(sess)) + 1])
            tails = np.concatenate([heads[1:] - 1, [len(s) - 1]])
            ids = sess[heads]
            daily = _Bars(start=table.opens[ids], end=table.closes[ids], open=o[s][heads],
                          high=np.maximum.reduceat(h[s], heads), low=np.minimum.reduceat(lo[s], heads),
                          close=c[s][tails], volume=np.add.reduceat(v[s], heads), day=table.dates[ids])
        else:
            empty = np.array([], dtype=np.int64)
            daily = _Bars(empty, empty, *(np.array([]) for _ in range(5)), np.array([], dtype="datetime64[D]"))
        return _Series(path=path, kind="intraday", minutes=int(minutes), bars=bars, daily=daily, anchor=anchor,
                       interval_end=interval_end, in_session=in_session, cum_volume=cum - base)

    # ------------------------------------------------------------ MarketDataSource

    def quote(self, symbol: str, at: datetime) -> Quote:
        """Close of the last bar completed at or before `at`; volume is that session's volume so far."""
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
        return Quote(symbol=symbol, bid=bid, ask=tick_above(last, scheme), last=last, volume=int(volume),
                     timestamp=from_ns(bars.end[k]))

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
