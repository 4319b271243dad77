"""Pushed quotes from moomoo (OpenDQuoteStream) through the real moomoo-api SDK against the fake OpenD: a price move
arrives as our Quote, the subscription quota and OpenD's one-minute minimum are honoured, keep-alives and silence
show in `last_heard`, a dropped connection closes the stream. Subscription ages run on a simulated rate clock shared
by the adapter and the fake, so nobody waits a real minute."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

import pytest

from brokers.base import QuoteStream, StreamClosed
from brokers.moomoo import MoomooBroker, load_sdk, to_moomoo_code
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.config_model import MoomooConfig
from core.instruments import Quote
from core.ticks import round_to_tick
from tests.fakes.movable import MovableMarket
from tests.fakes.opend_push import TOO_EARLY
from tests.fakes.opend_server import FakeOpenD
from tests.venues import OPEN_AT, liquid_symbols, paper_config, shared_market

CALENDAR = MarketCalendar("HKEX")
P_SUB, P_KEEP_ALIVE = 3001, 1004
PATIENCE = 10.0                        # seconds a test waits, at most, for something the fake sends
MINUTE = timedelta(minutes=1)


@dataclass
class World:
    fake: FakeOpenD
    market: MovableMarket
    clock: SimulatedClock              # the market's
    rate: SimulatedClock               # OpenD's seconds, for subscription ages (the adapter's and the fake's)
    log_dir: Path
    brokers: list[MoomooBroker] = field(default_factory=list)
    streams: list[QuoteStream] = field(default_factory=list)

    async def stream(self) -> QuoteStream:
        if not self.brokers:
            config = MoomooConfig(host=self.fake.host, port=self.fake.port, connect_timeout_seconds=5)
            broker = MoomooBroker(config, log_dir=self.log_dir, clock=self.clock, calendar=CALENDAR,
                                  request_timeout_seconds=5, reconnect_interval_seconds=0.3, rate_clock=self.rate)
            self.brokers.append(broker)
            await broker.connect()
        stream = await self.brokers[0].open_quote_stream()
        self.streams.append(stream)
        return stream


@pytest.fixture
async def world(pool, pg_url, agent_id, tmp_path):
    log_dir = tmp_path / "logs"
    load_sdk(log_dir)
    clock = SimulatedClock(OPEN_AT)
    rate = SimulatedClock(datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc))
    market = MovableMarket(shared_market(), clock)
    fake = FakeOpenD(pg_url=pg_url, market=market, clock=clock, account_id=agent_id, paper_config=paper_config(),
                     calendar=CALENDAR, keep_alive_interval=1, rate_clock=rate)
    await asyncio.to_thread(fake.start)
    w = World(fake, market, clock, rate, log_dir)
    yield w
    for stream in w.streams:
        await stream.close()
    for broker in w.brokers:
        await broker.disconnect()
    await asyncio.to_thread(fake.stop)


def symbols() -> list[str]:
    return liquid_symbols(shared_market(), OPEN_AT)


def below(world: World, symbol: str, ticks: int = 2) -> Decimal:
    price = world.market.quote(symbol, world.clock.now()).last
    for _ in range(ticks):
        price = round_to_tick(price - Decimal("0.0001"), "hkex", "down")
    return price


async def next_quote(stream: QuoteStream, accept: Callable[[Quote], bool] = lambda q: True) -> Quote | None:
    """The first pushed quote `accept` takes (others are read past), or None when patience runs out."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    while loop.time() < give_up:
        quote = await stream.get(timeout=give_up - loop.time())
        if quote is not None and accept(quote):
            return quote
    return None


