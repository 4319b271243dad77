"""The bar store and its sync: COPY-written rows, point-in-time reads, resumable and idempotent syncs."""
from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
import pytest

from brokers.paper.simulated import SimulatedMarket
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.feeds import Listing, QuotaExhausted, UniverseSpec
from data.store import BarStore
from data.sync import Sync

CAL = MarketCalendar("HKEX")
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)          # after Tuesday's close in Hong Kong


class MarketHistory:
    """A HistorySource over the simulated market that counts what it is asked and can run out of quota."""

    def __init__(self, market: SimulatedMarket, *, quota: int | None = None, batch: int = 25) -> None:
        self.market = market
        self.quota = quota
        self.batch = batch
        self.list_calls = 0
        self.history_calls = 0
        self.symbols_asked: list[str] = []

    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        self.list_calls += 1
        return [Listing(i) for i in self.market.instruments()]

    async def daily_history(self, wanted, end: date):
        for i in range(0, len(wanted), self.batch):
            chunk = wanted[i:i + self.batch]
            out = {}
            for symbol, start in chunk:
                if self.quota is not None and len(self.symbols_asked) >= self.quota:
                    raise QuotaExhausted(f"{self.quota} symbols a month")
                self.symbols_asked.append(symbol)
                self.history_calls += 1
                lo = datetime.combine(start, time(0), tzinfo=CAL.tz)
                hi = CAL.session_bounds(end)[-1][1]
                out[symbol] = list(self.market.bars(symbol, "1d", lo, hi))
            yield out


def market(n: int = 30) -> SimulatedMarket:
    return SimulatedMarket(seed=11, exchange="HKEX", n_symbols=n, calendar=CAL)


def make(pool, history, *, clock=None, dataset=None) -> tuple[BarStore, Sync]:
    store = BarStore(pool, dataset=dataset or f"test:{uuid.uuid4().hex[:8]}", exchange="HKEX", calendar=CAL)
    sync = Sync(store=store, history=history, spec=UniverseSpec(kind="board"), history_days=200,
                clock=clock or SimulatedClock(NOW), source="test")
    return store, sync


async def test_a_sync_fills_securities_and_bars_and_frames_match_the_source(pool):
    m = market()
    store, sync = make(pool, MarketHistory(m))
    summary = await sync.run()
    assert summary.status == "done" and summary.universe == 30 and summary.up_to == "2026-11-24"
    assert summary.bars_added == await pool.fetchval("SELECT count(*) FROM bars WHERE dataset = $1", store.dataset)
    assert [i.symbol for i in await store.instruments()] == [i.symbol for i in m.instruments()]
    assert {i.symbol: i.lot_size for i in await store.instruments()} == {i.symbol: i.lot_size for i in m.instruments()}
    symbols = [i.symbol for i in m.instruments()]
    ours = await store.daily_frame(symbols, NOW, 60)
    theirs = m.daily_frame(symbols, NOW, 60)
    for field in ("open", "high", "low", "close", "volume"):
        assert list(ours[field].index) == list(theirs[field].index)
        np.testing.assert_array_equal(ours[field].to_numpy(), theirs[field].to_numpy())


async def test_reads_are_point_in_time(pool):
    m = market(5)
    store, sync = make(pool, MarketHistory(m))
    await sync.run()
    symbol = m.instruments()[0].symbol
    monday_noon = datetime(2026, 11, 24, 4, 0, tzinfo=timezone.utc)     # Tuesday's session has not closed
    frame = await store.daily_frame([symbol], monday_noon, 10)
    assert frame["close"].index[-1].date() == date(2026, 11, 23)
    bars = await store.bars(symbol, "1d", monday_noon - timedelta(days=5), monday_noon)
    assert bars and all(CAL.local_date(b.start) < date(2026, 11, 24) for b in bars)


