"""Daily analytics worked out a day ahead in another process (replay/prefetch.py): a replay places the same orders
with them as without; each answer (and each minute path of the simulated market) is what this process works out itself; none is served once the bar store
has written; a process that fails or cannot start changes nothing."""
from __future__ import annotations

import asyncio
from datetime import date, timedelta

import numpy as np
import pytest

from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.feeds import Listing
from engines.rules import ENTRY_INDICATORS
from replay.prefetch import Prefetch, dsn_of
from replay.runner import prepare_history, replay_settings, run_replay
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings


async def _trades(pool, agent_id):
    return [tuple(r) for r in await pool.fetch(
        "SELECT symbol, side, intent, quantity, status, filled_quantity, avg_fill_price, created_at FROM orders "
        "WHERE agent_id = $1 ORDER BY created_at, symbol, side", agent_id)]


def _outcome(result):
    return [(p.day, p.equity, p.cash) for p in result.curve], result.metrics.__dict__


@pytest.mark.slow
async def test_a_replay_places_the_same_orders_with_analytics_worked_out_ahead(pool, agent_id, tmp_path, monkeypatch):
    import replay.prefetch
    # as in ./run.sh replay (no pandas loaded in the replay's process): the first day is waited for, so the process
    # is ahead from the start (with pandas loaded here, the replay would not wait, and on a loaded host a 7-day
    # replay can end before the process, importing, catches up)
    monkeypatch.setattr(replay.prefetch, "_pandas_loaded", lambda: False)
    settings = agent_settings(agent_id)
    kw = dict(start=date(2026, 11, 16), end=date(2026, 11, 24), progress=False, out_dir=tmp_path,
              monitor_every=timedelta(minutes=15))
    ahead = await run_replay(settings, pool, build=builder(pool), run_id="ahead1", prefetch=True, **kw)
    alone = await run_replay(settings, pool, build=builder(pool), run_id="alone1", prefetch=False, **kw)
    assert ahead.prefetched > 20 and alone.prefetched == 0        # most of the days' analytics came from it
    assert _outcome(ahead) == _outcome(alone)
    trades = await _trades(pool, ahead.agent_id)
    assert trades == await _trades(pool, alone.agent_id) and trades, "a replay that trades nothing proves little"


async def _wired(pool, agent_id, days):
    settings = replay_settings(agent_settings(agent_id), run_id="pf", engine="rules", data=None)
    build = builder(pool)
    calendar = MarketCalendar("HKEX")
    await prepare_history(build, settings, calendar, days[0], days[-1])
    clock = SimulatedClock(calendar.session_bounds(days[0])[0][0] - timedelta(hours=1))
    return await build(settings, clock), clock, calendar


def _begin(ahead, pool, session, calendar, days) -> None:
    """The process asked for `days` of this session; the test takes its answers itself (`take`), so the session's
    parts do not."""
    ahead.begin(dsn=dsn_of(pool), settings=session.settings, days=days, calendar=calendar, market=session.market,
                scanner=session.scanner, store=session.bar_store, universe=session.universe)
    session.market.prefetched = session.scanner.prefetched = session.universe.prefetched = None


async def _answer(ahead, key, seconds=30.0):
    """The process's answer under `key`, once it has arrived."""
    for _ in range(int(seconds / 0.02)):
        found = ahead.take(key, None)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no answer under {key} after {seconds} s (error: {ahead.error})")


