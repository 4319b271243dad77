"""The moomoo adapter as the bar store's HistorySource, through the real moomoo-api SDK against the fake OpenD serving
a 700-security HKEX universe: universes by list, index and board; K-line paging; the history K-line quota; OpenD's
batch sizes and frequency limits, kept on a simulated clock (the broker's rate clock, which its sleep moves; the fake
times its limits on it too), so nothing here waits for real."""
from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.moomoo import MoomooBroker, load_sdk
from brokers.moomoo.sdk import OpenDBusy
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.errors import BrokerUnavailable, InvalidRequest
from core.feeds import HistorySource, QuotaExhausted, UniverseSpec
from core.config_model import MoomooConfig
from tests.fakes.opend_server import FakeOpenD
from tests.fakes.universe import Universe
from tests.venues import Sleep, paper_config

CAL = MarketCalendar("HKEX")
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)          # Tuesday 17:00 HKT, after the close
LAST = date(2026, 11, 24)
YEAR_AGO = date(2025, 11, 24)


@functools.cache
def universe() -> Universe:
    return Universe("HKEX", calendar=CAL)


@dataclass
class World:
    fake: FakeOpenD
    clock: SimulatedClock
    sleep: Sleep
    log_dir: Path
    brokers: list[MoomooBroker] = field(default_factory=list)

    async def connect(self, **kw) -> MoomooBroker:
        config = MoomooConfig(host=self.fake.host, port=self.fake.port, connect_timeout_seconds=5)
        broker = MoomooBroker(config, log_dir=self.log_dir, clock=self.clock, calendar=CAL, rate_clock=self.clock,
                              sleep=self.sleep, request_timeout_seconds=20, **kw)
        self.brokers.append(broker)
        await broker.connect()
        return broker


@pytest.fixture
async def world(pg_url, pool, agent_id, tmp_path):
    load_sdk(tmp_path / "logs")
    clock = SimulatedClock(NOW)
    fake = FakeOpenD(pg_url=pg_url, market=universe(), clock=clock, account_id=agent_id,
                     paper_config=paper_config(), calendar=CAL, rate_clock=clock)
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, Sleep(clock), tmp_path / "logs")
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)


def listed(kind: str = "stock", board: str = "main") -> list[str]:
    return [s.symbol for s in universe().securities() if s.status == "listed" and s.kind == kind and s.board == board]


def with_status(status: str) -> str:
    return next(s.symbol for s in universe().securities() if s.status == status and s.kind == "stock")


def turnover(symbol: str) -> Decimal:
    q = universe().quote(symbol, NOW)
    return Decimal(repr(float(q.last * q.volume)))


def within_limit(times: list[datetime], limit: int, seconds: float) -> bool:
    """OpenD's rule: the 1st and the (limit+1)th request more than `seconds` apart."""
    return all((times[i + limit] - times[i]).total_seconds() > seconds for i in range(len(times) - limit))


async def collect(broker: MoomooBroker, wanted, end: date = LAST) -> list[dict]:
    return [batch async for batch in broker.daily_history(wanted, end)]


# ---------------------------------------------------------------- the universe

async def test_a_list_universe_names_each_symbol_with_its_lot_name_and_status(world):
    broker = await world.connect()
    assert isinstance(broker, HistorySource)
    suspended, delisted = with_status("suspended"), with_status("delisted")
    spec = UniverseSpec(kind="list", symbols=("700", "HK.00005", "0388.HK", suspended, delisted, "99998"))
    got = {li.instrument.symbol: li for li in await broker.list_securities(spec)}
    assert list(got) == ["0700", "0005", "0388", suspended, delisted]          # the unknown code is left out
    for symbol, li in got.items():
        inst = universe().instrument(symbol)
        assert (li.instrument.lot_size, li.instrument.name) == (inst.lot_size, inst.name)
        assert (li.instrument.exchange, li.instrument.currency, li.instrument.tick_scheme) == ("HKEX", "HKD", "hkex")
    assert [got[s].status for s in got] == ["listed", "listed", "listed", "suspended", "delisted"]
    assert got["0700"].turnover == turnover("0700") and got[suspended].turnover == 0
    assert (world.fake.count("basicinfo"), world.fake.count("snapshot")) == (1, 1)


@pytest.mark.parametrize("index", ["HK.800000", "HK.HSI Constituent Stocks"])
async def test_an_index_universe_is_the_plates_constituents(world, index):
    broker = await world.connect()
    got = await broker.list_securities(UniverseSpec(kind="index", index=index))
    assert [li.instrument.symbol for li in got] == universe().plates["800000"]
    assert all(li.status == "listed" and li.turnover > 0 for li in got)
    assert (world.fake.count("plate"), world.fake.count("snapshot")) == (1, 1)


