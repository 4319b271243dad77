"""execution/protection.py on the paper venue: one protective stop per position at the broker, raised with the
trailing stop (cancel, then place), released before any other exit, restored by reconciliation."""
from __future__ import annotations

from decimal import Decimal

from core.orders import OrderStatus, OrderType
from core.ticks import round_to_tick
from tests.agent_fixtures import enter_position as enter
from tests.agent_fixtures import movable_services as paper_services


async def broker_stops(s, symbol):
    return [o for o in await s.broker.get_orders(open_only=True)
            if o.symbol == symbol and o.order_type is OrderType.STOP]


async def test_a_filled_entry_gets_one_stop_at_the_broker_at_its_protective_level(pool, agent_id):
    s = await paper_services(pool, agent_id)
    symbol, pos = await enter(s)
    monitor = s.monitor()
    await monitor.run_pass()
    await monitor.run_pass()                      # a second pass places nothing more
    stops = await broker_stops(s, symbol)
    assert len(stops) == 1
    stop = stops[0]
    expected = await s.monitor().protection.level({**pos, "high_water_mark": pos["high_water_mark"]})
    assert stop.stop_price == expected and stop.quantity == pos["quantity"]
    assert stop.stop_price < pos["avg_entry_price"]
    row = await s.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", stop.client_order_id)
    assert row["intent"] == "protective_stop" and row["status"] == "submitted" and row["stop_price"] == expected


async def test_a_trailing_stop_raised_five_times_ends_with_exactly_one_working_stop_at_the_last_level(pool, agent_id):
    # take-profit far away: the price rises ~22% and the position must stay open
    s = await paper_services(pool, agent_id, signals={"take_profit_strong": Decimal("0.9"),
                                                      "take_profit_moderate": Decimal("0.8")})
    symbol, pos = await enter(s)
    monitor = s.monitor()
    market = s.broker.market
    await monitor.run_pass()
    levels = []
    price = pos["avg_entry_price"]
    for _ in range(5):
        price = price * Decimal("1.04")           # each rise moves the trailing stop (3%) by more than the step
        market.move(symbol, price)
        await monitor.run_pass()
        stops = await broker_stops(s, symbol)
        assert len(stops) == 1
        levels.append(stops[0].stop_price)
    assert levels == sorted(levels) and len(set(levels)) == 5
    hwm = await s.pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1", pos["position_id"])
    inst = await s.broker.get_instrument(symbol)
    assert levels[-1] == round_to_tick(hwm * (1 - s.settings.config.trading.trailing_stop_pct), inst.tick_scheme,
                                       "down")
    ours = await s.pool.fetch("SELECT status FROM orders WHERE agent_id = $1 AND intent = 'protective_stop' "
                              "ORDER BY order_id", agent_id)
    assert [r["status"] for r in ours] == ["cancelled"] * 5 + ["submitted"]


async def test_the_monitors_exit_cancels_the_stop_first_and_only_one_sell_fills(pool, agent_id):
    s = await paper_services(pool, agent_id)
    symbol, pos = await enter(s)
    monitor = s.monitor()
    await monitor.run_pass()
    [stop] = await broker_stops(s, symbol)
    # take-profit: above the stop, so the venue's stop cannot fire; the monitor's own exit must clear it first
    s.broker.market.move(symbol, pos["avg_entry_price"] * Decimal("1.20"))
    result = await monitor.run_pass()
    assert [e["intent"] for e in result.exits] == ["take_profit"]
    sells = await s.pool.fetch("SELECT client_order_id, intent, status, filled_quantity FROM orders "
                               "WHERE agent_id = $1 AND side = 'sell' ORDER BY order_id", agent_id)
    assert [(r["intent"], r["status"]) for r in sells] == [("protective_stop", "cancelled"), ("take_profit", "filled")]
    assert await broker_stops(s, symbol) == []
    assert (await s.broker.get_order_by_client_id(stop.client_order_id)).status is OrderStatus.CANCELLED
    assert await s.pool.fetchval("SELECT status FROM positions WHERE position_id = $1", pos["position_id"]) == "closed"


async def test_a_price_through_the_stop_sells_once_whoever_sees_it_first(pool, agent_id):
    s = await paper_services(pool, agent_id)
    symbol, pos = await enter(s)
    monitor = s.monitor()
    await monitor.run_pass()
    [stop] = await broker_stops(s, symbol)
    s.broker.market.move(symbol, stop.stop_price * Decimal("0.97"))
    await monitor.run_pass()
    sold = await s.pool.fetchval("SELECT coalesce(sum(quantity), 0) FROM fills WHERE agent_id = $1 AND side = 'sell'",
                                 agent_id)
    assert sold == pos["quantity"]
    assert await s.pool.fetchval("SELECT status FROM positions WHERE position_id = $1", pos["position_id"]) == "closed"
    assert await s.pool.fetchval(
        "SELECT count(*) FROM orders WHERE agent_id = $1 AND side = 'sell' AND filled_quantity > 0", agent_id) == 1
    assert (await s.broker.get_positions()) == []


async def test_reconciliation_restores_a_stop_that_went_missing_at_the_broker(pool, agent_id):
    s = await paper_services(pool, agent_id)
    symbol, pos = await enter(s)
    await s.monitor().run_pass()
    [stop] = await broker_stops(s, symbol)
    assert await s.broker.cancel_order(stop.client_order_id)     # cancelled behind our back (a person, the venue)
    report = await s.reconciler.run()
    assert report.clean and len(report.protected) == 1, report.render()
    [again] = await broker_stops(s, symbol)
    assert again.client_order_id != stop.client_order_id and again.stop_price == stop.stop_price
    assert await s.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1",
                                 stop.client_order_id) == "cancelled"


async def test_with_broker_stops_off_nothing_is_placed_and_heartbeat_says_the_monitor_alone_protects(pool, agent_id):
    from runtime.heartbeat import protection_check
    s = await paper_services(pool, agent_id, monitor={"broker_stops": False})
    symbol, _ = await enter(s)
    await s.monitor().run_pass()
    assert await broker_stops(s, symbol) == []
    check = await protection_check(s.settings, s.pool)
    assert "1 of 1 open positions protected only by the monitor" in check.detail
    assert "broker_stops is off" in check.detail
