"""The Alpaca adapter as the bar store's HistorySource, through the real alpaca-py SDK against the fake Alpaca serving
a 700-security US universe: universes by list and board (index: a clear error); multi-symbol bar requests paged on
next_page_token; Alpaca's rate limit (429 + Retry-After) waited out on a simulated clock, so nothing waits for real."""
from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from brokers.alpaca import AlpacaBroker
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.errors import InvalidRequest
from core.feeds import HistorySource, QuotaExhausted, UniverseSpec
from core.config_model import AlpacaConfig
from tests.fakes.alpaca_server import FakeAlpaca
from tests.fakes.universe import Universe
from tests.venues import US_FEES, Sleep, paper_config

CAL = MarketCalendar("NYSE")
NOW = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)          # Tuesday 17:00 New York, after the close
LAST = date(2026, 11, 24)
YEAR_AGO = date(2025, 11, 24)
BOARD = ("NYSE", "NASDAQ", "ARCA", "AMEX", "BATS")


@functools.cache
def universe() -> Universe:
    return Universe("US", calendar=CAL)


@dataclass
class World:
    fake: FakeAlpaca
    clock: SimulatedClock
    sleep: Sleep
    brokers: list[AlpacaBroker] = field(default_factory=list)

    async def connect(self) -> AlpacaBroker:
        broker = AlpacaBroker(AlpacaConfig(timeout_seconds=20), api_key=self.fake.api_key,
                              secret_key=self.fake.secret_key, base_url=self.fake.base_url,
                              data_url=self.fake.base_url, clock=self.clock, calendar=CAL, rate_clock=self.clock,
                              sleep=self.sleep)
        self.brokers.append(broker)
        await broker.connect()
        return broker


@pytest.fixture
async def world(pg_url, pool, agent_id):
    clock = SimulatedClock(NOW)
    fake = FakeAlpaca(pg_url=pg_url, market=universe(), clock=clock, account_id=agent_id, calendar=CAL,
                      paper_config=paper_config(fees=US_FEES), rate_clock=clock)
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, Sleep(clock))
    yield w
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)
    assert fake.errors == [], fake.errors


def listed(boards: tuple[str, ...] = BOARD) -> list[str]:
    return [s.symbol for s in universe().securities() if s.status == "listed" and s.board in boards]


def with_status(status: str) -> str:
    return next(s.symbol for s in universe().securities() if s.status == status and s.board != "OTC")


def dollar_volume(symbol: str) -> Decimal:
    """The fake's last completed daily bar: VWAP (its (h+l+c)/3) x volume, as Alpaca's snapshot reports it."""
    b = universe().bars(symbol, "1d", NOW - timedelta(days=10), NOW)[-1]
    return (Decimal(repr(float((b.high + b.low + b.close) / 3))) * b.volume).quantize(Decimal("0.01"))


def year_of(symbol: str) -> list:
    return universe().bars(symbol, "1d", datetime(2025, 11, 24, 14, 0, tzinfo=timezone.utc), NOW)


async def collect(broker: AlpacaBroker, wanted, end: date = LAST) -> list[dict]:
    return [batch async for batch in broker.daily_history(wanted, end)]


# ---------------------------------------------------------------- the universe

async def test_a_list_universe_is_canonical_with_each_assets_status_and_dollar_volume(world):
    broker = await world.connect()
    assert isinstance(broker, HistorySource)
    suspended, delisted = with_status("suspended"), with_status("delisted")
    spec = UniverseSpec(kind="list", symbols=("aapl", "BRK-B", "US.MSFT", suspended, delisted, "ZZZZZZ"))
    got = {li.instrument.symbol: li for li in await broker.list_securities(spec)}
    assert list(got) == ["AAPL", "BRK.B", "MSFT", suspended, delisted]      # the unknown ticker is left out
    assert [got[s].status for s in got] == ["listed", "listed", "listed", "suspended", "delisted"]
    assert got["AAPL"].instrument.name == "Apple Inc." and got["AAPL"].instrument.exchange == "NASDAQ"
    assert got["BRK.B"].instrument.exchange == "NYSE"
    assert all((li.instrument.lot_size, li.instrument.tick_scheme, li.instrument.currency) == (1, "us", "USD")
               for li in got.values())
    assert got["AAPL"].turnover == dollar_volume("AAPL") and got[delisted].turnover is None
    assert (world.fake.count("assets"), world.fake.count("snapshots")) == (1, 1)


async def test_the_board_is_active_tradable_exchange_listed_stocks_by_dollar_volume(world):
    broker = await world.connect()
    floor = Decimal(20_000_000)
    got = await broker.list_securities(UniverseSpec(kind="board", min_turnover=floor, max_symbols=100))
    expected = sorted((s for s in listed() if dollar_volume(s) >= floor), key=lambda s: (-dollar_volume(s), s))
    assert len(expected) > 100
    assert [li.instrument.symbol for li in got] == expected[:100]
    assert all(li.instrument.exchange in BOARD and li.status == "listed" and li.turnover >= floor for li in got)
    assert world.fake.count("assets") == 1
    assert world.fake.count("snapshots") == math.ceil(len(listed()) / 200)
    assert not {s for s in listed(("OTC",))} & {li.instrument.symbol for li in got}


