"""execution/order_path.py: the write-ahead row numbers the next client order id with an index probe, and agents
whose ids start alike still each get an orders row for every order."""
from __future__ import annotations

import re

from core.clock import SimulatedClock
from core.orders import OrderSide, OrderType, client_id_prefix
from execution.order_path import _WRITE_AHEAD
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings, cheap_symbol


async def test_the_next_order_number_is_found_by_an_index_not_by_reading_every_order(pool, agent_id):
    """Numbering an order must not read every order ever written (all agents, every replay): that grows without
    bound on a database kept for years. With sequential scans disabled the plan still holds none on orders."""
    prefix = client_id_prefix(agent_id) + "nocycle-S0001-b"
    args = (agent_id, None, None, "S0001", "buy", "market", "entry", 100, None, None, None, OPEN_AT, None, prefix)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + _WRITE_AHEAD, *args))
    assert "Seq Scan on orders" not in plan, plan
    assert re.search(r"Index Cond: \(+agent_id = ", plan), plan     # a probe by agent, not a full index read


async def test_agents_whose_ids_start_alike_each_write_their_order_ahead(pool, agent_id):
    """Client order ids start with 12 characters of the agent id: two agents sharing them number the same id;
    the second is numbered again over every agent, and its order is written ahead and recorded as usual."""
    base = (re.sub(r"[^A-Za-z0-9]", "", agent_id) + "x" * 12)[:12]
    first, second = f"{base}-a", f"{base}-b"
    assert client_id_prefix(first) == client_id_prefix(second)
    outcomes = []
    for agent in (first, second):
        s = await build_services(agent_settings(agent, market_data={"universe_size": 100}), pool,
                                 SimulatedClock(OPEN_AT))
        symbol = cheap_symbol(s)
        outcomes.append(await s.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.BUY,
                                              quantity=s.universe.instrument(symbol).lot_size,
                                              order_type=OrderType.MARKET, intent="entry"))
    ids = [o.client_order_id for o in outcomes]
    assert ids[0] != ids[1] and ids[1].endswith("2"), ids
    assert [o.status for o in outcomes] == ["filled", "filled"], outcomes
    for agent, coid in zip((first, second), ids):
        assert await pool.fetchval("SELECT agent_id FROM orders WHERE client_order_id = $1", coid) == agent
