"""The bar store: the market's history in PostgreSQL, one place the scan, the tools and replay read.

Tables (sql/schema-catalyst-trading.sql, v5), all keyed by a *dataset* — where the history comes from
('moomoo:HKEX', 'alpaca:iex', 'sim:HKEX:7:240', 'files:HKEX:/path') — so two sources never mix:

* `securities`  symbol, name, exchange, currency, board lot, tick scheme, listing status, source, updated_at.
* `bars`        one row per (symbol, timeframe, bar start), with its end, source and ingestion time; written with
                COPY into a temporary table, then inserted with ON CONFLICT DO NOTHING (a re-sync adds nothing).
* `bar_series`  the read model: each symbol's bars as packed little-endian arrays, rewritten from `bars` for the
                symbols a write touched, so a whole-universe read is one short COPY instead of 675,000 rows.

Point in time: a bar is visible to a reader at `now` only once `bar_end <= now` (the session's close for a daily
bar), so replay and the scan never see a bar that has not completed.
"""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from core.calendar import MarketCalendar, to_ns
from core.instruments import DAILY_FIELDS, Bar, Instrument
from core.feeds import Listing

if TYPE_CHECKING:
    import asyncpg
    import pandas as pd

    from data.bar_arrays import BarArrays

_F8 = np.dtype("<f8")
_I8 = np.dtype("<i8")
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "1d")
_SERIES_COLUMNS = ("starts", "ends", "open", "high", "low", "close", "volume")
_BAR_COLUMNS = ("dataset", "symbol", "timeframe", "bar_start", "bar_end", "open", "high", "low", "close", "volume",
                "source", "ingested_at")


@dataclass(frozen=True)
class Series:
    """One symbol's bars as arrays (UTC epoch ns for starts/ends; floats for prices and volume)."""
    starts: np.ndarray
    ends: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def visible(self, now_ns: int) -> int:
        """How many leading bars have completed by now (ends are increasing)."""
        return int(np.searchsorted(self.ends, now_ns, side="right"))


@dataclass(frozen=True)
class Coverage:
    symbol: str
    bars: int
    first: date | None
    last: date | None
    missing_sessions: int           # sessions of the calendar between first and last with no bar


def read_quietly(pool, name: str, query: str, *args):
    """`name` (fetch, fetchrow, fetchval) through a pool that counts a read of rows no SoleReads query reads as no
    change (LanePool.read, runtime/lane_pool.py); the pool's own method where it has no such reads."""
    read = getattr(pool, "read", None)
    return read(name, query, *args) if read is not None else getattr(pool, name)(query, *args)


