"""Committed exposure: working entry orders count with open positions in every limit of the safety gate.

Reproductions (issue "Money safety"): with max_positions 2, four resting entries in four symbols were all approved;
with allow_reentry_same_day, three buy orders for one symbol were working at once (24,732 against
max_position_value 10,000); the daily-loss sizing cap bounded each order alone, not their sum.
"""
from __future__ import annotations

from decimal import Decimal

import pytest

import safety
from core.account import Account, Position
from core.clock import SimulatedClock
from core.instruments import Instrument, Quote
from core.orders import OrderSide, OrderType
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings

D = Decimal


def priced(services, n: int) -> list[tuple[str, Decimal, int]]:
    """n symbols priced 5..60 with a lot under 3,000: (symbol, last, lot)."""
    out = []
    for inst in services.universe.instruments():
        q = services.universe.quote(inst.symbol, services.clock.now())
        if D(5) <= q.last <= D(60) and q.last * inst.lot_size < 3000:
            out.append((inst.symbol, q.last, inst.lot_size))
    assert len(out) >= n
    return out[:n]


async def resting_entry(ex, symbol: str, last: Decimal, lot: int):
    """A limit buy 3% under the market (inside the 5% collar) worth 2,500..8,000 (above min_position_value):
    accepted, it rests."""
    lots = int(D(2500) / (last * lot)) + 1
    return await ex.execute("execute_trade", {
        "symbol": symbol, "quantity": lot * lots, "order_type": "limit",
        "limit_price": float((last * D("0.97")).quantize(D("0.01"))),
        "reasoning": "a resting entry for the committed-exposure test"})


async def test_working_entries_count_toward_max_positions(pool, agent_id):
    s = await build_services(agent_settings(agent_id, trading={"max_positions": 2}), pool, SimulatedClock(OPEN_AT))
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    results = []
    for symbol, last, lot in priced(s, 4):
        r = await resting_entry(ex, symbol, last, lot)
        results.append(r.data)
    assert [r["status"] for r in results[:2]] == ["submitted", "submitted"], [r.get("failed") for r in results]
    for r in results[2:]:
        assert r["status"] == "refused" and "max_positions" in [f["rule"] for f in r["failed"]], r
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND side = 'buy'", agent_id) == 2


async def test_a_second_entry_for_a_symbol_waits_for_the_first_even_with_reentry_allowed(pool, agent_id):
    s = await build_services(agent_settings(agent_id, trading={"allow_reentry_same_day": True}), pool,
                             SimulatedClock(OPEN_AT))
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    (symbol, last, lot), = priced(s, 1)
    first = await resting_entry(ex, symbol, last, lot)
    assert first.data["status"] == "submitted", first.data.get("failed")
    for _ in range(2):
        again = await resting_entry(ex, symbol, last, lot)
        assert again.data["status"] == "refused" and "entry_working" in [f["rule"] for f in again.data["failed"]]
    working = await pool.fetchval("SELECT coalesce(sum(limit_price * quantity), 0) FROM orders WHERE agent_id = $1 "
                                  "AND side = 'buy' AND status = 'submitted'", agent_id)
    assert working <= s.settings.config.trading.max_position_value


def _ctx(working, *, cash=D(100_000), realized=D(0)):
    return safety.RiskContext(
        now=OPEN_AT, account=Account("HKD", cash, cash, cash), positions=[], realized_pnl_today=realized,
        unrealized_pnl=D(0), quote=Quote("NEW", D("9.99"), D("10.00"), D("10.00"), 1000, OPEN_AT),
        instrument=Instrument("NEW", "HKEX", "HKD", 100), market=safety.MarketStatus("open"),
        working_entries=working)


LIMITS = safety.RiskLimits(max_positions=10, max_position_value=D(50_000), min_position_value=D(0),
                           daily_loss_limit=D(1000), position_stop_loss_pct=D("0.05"))
INTENT = safety.EntryIntent(symbol="NEW", side=OrderSide.BUY, quantity=None, notional=D(40_000),
                            order_type=OrderType.MARKET, stop_loss=D("9.50"))


def test_the_daily_loss_cap_bounds_the_sum_of_every_working_entry_at_its_stop():
    alone = safety.evaluate_entry(INTENT, _ctx([]), LIMITS)
    assert alone.approved and alone.adjusted_quantity == 2000        # 1,000 of loss room / 0.50 a share
    working = [safety.WorkingEntry("A", 1000, D("20.00"), D("19.40")),   # 600 at risk
               safety.WorkingEntry("B", 500, D("8.00"), None)]           # 8 x 5% x 500 = 200 at risk
    v = safety.evaluate_entry(INTENT, _ctx(working), LIMITS)
    assert v.approved and v.adjusted_quantity == 400                 # 200 left / 0.50 a share
    full = working + [safety.WorkingEntry("C", 400, D("10.00"), D("9.50"))]
    refused = safety.evaluate_entry(INTENT, _ctx(full), LIMITS)
    assert not refused.approved and "daily_loss_limit" in refused.failed_rules


def test_sizing_is_on_cash_less_working_entries_unless_margin_is_allowed():
    margin = Account("HKD", cash=D(10_000), buying_power=D(40_000), equity=D(10_000))
    working = [safety.WorkingEntry("A", 600, D("10.00"), D("9.90"))]     # 6,000 committed
    ctx = safety.RiskContext(
        now=OPEN_AT, account=margin, positions=[], realized_pnl_today=D(0), unrealized_pnl=D(0),
        quote=Quote("NEW", D("9.99"), D("10.00"), D("10.00"), 1000, OPEN_AT),
        instrument=Instrument("NEW", "HKEX", "HKD", 100), market=safety.MarketStatus("open"),
        working_entries=working)
    intent = safety.EntryIntent(symbol="NEW", side=OrderSide.BUY, quantity=3000, notional=None,
                                order_type=OrderType.MARKET, stop_loss=D("9.95"))
    limits = safety.RiskLimits(max_positions=10, max_position_value=D(50_000), min_position_value=D(0),
                               daily_loss_limit=D(100_000), position_stop_loss_pct=D("0.05"))
    on_cash = safety.evaluate_entry(intent, ctx, limits)
    assert on_cash.approved and on_cash.adjusted_quantity == 300      # 4,000 of cash left / (10 x 1.005)
    from dataclasses import replace
    on_margin = safety.evaluate_entry(intent, ctx, replace(limits, allow_margin=True))
    assert on_margin.adjusted_quantity == 3000


@pytest.mark.parametrize("held", [True, False])
def test_a_held_symbol_and_a_working_one_both_take_a_place(held):
    positions = [Position("A", 100, D(10), D(10))] if held else []
    working = [safety.WorkingEntry("B", 100, D("10.00"), D("9.50"))]
    ctx = safety.RiskContext(
        now=OPEN_AT, account=Account("HKD", D(100_000), D(100_000), D(100_000)), positions=positions,
        realized_pnl_today=D(0), unrealized_pnl=D(0), quote=Quote("NEW", D("9.99"), D("10.00"), D("10.00"), 1000,
                                                                 OPEN_AT),
        instrument=Instrument("NEW", "HKEX", "HKD", 100), market=safety.MarketStatus("open"),
        working_entries=working)
    limits = safety.RiskLimits(max_positions=2, max_position_value=D(50_000), min_position_value=D(0),
                               daily_loss_limit=D(100_000), position_stop_loss_pct=D("0.05"))
    v = safety.evaluate_entry(INTENT, ctx, limits)
    assert ("max_positions" in v.failed_rules) == held
