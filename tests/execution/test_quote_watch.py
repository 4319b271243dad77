"""execution/quote_watch.py on the paper venue's stream: a pushed price through a stop exits without waiting for a
poll; a stream that stalls or drops is noticed, the gap is checked, the poll takes over at once, and the stream
comes back."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from execution.quote_watch import QuoteWatch
from tests.agent_fixtures import enter_position as enter
from tests.agent_fixtures import movable_services as paper_services

NO_STOPS = {"broker_stops": False}           # the monitor alone protects: what is tested is the monitor's path


async def until(predicate, what: str, timeout: float = 10.0):
    """Wait (bounded) until `predicate()` (sync or async) is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Watching:
    """A monitor, its quote watch running on the paper venue's stream, and the streams it opened."""

    def __init__(self, s, *, stall_seconds: float = 30.0) -> None:
        self.s = s
        self.monitor = s.monitor()
        self.streams: list = []
        self.changes: list[str] = []
        self.reasons: list[str] = []
        opener = s.broker.open_quote_stream

        async def open_and_keep():
            stream = await opener()
            self.streams.append(stream)
            return stream

        s.broker.open_quote_stream = open_and_keep

        async def changed(watch):
            self.changes.append(watch.state)
            self.reasons.append(watch.reason)

        self.watch = QuoteWatch(broker=s.broker, monitor=self.monitor, clock=s.clock, stall_seconds=stall_seconds,
                                max_backoff=0.2, on_change=changed)
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Watching":
        await self.monitor.run_pass()             # the pass tells the watch which positions exist
        self.task = asyncio.create_task(self.watch.run(self.stop, lambda: True))
        await until(lambda: self.watch.state == "streaming" and self.watch.followed, "the stream to follow")
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)

    async def sells(self):
        return await self.s.pool.fetch("SELECT intent, status, quantity FROM orders WHERE agent_id = $1 "
                                       "AND side = 'sell' ORDER BY order_id", self.s.agent_id)


async def test_a_pushed_price_through_the_stop_exits_without_waiting_for_a_poll(pool, agent_id):
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    async with Watching(s) as w:
        assert w.watch.followed == {symbol}
        s.broker.market.move(symbol, pos["stop_loss"] - Decimal("0.10"))
        await until(lambda: w.monitor.stream_exits == 1, "the pushed price's exit")
        rows = await w.sells()
        assert [(r["intent"], r["quantity"]) for r in rows] == [("stop_loss", pos["quantity"])]
        reason = await s.pool.fetchval("SELECT reasoning FROM decisions WHERE agent_id = $1 AND action = 'close'",
                                       agent_id)
        assert "seen on pushed price" in reason
        # the position's exit is working/filled: the watch stops following it after the next pass
        await w.monitor.run_pass()
        await until(lambda: not w.watch.followed, "the stream to drop the exited symbol")


async def test_the_trailing_stop_rises_with_pushed_prices_between_passes(pool, agent_id):
    """A pushed rise lifts the high-water mark at once: a fall through the trailing stop below that high exits on
    the next pushed price, though no pass has seen the high; the next pass stores the high it reached."""
    from core.ticks import round_to_tick
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    entry = pos["avg_entry_price"]
    scheme = (await s.broker.get_instrument(symbol)).tick_scheme
    high = round_to_tick(entry * Decimal("1.04"), scheme, "down")         # +4%: no take-profit yet
    fall = round_to_tick(high * Decimal("0.965"), scheme, "down")         # 3.5% off the high: through a 3% trail
    assert entry < fall < high * Decimal("0.97")
    async with Watching(s) as w:
        s.broker.market.move(symbol, high)
        await until(lambda: symbol in w.watch.pushed_quotes() and w.watch.pushed_quotes()[symbol].last == high,
                    "the rise to be pushed")
        s.broker.market.move(symbol, fall)
        await until(lambda: w.monitor.stream_exits == 1, "the pushed fall through the trailing stop to exit")
        rows = await w.sells()
        assert [(r["intent"], r["quantity"]) for r in rows] == [("trailing_stop", pos["quantity"])]


