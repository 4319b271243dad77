"""position_monitor.py: one pass exits what the signals say through the one order path, holds the rest, and asks
the cheap advisor only in the uncertain band, within its own budget."""
from __future__ import annotations

from decimal import Decimal

import pytest

from core.clock import SimulatedClock
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings
from tests.fakes.anthropic_server import FakeAnthropic, reply
from tests.venues import liquid_symbols
from tests.agent_fixtures import executor


async def make_services(pool, agent_id, env=None, **ai):
    settings = agent_settings(agent_id, env=env, **({"ai": ai} if ai else {}))
    return await build_services(settings, pool, SimulatedClock(OPEN_AT))


async def entered(services) -> tuple[str, dict]:
    symbol = liquid_symbols(services.universe, services.clock.now())[0]
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": 3000, "order_type": "market",
                                           "reasoning": "entry for the monitor test"})
    assert r.data["status"] == "filled", r.data
    row = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND status = 'open'",
                                       services.agent_id)
    return symbol, dict(row)


def quiet_indicators(monitor, symbol: str, now) -> None:
    """Pin RSI/patterns to 'nothing to say' so a test controls exactly which signals exist."""
    market = monitor.market
    market._cache[market.daily_key(symbol, "monitor")] = (None, ())   # MarketData's per-session cache


async def put_in_moderate_loss(services, symbol) -> None:
    last = (await services.broker.get_quote(symbol)).last
    entry = (last / Decimal("0.975")).quantize(Decimal("0.0001"))      # -2.5%: moderate, not strong
    await services.pool.execute("UPDATE positions SET avg_entry_price = $3, high_water_mark = $3, stop_loss = $4 "
                                "WHERE agent_id = $1 AND symbol = $2 AND status = 'open'", services.agent_id, symbol,
                                entry, (last * Decimal("0.5")).quantize(Decimal("0.01")))


async def uncertain_position(pool, agent_id, fake, **ai) -> tuple:
    """Services with a key for the fake API, one position in a moderate loss, a monitor whose indicators are
    quiet: the next pass lands in the uncertain band."""
    s = await make_services(pool, agent_id, env={"ANTHROPIC_API_KEY": "sk-test",
                                                 "ANTHROPIC_BASE_URL": fake.base_url}, **ai)
    symbol, _ = await entered(s)
    await put_in_moderate_loss(s, symbol)
    monitor = s.monitor()
    quiet_indicators(monitor, symbol, s.clock.now())
    return s, symbol, monitor


async def test_a_crossed_stop_exits_through_the_order_path(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)
    last = (await s.broker.get_quote(symbol)).last
    await s.pool.execute("UPDATE positions SET stop_loss = $2 WHERE position_id = $1", pos["position_id"],
                         last + Decimal("0.05"))                       # the price is now below the stop
    result = await s.monitor().run_pass()
    assert [e["intent"] for e in result.exits] == ["stop_loss"]
    order = await s.pool.fetchrow("SELECT * FROM orders WHERE agent_id = $1 AND side = 'sell'", agent_id)
    assert order["intent"] == "stop_loss" and order["status"] in ("filled", "partially_filled")
    assert await s.pool.fetchval("SELECT engine FROM decisions WHERE agent_id = $1 AND action = 'close'",
                                 agent_id) == "monitor"
    status = await s.pool.fetchrow("SELECT * FROM position_monitor_status WHERE position_id = $1", pos["position_id"])
    assert status["recommendation"].startswith("exit") and status["signal_strength"] == "strong"


async def test_an_exit_reads_its_own_position_not_the_whole_book(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)
    last = (await s.broker.get_quote(symbol)).last
    await s.pool.execute("UPDATE positions SET stop_loss = $2 WHERE position_id = $1", pos["position_id"],
                         last + Decimal("0.05"))

    async def whole_book():
        raise AssertionError("an exit listed every position")
    s.broker.get_positions = whole_book            # the exit's cost must not grow with the positions held
    result = await s.monitor().run_pass()
    assert [e["status"] for e in result.exits] == ["filled"], result


