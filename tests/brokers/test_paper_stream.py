"""The paper venue's quote stream: the followed symbols' quotes pushed from the feed (a move at once, a changed quote
on the cadence), keep-alives while nothing changes, none while stalled, StreamClosed once closed."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from brokers.base import StreamClosed
from brokers.paper import stream as paper_stream
from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from tests.fakes.movable import MovableMarket
from tests.venues import OPEN_AT, liquid_symbols, paper_config, shared_market

WAIT = 5.0                    # the longest any expected push may take (a bound, not a speed claim)


async def open_stream(pool, agent_id, market=None, clock=None):
    clock = clock or SimulatedClock(OPEN_AT)
    market = market or MovableMarket(shared_market(), clock)
    broker = PaperBroker(pool, market, clock, MarketCalendar("HKEX"), account_id=agent_id, currency="HKD",
                         config=paper_config())
    await broker.connect()
    stream = await broker.open_quote_stream()
    assert stream is not None
    return stream, market, clock


async def drain(stream, symbols: set[str]) -> dict[str, object]:
    """Read pushes until each of `symbols` has one (or WAIT runs out); the latest per symbol."""
    seen: dict[str, object] = {}
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT
    while not symbols <= set(seen) and loop.time() < give_up:
        q = await stream.get(timeout=give_up - loop.time())
        if q is not None:
            seen[q.symbol] = q
    return seen


async def test_followed_symbols_get_their_quotes_and_a_move_is_pushed(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a, b = liquid_symbols(shared_market(), OPEN_AT)[:2]
    try:
        assert await stream.follow([a, b, "NOPE"]) == {a, b}             # a symbol the feed lacks is polled
        first = await drain(stream, {a, b})
        assert first == {s: market.quote(s, clock.now()) for s in (a, b)}
        moved = market.move(a, market.quote(a, clock.now()).last * Decimal("0.9"))
        pushed = await stream.get(timeout=WAIT)
        assert pushed == moved and pushed.symbol == a
        assert await stream.get(timeout=3 * paper_stream.CADENCE_SECONDS) is None    # nothing else changed
    finally:
        await stream.close()


async def test_an_unfollowed_symbol_is_not_pushed(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a, b = liquid_symbols(shared_market(), OPEN_AT)[:2]
    try:
        await stream.follow([a, b])
        await drain(stream, {a, b})
        assert await stream.follow([a]) == {a}
        market.move(b, market.quote(b, clock.now()).last * Decimal("0.9"))
        moved = market.move(a, market.quote(a, clock.now()).last * Decimal("1.1"))
        assert await stream.get(timeout=WAIT) == moved
        assert await stream.get(timeout=3 * paper_stream.CADENCE_SECONDS) is None
        assert await stream.follow([a, b]) == {a, b}                     # followed again: its quote afresh
        assert (await drain(stream, {b}))[b] == market.quote(b, clock.now())
    finally:
        await stream.close()


async def test_a_move_from_another_thread_is_pushed(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a = liquid_symbols(shared_market(), OPEN_AT)[0]
    try:
        await stream.follow([a])
        await drain(stream, {a})
        moved = await asyncio.to_thread(market.move, a, market.quote(a, clock.now()).last * Decimal("0.8"))
        assert await stream.get(timeout=WAIT) == moved
    finally:
        await stream.close()


async def test_a_move_announced_for_later_is_not_pushed_before_the_clock_reaches_it(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a = liquid_symbols(shared_market(), OPEN_AT)[0]
    try:
        await stream.follow([a])
        before = (await drain(stream, {a}))[a]
        later = clock.now() + timedelta(minutes=10)
        market.move(a, before.last * Decimal("0.8"), at=later)
        assert await stream.get(timeout=3 * paper_stream.CADENCE_SECONDS) is None
        clock.set(later)
        assert (await drain(stream, {a}))[a] == market.quote(a, later)
        assert market.quote(a, later).last < before.last
    finally:
        await stream.close()


async def test_a_feed_that_does_not_announce_is_read_on_the_cadence(pool, agent_id):
    clock = SimulatedClock(OPEN_AT)
    stream, market, _ = await open_stream(pool, agent_id, market=shared_market(), clock=clock)
    symbols = [i.symbol for i in shared_market().instruments()[:200]]
    try:
        assert await stream.follow(symbols) == set(symbols)
        first = await drain(stream, set(symbols))
        assert len(first) == 200
        clock.advance(timedelta(minutes=1))                  # a bar completes: the quotes that changed go out
        changed = {s for s in symbols if market.quote(s, clock.now()) != first[s]}
        assert changed
        later = await drain(stream, changed)
        assert set(later) == changed and all(later[s] == market.quote(s, clock.now()) for s in changed)
    finally:
        await stream.close()


async def test_keep_alives_stop_while_stalled_and_come_back_on_resume(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a = liquid_symbols(shared_market(), OPEN_AT)[0]
    try:
        await stream.follow([a])
        await drain(stream, {a})
        heard = stream.last_heard
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT
        while stream.last_heard == heard and loop.time() < give_up:      # nothing changes, yet the venue speaks
            await asyncio.sleep(paper_stream.CADENCE_SECONDS / 2)
        assert stream.last_heard > heard
        stream.stall()
        await asyncio.sleep(paper_stream.CADENCE_SECONDS)                 # a tick that began before stall() ends
        heard = stream.last_heard
        market.move(a, market.quote(a, clock.now()).last * Decimal("0.9"))
        assert await stream.get(timeout=4 * paper_stream.CADENCE_SECONDS) is None
        assert stream.last_heard == heard
        stream.resume()
        assert (await stream.get(timeout=WAIT)) == market.quote(a, clock.now())   # the move it held back
        assert stream.last_heard > heard
    finally:
        await stream.close()


async def test_a_closed_stream_raises_and_stops_listening(pool, agent_id):
    stream, market, clock = await open_stream(pool, agent_id)
    a = liquid_symbols(shared_market(), OPEN_AT)[0]
    await stream.follow([a])
    await stream.close()
    market.move(a, market.quote(a, clock.now()).last * Decimal("0.9"))
    assert stream._moved not in market._listeners
    with pytest.raises(StreamClosed):
        for _ in range(100):                                 # what was pushed before the close, then the end
            await stream.get(timeout=0.1)
    with pytest.raises(StreamClosed):
        await stream.follow([a])


class CountingFeed(MovableMarket):
    """Counts the quotes read from it."""

    def __init__(self, inner, clock) -> None:
        super().__init__(inner, clock)
        self.reads = 0

    def quote(self, symbol, at):
        self.reads += 1
        return super().quote(symbol, at)


async def test_within_a_minute_the_cadence_reads_nothing_already_pushed(pool, agent_id):
    """A quote changes only when a bar completes (or on an announced move): the cadence does not re-read hundreds
    of unchanged quotes four times a second on the event loop the pushed prices are judged on."""
    clock = SimulatedClock(OPEN_AT + timedelta(seconds=5))
    feed = CountingFeed(shared_market(), clock)
    stream, market, _ = await open_stream(pool, agent_id, market=feed, clock=clock)
    symbols = [i.symbol for i in shared_market().instruments()[:100]]
    try:
        await stream.follow(symbols)
        first = await drain(stream, set(symbols))
        assert len(first) == 100
        await asyncio.sleep(3 * paper_stream.CADENCE_SECONDS)
        reads = feed.reads
        await asyncio.sleep(3 * paper_stream.CADENCE_SECONDS)          # the same minute: nothing read again
        assert feed.reads == reads
        a = symbols[0]
        clock.advance(timedelta(seconds=20))
        later = clock.now() + timedelta(seconds=20)                  # announced for later in this same minute
        market.move(a, first[a].last * Decimal("0.8"), at=later)
        clock.set(later)
        assert (await drain(stream, {a}))[a] == market.quote(a, later)
        clock.advance(timedelta(minutes=1))                          # a bar completed: every quote is read
        await asyncio.sleep(3 * paper_stream.CADENCE_SECONDS)
        assert feed.reads >= reads + 100
    finally:
        await stream.close()
