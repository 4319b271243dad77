"""Reading one bar file (CSV or Parquet) into arrays: parsing, validation with file/line/column errors, prices put
on the exchange's tick grid, daily and intraday series with their session bookkeeping. The format is documented in
data/bar_files.py."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from core.calendar import MarketCalendar
from core.ticks import TickScheme, tick_bands

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close")
_TIMEFRAME_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}
_NS_MIN = 60_000_000_000
_NS_DAY = 86_400_000_000_000
_HAS_OFFSET = r"[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"
_DEFAULTS = {"XHKG": (100, "HKD", "hkex"), "XNYS": (1, "USD", "us")}
_MICRO = 1_000_000              # tick arithmetic in whole millionths of the currency: exact for every tick
SNAP_RULE = "open and close to the nearest tick, high up, low down"

log = logging.getLogger(__name__)


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
class Snapped:
    """Prices of a file that were off the tick grid and were put on it (SNAP_RULE)."""
    prices: int = 0
    bars: int = 0
    examples: tuple[str, ...] = ()       # a few, as "line 5 high 10.013 -> 10.02"

    def describe(self) -> str:
        return (f"{self.prices} prices in {self.bars} bars were off the tick grid and were snapped ({SNAP_RULE}), "
                f"e.g. {'; '.join(self.examples)}")


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
    snapped: Snapped = Snapped()


class BarFileReader:
    """Reads the files of one exchange's calendar."""

    def __init__(self, calendar: MarketCalendar) -> None:
        self.calendar = calendar

    def read(self, path: Path, tick_scheme: TickScheme | None = None) -> _Series:
        """The file's series; with a tick scheme, prices off its grid are snapped onto it (SNAP_RULE), counted in
        `snapped` and logged once here."""
        import pandas as pd

        if path.suffix.lower() == ".csv":
            try:
                raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
            except pd.errors.EmptyDataError:
                raise BarFileError(f"{path}: the file is empty; expected a header {','.join(COLUMNS)}") from None
            except Exception as e:  # noqa: BLE001
                raise BarFileError(f"{path}: cannot read as CSV: {e}") from e
            row: Callable[[int], str] = lambda i: f"line {i + 2}"  # noqa: E731
        else:
            try:
                raw = pd.read_parquet(path)
            except Exception as e:  # noqa: BLE001
                raise BarFileError(f"{path}: cannot read as Parquet: {e}") from e
            row = lambda i: f"row {i + 1}"  # noqa: E731
        where: Callable[[int], str] = lambda i: f"{path} {row(i)}"  # noqa: E731
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

        snapped = Snapped()
        if tick_scheme is not None:
            (o, h, lo, c), snapped = self._snap(tick_scheme, where, row, o, h, lo, c)
            if snapped.prices:
                log.warning("%s: %s", path, snapped.describe())

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
            series = self._daily_series(path, where, order, raw, day, o, h, lo, c, v)
            return dataclasses.replace(series, snapped=snapped)
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
        series = self._intraday_series(path, ts, spacing_ns // _NS_MIN, midnights, o, h, lo, c, v)
        return dataclasses.replace(series, snapped=snapped)

    @staticmethod
    def _snap(scheme: TickScheme, where, row, o, h, lo, c):
        """Every price onto the grid (SNAP_RULE keeps low <= open, close <= high); what moved, counted."""
        bands, top, upper_inclusive = tick_bands(scheme)
        uppers = np.array([int(u * _MICRO) for u, _ in bands], dtype=np.int64)
        ticks = np.array([int(t * _MICRO) for _, t in bands] + [int(top * _MICRO)], dtype=np.int64)
        side = "left" if upper_inclusive else "right"
        out, off, examples = [], [], []
        for k, (name, values, mode) in enumerate((("open", o, "nearest"), ("high", h, "up"), ("low", lo, "down"),
                                                  ("close", c, "nearest"))):
            units = np.rint(values * _MICRO).astype(np.int64)
            tick = ticks[np.searchsorted(uppers, units, side=side)]
            down = units // tick * tick
            up = np.where(down == units, down, down + tick)
            snapped = {"down": down, "up": up, "nearest": np.where(units - down < up - units, down, up)}[mode]
            zero = np.flatnonzero(snapped <= 0)
            if len(zero):
                i = int(zero[0])
                raise BarFileError(f"{where(i)}, column '{name}': price {values[i]} is below the smallest tick of "
                                   f"the {scheme} grid")
            moved = snapped != units
            for i in np.flatnonzero(moved)[:3]:
                examples.append((int(i), k, f"{row(int(i))} {name} {_dec(values[i])} -> "
                                            f"{_dec(snapped[i] / _MICRO)}"))
            out.append(snapped / _MICRO)              # float noise goes too: 10.020000000000001 is 10.02
            off.append(moved)
        moved = np.vstack(off)
        shown = tuple(text for _, _, text in sorted(examples)[:3])
        return out, Snapped(prices=int(moved.sum()), bars=int(moved.any(axis=0).sum()), examples=shown)

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