async def test_each_answer_is_the_number_worked_out_here_and_none_is_served_after_a_write(pool, agent_id):
    calendar = MarketCalendar("HKEX")
    days = calendar.trading_days(date(2026, 11, 18), date(2026, 11, 20))
    session, clock, calendar = await _wired(pool, agent_id, days)
    ahead = await Prefetch.start()
    try:
        _begin(ahead, pool, session, calendar, days)
        ahead.feed(0, days[0], [])                   # day 0 starts: day 1 is worked out ahead
        at = calendar.session_bounds(days[1])[0][0]
        day = calendar.session_key(at)
        ranked = await _answer(ahead, (None, "scan", *day))
        clock.set(at)
        from data.scan import rank_at
        assert ranked == await rank_at(session.bar_store, session.settings.config.scan,
                                       session.settings.config.trading.max_position_value, at)
        market, asked = session.market, ",".join(sorted(ENTRY_INDICATORS))
        for c in ranked[:3]:
            s = c.symbol
            assert await _answer(ahead, (s, f"technicals:{asked}", *day)) == await market.technicals(
                s, "1d", ENTRY_INDICATORS)
            assert await _answer(ahead, (s, "technicals:rsi14", *day)) == await market.technicals(s, "1d", ["rsi14"])
            assert ([p.to_dict() for p in await _answer(ahead, (s, "patterns", *day))]
                    == [p.to_dict() for p in await market.patterns(s)])
            assert await _answer(ahead, (s, "monitor", *day)) == await market.monitor_indicators(s)
            sent = await _answer(ahead, (s, "minutes", *day))          # the simulated market's minute path
            key, here = session.universe.session_minutes(s, at)
            assert key == (s, "minutes", *day)
            assert all(np.array_equal(getattr(sent, f), getattr(here, f)) for f in here.__dataclass_fields__)
        # the bar store writes: what the process worked out before may be of other bars, so none is served
        ahead.feed(1, days[1], [])
        key = (None, "scan", *calendar.session_key(calendar.session_bounds(days[2])[0][0]))
        for _ in range(1500):
            if key in ahead._found:
                break
            await asyncio.sleep(0.02)
        assert key in ahead._found
        listings = [Listing(i) for i in (await session.bar_store.instruments())[:1]]
        await session.bar_store.upsert_securities(listings, source="test", now=at)
        assert ahead.take(key, None) is None
    finally:
        await ahead.close()
        await session.broker.disconnect()


async def test_days_are_worked_out_ahead_of_the_replay_and_topped_up_with_what_it_holds(pool, agent_id):
    """Before the replay says anything, the process works out the first day and DAYS_AHEAD more (their rankings and
    their candidates' analytics), no further; once the replay says it holds a symbol no candidate list named, that
    symbol's answers for the next day come too (it was missing from the days worked out ahead), and one more day."""
    import replay.prefetch
    calendar = MarketCalendar("HKEX")
    days = calendar.trading_days(date(2026, 11, 13), date(2026, 11, 20))
    session, clock, calendar = await _wired(pool, agent_id, days)
    ahead = await Prefetch.start()
    try:
        _begin(ahead, pool, session, calendar, days)

        def key_of(n: int, kind: str = "scan", symbol=None) -> tuple:
            return (symbol, kind, *calendar.session_key(calendar.session_bounds(days[n])[0][0]))

        last = replay.prefetch.DAYS_AHEAD
        named: set[str] = set()
        for n in range(last + 1):                   # told nothing yet: days 0 .. DAYS_AHEAD come
            named |= {c.symbol for c in (await _answer(ahead, key_of(n)))[:5]}
        await asyncio.sleep(0.5)
        assert key_of(last + 1) not in ahead._found     # and no further
        unnamed = next(i.symbol for i in await session.bar_store.instruments() if i.symbol not in named
                       and key_of(1, "monitor", i.symbol) not in ahead._found)
        ahead.feed(0, days[0], [unnamed])           # day 0 starts holding it: its day-1 answers are topped up
        assert await _answer(ahead, key_of(1, "monitor", unnamed)) is not None
        assert await _answer(ahead, key_of(1, "minutes", unnamed)) is not None
        assert await _answer(ahead, key_of(last + 1)) is not None       # and one more day is worked out
    finally:
        await ahead.close()
        await session.broker.disconnect()


