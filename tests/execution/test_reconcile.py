"""Reconciliation: drift between our records and the broker is corrected with an audit row; ambiguity stops entries."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from core.orders import OrderRequest, OrderSide, OrderType
from core.state import TradingState
from core.ticks import round_to_tick
from tests.agent_fixtures import executor
from tests.venues import liquid_symbols


async def buy(services, symbol: str, value=9500, **extra):
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": value, "order_type": "market",
                                           "reasoning": "test entry", **extra})
    assert not r.is_error and r.data["status"] in ("filled", "partially_filled"), r.data
    return r.data


def symbols(services) -> list[str]:
    return liquid_symbols(services.universe, services.clock.now())


async def held_at_broker(services, symbol: str) -> int:
    return {p.symbol: p.quantity for p in await services.broker.get_positions()}[symbol]


async def audit_rows(services, action: str | None = None):
    return await services.pool.fetch("SELECT * FROM decisions WHERE agent_id = $1 AND engine = 'reconcile' AND "
                                      "($2::text IS NULL OR action = $2) ORDER BY decision_id",
                                      services.agent_id, action)


def nothing_to_report(services) -> dict:
    """ReconcileReport.to_dict() when there was nothing to do and trading is ACTIVE."""
    return {"agent_id": services.agent_id, "state": "ACTIVE"}


async def test_in_sync_records_need_nothing(services):
    await buy(services, symbols(services)[0])
    await services.monitor().run_pass()                 # as a cycle does after its orders: the protective stop
    report = await services.reconciler.run()
    assert report.to_dict() == nothing_to_report(services), report.render()
    assert report.exit_code == 0
    assert not await audit_rows(services)


async def test_a_position_closed_at_the_broker_behind_our_back_is_closed_here_with_an_audit_row(services):
    symbol = symbols(services)[0]
    data = await buy(services, symbol, value=3000)
    assert data["status"] == "filled"
    held = await held_at_broker(services, symbol)
    await services.broker.place_order(OrderRequest("manual-close-1", symbol, OrderSide.SELL, held, OrderType.MARKET))
    services.clock.advance(timedelta(minutes=30))
    report = await services.reconciler.run()
    assert report.corrections == [f"{symbol}: {held} shares open here but none at the broker (a stop filled there "
                                  f"or a manual close); position closed, realised P&L unknown to us"], report.render()
    assert (report.ambiguous, report.cancelled, report.resolved, report.fills_recorded, report.state) == (
        [], [], [], 0, "ACTIVE")
    row = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2",
                                       services.agent_id, symbol)
    assert (row["status"], row["exit_reason"], row["quantity"], row["closed_at"]) == (
        "closed", "closed_at_broker", 0, services.clock.now())
    [audit] = await audit_rows(services)
    assert (audit["action"], audit["symbol"], audit["details"]) == (
        "reconcile_closed", symbol, {"position_id": row["position_id"], "quantity": held})


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
    status = None
    for _ in range(40):                                       # nothing of ours runs while the market moves
        services.clock.advance(timedelta(minutes=10))
        await services.broker.get_orders()                    # the exchange matches as time passes
        status = await services.pool.fetchval("SELECT status FROM paper_orders WHERE client_order_id = $1", coid)
        if status == "filled":
            break
        if not services.calendar.is_open(services.clock.now()):
            services.clock.set(services.calendar.state(services.clock.now()).next_open)
    assert status == "filled", "the limit never filled in the simulated market"
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1", coid) == "submitted"
    assert not await services.pool.fetch("SELECT 1 FROM positions WHERE agent_id = $1", services.agent_id)
    at_broker = await services.pool.fetch("SELECT fill_id, quantity, price FROM paper_fills WHERE client_order_id = "
                                          "$1 ORDER BY fill_id", coid)
    report = await services.reconciler.run()
    found = report.to_dict()
    # the position it found gets its protective stop at the broker, for the whole quantity
    assert [p.split(" @ ")[0] for p in found.pop("protected")] == [f"{symbol}: stop {2 * inst.lot_size}"]
    assert found == {**nothing_to_report(services), "fills_recorded": len(at_broker)}, report.render()
    recorded = await services.pool.fetch("SELECT broker_fill_id, quantity, price FROM fills WHERE agent_id = $1 "
                                         "ORDER BY broker_fill_id", services.agent_id)
    assert [tuple(f) for f in recorded] == [tuple(f) for f in at_broker]
    order = await services.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", coid)
    assert (order["status"], order["filled_quantity"]) == ("filled", 2 * inst.lot_size)
    pos = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2 AND "
                                       "status = 'open'", services.agent_id, symbol)
    assert pos["quantity"] == 2 * inst.lot_size and pos["stop_loss"] == order["stop_loss"]
    assert pos["avg_entry_price"] <= limit
    # what is recorded stays recorded: a second run finds nothing new
    assert (await services.reconciler.run()).to_dict() == nothing_to_report(services)


async def test_a_quantity_mismatch_is_set_to_the_brokers_truth(services):
    symbol = symbols(services)[0]
    await buy(services, symbol)
    await services.monitor().run_pass()                 # its protective stop, for the quantity the broker holds
    held = await held_at_broker(services, symbol)
    await services.pool.execute("UPDATE positions SET quantity = quantity + 1000 WHERE agent_id = $1 AND symbol = $2",
                                services.agent_id, symbol)
    report = await services.reconciler.run()
    # we had more than the broker: corrected, not ambiguous
    assert report.to_dict() == {**nothing_to_report(services), "corrections": [
        f"{symbol}: quantity {held + 1000} here, {held} at the broker; set to {held}"]}, report.render()
    pos = await services.pool.fetchrow("SELECT position_id, quantity FROM positions WHERE agent_id = $1 AND "
                                       "symbol = $2 AND status = 'open'", services.agent_id, symbol)
    assert pos["quantity"] == held
    [audit] = await audit_rows(services)
    assert (audit["action"], audit["details"]) == (
        "reconcile_quantity", {"was": held + 1000, "broker": held, "position_id": pos["position_id"]})


async def test_an_unexplained_position_is_adopted_and_stops_new_entries_until_resumed(services):
    a, b = symbols(services)[:2]
    inst = await services.broker.get_instrument(a)
    await services.broker.place_order(OrderRequest("someone-else-1", a, OrderSide.BUY, inst.lot_size,
                                                   OrderType.MARKET))
    [theirs] = await services.broker.get_positions()
    report = await services.reconciler.run()
    stop = round_to_tick(theirs.avg_price * Decimal("0.97"), inst.tick_scheme, "down")
    assert (report.clean, report.exit_code, report.state) == (False, 5, "REDUCING")
    assert report.ambiguous == [f"{a}: position of unknown origin ({inst.lot_size} shares); confirm it is yours, "
                                f"then resume trading"], report.render()
    assert report.corrections == [f"{a}: held at the broker ({inst.lot_size} @ {theirs.avg_price}) with no position "
                                  f"here; adopted with a stop at {stop}"]
    adopted = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2",
                                           services.agent_id, a)
    assert (adopted["status"], adopted["quantity"], adopted["avg_entry_price"], adopted["stop_loss"]) == (
        "open", inst.lot_size, theirs.avg_price, stop)
    assert [r["action"] for r in await audit_rows(services)] == ["reconcile_adopted"]
    assert await services.store.trading_state() is TradingState.REDUCING
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": b, "value": 9500, "order_type": "market", "reasoning": "try"})
    assert r.data["status"] == "refused" and {f["rule"] for f in r.data["failed"]} == {"trading_state"}, r.data
    # exits still work
    r = await ex.execute("close_position", {"symbol": a, "reason": "not ours"})
    assert r.data["status"] == "filled", r.data
    # a later clean reconciliation does not silently clear it: a person resumes
    again = await services.reconciler.run()
    assert (again.clean, again.ambiguous, again.state) == (True, [], "REDUCING"), again.render()
    await services.store.set_trading_state(TradingState.ACTIVE, "resumed by operator: it was a test", "operator")
    r = await ex.execute("execute_trade", {"symbol": b, "value": 9500, "order_type": "market", "reasoning": "again"})
    assert r.data["status"] in ("filled", "partially_filled"), r.data


async def test_an_order_that_never_reached_the_broker_is_marked_not_resent(services):
    symbol = symbols(services)[0]
    coid = f"{services.agent_id}-crash-1"
    await services.pool.execute(
        "INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, status, created_at) "
        "VALUES ($1, $2, $3, 'buy', 'market', 'entry', 100, 'pending_submit', $4)",
        services.agent_id, coid, symbol, services.clock.now())
    # within the grace period another process may be sending it right now: left alone
    assert (await services.reconciler.run()).to_dict() == nothing_to_report(services)
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1", coid) == "pending_submit"
    services.clock.advance(timedelta(minutes=2))
    report = await services.reconciler.run()
    assert report.to_dict() == {**nothing_to_report(services), "resolved": [
        f"{coid}: never reached the broker; marked rejected, not resent"]}, report.render()
    row = await services.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", coid)
    assert (row["status"], row["reason"]) == (
        "rejected", "never reached the broker: the process stopped before sending it; not resent")
    assert await services.pool.fetchval("SELECT count(*) FROM paper_orders WHERE agent_id = $1", services.agent_id) == 0
    [audit] = await audit_rows(services)
    assert (audit["action"], audit["details"]) == ("reconcile_pending_order", {"client_order_id": coid})


async def test_when_a_position_disappears_its_working_exit_orders_are_cancelled(services):
    symbol = symbols(services)[0]
    await buy(services, symbol)
    inst = await services.broker.get_instrument(symbol)
    held = await held_at_broker(services, symbol)
    q = await services.broker.get_quote(symbol)
    target = round_to_tick(q.ask * Decimal("1.2"), inst.tick_scheme, "up")
    out = await services.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.SELL, quantity=held,
                                       order_type=OrderType.LIMIT, limit_price=target, intent="take_profit")
    assert out.status == "submitted"
    # The position vanishes at the broker (e.g. closed by hand in the broker's app).
    await services.pool.execute("DELETE FROM paper_positions WHERE agent_id = $1 AND symbol = $2",
                                services.agent_id, symbol)
    report = await services.reconciler.run()
    assert report.cancelled == [f"{out.client_order_id} (sell {symbol}: no position any more)"], report.render()
    assert len(report.corrections) == 1 and report.corrections[0].startswith(
        f"{symbol}: {held} shares open here but none at the broker")
    assert (report.ambiguous, report.state) == ([], "ACTIVE")
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1",
                                        out.client_order_id) == "cancelled"
    assert await services.pool.fetchval("SELECT status FROM paper_orders WHERE client_order_id = $1",
                                        out.client_order_id) == "cancelled"
    assert [r["action"] for r in await audit_rows(services)] == ["reconcile_closed", "reconcile_cancel"]


async def test_a_process_looks_for_crash_leftovers_once_and_again_only_for_its_own_unsent_orders(services,
                                                                                               monkeypatch):
    """Steps 1 and 3 find what a dead process or another program left: a process running many cycles (replay, day,
    eval) runs them on its first reconciliation, then only for write-ahead rows its own order path left unsettled."""
    from core.errors import BrokerUnavailable
    from execution.reconcile import Reconciler
    assert (await services.reconciler.run()).to_dict() == nothing_to_report(services)      # the first: a sweep
    symbol = symbols(services)[0]
    other = f"{services.agent_id}-crash-2"          # left by someone else after this process swept
    await services.pool.execute(
        "INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, status, created_at) "
        "VALUES ($1, $2, $3, 'buy', 'market', 'entry', 100, 'pending_submit', $4)",
        services.agent_id, other, symbol, services.clock.now() - timedelta(minutes=5))
    assert (await services.reconciler.run()).to_dict() == nothing_to_report(services)
    assert await services.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1", other) == "pending_submit"

    async def unreachable(order):
        raise BrokerUnavailable("the venue is down")
    monkeypatch.setattr(services.broker, "place_order", unreachable)
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbols(services)[1], "value": 9500, "order_type": "market",
                                           "reasoning": "sent while the venue is down"})
    assert r.data["status"] == "pending_submit", r.data
    ours = r.data["order"]["client_order_id"]
    monkeypatch.undo()
    services.clock.advance(timedelta(minutes=2))
    report = await services.reconciler.run()        # its own unsettled order: step 1 runs, and finds both
    assert report.resolved == [f"{other}: never reached the broker; marked rejected, not resent",
                               f"{ours}: never reached the broker; marked rejected, not resent"], report.render()
    assert not services.orders.unsettled
    # a new process (a fresh Reconciler) sweeps on its first run
    fresh = Reconciler(pool=services.pool, store=services.store, orders=services.orders, broker=services.broker,
                       clock=services.clock, agent_id=services.agent_id, stop_loss_pct=Decimal("0.03"))
    late = f"{services.agent_id}-crash-3"
    await services.pool.execute(
        "INSERT INTO orders (agent_id, client_order_id, symbol, side, order_type, intent, quantity, status, created_at) "
        "VALUES ($1, $2, $3, 'buy', 'market', 'entry', 100, 'pending_submit', $4)",
        services.agent_id, late, symbol, services.clock.now() - timedelta(minutes=5))
    assert (await services.reconciler.run()).resolved == []
    assert (await fresh.run()).resolved == [f"{late}: never reached the broker; marked rejected, not resent"]


async def test_a_process_records_each_change_of_reconciliation_health_not_each_repeat(services):
    for _ in range(3):
        await services.reconciler.run()
    rows = await services.pool.fetch("SELECT status FROM service_health WHERE agent_id = $1 AND service = 'reconcile'",
                                     services.agent_id)
    assert [r["status"] for r in rows] == ["healthy"]
