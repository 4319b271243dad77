"""What the bar store asks of OpenD (`core.feeds.HistorySource`): the universe and daily K-lines, inside OpenD's
documented limits (`limits.py`).

Universe (`list_securities`), every symbol canonical (core.symbols), every Listing with OpenD's name and board lot:

    'list'   get_stock_basicinfo(code_list=the symbols): a code OpenD does not know comes back named "unknown
             stock" with no lot (left out, logged); `delisting` -> status 'delisted'. The rest: snapshots.
    'index'  get_plate_stock(spec.index), e.g. 'HK.800000' or 'HK.HSI Constituent Stocks', then snapshots.
    'board'  get_stock_basicinfo(Market.HK, SecurityType.STOCK): main-board common stocks that are not delisted,
             then snapshots; those whose turnover is at least `min_turnover`, the `max_symbols` largest by it.

Snapshots go 400 codes a request, at most 60 requests in 30 seconds; their `suspension` gives 'suspended' and
their `turnover` the last session's traded value (the snapshot's session turnover; the sync runs outside trading
hours, when that is the last completed session's).

Daily history (`daily_history`): request_history_kline(K_DAY, autype QFQ, 1000 K-lines a page, paging on
page_req_key until OpenD returns none), one symbol at a time, one batch per symbol. The first page of each symbol
counts against OpenD's 60-in-30-seconds limit (later pages do not), so first pages wait their turn. Before the
first request the history K-line quota is read (get_history_kl_quota): a symbol fetched in the last 30 days is
free, any other uses one unit; when none is left, `QuotaExhausted` (with the earliest release time) is raised
after the batches already yielded.

Waits are timed on `rate_clock` with `sleep` (real time and asyncio.sleep in production; a test passes a simulated
clock and a sleep that moves it). They are never timed on the market clock: OpenD counts real seconds, also while a
replay's market clock stands still.

Adjustment: forward-adjusted (QFQ), the SDK's default and what `MoomooBroker.get_bars` returns, so the bars the
scan reads from the store and the bars the agent's tools fetch live agree, the newest bar is the price that trades
now, and a split or dividend leaves no false gap in the indicators. The cost: a corporate action re-bases every
earlier bar, so bars stored before it are on the old base until the symbol's history is fetched again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from brokers.moomoo import mapping
from brokers.moomoo.limits import (KL_QUOTA_DAYS, KLINE_FIRST_PAGE_RATE, KLINE_PAGE_MAX, MARGIN, PLATE_RATE,
                                   SNAPSHOT_CODES_MAX, SNAPSHOT_RATE, RateWindow, Sleep)
from brokers.moomoo.mapping import to_moomoo_code
from brokers.moomoo.sdk import OpenDBusy, OpenDSession, is_unknown_symbol
from core.clock import Clock
from core.errors import BrokerUnavailable, InvalidRequest
from core.feeds import Listing, QuotaExhausted, UniverseSpec
from core.instruments import Bar
from core.symbols import canonical_symbol

if TYPE_CHECKING:
    from core.calendar import MarketCalendar

log = logging.getLogger(__name__)

BUSY_RETRIES = 3          # OpenD still refused for frequency (another process shares the account's limit)


@dataclass
class _Quota:
    used: int
    remain: int
    fetched: set[str] = field(default_factory=set)      # codes fetched in the last 30 days: free to fetch again
    resets: datetime | None = None                      # when the earliest unit is released


class OpenDHistory:
    """The bar store's questions to one OpenD quote context, each inside OpenD's documented limits."""

    def __init__(self, opend: OpenDSession, *, clock: Clock, calendar: "MarketCalendar", rate_clock: Clock,
                 sleep: Sleep, snapshot_batch: int = SNAPSHOT_CODES_MAX) -> None:
        """`clock` is the market's (which bars are complete); `rate_clock` and `sleep` time OpenD's limits and its
        quota, which run on real time even when the market clock is simulated (a replay against a gateway)."""
        self._opend = opend
        self.clock = clock
        self.calendar = calendar
        self.rate_clock = rate_clock
        self.sleep = sleep
        self.snapshot_batch = snapshot_batch
        pace = dict(clock=rate_clock, sleep=sleep)
        self.snapshots = RateWindow("snapshots", *SNAPSHOT_RATE, **pace)
        self.first_pages = RateWindow("history K-line first pages", *KLINE_FIRST_PAGE_RATE, **pace)
        self.plates = RateWindow("plate constituents", *PLATE_RATE, **pace)

    # ------------------------------------------------------------ the universe
    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        if spec.kind == "list":
            return await self._listed(spec.symbols)
        if spec.kind == "index":
            if not spec.index:
                raise InvalidRequest("universe kind 'index' needs the index's moomoo code (e.g. HK.800000 or "
                                     "'HK.HSI Constituent Stocks')")
            return await self._constituents(spec.index)
        if spec.kind == "board":
            return await self._board(spec)
        raise InvalidRequest(f"unknown universe kind {spec.kind!r}; moomoo answers 'list', 'index' and 'board'")

    async def _listed(self, symbols: tuple[str, ...]) -> list[Listing]:
        codes = list(dict.fromkeys(to_moomoo_code(s) for s in symbols))
        if not codes:
            return []
        sdk = self._opend.sdk
        rows = {r["code"]: r for r in mapping.records(await self._opend.call(
            "get_stock_basicinfo", self._q().get_stock_basicinfo, sdk.Market.HK, sdk.SecurityType.STOCK, codes))}
        unknown = [c for c in codes if c not in rows or int(rows[c].get("lot_size") or 0) <= 0]
        if unknown:
            log.warning("moomoo: OpenD knows no security %s; left out of the universe", ", ".join(unknown))
        out: dict[str, Listing] = {c: mapping.listing(c, rows[c], status="delisted") for c in codes
                                   if c not in unknown and mapping.flag(rows[c].get("delisting"))}
        out.update(await self._with_snapshots([c for c in codes if c not in unknown and c not in out]))
        return [out[c] for c in codes if c in out]

    async def _constituents(self, plate: str) -> list[Listing]:
        rows = mapping.records(await self._limited(self.plates, "get_plate_stock", self._q().get_plate_stock, plate))
        codes = list(dict.fromkeys(r["code"] for r in rows))
        found = await self._with_snapshots(codes)
        return [found[c] for c in codes if c in found]

    async def _board(self, spec: UniverseSpec) -> list[Listing]:
        sdk = self._opend.sdk
        rows = mapping.records(await self._opend.call("get_stock_basicinfo", self._q().get_stock_basicinfo,
                                                      sdk.Market.HK, sdk.SecurityType.STOCK))
        main = [r["code"] for r in rows
                if r.get("exchange_type") == "HK_MAINBOARD" and not mapping.flag(r.get("delisting"))]
        found = await self._with_snapshots(main)
        keep = [li for li in found.values() if (li.turnover or 0) >= spec.min_turnover]
        keep.sort(key=lambda li: (-(li.turnover or 0), li.instrument.symbol))
        return keep[:spec.max_symbols]

    async def _with_snapshots(self, codes: list[str]) -> dict[str, Listing]:
        """code -> Listing from snapshots, `snapshot_batch` codes a request within the frequency limit."""
        out: dict[str, Listing] = {}
        for i in range(0, len(codes), self.snapshot_batch):
            out.update(await self._snapshot_batch(codes[i:i + self.snapshot_batch]))
        return out

    async def _snapshot_batch(self, chunk: list[str]) -> dict[str, Listing]:
        """One snapshot request; OpenD refuses a whole request for one code it does not know (one listed a moment
        ago, one gone since the basic info), so a refused batch is halved until that code stands alone, left out."""
        try:
            data = await self._limited(self.snapshots, "get_market_snapshot", self._q().get_market_snapshot, chunk)
        except BrokerUnavailable as exc:
            if not is_unknown_symbol(exc) or isinstance(exc, OpenDBusy):
                raise
            if len(chunk) == 1:
                log.warning("moomoo: no snapshot of %s (%s); left out of the universe", chunk[0], exc)
                return {}
            half = len(chunk) // 2
            return {**await self._snapshot_batch(chunk[:half]), **await self._snapshot_batch(chunk[half:])}
        return {row["code"]: mapping.listing(row["code"], row, status=mapping.snapshot_status(row),
                                             turnover=mapping.dec(row.get("turnover")) or Decimal(0))
                for row in mapping.records(data)}

    # ------------------------------------------------------------ daily history
    async def daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        quota: _Quota | None = None
        for n, (symbol, start) in enumerate(wanted):
            code, ours = to_moomoo_code(symbol), canonical_symbol(symbol, "HKEX")
            if start > end:
                yield {ours: []}
                continue
            quota = quota or await self._quota()
            if code not in quota.fetched and quota.remain <= 0:
                raise QuotaExhausted(f"moomoo history K-line quota spent ({quota.used} symbols in the last "
                                     f"{KL_QUOTA_DAYS} days); {len(wanted) - n} symbols not fetched",
                                     resets=quota.resets)
            try:
                rows = await self._klines(code, start, end)
            except QuotaExhausted as exc:         # spent meanwhile (another process on the same account)
                raise QuotaExhausted(str(exc), resets=quota.resets) from exc
            except BrokerUnavailable as exc:
                if not is_unknown_symbol(exc) or isinstance(exc, OpenDBusy):
                    raise
                log.warning("moomoo: no history for %s: %s", symbol, exc)
                yield {ours: []}
                continue
            if code not in quota.fetched:          # it took a unit now: released 30 days from now
                quota.fetched.add(code)
                quota.used, quota.remain = quota.used + 1, quota.remain - 1
                released = self.rate_clock.now() + timedelta(days=KL_QUOTA_DAYS)
                quota.resets = min(quota.resets or released, released)
            yield {ours: self._bars(ours, rows, start, end)}

    async def _quota(self) -> _Quota:
        used, remain, detail = await self._opend.call("get_history_kl_quota", self._q().get_history_kl_quota,
                                                      get_detail=True)
        times = [t for t in (mapping.hkt(d.get("request_time")) for d in detail) if t is not None]
        resets = min(times) + timedelta(days=KL_QUOTA_DAYS) if times else None
        return _Quota(int(used), int(remain), {d["code"] for d in detail}, resets)

    async def _klines(self, code: str, start: date, end: date) -> list[dict[str, Any]]:
        """Every daily K-line of `code` in [start, end], page after page (only the first page waits its turn)."""
        sdk = self._opend.sdk
        rows: list[dict[str, Any]] = []
        key: bytes | None = None
        while True:
            data, key = await self._limited(
                None if rows or key else self.first_pages, "request_history_kline", self._q().request_history_kline,
                code, start=start.isoformat(), end=end.isoformat(), ktype=sdk.KLType.K_DAY, autype=sdk.AuType.QFQ,
                max_count=KLINE_PAGE_MAX, page_req_key=key, full=True)
            rows.extend(mapping.records(data))
            if key is None:
                return rows

    def _bars(self, symbol: str, rows: list[dict[str, Any]], start: date, end: date) -> list[Bar]:
        """Rows -> bars of sessions in [start, end] that are complete by the clock, oldest first, one a session."""
        now = self.clock.now()
        out: dict[datetime, Bar] = {}
        for row in rows:
            made = mapping.daily_bar(symbol, row, self.calendar)
            if made is None:
                continue
            bar, done_at = made
            if start <= self.calendar.local_date(bar.start) <= end and done_at <= now:
                out[bar.start] = bar
        return [out[k] for k in sorted(out)]

    # ------------------------------------------------------------ plumbing
    def _q(self) -> Any:
        return self._opend.quote_context()

    async def _limited(self, window: RateWindow | None, what: str, fn: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> Any:
        """One SDK call after its turn in `window`; refused for frequency anyway (the account's limit is shared by
        every process on it), it waits a whole window and asks again, up to BUSY_RETRIES times."""
        for attempt in range(1, BUSY_RETRIES + 1):
            if window is not None:
                await window.acquire()
            try:
                return await self._opend.call(what, fn, *args, **kwargs)
            except OpenDBusy as exc:
                if attempt == BUSY_RETRIES or window is None:
                    raise
                wait = (window.window + MARGIN).total_seconds()
                log.warning("%s; waiting %gs before asking again", exc, wait)
                await self.sleep(wait)
        raise AssertionError("unreachable")