async def test_the_first_day_is_waited_for_only_when_working_it_out_here_would_import_pandas(pool, agent_id, tmp_path,
                                                                                        monkeypatch, caplog):
    """A process that never answers: without pandas loaded here, the replay waits for its first day (and says so
    when it gives up); with pandas loaded (bar files read, backtesting.py beside it) it does not wait at all."""
    import replay.prefetch
    hangs = tmp_path / "hangs.sh"
    hangs.write_text("#!/bin/sh\nexec sleep 60\n")
    hangs.chmod(0o755)
    calendar = MarketCalendar("HKEX")
    days = calendar.trading_days(date(2026, 11, 18), date(2026, 11, 20))
    session, clock, calendar = await _wired(pool, agent_id, days)
    for loaded in (False, True):
        monkeypatch.setattr(replay.prefetch, "_pandas_loaded", lambda: loaded)
        monkeypatch.setattr(replay.prefetch, "FIRST_DAY_SECONDS", 0.3 if not loaded else 3600.0)
        ahead = await Prefetch.start(python=str(hangs))
        try:
            _begin(ahead, pool, session, calendar, days)
            caplog.clear()
            await asyncio.wait_for(ahead.first_day(), 60)      # (a guard against hanging, not a timing)
            assert ("sent nothing" in caplog.text) is (not loaded), caplog.text
        finally:
            monkeypatch.setattr(replay.prefetch, "CLOSE_SECONDS", 0.3)
            await ahead.close()
    await session.broker.disconnect()


@pytest.mark.parametrize("loaded, days, started", [(False, 5, True), (True, 38, False), (True, 119, False),
                                                     (True, 120, True), (True, 1800, True)])
def test_the_process_is_started_when_it_pays_for_itself(monkeypatch, loaded, days, started):
    """Without pandas loaded here the process always pays (it spares the import); with it loaded, a short replay is
    over before the process pays for its start (a 38-day daily replay: 0.7 s alone, 1.0-1.4 s with it)."""
    import replay.prefetch
    monkeypatch.setattr(replay.prefetch, "_pandas_loaded", lambda: loaded)
    assert replay.prefetch.worth_starting(days) is started


async def test_a_short_replay_beside_pandas_runs_without_the_process(pool, agent_id, tmp_path, monkeypatch):
    import replay.prefetch
    started: list = []
    start = Prefetch.start.__func__

    async def counted(cls, **kw):
        started.append(1)
        return await start(cls, **kw)
    monkeypatch.setattr(Prefetch, "start", classmethod(counted))
    monkeypatch.setattr(replay.prefetch, "_pandas_loaded", lambda: True)
    kw = dict(start=date(2026, 11, 23), end=date(2026, 11, 24), progress=False, out_dir=tmp_path,
              monitor_every=timedelta(minutes=30))
    result = await run_replay(agent_settings(agent_id), pool, build=builder(pool), run_id="short1", **kw)
    assert started == [] and result.prefetched == 0 and result.days == 2


@pytest.mark.parametrize("python", ["/bin/false", "/nonexistent/python", "hangs"])
async def test_a_prefetch_process_that_fails_hangs_or_cannot_start_changes_nothing(pool, agent_id, tmp_path,
                                                                                  monkeypatch, python):
    import replay.prefetch
    settings = agent_settings(agent_id)
    kw = dict(start=date(2026, 11, 23), end=date(2026, 11, 24), progress=False, out_dir=tmp_path,
              monitor_every=timedelta(minutes=30))
    if python == "hangs":                           # never answers, never ends: waited for, then killed
        python = tmp_path / "hangs.sh"
        python.write_text("#!/bin/sh\nexec sleep 60\n")
        python.chmod(0o755)
        monkeypatch.setattr(replay.prefetch, "FIRST_DAY_SECONDS", 0.3)
        monkeypatch.setattr(replay.prefetch, "CLOSE_SECONDS", 0.3)
    start = Prefetch.start.__func__
    monkeypatch.setattr(Prefetch, "start", classmethod(lambda cls: start(cls, python=python)))
    failed = await run_replay(settings, pool, build=builder(pool), run_id="failed1", prefetch=True, **kw)
    alone = await run_replay(settings, pool, build=builder(pool), run_id="alone2", prefetch=False, **kw)
    assert failed.prefetched == 0
    assert _outcome(failed) == _outcome(alone)
    assert await _trades(pool, failed.agent_id) == await _trades(pool, alone.agent_id)