async def test_an_index_universe_needs_an_index_code_and_an_unknown_plate_is_an_error(world):
    broker = await world.connect()
    with pytest.raises(InvalidRequest, match="index"):
        await broker.list_securities(UniverseSpec(kind="index"))
    with pytest.raises(BrokerUnavailable, match="Unknown plate"):
        await broker.list_securities(UniverseSpec(kind="index", index="HK.NOSUCHPLATE"))


async def test_the_board_is_main_board_common_stocks_over_the_turnover_floor_largest_first(world):
    broker = await world.connect()
    floor = Decimal(50_000_000)
    got = await broker.list_securities(UniverseSpec(kind="board", min_turnover=floor, max_symbols=120))
    main = [s for s in universe().securities() if s.board == "main" and s.kind == "stock" and s.status != "delisted"]
    expected = sorted((s.symbol for s in main if turnover(s.symbol) >= floor), key=lambda s: (-turnover(s), s))
    assert [li.instrument.symbol for li in got] == expected[:120] and len(expected) > 120
    assert [li.turnover for li in got] == sorted((li.turnover for li in got), reverse=True)
    assert all(li.turnover >= floor and li.status == "listed" for li in got)
    # one market-wide basic-info request, then 400 codes a snapshot request
    assert world.fake.count("basicinfo") == 1
    assert world.fake.count("snapshot") == math.ceil(len(main) / 400)
    assert max(len(r.body["c2s"]["securityList"]) for r in world.fake.requests_for(3203)) == 400


async def test_a_snapshot_batch_refused_for_one_unknown_code_is_halved_until_that_code_is_left_out(world):
    broker = await world.connect()
    got = await broker.history._with_snapshots(["HK.00700", "HK.99998", "HK.00005", "HK.00388"])
    assert sorted(li.instrument.symbol for li in got.values()) == ["0005", "0388", "0700"]
    assert world.fake.count("snapshot") == 5     # 4 codes (refused), 2 (refused), 1, 1 (refused: left out), 2


async def test_snapshot_batches_keep_opends_60_requests_in_30_seconds(world):
    broker = await world.connect(snapshot_batch=10)
    got = await broker.list_securities(UniverseSpec(kind="board"))
    main = [s for s in universe().securities() if s.board == "main" and s.kind == "stock" and s.status != "delisted"]
    assert len(got) == len(main)
    requests = math.ceil(len(main) / 10)
    assert world.fake.count("snapshot") == requests and world.fake.refused["snapshot"] == 0
    assert broker.history.snapshots.waits == requests // 60 - (requests % 60 == 0)
    assert within_limit(world.fake.accepted_at["snapshot"], 60, 30)
    assert world.sleep.waits and all(30 < w <= 31 for w in world.sleep.waits)


async def test_opend_refuses_a_61st_snapshot_within_30_seconds_and_more_than_400_codes(world):
    broker = await world.connect()
    for _ in range(60):
        await broker.get_quote("0700")                 # the quote path does not wait: the fake must refuse
    with pytest.raises(OpenDBusy, match="too frequent"):
        await broker.get_quote("0700")
    world.clock.advance(timedelta(seconds=31))
    assert (await broker.get_quote("0700")).symbol == "0700"
    too_many = await world.connect(snapshot_batch=401)
    with pytest.raises(BrokerUnavailable, match="at most 400"):
        await too_many.list_securities(UniverseSpec(kind="board"))


async def test_opend_limits_each_symbols_first_k_line_page_not_the_pages_after_it(world):
    broker = await world.connect()
    opened = CAL.session_bounds(LAST)[0][0]
    for _ in range(59):
        await broker.get_bars("0700", "1d", opened, NOW)       # get_bars does not wait: the fake must refuse
    [batch] = await collect(broker, [("0005", date(2016, 1, 4))])         # the 60th first page, then 2 more pages
    assert len(batch["0005"]) > 2000 and world.fake.refused["kline_first_page"] == 0
    with pytest.raises(OpenDBusy, match="too frequent"):
        await broker.get_bars("0700", "1d", opened, NOW)


async def test_a_frequency_refusal_from_a_shared_account_waits_a_window_and_asks_again(world):
    broker = await world.connect()
    world.fake.accepted_at["snapshot"].extend([world.clock.now()] * 60)        # another process used the window
    got = await broker.list_securities(UniverseSpec(kind="list", symbols=("0700",)))
    assert [li.instrument.symbol for li in got] == ["0700"]
    assert world.fake.refused["snapshot"] == 1 and world.sleep.waits == [30.5]


# ---------------------------------------------------------------- daily history

