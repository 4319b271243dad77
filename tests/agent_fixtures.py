"""Helpers for tests that need the whole agent: settings for a fresh agent id, services on a simulated clock.

Plain functions only; the `services` fixture lives in tests/conftest.py. (`services` below is kept for modules
that still import it from here and will go once they no longer do.)
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal


from core.clock import SimulatedClock
from core.environment import Environment
from core.settings import load_settings

# Tuesday 2026-11-24 10:30 Hong Kong time: the market is open.
OPEN_AT = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)


def agent_settings(agent_id: str, *, env: dict | None = None, **config_changes):
    settings = load_settings(env=Environment(values={"AGENT_ID": agent_id, **(env or {})}))
    if config_changes:
        cfg = settings.config
        for section, changes in config_changes.items():
            cfg = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=changes)})
        settings = replace(settings, config=cfg)
    return settings


async def agent_services(pool, agent_id: str, at: datetime = OPEN_AT):
    """The whole agent (paper broker on the simulated market) for `agent_id`, its clock at `at`."""
    from runtime.wiring import build_services
    return await build_services(agent_settings(agent_id), pool, SimulatedClock(at))


async def executor(services, mode: str = "trade"):
    """A tool executor for a fresh trading_cycles row of `mode`, as a cycle would make it (engine 'rules')."""
    cycle_id = uuid.uuid4()
    await services.pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, $3)",
                                cycle_id, services.agent_id, mode)
    return services.executor(mode=mode, cycle_id=cycle_id, engine="rules")


def cheap_symbol(services) -> str:
    """A symbol priced $5-100 whose lot costs least (under 5000): small entries fit it."""
    best = None
    for inst in services.universe.instruments():
        q = services.universe.quote(inst.symbol, services.clock.now())
        lot_value = q.last * inst.lot_size
        if Decimal(5) <= q.last <= Decimal(100) and lot_value < 5000 and (best is None or lot_value < best[0]):
            best = (lot_value, inst.symbol)
    return best[1]



async def movable_services(pool, agent_id: str, at: datetime = OPEN_AT, **config_changes):
    """The whole agent on the paper venue whose prices a test can move (`services.broker.market.move`)."""
    from runtime.wiring import build_services
    from tests.fakes.movable import MovableMarket
    services = await build_services(agent_settings(agent_id, **config_changes), pool, SimulatedClock(at))
    services.broker.market = MovableMarket(services.broker.market, services.clock)
    return services


async def enter_position(services, symbol: str | None = None, value: int = 3000) -> tuple[str, dict]:
    """A filled market entry through execute_trade (a liquid symbol unless named); its positions row."""
    from tests.venues import liquid_symbols
    symbol = symbol or liquid_symbols(services.universe, services.clock.now())[0]
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": value, "order_type": "market",
                                           "reasoning": "an entry for the test"})
    assert r.data["status"] == "filled", r.data
    row = await services.pool.fetchrow("SELECT * FROM positions WHERE agent_id = $1 AND symbol = $2 "
                                       "AND status = 'open'", services.agent_id, symbol)
    return symbol, dict(row)
