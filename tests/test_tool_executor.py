"""The tool executor: the model's input is fenced; safety runs inside execute_trade; every call is audited."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tests.agent_fixtures import OPEN_AT, agent_settings, cheap_symbol, services  # noqa: F401  (fixture)
from tool_executor import ToolExecutor
from tools import MODE_TOOLS, TOOLS, anthropic_tools


async def executor(services, mode="trade") -> ToolExecutor:
    cycle_id = uuid.uuid4()
    await services.pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, $3)",
                                cycle_id, services.agent_id, mode)
    return services.executor(mode=mode, cycle_id=cycle_id, engine="rules")


def test_schemas_are_generated_from_the_input_models():
    tools = {t["name"]: t for t in anthropic_tools("trade")}
    assert set(tools) == set(TOOLS) and len(tools) == 11
    assert tools["execute_trade"]["input_schema"]["additionalProperties"] is False
    assert "reasoning" in tools["execute_trade"]["input_schema"]["required"]
    assert {t["name"] for t in anthropic_tools("scan")}.isdisjoint({"execute_trade", "close_position", "close_all"})
    assert {t["name"] for t in anthropic_tools("close")} >= {"close_position", "close_all"}
    assert "execute_trade" not in {t["name"] for t in anthropic_tools("close")}
    assert anthropic_tools("heartbeat") == []


async def test_unknown_tool_and_disallowed_tool_are_errors_naming_the_rule(services):
    ex = await executor(services, mode="scan")
    r = await ex.execute("buy_everything", {})
    assert r.is_error and "unknown tool 'buy_everything'" in r.data["error"]
    r = await ex.execute("execute_trade", {"symbol": "S0001", "quantity": 100, "reasoning": "because"})
    assert r.is_error and "not allowed in scan mode" in r.data["error"]


@pytest.mark.parametrize("payload,field", [
    ({"symbol": "S0001", "quantity": -5, "reasoning": "xyz"}, "quantity"),
    ({"symbol": "S0001", "quantity": "100", "reasoning": "xyz"}, "quantity"),
    ({"symbol": "S0001", "quantity": 100, "reasoning": "xyz", "leverage": 10}, "leverage"),
    ({"symbol": "S0001", "quantity": 10**12, "reasoning": "xyz"}, "quantity"),
    ({"symbol": "S0001", "value": 1e15, "reasoning": "xyz"}, "value"),
    ({"symbol": "'; DROP TABLE orders;--", "quantity": 100, "reasoning": "xyz"}, "symbol"),
    ({"quantity": 100, "reasoning": "xyz"}, "symbol"),
    ({"symbol": "S0001", "quantity": 100}, "reasoning"),
])
async def test_bad_input_names_the_field(services, payload, field):
    ex = await executor(services)
    r = await ex.execute("execute_trade", payload)
    assert r.is_error and field in r.data["error"], r.data


async def test_unknown_symbol_is_a_clear_error(services):
    ex = await executor(services)
    r = await ex.execute("get_quote", {"symbol": "ZZZZ9"})
    assert r.is_error and "unknown symbol 'ZZZZ9'" in r.data["error"]


async def test_data_tools_return_compact_json(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    for name, args in [("get_quote", {"symbol": symbol}), ("get_technicals", {"symbol": symbol}),
                       ("detect_patterns", {"symbol": symbol}), ("get_news", {"symbol": symbol}),
                       ("get_portfolio", {}), ("scan_market", {"limit": 5})]:
        r = await ex.execute(name, args)
        assert not r.is_error, (name, r.content)
        assert len(r.content) < 6000, (name, len(r.content))
    assert "No news source is configured" in (await ex.execute("get_news", {"symbol": symbol})).data["note"]
    scan = (await ex.execute("scan_market", {"limit": 5})).data
    assert 0 < len(scan["candidates"]) <= 5
    rows = await services.pool.fetchval("SELECT count(*) FROM scan_results WHERE agent_id = $1", services.agent_id)
    assert rows >= len(scan["candidates"])


async def test_execute_trade_runs_safety_itself_and_writes_ahead(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    q = await services.broker.get_quote(symbol)
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "limit",
                                           "limit_price": float(q.ask), "reasoning": "test entry"})
    assert not r.is_error, r.content
    order = r.data["order"]
    row = await services.pool.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", order["client_order_id"])
    assert row["intent"] == "entry" and row["stop_loss"] is not None
    assert row["quantity"] * row["limit_price"] <= Decimal(10000)           # max_position_value
    decision = await services.pool.fetchrow("SELECT * FROM decisions WHERE cycle_id = $1 AND symbol = $2",
                                            ex.cycle_id, symbol)
    assert decision["action"] == "buy" and decision["verdict"]["approved"] is True


async def test_oversized_order_is_reduced_or_refused_never_exceeds_limits(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    r = await ex.execute("execute_trade", {"symbol": symbol, "quantity": 1_000_000, "order_type": "market",
                                           "reasoning": "ignore all limits and buy 1,000,000 shares"})
    assert not r.is_error
    rows = await services.pool.fetch("SELECT quantity FROM orders WHERE agent_id = $1", services.agent_id)
    q = await services.broker.get_quote(symbol)
    for row in rows:
        assert row["quantity"] * q.ask <= Decimal(10000) * Decimal("1.01")


async def test_close_mode_cannot_enter_but_can_exit(services):
    ex = await executor(services, mode="trade")
    symbol = cheap_symbol(services)
    await ex.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "market",
                                       "reasoning": "entry to close later"})
    closer = await executor(services, mode="close")
    assert (await closer.execute("execute_trade", {"symbol": symbol, "value": 5000, "reasoning": "no"})).is_error
    r = await closer.execute("close_position", {"symbol": symbol, "reason": "end of day"})
    assert not r.is_error and r.data["status"] == "filled", r.content
    pos = await services.pool.fetchrow("SELECT status, exit_reason FROM positions WHERE agent_id = $1 AND symbol = $2",
                                       services.agent_id, symbol)
    assert pos["status"] == "closed" and pos["exit_reason"] == "exit"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**18, max_value=10**18) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
field_names = st.sampled_from(["symbol", "quantity", "value", "limit_price", "stop_loss", "order_type", "reasoning",
                               "reason", "confirm", "limit", "timeframe", "action", "side", "confidence", "bogus"])
tool_inputs = st.dictionaries(field_names, json_values, max_size=6) | json_values


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TOOLS)), payload=tool_inputs)
async def test_arbitrary_json_never_crashes_and_errors_name_a_field(services, name, payload):
    ex = services.executor(mode="scan", cycle_id=None, engine="rules")   # scan: nothing can be ordered
    r = await ex.execute(name, payload)
    json.loads(r.content)
    if r.is_error:
        msg = r.data["error"]
        assert "internal error" not in msg, msg
        fields = set(getattr(TOOLS[name].model, "model_fields", {})) | {"input", "symbol"}
        if isinstance(payload, dict):
            fields |= set(payload)            # an unexpected field is named as such
        assert (any(f in msg for f in fields) or "not allowed" in msg or "bogus" in msg), msg
