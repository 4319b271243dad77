"""Exchange calendars: trading days, session hours (HKEX lunch break included), half days, holidays.

A thin, fast wrapper over `exchange_calendars` (imported lazily: it is slow to import). Each process builds one
schedule per exchange and keeps it as numpy arrays, so lookups are a binary search, not a pandas call.

Conventions: instants are timezone-aware datetimes, UTC in and UTC out (any aware datetime is accepted and
converted; a naive one is refused). A `date` is a session date in the exchange's own time zone (`.tz`).
Sessions are half-open intervals: at 09:30:00 HKT the market is open, at 12:00:00 it is at lunch.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np

from core import array_cache

# Our exchange names -> (ISO MIC calendar, time zone). NASDAQ keeps the NYSE calendar.
_EXCHANGES: dict[str, tuple[str, str]] = {
    "HKEX": ("XHKG", "Asia/Hong_Kong"),
    "NYSE": ("XNYS", "America/New_York"),
    "NASDAQ": ("XNYS", "America/New_York"),
    "US": ("XNYS", "America/New_York"),
}

# exchange_calendars' default range is "20 years ago .. one year from today", which moves with the wall clock.
# A fixed range keeps every process on the same sessions: replay back to 2006, live runs to the end of 2035.
DEFAULT_START = date(1990, 1, 2)          # as far back as exchange_calendars holds XHKG and XNYS
DEFAULT_END = date(2035, 12, 31)

_NS_PER_MIN = 60_000_000_000
_NO_BREAK = -1

Status = Literal["open", "lunch", "pre_open", "closed"]


@dataclass(frozen=True, slots=True)
class SessionState:
    """Where the market stands at one instant.

    status      'open' | 'lunch' (HKEX midday break) | 'pre_open' (a trading day, before its open) |
                'closed' (after the day's close, or not a trading day)
    next_open   the next instant, strictly after now, at which trading (re)starts (afternoon open at lunch)
    next_close  the close of the session in progress or about to start today; None when 'closed'
    session_date today's session date (local) on a trading day; None on a day without a session
    interval_end while 'open': when this continuous interval ends (12:00 HKT in the morning); else None
    """
    status: Status
    next_open: datetime
    next_close: datetime | None
    session_date: date | None
    interval_end: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def to_dict(self) -> dict[str, str | None]:
        return {"status": self.status, "next_open": self.next_open.isoformat(),
                "next_close": self.next_close.isoformat() if self.next_close else None,
                "session_date": self.session_date.isoformat() if self.session_date else None}


@dataclass(frozen=True, slots=True)
class SessionTable:
    """The schedule as numpy arrays, for vectorised consumers (the simulated market).

    `dates` are session dates (datetime64[D]); the rest are UTC epoch nanoseconds (int64). A session without a
    break (NYSE, HKEX half days) has break_starts == break_ends == -1.
    """
    dates: np.ndarray
    opens: np.ndarray
    break_starts: np.ndarray
    break_ends: np.ndarray
    closes: np.ndarray

    def has_break(self, i: int) -> bool:
        return self.break_starts[i] != _NO_BREAK

    def intervals_ns(self, i: int) -> list[tuple[int, int]]:
        """The continuous trading intervals of session `i`, [start, end) in UTC nanoseconds."""
        if self.has_break(i):
            return [(int(self.opens[i]), int(self.break_starts[i])), (int(self.break_ends[i]), int(self.closes[i]))]
        return [(int(self.opens[i]), int(self.closes[i]))]

    def minute_starts_ns(self, i: int) -> np.ndarray:
        """Start of every trading minute of session `i` (UTC nanoseconds), in order."""
        parts = [np.arange(a, b, _NS_PER_MIN, dtype=np.int64) for a, b in self.intervals_ns(i)]
        return np.concatenate(parts)


def exchange_code(exchange: str) -> str:
    """Our exchange name -> the ISO MIC of its calendar; unknown names get a clear error."""
    try:
        return _EXCHANGES[exchange.upper()][0]
    except KeyError:
        raise ValueError(f"unknown exchange {exchange!r}; expected one of {', '.join(_EXCHANGES)}") from None


@functools.lru_cache(maxsize=8)
def _load_table(code: str, start: date, end: date) -> SessionTable:
    """The session table for `code` over start..end: from the on-disk cache when it was built by this same
    exchange_calendars version, else built (about 1.7 s: the import and the schedule) and cached for the next
    process. Every cron run and test subprocess would otherwise pay that build again."""
    version = _xcals_version()
    cached = _read_cached_table(code, start, end, version)
    if cached is not None:
        return cached
    table = _build_table(code, start, end)
    _write_cached_table(table, code, start, end, version)
    return table


def _build_table(code: str, start: date, end: date) -> SessionTable:
    with warnings.catch_warnings():
        # exchange_calendars 4.x still uses pandas APIs that pandas 3 deprecates; not ours to fix here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import exchange_calendars as xcals  # slow import, paid only when the cache cannot answer

        cal = xcals.get_calendar(code, start=start.isoformat(), end=end.isoformat())
        sched = cal.schedule

    def ns(col: str) -> np.ndarray:
        values = sched[col].dt.tz_convert("UTC").dt.as_unit("ns")
        out = values.array.asi8.astype(np.int64)  # NaT (no break that day) comes out as int64 min
        out[values.isna().to_numpy()] = _NO_BREAK
        return out

    dates = np.asarray(sched.index.values, dtype="datetime64[D]")
    return SessionTable(dates=dates, opens=ns("open"), break_starts=ns("break_start"),
                        break_ends=ns("break_end"), closes=ns("close"))


_TABLE_FIELDS = ("dates", "opens", "break_starts", "break_ends", "closes")


def _xcals_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("exchange_calendars")
    except PackageNotFoundError:
        return "unknown"


def _cache_name(code: str, start: date, end: date, version: str) -> str:
    return f"{code}_{start:%Y%m%d}_{end:%Y%m%d}_xcals-{version}"


def _read_cached_table(code: str, start: date, end: date, version: str) -> SessionTable | None:
    arrays = array_cache.load("calendars", _cache_name(code, start, end, version), _TABLE_FIELDS)
    if arrays is None:
        return None
    n = len(arrays["dates"])
    if (n == 0 or arrays["dates"].dtype != np.dtype("datetime64[D]")
            or any(len(a) != n or a.dtype != np.int64 for f, a in arrays.items() if f != "dates")):
        return None
    return SessionTable(**arrays)


def _write_cached_table(table: SessionTable, code: str, start: date, end: date, version: str) -> None:
    array_cache.store("calendars", _cache_name(code, start, end, version),
                      {f: getattr(table, f) for f in _TABLE_FIELDS}, replaces=_cache_name(code, start, end, ""))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def local_day_start(tz: tzinfo, now: datetime) -> datetime:
    """Midnight of `now`'s date in `tz`, in UTC."""
    return datetime.combine(now.astimezone(tz).date(), time(0), tzinfo=tz).astimezone(timezone.utc)


def to_ns(when: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (the unit of the session table and of bar arrays)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}; pass a timezone-aware (UTC) datetime")
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // 1_000)


class MarketCalendar:
    """Sessions of one exchange ("HKEX" -> XHKG, "NYSE"/"NASDAQ"/"US" -> XNYS)."""

    def __init__(self, exchange: str, *, start: date = DEFAULT_START, end: date = DEFAULT_END) -> None:
        self.code = exchange_code(exchange)
        self.exchange = exchange.upper()
        self.tz = ZoneInfo(_EXCHANGES[self.exchange][1])
        self._start, self._end = start, end
        self._bounds: dict[date, list[tuple[datetime, datetime]]] = {}       # session_bounds, by day
        self._last_state: tuple[datetime, SessionState] | None = None        # state() of the last instant asked
        self._phases: dict[tuple, SessionState] = {}                           # see _phase_state

    def __repr__(self) -> str:
        return f"MarketCalendar({self.exchange!r}: {self.code}, {self._start}..{self._end})"

    @property
    def table(self) -> SessionTable:
        return _load_table(self.code, self._start, self._end)

    # ------------------------------------------------------------ days

    @property
    def first_day(self) -> date:
        return self.table.dates[0].astype(date)

    @property
    def last_day(self) -> date:
        return self.table.dates[-1].astype(date)

    def day_start(self, now: datetime) -> datetime:
        """Midnight of the exchange's local date, in UTC: 'today' for P&L and one-entry-per-day."""
        return local_day_start(self.tz, now)

    def local_date(self, when: datetime) -> date:
        """The exchange-local calendar date of an instant."""
        to_ns(when)
        return when.astimezone(self.tz).date()

    def session_key(self, when: datetime) -> tuple[date, bool]:
        """(local date, that day's session closed yet?) of an instant: daily bars are the same everywhere inside
        one of these (what caches of daily analytics are keyed by)."""
        day = self.local_date(when)
        bounds = self.session_bounds(day)
        return day, bool(bounds) and when >= bounds[-1][1]

    def _day(self, day: date) -> np.datetime64:
        if isinstance(day, datetime):
            day = self.local_date(day)
        if not (self._start <= day <= self._end):
            raise ValueError(f"{day.isoformat()} is outside the {self.code} calendar loaded here "
                             f"({self._start.isoformat()}..{self._end.isoformat()})")
        return np.datetime64(day, "D")

    def session_index(self, day: date) -> int | None:
        """Position of `day` in `table`, or None if it is not a trading day."""
        d = self._day(day)
        dates = self.table.dates
        i = int(np.searchsorted(dates, d))
        return i if i < len(dates) and dates[i] == d else None

    def is_trading_day(self, day: date) -> bool:
        return self.session_index(day) is not None

    def trading_days(self, start_date: date, end_date: date) -> list[date]:
        """Trading days from `start_date` to `end_date`, both included."""
        dates = self.table.dates
        lo = int(np.searchsorted(dates, self._day(start_date), "left"))
        hi = int(np.searchsorted(dates, self._day(end_date), "right"))
        return [d.astype(date) for d in dates[lo:hi]]

    def previous_trading_day(self, day: date) -> date:
        """The last trading day strictly before `day`."""
        dates = self.table.dates
        i = int(np.searchsorted(dates, self._day(day), "left")) - 1
        if i < 0:
            raise ValueError(f"no {self.code} trading day before {day} in the loaded calendar")
        return dates[i].astype(date)

    def next_trading_day(self, day: date) -> date:
        """The first trading day strictly after `day`."""
        dates = self.table.dates
        i = int(np.searchsorted(dates, self._day(day), "right"))
        if i >= len(dates):
            raise ValueError(f"no {self.code} trading day after {day} in the loaded calendar")
        return dates[i].astype(date)

    # ------------------------------------------------------------ sessions

    def session_bounds(self, day: date) -> list[tuple[datetime, datetime]]:
        """The continuous trading intervals of `day`, UTC: two on an HKEX full day, one on a half day or on
        NYSE (early closes included); [] when `day` is not a trading day."""
        hit = self._bounds.get(day)
        if hit is None:
            i = self.session_index(day)
            hit = [] if i is None else [(from_ns(a), from_ns(b)) for a, b in self.table.intervals_ns(i)]
            if len(self._bounds) > 1024:
                self._bounds.clear()
            self._bounds[day] = hit
        return list(hit)

    def minutes_open(self, day: date) -> list[datetime]:
        """The start (UTC) of every trading minute of `day`; [] when it is not a trading day."""
        i = self.session_index(day)
        if i is None:
            return []
        return [from_ns(ns) for ns in self.table.minute_starts_ns(i)]

    def state(self, now: datetime) -> SessionState:
        """Open, at lunch, before the open or closed — and when that changes next."""
        last = self._last_state
        if last is not None and last[0] == now:
            return last[1]
        state = self._state(now)
        self._last_state = (now, state)
        return state

    def _state(self, now: datetime) -> SessionState:
        t = to_ns(now)
        table = self.table
        today = self.local_date(now)
        i = self.session_index(today)
        if i is None:
            return self._phase_state(("no_session", today))
        o, bs, be, c = (int(table.opens[i]), int(table.break_starts[i]), int(table.break_ends[i]),
                        int(table.closes[i]))
        if t < o:
            phase = "pre_open"
        elif t >= c:
            phase = "closed"
        elif bs != _NO_BREAK and bs <= t < be:
            phase = "lunch"
        elif bs != _NO_BREAK and t < bs:
            phase = "morning"
        else:
            phase = "open"
        return self._phase_state((phase, today, i, o, bs, be, c))

    def _phase_state(self, key: tuple) -> SessionState:
        """A session's state is the same at every instant of one phase of it: built once per (day, phase)."""
        hit = self._phases.get(key)
        if hit is not None:
            return hit
        phase, today = key[0], key[1]
        if phase == "no_session":
            j = int(np.searchsorted(self.table.dates, np.datetime64(today, "D"), "right"))
            state = SessionState("closed", self._open_of(j), None, None)
        else:
            i, o, bs, be, c = key[2:]
            close = from_ns(c)
            state = {"pre_open": lambda: SessionState("pre_open", from_ns(o), close, today),
                     "closed": lambda: SessionState("closed", self._open_of(i + 1), None, today),
                     "lunch": lambda: SessionState("lunch", from_ns(be), close, today),
                     "morning": lambda: SessionState("open", from_ns(be), close, today, interval_end=from_ns(bs)),
                     "open": lambda: SessionState("open", self._open_of(i + 1), close, today, interval_end=close),
                     }[phase]()
        if len(self._phases) > 4096:
            self._phases.clear()
        self._phases[key] = state
        return state

    def is_open(self, now: datetime) -> bool:
        return self.state(now).status == "open"

    def _open_of(self, i: int) -> datetime:
        if i >= len(self.table.opens):
            raise ValueError(f"no {self.code} session after {self.last_day} in the loaded calendar")
        return from_ns(int(self.table.opens[i]))