async def test_an_index_universe_is_a_clear_error(world):
    broker = await world.connect()
    with pytest.raises(InvalidRequest, match="no index-constituents API"):
        await broker.list_securities(UniverseSpec(kind="index", index="SPX"))


# ---------------------------------------------------------------- daily history

async def test_many_symbols_in_one_request_are_paged_on_next_page_token(world):
    world.fake.bars_page_max = 1000                            # forces pages (Alpaca's own maximum is 10,000)
    broker = await world.connect()
    symbols = listed()[:30]
    [batch] = await collect(broker, [(s, YEAR_AGO) for s in ["aapl" if s == "AAPL" else s for s in symbols]])
    assert sorted(batch) == sorted(symbols)
    for symbol in symbols:
        assert batch[symbol] == year_of(symbol)
        assert all(b.start == CAL.session_bounds(CAL.local_date(b.start))[0][0] for b in batch[symbol])
    total = sum(len(bars) for bars in batch.values())
    pages = world.fake.requests_for("GET", "/v2/stocks/bars")
    assert len(pages) == math.ceil(total / 1000) and len(pages) > 5
    assert [bool(p.query.get("page_token")) for p in pages] == [False] + [True] * (len(pages) - 1)
    assert {p.query["symbols"] for p in pages} == {",".join(symbols)}
    assert all(p.query["timeframe"] == "1Day" and p.query["adjustment"] == "split" and p.query["feed"] == "iex"
               for p in pages)


async def test_requests_are_grouped_by_first_session_and_stop_at_end(world):
    broker = await world.connect()
    wanted = [("AAPL", date(2026, 11, 20)), ("MSFT", date(2026, 11, 23)), ("NVDA", date(2026, 11, 20))]
    batches = await collect(broker, wanted, end=date(2026, 11, 23))
    assert [sorted(b) for b in batches] == [["AAPL", "NVDA"], ["MSFT"]]
    assert [CAL.local_date(b.start) for b in batches[0]["AAPL"]] == [date(2026, 11, 20), date(2026, 11, 23)]
    assert [CAL.local_date(b.start) for b in batches[1]["MSFT"]] == [date(2026, 11, 23)]
    world.clock.set(datetime(2026, 11, 25, 18, 0, tzinfo=timezone.utc))         # Wednesday 13:00: still trading
    [today] = await collect(broker, [("AAPL", date(2026, 11, 24))], end=date(2026, 11, 25))
    assert [CAL.local_date(b.start) for b in today["AAPL"]] == [date(2026, 11, 24)]


async def test_600_symbols_a_year_each_in_200_symbol_requests_of_10000_bar_pages(world):
    broker = await world.connect()
    symbols = listed()[:600]
    assert len(symbols) == 600
    batches = await collect(broker, [(s, YEAR_AGO) for s in symbols])
    assert [len(b) for b in batches] == [200, 200, 200]
    got = {s: bars for b in batches for s, bars in b.items()}
    assert got["MSFT"] == year_of("MSFT") and all(len(bars) == len(got["MSFT"]) > 240 for bars in got.values())
    per_group = [math.ceil(sum(len(got[s]) for s in symbols[i:i + 200]) / 10_000) for i in range(0, 600, 200)]
    assert world.fake.count("bars") == sum(per_group) == 18


async def test_a_429_is_waited_out_as_retry_after_says(world):
    world.fake.limit_rate(4, per_seconds=60)
    world.fake.bars_page_max = 1000
    broker = await world.connect()
    symbols = listed()[:30]
    [batch] = await collect(broker, [(s, YEAR_AGO) for s in symbols])
    assert all(batch[s] == year_of(s) for s in symbols)
    limited = [r for r in world.fake.requests if r.status == 429]
    assert limited and world.sleep.waits
    assert world.sleep.waits == [60.0] * len(world.sleep.waits)              # Retry-After of a full window
    answered = [r.at for r in world.fake.requests if r.path.startswith("/v2/stocks") and r.status == 200]
    assert all((answered[i + 4] - answered[i]).total_seconds() >= 60 for i in range(len(answered) - 4))


async def test_a_rate_limit_that_does_not_clear_soon_is_quota_exhausted_after_what_was_fetched(world):
    world.fake.limit_rate(1, per_seconds=3600)
    broker = await world.connect()
    got: list[dict] = []
    with pytest.raises(QuotaExhausted) as spent:
        async for batch in broker.daily_history([("AAPL", YEAR_AGO), ("MSFT", date(2026, 1, 2))], LAST):
            got.append(batch)
    assert [list(b) for b in got] == [["AAPL"]] and got[0]["AAPL"] == year_of("AAPL")
    assert spent.value.resets == NOW + timedelta(seconds=3600) and world.sleep.waits == []
    assert "429" in str(spent.value)


async def test_a_429_without_retry_after_waits_until_x_ratelimit_reset_on_the_injected_clock(world):
    broker = await world.connect()
    reset = int(world.clock.now().timestamp()) + 7
    world.fake.fail_next(429, {"code": 42910000, "message": "rate limit exceeded"}, match="/v2/stocks/bars",
                         headers={"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "0",
                                  "X-RateLimit-Reset": str(reset)})
    [batch] = await collect(broker, [("AAPL", YEAR_AGO)])
    assert batch["AAPL"] == year_of("AAPL") and world.sleep.waits == [7.0]
    assert [r.status for r in world.fake.requests_for("GET", "/v2/stocks/bars")] == [429, 200]
