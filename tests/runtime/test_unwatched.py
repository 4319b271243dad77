"""Nobody trades unwatched: while the position monitor daemon is required and not beating, new entries are refused
(exits still run), recorded in decisions; heartbeat fails during a session with open positions."""
from __future__ import annotations

from datetime import timedelta

from core.clock import SimulatedClock
from runtime.heartbeat import EXIT_UNWATCHED, monitor_check
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings, cheap_symbol


async def beat(pool, agent_id, at) -> None:
    await pool.execute("INSERT INTO service_health (agent_id, service, status, details, checked_at) "
                       "VALUES ($1, 'position_monitor', 'healthy', '{}', $2)", agent_id, at)


async def required(pool, agent_id):
    return await build_services(agent_settings(agent_id, monitor={"require_daemon": "always"}), pool,
                                SimulatedClock(OPEN_AT))


async def entry(s, symbol, value=3000):
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    return await ex.execute("execute_trade", {"symbol": symbol, "value": value, "order_type": "market",
                                              "reasoning": "an entry while the monitor is (not) beating"})


async def test_no_beat_no_entry_and_the_refusal_is_recorded(pool, agent_id):
    s = await required(pool, agent_id)
    r = await entry(s, cheap_symbol(s))
    assert r.data["status"] == "refused"
    assert "monitor_watching" in [f["rule"] for f in r.data["failed"]]
    assert "never" in next(f["reason"] for f in r.data["failed"] if f["rule"] == "monitor_watching")
    refused = await pool.fetchrow("SELECT verdict FROM decisions WHERE agent_id = $1 AND action = 'refused'",
                                  agent_id)
    assert "monitor_watching" in str(refused["verdict"])


async def test_a_stale_beat_stops_entries_a_fresh_one_allows_them_and_exits_always_run(pool, agent_id):
    s = await required(pool, agent_id)
    limit = s.settings.config.monitor.beat_limit_seconds
    symbol = cheap_symbol(s)
    await beat(pool, agent_id, OPEN_AT - timedelta(seconds=10))
    ok = await entry(s, symbol)
    assert ok.data["status"] == "filled", ok.data.get("failed")
    s.clock.advance(timedelta(seconds=limit + 1))                  # the daemon stopped beating
    other = [i.symbol for i in s.universe.instruments() if i.symbol != symbol]
    stale = await entry(s, other[0])
    assert stale.data["status"] == "refused" and "monitor_watching" in [f["rule"] for f in stale.data["failed"]]
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    out = await ex.execute("close_position", {"symbol": symbol, "reason": "exits run unwatched too"})
    assert out.data["status"] in ("filled", "partially_filled"), out.data      # not refused


async def test_heartbeat_fails_only_in_a_session_with_open_positions(pool, agent_id):
    settings = agent_settings(agent_id)
    assert (await monitor_check(settings, pool, OPEN_AT)).ok                       # nothing open: fine
    await pool.execute("INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, opened_at) "
                       "VALUES ($1, 'S0001', 100, 10, $2)", agent_id, OPEN_AT)
    check = await monitor_check(settings, pool, OPEN_AT)
    assert not check.ok and "never" in check.detail and check.name == "monitor"
    await beat(pool, agent_id, OPEN_AT - timedelta(seconds=30))
    assert (await monitor_check(settings, pool, OPEN_AT)).ok
    night = OPEN_AT + timedelta(hours=12)
    assert (await monitor_check(settings, pool, night)).ok                           # market closed
    assert EXIT_UNWATCHED == 8