async def test_frames_slid_day_by_day_from_one_block_equal_a_fresh_layout_and_never_see_past_end(pool):
    """A replay's scans read a window one session later each day: one block laid out for a read of the dataset
    serves them (laid out again past DENSE_AHEAD sessions); every frame equals the source's own frame for that
    window and holds no bar that has not completed by `end`."""
    m = market(8)
    store, sync = make(pool, MarketHistory(m))
    await sync.run()
    symbols = [i.symbol for i in m.instruments()]
    days = CAL.trading_days(NOW.date() - timedelta(days=130), NOW.date())[-80:]
    blocks: list = []
    for day in days:
        end = CAL.session_bounds(day)[-1][1] - timedelta(minutes=30)     # the day's bar has not completed
        ours = await store.daily_frame(symbols, end, 30)
        if not any(b is store._block for b in blocks):
            blocks.append(store._block)
        fresh = m.daily_frame(symbols, end, 30)
        assert ours["close"].index[-1].date() < day
        for field in ("open", "high", "low", "close", "volume"):
            assert list(ours[field].index) == list(fresh[field].index)
            assert list(ours[field].columns) == symbols
            np.testing.assert_array_equal(ours[field].to_numpy(), fresh[field].to_numpy())
    assert 1 < len(blocks) <= 1 + len(days) // store.DENSE_AHEAD


async def test_a_second_sync_adds_nothing_and_asks_nothing(pool):
    history = MarketHistory(market())
    store, sync = make(pool, history)
    await sync.run()
    lists, asks = history.list_calls, history.history_calls
    again = await sync.run()
    assert again.bars_added == 0 and again.status == "done" and again.up_to_date == 30
    assert (history.list_calls, history.history_calls) == (lists, asks)
    assert not again.listed_again


async def test_the_next_session_fetches_only_the_new_bar(pool):
    history = MarketHistory(market())
    clock = SimulatedClock(NOW)
    store, sync = make(pool, history, clock=clock)
    await sync.run()
    before = await pool.fetchval("SELECT count(*) FROM bars WHERE dataset = $1", store.dataset)
    clock.set(NOW + timedelta(days=1))
    summary = await sync.run()
    assert summary.bars_added == 30 and summary.symbols_fetched == 30
    assert await pool.fetchval("SELECT count(*) FROM bars WHERE dataset = $1", store.dataset) == before + 30


async def test_a_spent_quota_keeps_what_came_and_the_next_sync_resumes(pool):
    m = market()
    dataset = f"test:{uuid.uuid4().hex[:8]}"
    limited = MarketHistory(m, quota=12, batch=5)
    store, sync = make(pool, limited, dataset=dataset)
    partial = await sync.run()
    assert partial.status == "partial" and len(partial.skipped) == 30 - 10        # two whole batches were stored
    assert all("quota" in why for why in partial.skipped.values())
    assert await pool.fetchval("SELECT count(DISTINCT symbol) FROM bars WHERE dataset = $1", dataset) == 10
    store2, resumed = make(pool, MarketHistory(m), dataset=dataset)
    done = await resumed.run()
    assert done.status == "done" and done.symbols_fetched == 20
    reference, full = make(pool, MarketHistory(m))
    await full.run()
    ours = await pool.fetch("SELECT symbol, bar_start, close, volume FROM bars WHERE dataset = $1 ORDER BY 1, 2",
                            dataset)
    theirs = await pool.fetch("SELECT symbol, bar_start, close, volume FROM bars WHERE dataset = $1 ORDER BY 1, 2",
                              reference.dataset)
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]


async def test_a_sync_is_recorded_with_its_outcome(pool):
    store, sync = make(pool, MarketHistory(market(), quota=3, batch=1))
    summary = await sync.run()
    row = await pool.fetchrow("SELECT status, finished_at, summary FROM data_syncs WHERE dataset = $1",
                              store.dataset)
    assert row["status"] == "partial" and row["finished_at"] is not None
    assert row["summary"]["bars_added"] == summary.bars_added and len(row["summary"]["skipped"]) == 27


@pytest.mark.parametrize("stale_days", [0, 3])
async def test_staleness_is_the_last_completed_session(pool, stale_days):
    clock = SimulatedClock(NOW)
    store, sync = make(pool, MarketHistory(market(5)), clock=clock)
    assert await sync.is_stale()
    await sync.run()
    clock.set(NOW + timedelta(days=stale_days))
    assert await sync.is_stale() == (stale_days > 0)