async def test_history_pages_on_page_req_key_and_matches_the_venue_bar_for_bar(world):
    broker = await world.connect()
    start = date(2016, 1, 4)
    batches = await collect(broker, [("HK.00700", start), ("5", start)])
    assert [list(b) for b in batches] == [["0700"], ["0005"]]                  # one batch a symbol, canonical
    for symbol, bars in ((s, bs) for b in batches for s, bs in b.items()):
        want = universe().bars(symbol, "1d", datetime(2016, 1, 1, tzinfo=timezone.utc), NOW)
        assert bars == want and len(bars) > 2 * 1000                           # three pages of at most 1000
        assert all(b.start == CAL.session_bounds(CAL.local_date(b.start))[0][0] for b in bars)
    firsts = [r for r in world.fake.requests_for(3103) if "nextReqKey" not in r.body["c2s"]]
    assert len(world.fake.requests_for(3103)) == 6 and len(firsts) == 2
    assert all(r.body["c2s"]["maxAckKLNum"] == 1000 and r.body["c2s"]["rehabType"] == 1     # QFQ
               for r in world.fake.requests_for(3103))


async def test_history_stops_at_end_and_never_returns_a_session_still_trading(world):
    broker = await world.connect()
    world.clock.set(datetime(2026, 11, 25, 5, 0, tzinfo=timezone.utc))          # Wednesday 13:00 HKT
    [early] = await collect(broker, [("0700", date(2026, 11, 20))], end=date(2026, 11, 21))
    assert [CAL.local_date(b.start) for b in early["0700"]] == [date(2026, 11, 20)]
    [late] = await collect(broker, [("0700", date(2026, 11, 24))], end=date(2026, 11, 25))
    assert [CAL.local_date(b.start) for b in late["0700"]] == [date(2026, 11, 24)]         # 25th: not complete
    [nothing] = await collect(broker, [("0700", date(2026, 11, 26))], end=date(2026, 11, 25))
    assert nothing == {"0700": []}


async def test_600_symbols_a_year_each_keep_60_first_pages_in_30_seconds(world):
    broker = await world.connect()
    symbols = (listed() + listed("etf"))[:600]
    assert len(symbols) == 600
    batches = await collect(broker, [(s, YEAR_AGO) for s in symbols])
    assert [next(iter(b)) for b in batches] == symbols
    bars = {s: bs for b in batches for s, bs in b.items()}
    assert all(len(bs) == len(bars["0700"]) > 240 for bs in bars.values())
    assert bars["0388"] == universe().bars("0388", "1d", datetime(2025, 11, 23, tzinfo=timezone.utc), NOW)
    # 600 K-line requests (a year is one page), one quota query, 9 waits of a window each
    assert world.fake.count("kline") == world.fake.count("kline_first_page") == 600
    assert world.fake.count("quota") == 1 and world.fake.refused["kline_first_page"] == 0
    assert broker.history.first_pages.waits == 9 and len(world.sleep.waits) == 9
    assert within_limit(world.fake.accepted_at["kline_first_page"], 60, 30)
    assert world.fake.quota_used() == 600


async def test_a_spent_quota_raises_after_the_batches_it_could_fetch(world):
    world.fake.history_quota = 5
    broker = await world.connect()
    symbols = listed()[:8]
    got: list[dict] = []
    with pytest.raises(QuotaExhausted) as spent:
        async for batch in broker.daily_history([(s, YEAR_AGO) for s in symbols], LAST):
            got.append(batch)
    assert [next(iter(b)) for b in got] == symbols[:5] and all(b[s] for b, s in zip(got, symbols))
    assert spent.value.resets == NOW + timedelta(days=30)
    assert "3 symbols not fetched" in str(spent.value)
    assert world.fake.count("kline") == 5                      # the 6th was never asked: the quota said so
    # a symbol fetched in the last 30 days is free to fetch again; a new one is not
    again = await collect(broker, [(s, date(2026, 11, 1)) for s in symbols[:5]])
    assert len(again) == 5
    with pytest.raises(QuotaExhausted):
        await collect(broker, [(symbols[6], YEAR_AGO)])


async def test_a_quota_spent_meanwhile_by_another_process_is_quota_exhausted(world):
    broker = await world.connect()
    symbols = listed()[:3]
    batches = broker.daily_history([(s, YEAR_AGO) for s in symbols], LAST)
    first = await anext(batches)
    assert list(first) == [symbols[0]]
    world.fake.history_quota = 1                               # another process spent the rest
    with pytest.raises(QuotaExhausted, match="quota"):
        await anext(batches)
    await batches.aclose()


async def test_an_unknown_symbol_has_no_history_and_the_rest_still_comes(world):
    broker = await world.connect()
    batches = await collect(broker, [("99998", YEAR_AGO), ("0700", YEAR_AGO)])
    assert batches[0] == {"99998": []} and len(batches[1]["0700"]) > 240
