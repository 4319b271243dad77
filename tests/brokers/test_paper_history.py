"""The paper venue as the bar store's HistorySource: its price feed's instruments and daily bars, by list and
board (index: a clear error), in batches, never past its clock."""
from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from brokers.paper.broker import PaperBroker
from brokers.paper.simulated import SimulatedMarket
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.errors import InvalidRequest
from core.feeds import HistorySource, UniverseSpec
from tests.venues import paper_config

CAL = MarketCalendar("HKEX")
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)          # Tuesday 17:00 HKT, after the close
LAST = date(2026, 11, 24)


@functools.cache
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=11, exchange="HKEX", n_symbols=450, calendar=CAL)


def broker(pool, clock: SimulatedClock | None = None) -> PaperBroker:
    return PaperBroker(pool, market(), clock or SimulatedClock(NOW), CAL, account_id="t_history", currency="HKD",
                       config=paper_config())


def last_turnover(symbol: str) -> Decimal:
    bar = market().bars(symbol, "1d", NOW - timedelta(days=10), NOW)[-1]
    return bar.close * bar.volume


async def collect(b: PaperBroker, wanted, end: date = LAST) -> list[dict]:
    return [batch async for batch in b.daily_history(wanted, end)]


async def test_a_list_universe_is_the_feeds_instruments_and_leaves_unknown_symbols_out(pool):
    b = broker(pool)
    assert isinstance(b, HistorySource)
    got = await b.list_securities(UniverseSpec(kind="list", symbols=("S0003", "S0001", "S9999")))
    assert [li.instrument for li in got] == [market().instrument("S0003"), market().instrument("S0001")]
    assert all(li.status == "listed" for li in got) and got[0].turnover == last_turnover("S0003")


async def test_the_board_is_every_instrument_over_the_turnover_floor_largest_first(pool):
    b = broker(pool)
    everything = await b.list_securities(UniverseSpec(kind="board"))
    assert len(everything) == 450
    floor = Decimal(40_000_000)
    got = await b.list_securities(UniverseSpec(kind="board", min_turnover=floor, max_symbols=60))
    expected = sorted((i.symbol for i in market().instruments() if last_turnover(i.symbol) >= floor),
                      key=lambda s: (-last_turnover(s), s))
    assert len(expected) > 60 and [li.instrument.symbol for li in got] == expected[:60]
    assert all(li.turnover >= floor for li in got)


async def test_an_index_universe_is_a_clear_error(pool):
    with pytest.raises(InvalidRequest, match="no indices"):
        await broker(pool).list_securities(UniverseSpec(kind="index", index="HK.800000"))


async def test_history_comes_200_symbols_a_batch_bar_for_bar_from_the_feed(pool):
    symbols = [i.symbol for i in market().instruments()]
    start = date(2025, 11, 24)
    batches = await collect(broker(pool), [(s, start) for s in symbols])
    assert [len(b) for b in batches] == [200, 200, 50]
    got = {s: bars for b in batches for s, bars in b.items()}
    lo = datetime.combine(start, time(0), tzinfo=CAL.tz)
    assert all(got[s] == market().bars(s, "1d", lo, NOW) for s in symbols[:20])
    assert len(got["S0001"]) > 240 and CAL.local_date(got["S0001"][-1].start) == LAST


async def test_history_ends_at_end_never_past_the_clock_and_knows_no_unknown_symbol(pool):
    clock = SimulatedClock(datetime(2026, 11, 25, 5, 0, tzinfo=timezone.utc))       # Wednesday 13:00 HKT
    b = broker(pool, clock)
    [early] = await collect(b, [("S0001", date(2026, 11, 20)), ("S9999", date(2026, 11, 20))], end=date(2026, 11, 21))
    assert [CAL.local_date(x.start) for x in early["S0001"]] == [date(2026, 11, 20)] and early["S9999"] == []
    [late] = await collect(b, [("S0001", date(2026, 11, 24))], end=date(2026, 11, 25))
    assert [CAL.local_date(x.start) for x in late["S0001"]] == [date(2026, 11, 24)]
