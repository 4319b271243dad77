"""Reconciliation: drift between our records and the broker is corrected with an audit row; ambiguity stops entries."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from core.orders import OrderRequest, OrderSide, OrderType
from core.ticks import round_to_tick
from tests.agent_fixtures import services  # noqa: F401  (fixture)
from tests.test_paper_broker import liquid_symbols
from tests.test_tool_executor import executor


async def buy(services, symbol: str, value=9500, **extra):
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": value, "order_type": "market",
                                           "reasoning": "test entry", **extra})
    assert not r.is_error and r.data["status"] in ("filled", "partially_filled"), r.data
    return r.data


def symbols(services) -> list[str]:
    return liquid_symbols(services.universe, services.clock.now())


async def audit_rows(services, action: str):
    return await services.pool.fetch("SELECT * FROM decisions WHERE agent_id = $1 AND engine = 'reconcile' AND "
                                      "action = $2", services.agent_id, action)


async def test_in_sync_records_need_nothing(services):
    await buy(services, symbols(services)[0])
    report = await services.reconciler.run()
    assert report.clean and report.exit_code == 0 and not report.corrections and report.state == "ACTIVE"


async def test_a_position_closed_at_the_broker_behind_our_back_is_closed_here_with_an_audit_row(services):
    symbol = symbols(services)[0]
    data = await buy(services, symbol, value=3000)
    assert data["status"] == "filled"
    held = {p.symbol: p.quantity for p in await services.broker.get_positions()}[symbol]
    manual = await services.broker.place_order(OrderRequest("manual-close-1", symbol, OrderSide.SELL, held,
                                                            OrderType.MARKET))
    services.clock.advance(timedelta(minutes=30))
    assert manual.client_order_id == "manual-close-1"
    report = await services.reconciler.run()
    assert report.clean and any("none at the broker" in c for c in report.corrections), report.render()
    row = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2",
                                       services.agent_id, symbol)
    assert row["status"] == "closed" and row["exit_reason"] == "closed_at_broker"
    assert len(await audit_rows(services, "reconcile_closed")) == 1
    assert data["order"]["client_order_id"]


async def test_a_fill_while_nothing_ran_is_recorded_and_becomes_the_position(services):
    symbol = symbols(services)[1]
    inst = await services.broker.get_instrument(symbol)
    q = await services.broker.get_quote(symbol)
    limit = round_to_tick(q.bid * Decimal("0.997"), inst.tick_scheme, "down")
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "quantity": 2 * inst.lot_size, "order_type": "limit",
                                           "limit_price": str(limit), "reasoning": "resting entry"})
    assert r.data["status"] == "submitted", r.data
    coid = r.data["order"]["client_order_id"]
    filled = None
    for _ in range(40):                                       # nothing of ours runs while the market moves
        services.clock.advance(timedelta(minutes=10))
        paper = await services.pool.fetchrow("SELECT status FROM paper_orders WHERE client_order_id = $1", coid)
        await services.broker.get_orders()                    # the exchange matches as time passes
        paper = await services.pool.fetchrow("SELECT status FROM paper_orders WHERE client_order_id = $1", coid)
        if paper["status"] == "filled":
            filled = paper
            break
        if not services.calendar.is_open(services.clock.now()):
            services.clock.set(services.calendar.state(services.clock.now()).next_open)
    assert filled is not None, "the limit never filled in the simulated market"
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1", coid) == "submitted"
    report = await services.reconciler.run()
    assert report.clean and report.fills_recorded >= 1 and not report.corrections, report.render()
    pos = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2 AND "
                                       "status = 'open'", services.agent_id, symbol)
    assert pos["quantity"] == 2 * inst.lot_size and pos["stop_loss"] is not None


async def test_a_quantity_mismatch_is_set_to_the_brokers_truth(services):
    symbol = symbols(services)[0]
    await buy(services, symbol)
    held = {p.symbol: p.quantity for p in await services.broker.get_positions()}[symbol]
    await services.pool.execute("UPDATE positions SET quantity = quantity + 1000 WHERE agent_id = $1 AND symbol = $2",
                                services.agent_id, symbol)
    report = await services.reconciler.run()
    assert report.clean and len(report.corrections) == 1, report.render()   # we had more: not ambiguous
    assert await services.pool.fetchval("SELECT quantity FROM positions WHERE agent_id = $1 AND symbol = $2 AND "
                                        "status = 'open'", services.agent_id, symbol) == held
    [audit] = await audit_rows(services, "reconcile_quantity")
    assert audit["details"]["was"] == held + 1000 and audit["details"]["broker"] == held


async def test_an_unexplained_position_is_adopted_and_stops_new_entries_until_resumed(services):
    a, b = symbols(services)[:2]
    lot = (await services.broker.get_instrument(a)).lot_size
    await services.broker.place_order(OrderRequest("someone-else-1", a, OrderSide.BUY, lot, OrderType.MARKET))
    report = await services.reconciler.run()
    assert not report.clean and report.exit_code == 5 and report.state == "REDUCING"
    assert any("unknown origin" in x for x in report.ambiguous)
    adopted = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2",
                                           services.agent_id, a)
    assert adopted["status"] == "open" and adopted["stop_loss"] < adopted["avg_entry_price"]
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": b, "value": 9500, "order_type": "market", "reasoning": "try"})
    assert r.data["status"] == "refused" and "trading_state" in {f["rule"] for f in r.data["failed"]}
    # exits still work
    r = await ex.execute("close_position", {"symbol": a, "reason": "not ours"})
    assert r.data["status"] in ("filled", "partially_filled"), r.data
    # a later clean reconciliation does not silently clear it: a person resumes
    assert (await services.reconciler.run()).state == "REDUCING"


async def test_an_order_that_never_reached_the_broker_is_marked_not_resent(services):
    symbol = symbols(services)[0]
    await services.pool.execute(
        "INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, status, created_at) "
        "VALUES ($1, $2, $3, 'buy', 'market', 'entry', 100, 'pending_submit', $4)",
        services.agent_id, f"{services.agent_id}-crash-1", symbol, services.clock.now())
    assert not (await services.reconciler.run()).resolved                  # within the grace period: left alone
    services.clock.advance(timedelta(minutes=2))
    report = await services.reconciler.run()
    assert len(report.resolved) == 1 and "never reached the broker" in report.resolved[0]
    row = await services.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", f"{services.agent_id}-crash-1")
    assert row["status"] == "rejected"
    assert await services.pool.fetchval("SELECT count(*) FROM paper_orders WHERE agent_id = $1", services.agent_id) == 0


async def test_when_a_position_disappears_its_working_exit_orders_are_cancelled(services):
    symbol = symbols(services)[0]
    await buy(services, symbol)
    inst = await services.broker.get_instrument(symbol)
    held = {p.symbol: p.quantity for p in await services.broker.get_positions()}[symbol]
    q = await services.broker.get_quote(symbol)
    target = round_to_tick(q.ask * Decimal("1.2"), inst.tick_scheme, "up")
    out = await services.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.SELL, quantity=held,
                                       order_type=OrderType.LIMIT, limit_price=target, intent="take_profit")
    assert out.status == "submitted"
    # The position vanishes at the broker (e.g. closed by hand in the broker's app).
    await services.pool.execute("DELETE FROM paper_positions WHERE agent_id = $1 AND symbol = $2",
                                services.agent_id, symbol)
    report = await services.reconciler.run()
    assert [c for c in report.cancelled if out.client_order_id in c], report.render()
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1",
                                        out.client_order_id) == "cancelled"
