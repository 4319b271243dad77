"""`./run.sh data sync`: the broker's securities and daily bars into the bar store, only what is missing.

1. The universe (config `market_data.universe`: an index's constituents, the main board filtered by turnover, or
   a list) is asked of the venue and written to `securities` — unless the last finished sync of this dataset
   already listed the same universe after the last completed session (then nothing is asked again).
2. For every listed symbol whose newest stored daily bar is older than the last completed session, the venue is
   asked for the bars after it (or `market_data.history_days` calendar days back for a new symbol), in the
   venue's own batches, quotas and rate limits (the venue adapters keep them; see docs/notes/).
3. Each batch is committed on its own (data/store.py), so a killed sync loses at most the batch in flight and the
   next one resumes where it stopped. A spent quota stops the asking; the summary names what was skipped and why.

Every run is a `data_syncs` row: running -> done (everything up to date) | partial (something skipped) | failed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Callable

from core.calendar import MarketCalendar
from core.clock import Clock
from core.errors import BrokerError
from core.feeds import HistorySource, Listing, QuotaExhausted, UniverseSpec
from data.store import BarStore

log = logging.getLogger("catalyst.data.sync")


@dataclass
class SyncSummary:
    dataset: str
    up_to: str | None = None                     # the last completed session the store is brought up to
    universe: int = 0                            # listed symbols
    listed_again: bool = False                   # the venue was asked for the universe this time
    symbols_fetched: int = 0
    bars_added: int = 0
    up_to_date: int = 0                          # symbols that needed nothing
    skipped: dict[str, str] = field(default_factory=dict)    # symbol -> why
    status: str = "done"
    seconds: float = 0.0

    def render(self) -> str:
        lines = [f"data sync {self.dataset}: {self.status} — up to {self.up_to}; {self.universe} symbols in the "
                 f"universe ({'listed again' if self.listed_again else 'unchanged, not asked again'}); "
                 f"{self.symbols_fetched} fetched, {self.bars_added} bars added, {self.up_to_date} already up to "
                 f"date, {len(self.skipped)} skipped; {self.seconds:.1f} s"]
        reasons: dict[str, list[str]] = {}
        for symbol, why in self.skipped.items():
            reasons.setdefault(why, []).append(symbol)
        for why, symbols in reasons.items():
            lines.append(f"  skipped {len(symbols)} ({why}): {', '.join(symbols[:8])}"
                         f"{' …' if len(symbols) > 8 else ''}")
        return "\n".join(lines)


Progress = Callable[[int, int, int], None]       # (symbols done, symbols wanted, bars added)


def spec_key(spec: UniverseSpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), default=str, sort_keys=True).encode()).hexdigest()[:16]


def last_completed_session(calendar: MarketCalendar, now: datetime) -> date | None:
    day = calendar.local_date(now)
    for _ in range(30):
        if calendar.is_trading_day(day):
            bounds = calendar.session_bounds(day)
            if bounds and bounds[-1][1] <= now:
                return day
        day -= timedelta(days=1)
    return None


class Sync:
    def __init__(self, *, store: BarStore, history: HistorySource, spec: UniverseSpec, history_days: int,
                 clock: Clock, source: str) -> None:
        self.store = store
        self.history = history
        self.spec = spec
        self.history_days = history_days
        self.clock = clock
        self.source = source
        self._fresh_for: date | None = None     # the last completed session the store was last seen to hold

    async def is_stale(self) -> bool:
        """The store lacks the last completed session (or is empty). Bars are only ever added, so once the store
        is seen holding a session it is not asked again until a later session completes."""
        target = last_completed_session(self.store.calendar, self.clock.now())
        if target is not None and target == self._fresh_for:
            return False
        last = await self.store.last_bar_end("1d")
        stale = last is None or (target is not None and
                                 last < self.store.calendar.session_bounds(target)[-1][1])
        if not stale:
            self._fresh_for = target
        return stale

    async def run(self, *, up_to: date | None = None, since: date | None = None,
                  progress: Progress | None = None) -> SyncSummary:
        """Bring the store up to the last session completed by now (or by `up_to`, if earlier); a new symbol's
        history starts `history_days` back (or at `since`)."""
        t0 = time.perf_counter()
        now = self.clock.now()
        calendar = self.store.calendar
        summary = SyncSummary(self.store.dataset)
        target = last_completed_session(calendar, now)
        if up_to is not None and (target is None or up_to < target):
            target = calendar.previous_trading_day(up_to + timedelta(days=1))
        summary.up_to = target.isoformat() if target else None
        pool = self.store.pool
        sync_id = await pool.fetchval("INSERT INTO data_syncs (dataset, started_at, summary) VALUES ($1, $2, $3) "
                                      "RETURNING sync_id", self.store.dataset, now, {"spec": spec_key(self.spec)})
        try:
            if target is None:
                summary.status = "done"
                return summary
            symbols = await self._universe(target, summary)
            last = await self.store.last_bar_starts("1d")
            target_open = calendar.session_bounds(target)[0][0]
            first_wanted = since or calendar.local_date(now) - timedelta(days=self.history_days)
            wanted: list[tuple[str, date]] = []
            for symbol in symbols:
                have = last.get(symbol)
                if have is not None and have >= target_open:
                    summary.up_to_date += 1
                    continue
                start = calendar.local_date(have) + timedelta(days=1) if have is not None else first_wanted
                wanted.append((symbol, start))
            done: set[str] = set()
            if wanted:
                try:
                    async for batch in self.history.daily_history(wanted, target):
                        batch = {s: [b for b in bars if b.start <= target_open and
                                     (last.get(s) is None or b.start > last[s])] for s, bars in batch.items()}
                        summary.bars_added += await self.store.write_bars("1d", batch, source=self.source,
                                                                           now=self.clock.now())
                        done.update(batch)
                        if progress:
                            progress(len(done), len(wanted), summary.bars_added)
                except QuotaExhausted as exc:
                    reason = f"venue quota spent: {exc}" + (f"; resets {exc.resets.isoformat()}" if exc.resets else "")
                    summary.skipped.update({s: reason for s, _ in wanted if s not in done})
                except BrokerError as exc:
                    reason = f"venue error: {type(exc).__name__}: {exc}"[:300]
                    summary.skipped.update({s: reason for s, _ in wanted if s not in done})
            summary.symbols_fetched = len(done)
            summary.status = "partial" if summary.skipped else "done"
            return summary
        except BaseException as exc:
            summary.status = "failed"
            summary.skipped.setdefault("*", f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            try:
                await pool.execute("UPDATE data_syncs SET status = $2, finished_at = $3, summary = $4 "
                                   "WHERE sync_id = $1", sync_id, summary.status, self.clock.now(),
                                   {"spec": spec_key(self.spec), **json.loads(json.dumps(asdict(summary)))})
            except Exception as exc:      # the database went away: the row stays 'running', the error is raised
                log.error("data sync: could not record the outcome: %s", exc)

    async def _universe(self, target: date, summary: SyncSummary) -> list[str]:
        """The listed symbols; the venue is asked only when the last finished sync did not already list this
        universe at or after `target`."""
        row = await self.store.pool.fetchrow(
            "SELECT summary FROM data_syncs WHERE dataset = $1 AND status IN ('done', 'partial') "
            "ORDER BY started_at DESC, sync_id DESC LIMIT 1", self.store.dataset)
        previous = row["summary"] if row else None
        if (previous and previous.get("spec") == spec_key(self.spec) and previous.get("up_to")
                and previous["up_to"] >= target.isoformat()):
            symbols = [i.symbol for i in await self.store.instruments()]
            if symbols:
                summary.universe = len(symbols)
                return symbols
        listings: list[Listing] = await self.history.list_securities(self.spec)
        await self.store.upsert_securities(listings, source=self.source, now=self.clock.now())
        summary.listed_again = True
        listed = [li.instrument.symbol for li in listings if li.status == "listed"]
        for li in listings:
            if li.status != "listed":
                summary.skipped[li.instrument.symbol] = f"listing status {li.status}"
        summary.universe = len(listed)
        return listed


def terminal_progress(label: str) -> Progress:
    """A progress bar redrawn in place on a terminal; plain lines every tenth elsewhere."""
    t0 = time.perf_counter()

    def show(done: int, total: int, bars: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        line = (f"{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} symbols, {bars} bars, "
                f"{time.perf_counter() - t0:.0f}s")
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line + " ")
            if done == total:
                sys.stderr.write("\n")
        elif done == total or done % max(total // 10, 1) == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return show