async def test_a_fresh_store_is_not_asked_again_until_the_next_session_completes(pool):
    """Bars are only added: once the store holds the last completed session, staleness is known without a query
    until a later session completes (then the store is asked, and found stale)."""
    clock = SimulatedClock(NOW)
    store, sync = make(pool, MarketHistory(market(5)), clock=clock)
    await sync.run()
    asked = []
    real = store.last_bar_end

    async def counting(timeframe="1d"):
        asked.append(timeframe)
        return await real(timeframe)
    store.last_bar_end = counting
    assert not await sync.is_stale() and len(asked) == 1
    clock.set(NOW + timedelta(hours=1))
    assert not await sync.is_stale() and len(asked) == 1
    clock.set(NOW + timedelta(days=3))
    assert await sync.is_stale() and len(asked) == 2


async def test_the_listed_securities_kept_in_memory_follow_an_upsert(pool):
    """The listed securities are kept after a read (the scan asks every session); an upsert in this process
    replaces them: a symbol delisted by the venue is gone from the next read."""
    m = market(5)
    store, sync = make(pool, MarketHistory(m))
    await sync.run()
    first = await store.instruments()
    assert [i.symbol for i in first] == sorted(i.symbol for i in m.instruments())
    gone = first[0]
    await store.upsert_securities([Listing(gone, status="delisted")], source="test", now=NOW)
    assert [i.symbol for i in await store.instruments()] == [i.symbol for i in first[1:]]
    assert gone.symbol in [i.symbol for i in await store.instruments(listed_only=False)]


async def test_one_symbols_arrays_are_the_venues_bars_and_views_of_the_read(pool):
    """The technicals and patterns read the store's arrays for the window (no frame per symbol): the same bars as
    the venue serves, for the same [start, end), and nothing past `end`."""
    m = market(3)
    store, sync = make(pool, MarketHistory(m))
    await sync.run()
    symbol = m.instruments()[2].symbol
    start, end = NOW - timedelta(days=150), NOW - timedelta(days=20)
    ours = await store.symbol_bars(symbol, start, end)
    theirs = m.bars(symbol, "1d", start, end)
    assert len(ours) == len(theirs) > 70
    assert [ours.time(k) for k in range(len(ours))] == [b.start for b in theirs]
    for field in ("open", "high", "low", "close", "volume"):
        assert getattr(ours, field).tolist() == [float(getattr(b, field)) for b in theirs]
    assert await store.symbol_bars("NOPE", start, end) is None


async def test_a_batch_partly_stored_already_keeps_the_stored_rows_and_adds_the_rest(pool):
    """Bars another process stored first (two syncs racing): the batch's COPY straight into `bars` fails on them,
    rolls back to its savepoint, and the batch is merged instead: the stored rows stay as they were, the new ones
    are added and counted, and the series hold every bar once."""
    m = market(2)
    store, _ = make(pool, MarketHistory(m))
    symbol = m.instruments()[0].symbol
    bars = list(m.bars(symbol, "1d", NOW - timedelta(days=60), NOW))
    first = await store.write_bars("1d", {symbol: bars[:20]}, source="first", now=NOW)
    again = await store.write_bars("1d", {symbol: bars[10:]}, source="second", now=NOW)
    assert (first, again) == (20, len(bars) - 20)
    sources = await pool.fetch("SELECT source, count(*) AS n FROM bars WHERE dataset = $1 GROUP BY source "
                               "ORDER BY source", store.dataset)
    assert [(r["source"], r["n"]) for r in sources] == [("first", 20), ("second", len(bars) - 20)]
    assert await store.write_bars("1d", {symbol: bars}, source="third", now=NOW) == 0
    stored = await store.symbol_bars(symbol, NOW - timedelta(days=60), NOW)
    assert [stored.time(k) for k in range(len(stored))] == [b.start for b in bars]
