"""Reconciliation knows our own in-flight orders: a crash right after the broker accepted and filled an order, then
a restart at 0, 10, 30, 59 or 61 s, resolves that order by its client id first (never resent), so an exit keeps
its P&L and an entry is not adopted as "unknown origin"; a second process finishing the same order later changes
nothing. (Reproductions of issue "Money safety" item 2.)
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from core.orders import OrderRequest, OrderSide, OrderType
from tests.agent_fixtures import executor
from tests.venues import liquid_symbols

RESTARTS = [0, 10, 30, 59, 61]


async def sent_but_not_recorded(services, symbol: str, side: OrderSide, quantity: int, intent: str):
    """What a process killed right after the broker's answer leaves: the write-ahead row, and an order the broker
    accepted (and filled) that our tables know nothing more about."""
    coid = await services.orders.next_client_order_id(None, symbol, side)
    position_id = await services.pool.fetchval(
        "SELECT position_id FROM positions WHERE agent_id = $1 AND symbol = $2 AND status = 'open'",
        services.agent_id, symbol) if side is OrderSide.SELL else None
    await services.pool.execute(
        """INSERT INTO orders (agent_id, client_order_id, position_id, symbol, side, order_type, intent, quantity,
               stop_loss, status, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, 'market', $6, $7, $8, 'pending_submit', $9, $9)""",
        services.agent_id, coid, position_id, symbol, side.value, intent, quantity,
        Decimal("0.01") if side is OrderSide.BUY else None, services.clock.now())
    result = await services.broker.place_order(OrderRequest(coid, symbol, side, quantity, OrderType.MARKET))
    assert result.filled_quantity == quantity, result
    return result


async def entered(services, symbol: str) -> int:
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": 3000, "order_type": "market",
                                           "reasoning": "an entry, fully recorded"})
    assert r.data["status"] == "filled", r.data
    return r.data["order"]["filled_quantity"]


def broker_pnl(entry_fills, exit_fills) -> Decimal:
    """Realised P&L net of every fee, from the broker's own fills."""
    bought = sum(f.price * f.quantity for f in entry_fills)
    sold = sum(f.price * f.quantity for f in exit_fills)
    fees = sum(f.fee for f in entry_fills) + sum(f.fee for f in exit_fills)
    return sold - bought - fees


@pytest.mark.parametrize("after", RESTARTS)
async def test_an_exit_filled_while_we_died_keeps_its_pnl(services, after):
    symbol = liquid_symbols(services.universe, services.clock.now())[0]
    qty = await entered(services, symbol)
    entry = await services.broker.get_order_by_client_id(await services.pool.fetchval(
        "SELECT client_order_id FROM orders WHERE agent_id = $1 AND side = 'buy'", services.agent_id))
    result = await sent_but_not_recorded(services, symbol, OrderSide.SELL, qty, "stop_loss")
    services.clock.advance(timedelta(seconds=after))
    report = await services.reconciler.run()
    assert report.state == "ACTIVE" and not report.ambiguous, report.render()
    assert not [c for c in report.corrections if "none at the broker" in c], report.render()
    row = await services.pool.fetchrow("SELECT status, quantity, realized_pnl, exit_reason FROM positions "
                                       "WHERE agent_id = $1", services.agent_id)
    assert (row["status"], row["quantity"], row["exit_reason"]) == ("closed", 0, "stop_loss")
    assert row["realized_pnl"] == broker_pnl(entry.fills, result.fills)
    # the process that sent it comes back and records the same answer: nothing changes
    await services.orders.record_result(await services.broker.get_order_by_client_id(result.client_order_id))
    again = await services.pool.fetchrow("SELECT status, realized_pnl FROM positions WHERE agent_id = $1",
                                         services.agent_id)
    assert (again["status"], again["realized_pnl"]) == ("closed", row["realized_pnl"])


@pytest.mark.parametrize("after", RESTARTS)
async def test_an_entry_filled_while_we_died_is_ours_not_unknown(services, after):
    symbol = liquid_symbols(services.universe, services.clock.now())[0]
    lot = (await services.broker.get_instrument(symbol)).lot_size
    await sent_but_not_recorded(services, symbol, OrderSide.BUY, lot, "entry")
    services.clock.advance(timedelta(seconds=after))
    report = await services.reconciler.run()
    assert report.state == "ACTIVE" and not report.ambiguous, report.render()
    assert not [c for c in report.corrections if "adopted" in c], report.render()
    rows = await services.pool.fetch("SELECT quantity, status FROM positions WHERE agent_id = $1", services.agent_id)
    assert [(r["quantity"], r["status"]) for r in rows] == [(lot, "open")]
    assert {p.symbol: p.quantity for p in await services.broker.get_positions()} == {symbol: lot}


async def test_a_sell_fill_for_a_position_reconciliation_closed_keeps_its_pnl(services):
    """Two processes: reconciliation closed the position (the broker had sold it) before the monitor's own sell fill
    was recorded; the late fill still books its P&L on that position."""
    symbol = liquid_symbols(services.universe, services.clock.now())[0]
    qty = await entered(services, symbol)
    entry = await services.broker.get_order_by_client_id(await services.pool.fetchval(
        "SELECT client_order_id FROM orders WHERE agent_id = $1 AND side = 'buy'", services.agent_id))
    coid = await services.orders.next_client_order_id(None, symbol, OrderSide.SELL)
    await services.pool.execute(
        """INSERT INTO orders (agent_id, client_order_id, position_id, symbol, side, order_type, intent, quantity,
               status, created_at, updated_at)
           SELECT $1, $2, position_id, $3, 'sell', 'market', 'trailing_stop', $4, 'pending_submit', $5, $5
           FROM positions WHERE agent_id = $1 AND status = 'open'""",
        services.agent_id, coid, symbol, qty, services.clock.now())
    # reconciliation runs before the order reaches the broker (nothing to find yet) ...
    await services.pool.execute("UPDATE positions SET status = 'closed', quantity = 0, closed_at = $2, "
                                "exit_reason = 'closed_at_broker' WHERE agent_id = $1", services.agent_id,
                                services.clock.now())
    # ... then the sell reaches the broker and fills, and its process records the answer
    result = await services.broker.place_order(OrderRequest(coid, symbol, OrderSide.SELL, qty, OrderType.MARKET))
    await services.orders.record_result(result)
    row = await services.pool.fetchrow("SELECT realized_pnl, exit_reason FROM positions WHERE agent_id = $1",
                                       services.agent_id)
    assert row["exit_reason"] == "trailing_stop"
    assert row["realized_pnl"] == broker_pnl(entry.fills, result.fills)