class BarStore:
    """One dataset of the bar store."""

    def __init__(self, pool: "asyncpg.Pool", *, dataset: str, exchange: str, calendar: MarketCalendar) -> None:
        self.pool = pool
        self.dataset = dataset
        self.exchange = exchange
        self.calendar = calendar
        self._series_cache: tuple[tuple, float, dict[str, Series]] | None = None
        self._listed_cache: tuple[float, list[Instrument]] | None = None     # (read at, monotonic), listed only
        self._block: _Block | None = None        # daily_frame's dense block (of one read of the dataset)
        self.generation = 0                      # moves whenever this store writes (what was read before may differ)

    # ------------------------------------------------------------------ securities
    async def upsert_securities(self, listings: Sequence[Listing], *, source: str, now: datetime) -> int:
        if not listings:
            return 0
        rows = [(self.dataset, li.instrument.symbol, li.instrument.exchange, li.instrument.currency,
                 li.instrument.name or "", li.instrument.lot_size, li.instrument.tick_scheme, li.status, source, now)
                for li in listings]
        await self.pool.executemany(
            """INSERT INTO securities (dataset, symbol, exchange, currency, name, lot_size, tick_scheme,
                   listing_status, source, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (dataset, symbol) DO UPDATE SET exchange = EXCLUDED.exchange,
                   currency = EXCLUDED.currency, name = EXCLUDED.name, lot_size = EXCLUDED.lot_size,
                   tick_scheme = EXCLUDED.tick_scheme, listing_status = EXCLUDED.listing_status,
                   source = EXCLUDED.source, updated_at = EXCLUDED.updated_at""", rows)
        self._listed_cache = None
        self.generation += 1
        return len(rows)

    async def instruments(self, *, listed_only: bool = True) -> list[Instrument]:
        """The dataset's securities (listed ones only by default). The listed ones, once read, are kept for
        SERIES_CACHE_SECONDS (real time), as the whole-dataset series read is: an upsert in this process clears
        them; one in another process is seen after that."""
        import time
        cached = self._listed_cache
        if listed_only and cached is not None and time.monotonic() - cached[0] < self.SERIES_CACHE_SECONDS:
            return list(cached[1])
        rows = await self.pool.fetch(
            "SELECT symbol, exchange, currency, name, lot_size, tick_scheme FROM securities WHERE dataset = $1 "
            "AND ($2 = false OR listing_status = 'listed') ORDER BY symbol", self.dataset, listed_only)
        found = [Instrument(symbol=r["symbol"], exchange=r["exchange"], currency=r["currency"],
                            lot_size=r["lot_size"], name=r["name"], tick_scheme=r["tick_scheme"]) for r in rows]
        if listed_only:
            self._listed_cache = (time.monotonic(), found)
        return list(found)

    async def instrument(self, symbol: str) -> Instrument | None:
        row = await self.pool.fetchrow(
            "SELECT symbol, exchange, currency, name, lot_size, tick_scheme FROM securities WHERE dataset = $1 "
            "AND symbol = $2", self.dataset, symbol)
        return None if row is None else Instrument(symbol=row["symbol"], exchange=row["exchange"],
                                                   currency=row["currency"], lot_size=row["lot_size"],
                                                   name=row["name"], tick_scheme=row["tick_scheme"])

    # ------------------------------------------------------------------ writing bars
    def bar_end(self, timeframe: str, bar: Bar) -> datetime:
        """When a bar completes: a daily bar at its session's close; an intraday one after its length."""
        if timeframe == "1d":
            day = self.calendar.local_date(bar.start)
            bounds = self.calendar.session_bounds(day)
            if not bounds:
                raise ValueError(f"{bar.symbol}: {day} is not a session of {self.calendar.code}")
            return bounds[-1][1]
        minutes = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}[timeframe]
        return datetime.fromtimestamp(bar.start.timestamp() + 60 * minutes, tz=timezone.utc)

    async def write_bars(self, timeframe: str, batch: dict[str, list[Bar]], *, source: str, now: datetime) -> int:
        """Add the bars of a batch (COPY; rows already stored are left alone) and refresh the touched symbols'
        series, in one transaction: a sync killed mid-batch leaves the store as it was before the batch.

        The bars go straight into `bars` (a sync asks only for bars after the ones it holds, so they are new); when
        some are stored already (another process synced them first) that COPY is rolled back to its savepoint and
        the batch is merged through a temporary table instead, keeping the stored rows."""
        import asyncpg
        ends: dict[datetime, datetime] = {}            # by bar start: the symbols of a batch share their sessions

        def end_of(b: Bar) -> datetime:
            end = ends.get(b.start)
            if end is None:
                end = ends[b.start] = self.bar_end(timeframe, b)
            return end

        rows = [(self.dataset, symbol, timeframe, b.start, end_of(b), b.open, b.high, b.low, b.close, int(b.volume),
                 source, now)
                for symbol, bars in batch.items() for b in bars]
        if not rows:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table("bars", records=rows, columns=_BAR_COLUMNS)
                added = len(rows)
            except asyncpg.UniqueViolationError:
                await conn.execute("CREATE TEMP TABLE IF NOT EXISTS bars_in (LIKE bars INCLUDING DEFAULTS) "
                                   "ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table("bars_in", records=rows, columns=_BAR_COLUMNS)
                added = await conn.fetchval(
                    """WITH added AS (INSERT INTO bars SELECT * FROM bars_in ON CONFLICT DO NOTHING RETURNING 1)
                       SELECT count(*) FROM added""")
            if added:
                await self._rebuild_series(conn, timeframe, sorted({r[1] for r in rows}))
        self._series_cache = None
        self.generation += 1
        return int(added)

    async def _rebuild_series(self, conn, timeframe: str, symbols: list[str]) -> None:
        rows = await conn.fetch(
            """SELECT symbol, array_agg(extract(epoch FROM bar_start)::float8 ORDER BY bar_start) AS s,
                      array_agg(extract(epoch FROM bar_end)::float8 ORDER BY bar_start) AS e,
                      array_agg(open::float8 ORDER BY bar_start) AS o, array_agg(high::float8 ORDER BY bar_start) AS h,
                      array_agg(low::float8 ORDER BY bar_start) AS l, array_agg(close::float8 ORDER BY bar_start) AS c,
                      array_agg(volume::float8 ORDER BY bar_start) AS v
               FROM bars WHERE dataset = $1 AND timeframe = $2 AND symbol = ANY($3::text[]) GROUP BY symbol""",
            self.dataset, timeframe, symbols)
        packed = []
        for r in rows:
            starts = (np.asarray(r["s"], dtype=np.float64) * 1e9).round().astype(_I8)
            ends = (np.asarray(r["e"], dtype=np.float64) * 1e9).round().astype(_I8)
            packed.append((self.dataset, timeframe, r["symbol"], len(starts), starts.tobytes(), ends.tobytes(),
                           *(np.asarray(r[k], dtype=_F8).tobytes() for k in ("o", "h", "l", "c", "v"))))
        await conn.executemany(
            """INSERT INTO bar_series (dataset, timeframe, symbol, n, starts, ends, open, high, low, close, volume,
                   updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
               ON CONFLICT (dataset, timeframe, symbol) DO UPDATE SET n = EXCLUDED.n, starts = EXCLUDED.starts,
                   ends = EXCLUDED.ends, open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
                   close = EXCLUDED.close, volume = EXCLUDED.volume, updated_at = now()""", packed)

    # ------------------------------------------------------------------ reading
    async def last_bar_starts(self, timeframe: str = "1d") -> dict[str, datetime]:
        """Each symbol's newest stored bar start (what a sync continues after)."""
        rows = await self.pool.fetch("SELECT symbol, max(bar_start) AS last FROM bars WHERE dataset = $1 "
                                     "AND timeframe = $2 GROUP BY symbol", self.dataset, timeframe)
        return {r["symbol"]: r["last"] for r in rows}

    async def last_bar_end(self, timeframe: str = "1d") -> datetime | None:
        return await read_quietly(self.pool, "fetchval", "SELECT max(bar_end) FROM bars WHERE dataset = $1 "
                                  "AND timeframe = $2", self.dataset, timeframe)

    # A whole-dataset read is kept this long (real seconds) for the reads of single symbols that follow it (the
    # tools' technicals after a scan): a sync in this process clears it; one in another process is seen after it.
    SERIES_CACHE_SECONDS = 60.0

    async def series(self, symbols: Sequence[str] | None = None, timeframe: str = "1d") -> dict[str, Series]:
        """Packed series of `symbols` (all when None): one binary COPY, parsed without a Python loop per bar."""
        import time
        cached = self._series_cache
        if cached is not None and cached[0] == (timeframe, ) and time.monotonic() - cached[1] < self.SERIES_CACHE_SECONDS:
            everything = cached[2]
            return everything if symbols is None else {s: everything[s] for s in symbols if s in everything}
        found = await self._read_series(symbols, timeframe)
        if symbols is None:
            self._series_cache = ((timeframe, ), time.monotonic(), found)
        return found

    def forget_cached(self) -> None:
        """The next read goes to PostgreSQL (a bench measuring the read; a caller that knows the store changed)."""
        self._series_cache = None
        self._listed_cache = None

    async def _read_series(self, symbols: Sequence[str] | None, timeframe: str) -> dict[str, Series]:
        chunks: list[bytes] = []

        async def out(chunk: bytes) -> None:
            chunks.append(chunk)

        where = "dataset = $1 AND timeframe = $2" + (" AND symbol = ANY($3::text[])" if symbols is not None else "")
        args: list[Any] = [self.dataset, timeframe] + ([list(symbols)] if symbols is not None else [])
        async with self.pool.acquire() as conn:
            await conn.copy_from_query(f"SELECT symbol, {', '.join(_SERIES_COLUMNS)} FROM bar_series WHERE {where}",
                                       *args, output=out, format="binary")
        return _parse_series(b"".join(chunks))

    async def daily_frame(self, symbols: Sequence[str], end: datetime, lookback_days: int) -> dict[str, "pd.DataFrame"]:
        """{"open"|"high"|"low"|"close"|"volume": DataFrame(session date x symbol, float, NaN where no bar)} of the
        last `lookback_days` sessions whose close is at or before `end`: the scan's frames.

        They are sliced from a block of every symbol's bars on the calendar's sessions (`_Block`), laid out once for
        this read of the dataset and the next DENSE_AHEAD sessions' windows (a replay's daily scans), not symbol by
        symbol for each scan. The block may hold bars after `end` (the dataset does); the slice never does."""
        import pandas as pd
        series = await self.series()                    # the whole dataset, kept for the single-symbol reads after
        symbols = list(symbols)
        table = self.calendar.table
        done = int(np.searchsorted(table.closes, to_ns(end), "right"))     # sessions completed by `end`
        lo = max(done - int(lookback_days), 0)
        block = self._block
        if block is None or not block.serves(series, symbols, lo, done):
            block = self._block = await asyncio.to_thread(_Block, series, symbols, table.closes, lo,
                                                          min(done + self.DENSE_AHEAD, len(table.closes)))
        return block.frames(lo, done, pd.DatetimeIndex(table.dates[lo:done], name="date"), pd)

    # How many sessions past the window asked for a dense block covers (the next scans' windows slide into them).
    DENSE_AHEAD = 60

    async def symbol_bars(self, symbol: str, start: datetime, end: datetime) -> "BarArrays | None":
        """One symbol's completed daily bars with start in [start, end) as arrays (views of the dataset read, no
        copy); None when the store does not hold the symbol."""
        from data.bar_arrays import BarArrays
        found = (await self.series([symbol])).get(symbol)
        if found is None:
            return None
        lo = int(np.searchsorted(found.starts, to_ns(start), side="left"))
        hi = min(found.visible(to_ns(end)), int(np.searchsorted(found.starts, to_ns(end), side="left")))
        hi = max(hi, lo)
        return BarArrays(found.starts[lo:hi], found.open[lo:hi], found.high[lo:hi], found.low[lo:hi],
                         found.close[lo:hi], found.volume[lo:hi])

    async def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> list[Bar]:
        """Completed bars with start in [start, end), oldest first (Decimal prices, as stored)."""
        rows = await self.pool.fetch(
            "SELECT bar_start, open, high, low, close, volume FROM bars WHERE dataset = $1 AND timeframe = $2 "
            "AND symbol = $3 AND bar_start >= $4 AND bar_start < $5 AND bar_end <= $5 ORDER BY bar_start",
            self.dataset, timeframe, symbol, start, end)
        return [Bar(symbol, r["bar_start"], r["open"], r["high"], r["low"], r["close"], r["volume"]) for r in rows]

    async def coverage(self, timeframe: str = "1d") -> list[Coverage]:
        rows = await self.pool.fetch(
            "SELECT symbol, count(*) AS n, min(bar_start) AS first, max(bar_start) AS last FROM bars "
            "WHERE dataset = $1 AND timeframe = $2 GROUP BY symbol ORDER BY symbol", self.dataset, timeframe)
        out = []
        for r in rows:
            first, last = self.calendar.local_date(r["first"]), self.calendar.local_date(r["last"])
            sessions = len(self.calendar.trading_days(first, last)) if timeframe == "1d" else r["n"]
            out.append(Coverage(r["symbol"], r["n"], first, last, max(sessions - r["n"], 0)))
        return out

    async def freshness(self) -> dict[str, datetime]:
        """The newest bar end per timeframe (what heartbeat reports)."""
        rows = await self.pool.fetch(     # one index probe per timeframe (bars_dataset_end), not a scan of all bars
            "SELECT tf, (SELECT max(bar_end) FROM bars WHERE dataset = $1 AND timeframe = tf) AS last "
            "FROM unnest($2::text[]) AS tf", self.dataset, list(TIMEFRAMES))
        return {r["tf"]: r["last"] for r in rows if r["last"] is not None}


# ---------------------------------------------------------------- binary COPY parsing

def _parse_series(data: bytes) -> dict[str, Series]:
    """PostgreSQL binary COPY rows of (symbol text, 7 x bytea) -> {symbol: Series} (arrays are views, no copy)."""
    out: dict[str, Series] = {}
    view = memoryview(data)
    pos = 19                                          # signature (11) + flags (4) + header extension length (4)
    unpack_h, unpack_i = struct.Struct(">h").unpack_from, struct.Struct(">i").unpack_from
    while True:
        (fields,) = unpack_h(view, pos)
        pos += 2
        if fields == -1:
            break
        (size,) = unpack_i(view, pos)
        symbol = bytes(view[pos + 4:pos + 4 + size]).decode()
        pos += 4 + size
        arrays = []
        for k in range(7):
            (size,) = unpack_i(view, pos)
            arrays.append(np.frombuffer(view[pos + 4:pos + 4 + size], dtype=_I8 if k < 2 else _F8))
            pos += 4 + size
        out[symbol] = Series(*arrays)
    return out


class _Block:
    """Every symbol's daily bars on calendar sessions [lo, hi) (rows) x `symbols` (columns), NaN where a symbol has
    no bar: a bar sits on the session whose close is its end (a bar ending at no session close is left out)."""

    def __init__(self, series: dict[str, Series], symbols: list[str], closes_all: np.ndarray, lo: int,
                 hi: int) -> None:
        self.series, self.symbols, self.lo, self.hi = series, list(symbols), lo, hi
        closes = closes_all[lo:hi]
        self.values = {f: np.full((len(closes), len(symbols)), np.nan) for f in DAILY_FIELDS}
        if not len(closes):
            return
        for j, symbol in enumerate(symbols):
            s = series.get(symbol)
            if s is None:
                continue
            ends = s.ends
            upto = int(np.searchsorted(ends, closes[-1], side="right"))
            start = int(np.searchsorted(ends, closes[0], side="left"))
            if upto <= start:
                continue
            rows = np.searchsorted(closes, ends[start:upto])
            hit = (rows < len(closes)) & (closes[np.minimum(rows, len(closes) - 1)] == ends[start:upto])
            rows = rows[hit]
            for f in DAILY_FIELDS:
                self.values[f][rows, j] = getattr(s, f)[start:upto][hit]

    def serves(self, series: dict[str, Series], symbols: list[str], lo: int, hi: int) -> bool:
        """Laid out from this very read of the dataset, for these symbols, over rows covering [lo, hi)."""
        return series is self.series and symbols == self.symbols and self.lo <= lo and hi <= self.hi

    def frames(self, lo: int, hi: int, index, pd) -> dict[str, "pd.DataFrame"]:
        columns = self.__dict__.get("_columns")
        if columns is None:                      # the symbols as an Index once per block, not per frame and scan
            columns = self._columns = pd.Index(self.symbols)
        return {f: pd.DataFrame(self.values[f][lo - self.lo:hi - self.lo], index=index, columns=columns)
                for f in DAILY_FIELDS}


def group(items: Iterable[Any], size: int) -> list[list[Any]]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]