async def test_a_quiet_position_is_held_and_its_status_recorded(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)
    monitor = s.monitor()
    quiet_indicators(monitor, symbol, s.clock.now())
    result = await monitor.run_pass()
    assert result.checked == 1 and not result.exits
    status = await s.pool.fetchrow("SELECT * FROM position_monitor_status WHERE position_id = $1", pos["position_id"])
    assert status["recommendation"] == "hold" and status["last_price"] > 0
    # nothing sold: the only sell order is the position's protective stop, resting at the broker
    sells = await s.pool.fetch("SELECT intent, status FROM orders WHERE agent_id = $1 AND side = 'sell'", agent_id)
    assert [tuple(r) for r in sells] == [("protective_stop", "submitted")]


async def test_uncertain_with_no_key_holds_and_says_why(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, _ = await entered(s)
    await put_in_moderate_loss(s, symbol)
    monitor = s.monitor()
    quiet_indicators(monitor, symbol, s.clock.now())
    result = await monitor.run_pass()
    assert result.uncertain == [symbol] and not result.exits
    d = await s.pool.fetchrow("SELECT * FROM decisions WHERE agent_id = $1 AND action = 'monitor_hold'", agent_id)
    assert "no ANTHROPIC_API_KEY" in d["reasoning"] and d["engine"] == "monitor"


@pytest.mark.parametrize("answer,action", [('{"action": "exit", "reason": "momentum gone"}', "exit"),
                                           ('{"action": "hold", "reason": "dip on low volume"}', "hold"),
                                           ("I think you should sell everything!", "hold")])
async def test_uncertain_asks_the_cheap_model_and_records_its_cost(pool, agent_id, answer, action):
    with FakeAnthropic([reply(answer)]) as fake:
        s, symbol, monitor = await uncertain_position(pool, agent_id, fake)
        result = await monitor.run_pass()
        assert fake.message_requests[0].body["model"] == "claude-haiku-4-5"
    assert (len(result.exits) == 1) == (action == "exit")
    usage = await s.pool.fetchrow("SELECT * FROM ai_usage WHERE agent_id = $1", agent_id)
    assert usage["purpose"] == "monitor" and usage["status"] == "settled" and usage["cost_usd"] > 0
    assert await s.pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND action = $2", agent_id,
                                 f"monitor_{action}") == 1


async def test_with_the_monitor_budget_spent_it_holds_without_calling(pool, agent_id):
    with FakeAnthropic() as fake:
        s, symbol, monitor = await uncertain_position(pool, agent_id, fake, monitor_daily_budget_usd=Decimal("0"))
        await monitor.run_pass()
        assert fake.message_requests == []
    d = await s.pool.fetchrow("SELECT * FROM decisions WHERE agent_id = $1 AND action = 'monitor_hold'", agent_id)
    assert "budget" in d["reasoning"]


