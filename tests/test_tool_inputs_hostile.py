"""Hostile tool input: control characters and unpaired surrogates in any text field are refused naming the field,
before anything is done; close_all needs confirm: true exactly."""
from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.agent_fixtures import cheap_symbol, executor
from tools import TOOLS

TEXT_FIELDS = sorted({(name, field) for name, spec in TOOLS.items()
                      for field, info in spec.model.model_fields.items()
                      if info.annotation is str or "str" in str(info.annotation) and "Literal" not in str(info.annotation)})


async def test_a_nul_in_reasoning_places_nothing_and_names_the_field(services):
    ex = await executor(services)
    r = await ex.execute("execute_trade", {"symbol": cheap_symbol(services), "value": 3000, "order_type": "market",
                                           "reasoning": "buy\x00 it"})
    assert r.is_error and r.data["error"].startswith("reasoning: contains the control character U+0000")
    assert not await services.pool.fetch("SELECT 1 FROM orders WHERE agent_id = $1", services.agent_id)


@pytest.mark.parametrize("confirm", [1, "true", 1.0, False, None])
async def test_close_all_needs_confirm_true_exactly(services, confirm):
    ex = await executor(services)
    r = await ex.execute("close_all", {"reason": "the kill switch", "confirm": confirm})
    assert r.is_error and "confirm" in r.data["error"]
    assert not await services.pool.fetch("SELECT 1 FROM agent_state WHERE agent_id = $1", services.agent_id)


hostile_text = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=64),
    st.sampled_from(["\x00", "\ud800", "a\x1bb", "x" * 100_000, "\x7f", "\x9f", "".join(map(chr, range(32)))]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_text_in_any_text_field_is_a_clear_answer_never_an_internal_error(services, data):
    name, field = data.draw(st.sampled_from(TEXT_FIELDS))
    ex = await executor(services, mode="close" if name in ("close_all", "close_position") else "trade")
    payload = {"symbol": "S0001", "reason": "a reason", "reasoning": "a reasoning", "action": "hold",
               "value": 3000, "confirm": True}
    allowed = set(TOOLS[name].model.model_fields)
    payload = {k: v for k, v in payload.items() if k in allowed}
    payload[field] = data.draw(hostile_text)
    r = await ex.execute(name, payload)
    if r.is_error:
        assert "internal error" not in r.data["error"], r.data
        bad = any(c in payload[field] for c in "".join(map(chr, [*range(0, 9), 11, 12, *range(14, 32),
                                                                   *range(127, 160)])))
        if bad:
            assert r.data["error"].startswith(f"{field}:"), (field, r.data)


def test_the_printable_range_is_accepted():
    model = TOOLS["log_decision"].model
    text = string.printable.replace("\x0b", "").replace("\x0c", "") + " é 中文 🙂"
    assert model.model_validate({"action": "hold", "reasoning": text}).reasoning == text.strip()