async def eventually(check: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    while not check() and loop.time() < give_up:
        await asyncio.sleep(0.02)
    return check()


def subscribed(world: World) -> set[str]:
    return set().union(*world.fake.subscriptions().values())


def unsubscribes(world: World) -> list[dict]:
    return [r.body["c2s"] for r in world.fake.requests_for(P_SUB) if not r.body["c2s"].get("isSubOrUnSub")]


# ---------------------------------------------------------------- quotes arrive

async def test_a_price_move_arrives_as_a_pushed_quote(world):
    stream = await world.stream()
    symbol = symbols()[0]
    assert await stream.follow([symbol]) == {symbol}
    first = await next_quote(stream)                      # OpenD's first push right after the subscription
    assert first is not None and first.symbol == symbol
    [sub] = [r.body["c2s"] for r in world.fake.requests_for(P_SUB)]
    assert (sub["subTypeList"], sub["isRegOrUnRegPush"]) == ([1], True)          # SubType QUOTE, pushes on
    price = below(world, symbol)
    world.market.move(symbol, price)
    moved = await next_quote(stream, lambda q: q.last == price)
    assert moved is not None and moved.symbol == symbol
    assert moved.bid == moved.ask == moved.last == price        # a basic quote has no bid or ask
    assert moved.timestamp.tzinfo is not None and moved.timestamp.utcoffset() == timedelta(0)
    assert stream.received >= 2 and stream.dropped == 0


async def test_every_followed_symbol_is_pushed_on_its_own_move(world):
    stream = await world.stream()
    wanted = symbols()[:4]
    assert await stream.follow(wanted) == set(wanted)
    prices = {s: below(world, s) for s in wanted}
    for symbol, price in prices.items():
        world.market.move(symbol, price)
    seen: dict[str, Decimal] = {}
    while set(seen) != set(wanted):
        quote = await next_quote(stream, lambda q: prices.get(q.symbol) == q.last)
        assert quote is not None, f"no pushed move for {set(wanted) - set(seen)}"
        seen[quote.symbol] = quote.last
    assert seen == prices


# ---------------------------------------------------------------- OpenD's quota and minute

async def test_follow_takes_no_more_than_the_subscription_quota_and_leaves_the_rest_to_polling(world):
    world.fake.subscription_quota = 3
    wanted = symbols()[:5]
    first = await world.stream()
    followed = await first.follow(wanted)
    assert len(followed) == 3 and followed <= set(wanted)
    assert subscribed(world) == {to_moomoo_code(s)[3:] for s in followed}
    # another connection may take what one already holds (no more quota), and nothing else
    second = await world.stream()
    assert await second.follow(wanted) == followed


async def test_a_symbol_dropped_within_its_minute_stays_subscribed_until_a_later_follow(world):
    stream = await world.stream()
    kept, dropped = symbols()[:2]
    await stream.follow([kept, dropped])
    world.rate.advance(timedelta(seconds=30))
    assert await stream.follow([kept]) == {kept}
    assert to_moomoo_code(dropped)[3:] in subscribed(world) and unsubscribes(world) == []
    # OpenD still pushes it; it is no longer delivered (the kept symbol's later move is the next quote)
    while await stream.get(timeout=0.05) is not None:
        pass
    world.market.move(dropped, below(world, dropped))
    price = below(world, kept)
    world.market.move(kept, price)
    quote = await next_quote(stream)
    assert quote is not None and (quote.symbol, quote.last) == (kept, price)
    world.rate.advance(timedelta(seconds=31))             # a minute (and OpenD's margin) since the subscription
    assert await stream.follow([kept]) == {kept}
    assert to_moomoo_code(dropped)[3:] not in subscribed(world)
    assert to_moomoo_code(kept)[3:] in subscribed(world) and len(unsubscribes(world)) == 1


async def test_the_fake_refuses_an_unsubscribe_within_the_minute_and_keeps_a_closed_connections_quota(world):
    """OpenD's rules as the docs state them, at the fake: "You can unsubscribe after you subscribe for at least one
    minute"; a connection closed within the minute keeps its quota until the minute is up."""
    sdk = load_sdk(world.log_dir)
    code = to_moomoo_code(symbols()[0])

    def session() -> tuple:
        ctx = sdk.OpenQuoteContext(host=world.fake.host, port=world.fake.port)
        try:
            assert ctx.subscribe([code], [sdk.SubType.QUOTE])[0] == sdk.RET_OK
            early = ctx.unsubscribe([code], [sdk.SubType.QUOTE])
            world.rate.advance(timedelta(seconds=61))
            later = ctx.unsubscribe([code], [sdk.SubType.QUOTE])
            assert ctx.subscribe([code], [sdk.SubType.QUOTE])[0] == sdk.RET_OK
        finally:
            ctx.close()
        other = sdk.OpenQuoteContext(host=world.fake.host, port=world.fake.port)
        try:
            closed_young = other.query_subscription()[1]["total_used"]
            world.rate.advance(timedelta(seconds=61))
            closed_old = other.query_subscription()[1]["total_used"]
        finally:
            other.close()
        return early, later, closed_young, closed_old

    (ret, msg), (ret_later, _), closed_young, closed_old = await asyncio.to_thread(session)
    assert ret != sdk.RET_OK and TOO_EARLY in msg
    assert ret_later == sdk.RET_OK
    assert (closed_young, closed_old) == (1, 0)


# ---------------------------------------------------------------- liveness

async def test_keep_alives_answered_by_opend_mark_the_stream_heard(world):
    stream = await world.stream()
    before = stream.last_heard
    assert await eventually(lambda: stream.last_heard > before)
    assert stream.received == 0                           # nothing was pushed: the keep-alive answer was heard


async def test_a_stalled_opend_is_silent_until_it_resumes(world):
    stream = await world.stream()
    symbol = symbols()[0]
    await stream.follow([symbol])
    assert await next_quote(stream) is not None
    world.fake.stall()
    asked = len(world.fake.requests_for(P_KEEP_ALIVE))
    assert await eventually(lambda: len(world.fake.requests_for(P_KEEP_ALIVE)) > asked)   # unanswered from here
    heard = stream.last_heard
    world.market.move(symbol, below(world, symbol))
    asked = len(world.fake.requests_for(P_KEEP_ALIVE))
    assert await eventually(lambda: len(world.fake.requests_for(P_KEEP_ALIVE)) > asked)
    assert await stream.get(timeout=0) is None and stream.last_heard == heard
    world.fake.resume()
    price = below(world, symbol, ticks=4)
    world.market.move(symbol, price)
    quote = await next_quote(stream, lambda q: q.last == price)
    assert quote is not None and stream.last_heard > heard


async def test_a_dropped_connection_closes_the_stream(world):
    stream = await world.stream()
    symbol = symbols()[0]
    await stream.follow([symbol])
    assert await next_quote(stream) is not None
    world.fake.drop_connections()
    with pytest.raises(StreamClosed, match="OpenD quote connection lost"):
        loop = asyncio.get_running_loop()
        give_up = loop.time() + PATIENCE
        while loop.time() < give_up:
            await stream.get(timeout=0.1)
    with pytest.raises(StreamClosed):
        await stream.follow([symbol])
    fresh = await world.stream()                          # the broker reconnected; a new stream works
    assert await fresh.follow([symbol]) == {symbol}
    assert await next_quote(fresh) is not None