async def test_a_failing_quote_does_not_stop_the_pass(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, _ = await entered(s)

    async def broken(*_):
        raise RuntimeError("quote feed hiccup")
    s.broker.get_quotes = broken                 # the batch fails, then each symbol asked alone
    s.broker.get_quote = broken
    result = await s.monitor().run_pass()
    del s.broker.get_quotes, s.broker.get_quote
    assert result.checked == 0 and "quote feed hiccup" in result.errors[0]


async def test_a_standing_hold_is_not_asked_again_every_poll(pool, agent_id):
    """One advisor call and one decision row per advice_hold_minutes while the signals stay the same."""
    from datetime import timedelta
    hold = '{"action": "hold", "reason": "dip on low volume"}'
    with FakeAnthropic([reply(hold), reply(hold)]) as fake:
        s, symbol, monitor = await uncertain_position(pool, agent_id, fake)
        for _ in range(3):
            result = await monitor.run_pass()
            assert result.uncertain == [symbol] and not result.exits
        assert len(fake.message_requests) == 1
        status = await s.pool.fetchval("SELECT recommendation FROM position_monitor_status WHERE agent_id = $1",
                                       agent_id)
        assert status.startswith("uncertain -> hold (standing advice until")
        s.clock.advance(timedelta(minutes=monitor.advice_hold.seconds // 60 + 1))     # the advice lapses
        await put_in_moderate_loss(s, symbol)
        await monitor.run_pass()
        assert len(fake.message_requests) == 2
    assert await s.pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND action = 'monitor_hold'",
                                 agent_id) == 2


async def test_the_high_water_mark_only_rises(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)
    last = (await s.broker.get_quote(symbol)).last
    low = (last * Decimal("0.995")).quantize(Decimal("0.01"))         # +0.5%: no signal at all
    await s.pool.execute("UPDATE positions SET high_water_mark = $2, avg_entry_price = $2, stop_loss = $3 "
                         "WHERE position_id = $1", pos["position_id"], low, low / 2)
    monitor = s.monitor()
    quiet_indicators(monitor, symbol, s.clock.now())
    await monitor.run_pass()
    hwm = await s.pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1", pos["position_id"])
    assert hwm == last                                                  # raised to the price seen
    above = last + Decimal(5)
    await s.pool.execute("UPDATE positions SET high_water_mark = $2 WHERE position_id = $1", pos["position_id"],
                         above)
    await monitor.run_pass()                                            # a lower price never lowers it
    assert await s.pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1",
                                 pos["position_id"]) == above
    status = await s.pool.fetchrow("SELECT * FROM position_monitor_status WHERE position_id = $1", pos["position_id"])
    assert status["high_water_mark"] == above and status["last_price"] == last


async def test_a_failing_advisor_still_leaves_the_status_and_the_raised_high_water_mark(pool, agent_id):
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)
    await put_in_moderate_loss(s, symbol)
    entry = await s.pool.fetchval("SELECT avg_entry_price FROM positions WHERE position_id = $1", pos["position_id"])
    await s.pool.execute("UPDATE positions SET high_water_mark = $2 WHERE position_id = $1", pos["position_id"],
                         entry - 1)
    monitor = s.monitor()
    quiet_indicators(monitor, symbol, s.clock.now())

    async def broken(view, report):
        raise RuntimeError("advisor crashed")
    monitor.advisor.advise = broken
    with pytest.raises(RuntimeError, match="advisor crashed"):
        await monitor.run_pass()
    status = await s.pool.fetchrow("SELECT * FROM position_monitor_status WHERE position_id = $1", pos["position_id"])
    assert status is not None and status["recommendation"].startswith("not finished")
    last = (await s.broker.get_quote(symbol)).last
    assert entry - 1 < last and await s.pool.fetchval(
        "SELECT high_water_mark FROM positions WHERE position_id = $1", pos["position_id"]) == last   # raised


async def test_a_sell_written_ahead_names_the_position_it_sells(pool, agent_id):
    """The write-ahead row of a sell carries its position before the broker answers (or when it never does)."""
    from core.errors import BrokerUnavailable
    from core.orders import OrderSide, OrderType
    s = await make_services(pool, agent_id)
    symbol, pos = await entered(s)

    async def down(order):
        raise BrokerUnavailable("the venue is down")
    s.broker.place_order = down
    outcome = await s.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.SELL, quantity=pos["quantity"],
                                    order_type=OrderType.MARKET, intent="stop_loss")
    assert outcome.status == "pending_submit"
    assert await pool.fetchval("SELECT position_id FROM orders WHERE client_order_id = $1",
                               outcome.client_order_id) == pos["position_id"]
    bought = await s.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.BUY, quantity=pos["quantity"],
                                   order_type=OrderType.MARKET, intent="entry")
    assert await pool.fetchval("SELECT position_id FROM orders WHERE client_order_id = $1",
                               bought.client_order_id) is None                # a buy's position comes with its fill