async def test_the_next_pass_stores_the_high_that_pushed_prices_reached(pool, agent_id):
    from core.ticks import round_to_tick
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    scheme = (await s.broker.get_instrument(symbol)).tick_scheme
    high = round_to_tick(pos["avg_entry_price"] * Decimal("1.02"), scheme, "down")
    back = round_to_tick(pos["avg_entry_price"] * Decimal("1.01"), scheme, "down")
    async with Watching(s) as w:
        for price in (high, back):
            s.broker.market.move(symbol, price)
            await until(lambda: w.watch.pushed_quotes().get(symbol) is not None
                        and w.watch.pushed_quotes()[symbol].last == price, f"{price} to be pushed")
        await w.monitor.run_pass()
        stored = await s.pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1",
                                       pos["position_id"])
        assert stored == high


async def test_a_second_stop_crossed_while_the_first_exit_is_under_way_is_not_kept_waiting(pool, agent_id):
    """A falling market: two stops crossed at once. The first exit is held at the broker (its order does not
    return); the second position's exit goes out meanwhile; then the first completes too."""
    from tests.venues import liquid_symbols
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    a, b = liquid_symbols(s.universe, s.clock.now())[:2]
    _, pa = await enter(s, a)
    _, pb = await enter(s, b)
    held, exits = asyncio.Event(), []
    async with Watching(s) as w:
        real = w.monitor.trader.exit_position

        async def exit_position(symbol, *args, **kwargs):
            exits.append(symbol)
            if symbol == a:
                await held.wait()             # the first exit's order is slow to come back
            return await real(symbol, *args, **kwargs)

        w.monitor.trader.exit_position = exit_position
        assert w.watch.followed == {a, b}
        s.broker.market.move(a, pa["stop_loss"] - Decimal("0.10"))
        await until(lambda: exits == [a], "the first exit to start")
        s.broker.market.move(b, pb["stop_loss"] - Decimal("0.10"))
        await until(lambda: w.monitor.stream_exits == 1, "the second exit, while the first is held")
        assert [r["quantity"] for r in await w.sells()] == [pb["quantity"]]
        held.set()
        await until(lambda: w.monitor.stream_exits == 2, "the first exit, once released")
        assert sorted(r["quantity"] for r in await w.sells()) == sorted([pa["quantity"], pb["quantity"]])


async def test_a_stalled_stream_falls_back_to_the_poll_which_catches_the_stop_crossed_during_the_stall(pool, agent_id):
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    async with Watching(s, stall_seconds=0.5) as w:
        w.streams[-1].stall()                          # the venue goes silent, the socket stays open
        s.broker.market.move(symbol, pos["stop_loss"] - Decimal("0.10"))
        rows = await until(w.sells, "the fallback poll's exit")
        assert [r["intent"] for r in rows] == ["stop_loss"]
        assert w.monitor.stream_exits == 0             # the stream never delivered that price: the poll caught it
        assert "polling" in w.changes and w.watch.failures >= 1
        assert w.reasons[w.changes.index("polling")].startswith("stalled: no message for")
        await until(lambda: w.watch.state == "streaming" and len(w.streams) >= 2, "a new stream")


async def test_a_stop_crossed_and_recovered_during_a_stall_is_found_in_the_gap(pool, agent_id):
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    async with Watching(s, stall_seconds=0.5) as w:
        w.streams[-1].stall()
        s.clock.advance(timedelta(minutes=1))
        s.broker.market.move(symbol, pos["stop_loss"] - Decimal("0.10"))       # through the stop ...
        s.clock.advance(timedelta(minutes=2))
        s.broker.market.move(symbol, pos["avg_entry_price"])                    # ... and back before any poll
        reason = await until(lambda: s.pool.fetchval(
            "SELECT reasoning FROM decisions WHERE agent_id = $1 AND action = 'close'", agent_id),
            "the exit for the crossing inside the gap")
        assert "stream gap" in reason
        assert [r["intent"] for r in await w.sells()] == ["stop_loss"]   # the hard stop, judged on the gap's low


async def test_a_dropped_stream_is_reported_and_reopened(pool, agent_id):
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    await enter(s)
    async with Watching(s) as w:
        w.streams[-1]._lost("connection reset by the test")
        await until(lambda: len(w.streams) >= 2 and w.watch.state == "streaming", "the stream to come back")
        assert w.changes[:3] == ["streaming", "polling", "streaming"]
        assert w.reasons[1] == "dropped: connection reset by the test" and w.watch.failures == 1


