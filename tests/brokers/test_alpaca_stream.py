"""Pushed quotes from Alpaca: the adapter's quote stream on alpaca-py's own StockDataStream, against the fake
Alpaca's real-time data websocket (tests/fakes/alpaca_stream.py) whose feed a test moves (tests/fakes/movable.py).
Unless a test says otherwise the fake pushes only on a move, so what arrives is what the move caused."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from decimal import Decimal

import pytest

from brokers.alpaca import STREAM_SYMBOL_LIMIT, AlpacaBroker, AlpacaQuoteStream
from brokers.base import StreamClosed
from core.clock import SimulatedClock
from core.errors import BrokerUnavailable
from core.instruments import Quote
from core.ticks import round_to_tick
from tests.fakes.alpaca_server import FakeAlpaca
from tests.fakes.movable import MovableMarket
from tests.venues import NY_OPEN_AT as OPEN_AT, NYSE as CALENDAR, US_FEES, paper_config, us_market, us_settings, \
    us_symbols


@dataclass
class World:
    fake: FakeAlpaca
    clock: SimulatedClock
    market: MovableMarket
    brokers: list[AlpacaBroker] = field(default_factory=list)
    streams: list = field(default_factory=list)

    async def connect(self) -> AlpacaBroker:
        settings = us_settings(self.fake, ALPACA_STREAM_URL=self.fake.stream_url)
        broker = AlpacaBroker.from_settings(settings, clock=self.clock, calendar=CALENDAR)
        self.brokers.append(broker)
        await broker.connect()
        return broker

    async def stream(self) -> AlpacaQuoteStream:
        broker = self.brokers[0] if self.brokers else await self.connect()
        stream = await broker.open_quote_stream()
        self.streams.append(stream)
        return stream

    def move(self, symbol: str, factor: str) -> Quote:
        """`symbol` trades `factor` times its price from now on."""
        last = us_market().quote(symbol, self.clock.now()).last
        return self.market.move(symbol, round_to_tick(last * Decimal(factor), "us", "down"))


@pytest.fixture
async def world(pool, pg_url, agent_id):
    clock = SimulatedClock(OPEN_AT)
    market = MovableMarket(us_market(), clock)
    fake = FakeAlpaca(pg_url=pg_url, market=market, clock=clock, account_id=agent_id, calendar=CALENDAR,
                      paper_config=paper_config(fees=US_FEES))
    fake.stream.interval = None                   # pushes on moves only
    await asyncio.to_thread(fake.start)
    w = World(fake, clock, market)
    yield w
    for stream in w.streams:
        await stream.close()
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)
    assert fake.errors == [] and fake.stream.errors == [], (fake.errors, fake.stream.errors)


async def quotes_until(stream: AlpacaQuoteStream, done, *, seconds: float = 5.0) -> list[Quote]:
    """Quotes as they come, up to and including the first one `done` accepts (at most `seconds` of waiting)."""
    got: list[Quote] = []
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while loop.time() < give_up:
        quote = await stream.get(timeout=give_up - loop.time())
        if quote is not None:
            got.append(quote)
            if done(quote):
                return got
    raise AssertionError(f"no such quote within {seconds} s; got {got}")


async def quiet(stream: AlpacaQuoteStream, seconds: float = 0.3) -> list[Quote]:
    """Everything that arrives until nothing has for `seconds`."""
    got = []
    while (quote := await stream.get(timeout=seconds)) is not None:
        got.append(quote)
    return got


# ---------------------------------------------------------------- follow and push

async def test_a_move_of_a_followed_symbol_is_pushed_and_arrives_as_our_quote(world):
    symbol = us_symbols()[0]
    stream = await world.stream()
    assert await stream.follow([symbol]) == {symbol} == stream.followed
    seeded = await world.brokers[0].get_quote(symbol)
    moved = world.move(symbol, "0.97")
    got = await quotes_until(stream, lambda q: q.last == moved.last)
    last = got[-1]
    assert (last.symbol, last.bid, last.ask, last.last) == (symbol, moved.bid, moved.ask, moved.last)
    assert last.timestamp == moved.timestamp and last.timestamp.tzinfo == timezone.utc
    assert last.volume >= seeded.volume
    assert all(q.symbol == symbol for q in got) and stream.dropped == 0


async def test_a_symbol_no_longer_followed_is_no_longer_pushed(world):
    a, b = us_symbols()[:2]
    stream = await world.stream()
    assert await stream.follow([a, b]) == {a, b}
    assert await stream.follow([a]) == {a}
    [subs] = world.fake.stream.subscriptions()
    assert (subs["quotes"], subs["trades"]) == ({a}, {a})
    world.move(b, "0.97")
    moved = world.move(a, "0.97")
    got = await quotes_until(stream, lambda q: q.symbol == a and q.last == moved.last)
    assert {q.symbol for q in got} == {a}                  # b's move, sent first if at all, never came
    assert await stream.follow([]) == frozenset()
    assert world.fake.stream.subscriptions()[0]["quotes"] == set()


async def test_follow_asks_for_no_more_symbols_than_the_plan_allows(world):
    every = [i.symbol for i in us_market().instruments()]
    symbols = every[:40]
    stream = await world.stream()
    followed = await stream.follow(symbols)
    assert len(followed) == STREAM_SYMBOL_LIMIT == 30 and followed <= set(symbols)
    [subs] = world.fake.stream.subscriptions()
    assert subs["quotes"] == subs["trades"] == set(followed)
    assert world.fake.stream.errors_sent == []               # never a 405 from Alpaca
    kept = sorted(followed)[:10]                             # the ones already followed stay, the rest fill up
    again = await stream.follow(every[40:70] + kept)
    assert len(again) == 30 and set(kept) <= again
    assert world.fake.stream.subscriptions()[0]["quotes"] == set(again)


async def test_a_plan_that_takes_fewer_symbols_refuses_and_the_stream_follows_what_it_takes(world):
    world.fake.stream.symbol_limit = 3
    symbols = us_symbols()[:5]
    stream = await world.stream()
    followed = await stream.follow(symbols)
    assert len(followed) == 3 and followed <= set(symbols)
    assert world.fake.stream.subscriptions()[0]["quotes"] == set(followed)
    assert (405, "symbol limit exceeded") in world.fake.stream.errors_sent
    assert stream.limit == 3
    moved = world.move(sorted(followed)[0], "0.97")
    await quotes_until(stream, lambda q: q.last == moved.last)


# ---------------------------------------------------------------- the connection

async def test_a_dropped_connection_makes_get_raise_stream_closed(world):
    symbol = us_symbols()[0]
    stream = await world.stream()
    await stream.follow([symbol])
    world.fake.stream.drop()
    with pytest.raises(StreamClosed, match="connection lost"):
        for _ in range(10):
            await stream.get(timeout=1.0)
    with pytest.raises(StreamClosed):
        await stream.follow([symbol])


async def test_a_stalled_stream_is_seen_in_last_heard(world):
    symbol = us_symbols()[0]
    world.fake.stream.interval = 0.05
    stream = await world.stream()
    await stream.follow([symbol])
    await quotes_until(stream, lambda q: True)
    await quotes_until(stream, lambda q: True)                # the periodic pushes flow
    world.fake.stream.stall()
    await quiet(stream)                                        # what was already on its way
    heard = stream.last_heard
    world.move(symbol, "0.97")
    assert await stream.get(timeout=0.5) is None              # a move while stalled: nothing, not even a keep-alive
    assert stream.last_heard == heard and stream.closed_reason is None
    world.fake.stream.resume()
    await quotes_until(stream, lambda q: True)
    assert stream.last_heard > heard


async def test_alpaca_allows_one_stream_per_account_and_refuses_wrong_keys(world):
    symbol = us_symbols()[0]
    first = await world.stream()
    with pytest.raises(BrokerUnavailable, match="connection limit exceeded"):
        await world.brokers[0].open_quote_stream()
    assert (406, "connection limit exceeded") in world.fake.stream.errors_sent
    wrong = AlpacaQuoteStream(url=world.fake.stream_url, feed="iex", keys=("PKWRONG", "not-the-secret"),
                              seed=world.brokers[0].get_quotes, timeout=5)
    with pytest.raises(BrokerUnavailable, match="auth failed") as err:
        await wrong.start()
    assert "not-the-secret" not in str(err.value)
    assert await first.follow([symbol]) == {symbol}            # the first one is untouched
    moved = world.move(symbol, "0.97")
    await quotes_until(first, lambda q: q.last == moved.last)


async def test_a_closed_stream_says_so_and_leaves_alpaca(world):
    stream = await world.stream()
    await stream.follow(us_symbols()[:1])
    await stream.close()
    with pytest.raises(StreamClosed, match="closed"):
        await stream.get(timeout=0.1)
    for _ in range(50):
        if world.fake.stream.connections == 0:
            break
        await asyncio.sleep(0.05)
    assert world.fake.stream.connections == 0
    again = await world.stream()                               # the account's one connection is free again
    assert await again.follow(us_symbols()[:1]) == set(us_symbols()[:1])


async def test_a_stream_url_that_does_not_answer_is_broker_unavailable(world):
    broker = await world.connect()
    broker.stream_url = world.fake.stream_url.replace("/v2/iex", "/v2/nosuchfeed")
    with pytest.raises(BrokerUnavailable, match="alpaca stream .*nosuchfeed"):
        await broker.open_quote_stream()
