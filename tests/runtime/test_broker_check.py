"""`./run.sh broker-check`: every step against the paper venue, the test order found by client id and cancelled."""
from __future__ import annotations

from core.clock import SimulatedClock
from runtime.broker_check import EXIT_CHECK_FAILED, price_that_cannot_fill, run_broker_check
from tests.agent_fixtures import OPEN_AT, agent_settings


async def test_the_check_places_finds_and_cancels_one_order_that_cannot_fill(pool, agent_id):
    settings = agent_settings(agent_id)
    code, text = await run_broker_check(settings, pool, symbol="S0001", real_money_ok=False,
                                        clock=SimulatedClock(OPEN_AT))
    assert code == 0, text
    for name in ("connect", "account", "positions", "instrument", "quote", "daily bars", "limit buy",
                 "find by client id", "cancel", "confirmed cancelled"):
        assert f"  {name}" in text, (name, text)
    assert "FAIL" not in text
    row = await pool.fetchrow("SELECT status, client_order_id, quantity FROM orders WHERE agent_id = $1",
                              f"{agent_id}-check")
    assert row["status"] == "cancelled"
    assert not await pool.fetch("SELECT 1 FROM orders WHERE agent_id = $1", agent_id)      # the agent's own: none
    assert not await pool.fetch("SELECT 1 FROM fills WHERE agent_id = $1", f"{agent_id}-check")


async def test_an_unknown_symbol_fails_the_check_at_that_step(pool, agent_id):
    code, text = await run_broker_check(agent_settings(agent_id), pool, symbol="ZZZZ", real_money_ok=False,
                                        clock=SimulatedClock(OPEN_AT))
    assert code == EXIT_CHECK_FAILED
    assert "FAIL" in text.splitlines()[-1] and "instrument" in text.splitlines()[-1]


def test_the_test_price_stays_inside_hkex_bands_and_far_under_the_bid():
    from decimal import Decimal
    assert price_that_cannot_fill(Decimal("400.0"), "hkex") == Decimal("396.0")      # 20 ticks of 0.20
    assert price_that_cannot_fill(Decimal("10.00"), "us") == Decimal("9.00")
