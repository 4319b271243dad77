"""execution/store.to_json: what tool results and audit rows are written as (orjson, with json's meaning)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings, strategies as st

from core.clock import SimulatedClock
from execution.store import Store, _default, to_json
from tests.agent_fixtures import OPEN_AT

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(),
    st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-10**9, max_value=10**9),
    st.datetimes(timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=8))])), st.dates())
_DATA = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(data=_DATA)
def test_to_json_means_what_json_with_our_defaults_means(data):
    """Any mix of text (any Unicode), numbers, Decimals (as text), datetimes and dates (ISO text), lists and
    objects: the same JSON value as json.dumps with our defaults."""
    assert json.loads(to_json(data)) == json.loads(json.dumps(data, default=_default))


def test_compact_iso_dates_decimals_as_text_and_to_dict():
    @dataclass
    class Reported:
        n: int

        def to_dict(self):
            return {"n": self.n, "kind": "reported"}

    at = datetime(2026, 11, 24, 2, 30, 0, 120000, tzinfo=timezone.utc)
    assert to_json({"at": at, "day": date(2026, 11, 24), "px": Decimal("10.050"), "r": Reported(3), 7: [1.5, None]}) \
        == '{"at":"2026-11-24T02:30:00.120000+00:00","day":"2026-11-24","px":"10.050","r":{"n":3,"kind":"reported"},' \
           '"7":[1.5,null]}'
    assert to_json({"why": "café — 腾讯"}) == '{"why":"café — 腾讯"}'          # UTF-8 text, not \\u escapes


def test_a_float_that_is_not_a_number_is_null_and_unpaired_surrogates_are_escaped():
    assert to_json({"rsi": math.nan, "up": math.inf}) == '{"rsi":null,"up":null}'
    assert json.loads(to_json({"t": "a\udc80b"})) == {"t": "a\udc80b"}


async def test_a_decision_whose_details_hold_nan_is_stored_not_dropped(pool, agent_id):
    """Regression: json wrote NaN, which jsonb refuses: the decision, and every audit row written with it, was
    dropped (logged). It is stored, with null where the number was."""
    store = Store(pool, SimulatedClock(OPEN_AT), agent_id)
    await store.record_decision(cycle_id=None, engine="rules", symbol="S0001", action="skip",
                                reasoning="no RSI yet", details={"rsi14": math.nan, "close": 1.5})
    rows = await pool.fetch("SELECT details FROM decisions WHERE agent_id = $1", agent_id)
    assert [r["details"] for r in rows] == [{"rsi14": None, "close": 1.5}]
