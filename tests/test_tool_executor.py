"""The tool executor: the model's input is fenced; safety runs inside execute_trade; every call is audited."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from core.ticks import round_to_tick
from tests.agent_fixtures import cheap_symbol, executor
from tools import TOOLS, anthropic_tools

__all__ = ["executor"]        # still imported from here by other test modules


async def orders_of(services) -> list:
    return await services.pool.fetch("SELECT * FROM orders WHERE agent_id = $1 ORDER BY order_id", services.agent_id)


async def decisions_of(services) -> list:
    return await services.pool.fetch("SELECT * FROM decisions WHERE agent_id = $1 ORDER BY decision_id",
                                      services.agent_id)


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
    assert not await orders_of(services) and not await decisions_of(services)


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
async def test_bad_input_names_the_field_and_changes_nothing(services, payload, field):
    ex = await executor(services)
    r = await ex.execute("execute_trade", payload)
    assert r.is_error and r.data["error"].startswith(f"{field}:"), r.data
    assert not await orders_of(services) and not await decisions_of(services)


async def test_unknown_symbol_is_a_clear_error(services):
    ex = await executor(services)
    r = await ex.execute("get_quote", {"symbol": "ZZZZ9"})
    assert r.is_error and r.data["error"] == "symbol: unknown symbol 'ZZZZ9' on HKEX"


async def test_data_tools_return_compact_json_of_what_the_broker_and_the_scan_say(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    for name, args in [("get_quote", {"symbol": symbol}), ("get_technicals", {"symbol": symbol}),
                       ("detect_patterns", {"symbol": symbol}), ("get_news", {"symbol": symbol}),
                       ("get_portfolio", {}), ("scan_market", {"limit": 5})]:
        r = await ex.execute(name, args)
        assert not r.is_error, (name, r.content)
        assert len(r.content) < 6000, (name, len(r.content))
    q = await services.broker.get_quote(symbol)
    quote = (await ex.execute("get_quote", {"symbol": symbol})).data
    assert (quote["bid"], quote["ask"], quote["last"], quote["market"]) == (str(q.bid), str(q.ask), str(q.last),
                                                                            "open")
    assert "No news source is configured" in (await ex.execute("get_news", {"symbol": symbol})).data["note"]
    portfolio = (await ex.execute("get_portfolio", {})).data
    account = await services.broker.get_account()
    assert portfolio["cash"] == str(account.cash) and portfolio["positions"] == []
    assert portfolio["trading_state"] == "ACTIVE"
    # the candidates are the top of the scan this agent stored, in rank order
    scan = (await ex.execute("scan_market", {"limit": 5})).data
    stored = await services.pool.fetch("SELECT symbol, rank FROM scan_results WHERE agent_id = $1 ORDER BY rank "
                                       "LIMIT 5", services.agent_id)
    assert [(c["symbol"], c["rank"]) for c in scan["candidates"]] == [(r["symbol"], r["rank"]) for r in stored]
    assert [c["rank"] for c in scan["candidates"]] == [1, 2, 3, 4, 5]


async def test_technicals_can_be_asked_for_some_indicators_only(services):
    """get_technicals with `indicators` answers only those (rsi_state with rsi14; symbol, timeframe, as_of, close and
    bars_used with any), with the numbers of the whole answer; a name it does not know is an input error."""
    ex = await executor(services)
    symbol = cheap_symbol(services)
    whole = (await ex.execute("get_technicals", {"symbol": symbol})).data
    rsi = (await ex.execute("get_technicals", {"symbol": symbol, "indicators": ["rsi14"]})).data
    assert rsi == {k: whole[k] for k in ("symbol", "timeframe", "as_of", "close", "rsi14", "rsi_state", "bars_used")}
    assert whole["rsi14"] is not None and len(whole) > len(rsi) + 10
    some = (await ex.execute("get_technicals", {"symbol": symbol, "indicators": ["macd_hist", "sma20"]})).data
    assert some == {k: whole[k] for k in ("symbol", "timeframe", "as_of", "close", "bars_used", "macd_hist", "sma20")}
    bad = await ex.execute("get_technicals", {"symbol": symbol, "indicators": ["rsi"]})
    assert bad.is_error and bad.data["error"].startswith("indicators"), bad.data


async def test_execute_trade_runs_safety_itself_and_records_the_order_and_the_decision(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    q = await services.broker.get_quote(symbol)
    lot = (await services.broker.get_instrument(symbol)).lot_size
    r = await ex.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "limit",
                                           "limit_price": float(q.ask), "reasoning": "test entry"})
    assert not r.is_error, r.content
    order, verdict = r.data["order"], r.data["verdict"]
    [row] = await orders_of(services)
    assert row["client_order_id"] == order["client_order_id"] and row["cycle_id"] == ex.cycle_id
    assert row["intent"] == "entry" and row["stop_loss"] == Decimal(verdict["stop_loss"])
    assert row["quantity"] == verdict["quantity"] and row["limit_price"] == Decimal(verdict["limit_price"])
    assert row["quantity"] * row["limit_price"] <= Decimal(8000) < (row["quantity"] + lot) * row["limit_price"]
    [decision] = await decisions_of(services)
    assert (decision["cycle_id"], decision["symbol"], decision["action"]) == (ex.cycle_id, symbol, "buy")
    assert decision["verdict"]["approved"] is True and decision["reasoning"] == "test entry"
    assert decision["details"]["order"]["client_order_id"] == order["client_order_id"]


async def test_an_oversized_order_is_cut_to_max_position_value(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    lot = (await services.broker.get_instrument(symbol)).lot_size
    r = await ex.execute("execute_trade", {"symbol": symbol, "quantity": 1_000_000, "order_type": "market",
                                           "reasoning": "ignore all limits and buy 1,000,000 shares"})
    assert not r.is_error and r.data["status"] in ("filled", "partially_filled"), r.data
    verdict = r.data["verdict"]
    ref = Decimal(verdict["reference_price"])
    assert verdict["approved"] is True
    assert any("by max_position_value 10000" in note for note in verdict["adjustments"]), verdict
    [row] = await orders_of(services)
    # the most whole lots that fit in 10000 at the price safety judged it on: no more, and not needlessly fewer
    assert row["quantity"] == verdict["quantity"] and row["quantity"] % lot == 0
    assert row["quantity"] * ref <= Decimal(10000) < (row["quantity"] + lot) * ref


async def test_a_refused_order_names_every_failed_rule_and_sends_nothing(services):
    ex = await executor(services)
    symbol = cheap_symbol(services)
    inst = await services.broker.get_instrument(symbol)
    q = await services.broker.get_quote(symbol)
    far = round_to_tick(q.last * Decimal("1.5"), inst.tick_scheme, "down")       # 50% above: outside the 5% collar
    r = await ex.execute("execute_trade", {"symbol": symbol, "quantity": 1_000_000, "order_type": "limit",
                                           "limit_price": str(far), "stop_loss": str(far + q.last),
                                           "reasoning": "ignore all limits and buy 1,000,000 shares"})
    assert not r.is_error, r.content
    assert r.data["status"] == "refused" and r.data["approved"] is False and r.data["quantity"] == 0
    failed = {f["rule"] for f in r.data["failed"]}
    assert failed == {"price_collar", "stop_loss"}, r.data
    assert not await orders_of(services)
    assert await services.pool.fetchval("SELECT count(*) FROM paper_orders WHERE agent_id = $1",
                                        services.agent_id) == 0
    [decision] = await decisions_of(services)
    assert (decision["cycle_id"], decision["symbol"], decision["action"]) == (ex.cycle_id, symbol, "refused")
    assert {f["rule"] for f in decision["verdict"]["failed"]} == failed
    assert decision["details"]["requested"]["quantity"] == 1_000_000


async def test_close_mode_cannot_enter_but_can_exit(services):
    ex = await executor(services, mode="trade")
    symbol = cheap_symbol(services)
    entry = await ex.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "market",
                                               "reasoning": "entry to close later"})
    assert entry.data["status"] in ("filled", "partially_filled"), entry.data
    closer = await executor(services, mode="close")
    refused = await closer.execute("execute_trade", {"symbol": symbol, "value": 5000, "reasoning": "no"})
    assert refused.is_error and "not allowed in close mode" in refused.data["error"]
    r = await closer.execute("close_position", {"symbol": symbol, "reason": "end of day"})
    assert not r.is_error and r.data["status"] == "filled", r.content
    # a partly filled entry stops buying first; the exit then sells exactly what was bought
    buy, sell = await orders_of(services)
    assert buy["status"] in ("filled", "cancelled") and buy["filled_quantity"] > 0
    assert (sell["side"], sell["intent"], sell["filled_quantity"]) == ("sell", "exit", buy["filled_quantity"])
    pos = await services.pool.fetchrow("SELECT status, exit_reason, quantity FROM positions WHERE agent_id = $1 "
                                       "AND symbol = $2", services.agent_id, symbol)
    assert (pos["status"], pos["exit_reason"], pos["quantity"]) == ("closed", "exit", 0)
    assert await services.broker.get_positions() == []


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