async def test_the_stream_follows_positions_as_they_open(pool, agent_id):
    from tests.venues import liquid_symbols
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    first, _ = await enter(s)
    async with Watching(s) as w:
        second = next(x for x in liquid_symbols(s.universe, s.clock.now()) if x != first)
        await enter(s, second)
        await w.monitor.run_pass()
        await until(lambda: w.watch.followed == {first, second}, "the new position to be followed")


async def test_the_watched_symbols_are_worked_out_once_per_change_not_once_per_pushed_price(pool, agent_id):
    """The watch asks for the watched symbols on every pushed price: with hundreds of positions, building and
    comparing the set each time cost more than judging the price."""
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    monitor = s.monitor()
    await monitor.run_pass()
    first = monitor.watched_symbols()
    assert first == {symbol} and monitor.watched_symbols() is first
    s.broker.market.move(symbol, pos["stop_loss"] - Decimal("0.10"))
    await monitor.on_price(await s.broker.get_quote(symbol))            # an exit: the symbol is no longer watched
    assert monitor.watched_symbols() == frozenset()
    await monitor.run_pass()                                             # a pass re-reads the positions
    assert monitor.watched_symbols() is monitor.watched_symbols()


async def test_while_streaming_the_poll_asks_the_venue_only_for_what_is_not_pushed(pool, agent_id):
    """The poll pass takes the streamed symbols' pushed prices (a pass over hundreds of positions asked the venue
    for every one each second); once the stream fails it asks the venue for every price again."""
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    symbol, pos = await enter(s)
    asked: list[list[str]] = []
    batch = s.broker.get_quotes

    async def recording(symbols):
        asked.append(list(symbols))
        return await batch(symbols)
    s.broker.get_quotes = recording
    async with Watching(s, stall_seconds=0.5) as w:
        await until(lambda: symbol in w.watch.pushed_quotes(), "a pushed price")
        asked.clear()
        result = await w.monitor.run_pass()
        assert result.checked == 1 and asked == []
        status = await s.pool.fetchval("SELECT last_price FROM position_monitor_status WHERE position_id = $1",
                                       pos["position_id"])
        assert status == w.watch.pushed_quotes()[symbol].last
        w.streams[-1].stall()                               # silent: the watch falls back to polling
        await until(lambda: w.watch.state == "polling", "the fallback")
        w.stop.set()                                        # no reopening meanwhile: the watch stays down
        await asyncio.wait_for(w.task, 5)
        assert w.watch.state == "polling" and w.watch.pushed_quotes() == {}
        asked.clear()
        await w.monitor.run_pass()
        assert asked == [[symbol]]


async def test_a_symbol_an_exit_took_out_is_unfollowed_only_once_no_exit_is_in_flight(pool, agent_id):
    """The unsubscribe is venue work: it waits until the exit's own requests are done. The exited position's later
    pushes are not judged meanwhile (no second exit), and the other position is still followed and judged."""
    from tests.venues import liquid_symbols
    s = await paper_services(pool, agent_id, monitor=NO_STOPS)
    a, b = liquid_symbols(s.universe, s.clock.now())[:2]
    _, pa = await enter(s, a)
    await enter(s, b)
    held, started = asyncio.Event(), asyncio.Event()
    async with Watching(s) as w:
        stream = w.streams[-1]
        follows: list[frozenset] = []
        real_follow, real_exit = stream.follow, w.monitor.trader.exit_position

        async def follow(symbols):
            follows.append(frozenset(symbols))
            return await real_follow(symbols)

        async def exit_position(symbol, *args, **kwargs):
            started.set()
            await held.wait()                   # the exit's order is slow to come back
            return await real_exit(symbol, *args, **kwargs)

        stream.follow, w.monitor.trader.exit_position = follow, exit_position
        try:
            s.broker.market.move(a, pa["stop_loss"] - Decimal("0.10"))
            await asyncio.wait_for(started.wait(), 5)
            s.broker.market.move(a, pa["stop_loss"] - Decimal("0.20"))     # pushed again while the exit is held
            await asyncio.sleep(0.6)                # more than two of the watch's read slices
            assert follows == [] and w.watch.followed == {a, b}
            assert w.monitor.watched_symbols() == {b}
        finally:
            held.set()
        await until(lambda: w.watch.followed == {b}, "the exited symbol to be unfollowed after the exit")
        assert follows == [frozenset({b})]
        assert w.monitor.stream_exits == 1 and [r["quantity"] for r in await w.sells()] == [pa["quantity"]]
