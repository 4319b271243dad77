"""signals.py: each exit signal fires exactly where its rule says (boundaries included), never on a near miss, and
the signals add up to exit / uncertain / hold by the documented rules."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

import signals
from core.config_model import SignalsConfig
from signals import PositionView, Signal, SignalThresholds, as_of, evaluate

T = SignalThresholds(stop_loss_strong=D("-0.03"), stop_loss_moderate=D("-0.02"), take_profit_strong=D("0.08"),
                     take_profit_moderate=D("0.05"), rsi_overbought=D(75), rsi_oversold=D(30),
                     trailing_stop_pct=D("0.03"))
OPENED = datetime(2026, 11, 24, 1, 35, tzinfo=timezone.utc)
NOW = OPENED + timedelta(hours=2)


def pos(price, *, entry="20.00", high=None, stop=None, target=None, quantity=400, opened_at=OPENED) -> PositionView:
    price, entry = D(str(price)), D(entry)
    return PositionView(symbol="0700.HK", quantity=quantity, entry_price=entry, price=price,
                        high_water=D(str(high)) if high is not None else max(entry, price),
                        stop_loss=D(str(stop)) if stop is not None else None,
                        take_profit=D(str(target)) if target is not None else None, opened_at=opened_at)


def kinds(report) -> dict[str, str]:
    return {s.kind: s.strength for s in report.signals}


def bullish(level, name="bull_flag", key="breakout_level"):
    return {"name": name, "direction": "bullish", "confidence": 0.7, "levels": {key: level},
            "start": "2026-11-10", "end": "2026-11-20"}


def bearish(name="bearish_engulfing", direction="bearish"):
    return {"name": name, "direction": direction, "confidence": 0.6, "levels": {}, "start": "2026-11-19",
            "end": "2026-11-20"}


# ---------------------------------------------------------------- thresholds

def test_thresholds_build_from_the_real_config_section():
    cfg = SignalsConfig(stop_loss_strong=D("-0.03"), stop_loss_moderate=D("-0.02"), take_profit_strong=D("0.08"),
                        take_profit_moderate=D("0.05"), rsi_overbought=D(75), rsi_oversold=D(30))
    assert SignalThresholds.from_config(cfg, D("0.03")) == T


def test_thresholds_from_config_are_duck_typed_and_floats_become_exact_decimals():
    cfg = SimpleNamespace(stop_loss_strong=-0.03, stop_loss_moderate=-0.02, take_profit_strong=0.08,
                          take_profit_moderate=0.05, rsi_overbought=75, rsi_oversold=30)
    t = SignalThresholds.from_config(cfg, 0.03)
    assert t == T and isinstance(t.stop_loss_strong, D)


@pytest.mark.parametrize("change, message", [
    (dict(stop_loss_strong=D("-0.01")), "stop_loss_strong <= stop_loss_moderate"),
    (dict(stop_loss_moderate=D("0.01")), "stop_loss_moderate < 0"),
    (dict(take_profit_moderate=D("0.09")), "take_profit_moderate <= take_profit_strong"),
    (dict(trailing_stop_pct=D(0)), "trailing_stop_pct"),
    (dict(rsi_overbought=D(20)), "rsi_oversold < rsi_overbought"),
])
def test_inconsistent_thresholds_are_refused_with_the_rule_named(change, message):
    with pytest.raises(ValueError, match=message):
        replace(T, **change)


# ---------------------------------------------------------------- input validation

@pytest.mark.parametrize("field, value", [("entry_price", D(0)), ("price", D("-1")), ("high_water", D(0)),
                                          ("stop_loss", D(0)), ("take_profit", D("-5")), ("price", D("NaN"))])
def test_non_positive_or_non_finite_prices_raise_value_error_naming_the_field(field, value):
    base = dict(symbol="X", quantity=100, entry_price=D(20), price=D(20), high_water=D(20))
    with pytest.raises(ValueError, match=f"X: {field} must be"):
        PositionView(**{**base, field: value})


@pytest.mark.parametrize("quantity", [0, -100])
def test_non_positive_quantity_raises_value_error(quantity):
    with pytest.raises(ValueError, match="quantity must be positive"):
        pos("20.00", quantity=quantity)


def test_a_float_price_is_refused_because_money_is_exact():
    with pytest.raises(TypeError, match="not a float"):
        PositionView(symbol="X", quantity=100, entry_price=D(20), price=19.5, high_water=D(20))


def test_an_int_price_is_accepted_as_a_decimal():
    p = PositionView(symbol="X", quantity=100, entry_price=20, price=D("19.5"), high_water=20)
    assert p.entry_price == D(20) and isinstance(p.entry_price, D)


@pytest.mark.parametrize("rsi", [-1.0, 100.5])
def test_rsi_outside_0_to_100_raises(rsi):
    with pytest.raises(ValueError, match="rsi must be within"):
        evaluate(pos("20.00"), T, rsi=rsi)


def test_nan_rsi_means_no_reading():
    assert evaluate(pos("20.00"), T, rsi=float("nan")).action == "hold"


def test_a_pattern_that_is_not_a_mapping_raises_type_error():
    with pytest.raises(TypeError, match="mappings"):
        evaluate(pos("20.00"), T, patterns=[object()])


def test_mixing_naive_and_aware_times_raises():
    with pytest.raises(ValueError, match="time-zone aware"):
        evaluate(pos("20.00"), T, now=datetime(2026, 11, 24, 3, 35))


# ---------------------------------------------------------------- hard stop

def test_hard_stop_fires_strong_at_exactly_the_recorded_stop():
    r = evaluate(pos("19.50", stop="19.50"), T)
    assert kinds(r)["hard_stop"] == "strong" and r.action == "exit"
    assert "19.50" in r.signals[0].reason


def test_hard_stop_does_not_fire_one_tick_above_the_stop():
    assert "hard_stop" not in kinds(evaluate(pos("19.51", stop="19.50"), T))


def test_no_recorded_stop_means_no_hard_stop_signal():
    assert "hard_stop" not in kinds(evaluate(pos("19.70"), T))


def test_hard_stop_is_reported_first_so_the_monitor_files_it_as_a_stop_loss_exit():
    r = evaluate(pos("19.40", stop="19.50"), T, rsi=80.0, patterns=[bearish()])
    assert [s.kind for s in r.signals][:2] == ["hard_stop", "stop_loss"]


# ---------------------------------------------------------------- stop loss

def test_loss_of_exactly_3_pct_is_strong_and_exits():
    r = evaluate(pos("19.40"), T)                      # (19.40 - 20) / 20 = -0.03 exactly
    assert kinds(r) == {"stop_loss": "strong"} and r.action == "exit" and r.pnl_pct == D("-0.03")


def test_loss_just_short_of_3_pct_is_only_moderate():
    r = evaluate(pos("19.4001"), T)
    assert kinds(r) == {"stop_loss": "moderate"} and r.action == "uncertain"


def test_loss_of_exactly_2_pct_is_moderate():
    assert kinds(evaluate(pos("19.60"), T)) == {"stop_loss": "moderate"}


def test_loss_just_short_of_2_pct_is_no_signal():
    r = evaluate(pos("19.6001"), T)
    assert r.signals == () and r.action == "hold"


def test_boundaries_are_exact_when_the_near_miss_ratio_does_not_terminate():
    # entry 3.00: -3% is 2.91 exactly; 2.9101 is -2.99666..% (no finite decimal), a hair above it: moderate.
    assert kinds(evaluate(pos("2.91", entry="3.00"), T)) == {"stop_loss": "strong"}
    assert kinds(evaluate(pos("2.9101", entry="3.00"), T)) == {"stop_loss": "moderate"}


# ---------------------------------------------------------------- take profit

def test_gain_of_exactly_8_pct_is_strong_take_profit():
    r = evaluate(pos("21.60", high="21.60"), T)
    assert kinds(r) == {"take_profit": "strong"} and r.action == "exit"


def test_gain_just_short_of_8_pct_is_moderate_take_profit():
    assert kinds(evaluate(pos("21.5999", high="21.5999"), T)) == {"take_profit": "moderate"}


def test_gain_of_exactly_5_pct_is_moderate_and_just_short_is_nothing():
    assert kinds(evaluate(pos("21.00", high="21.00"), T)) == {"take_profit": "moderate"}
    assert evaluate(pos("20.9999", high="20.9999"), T).signals == ()


def test_recorded_take_profit_reached_is_strong_even_below_8_pct():
    r = evaluate(pos("20.60", high="20.60", target="20.60"), T)
    assert kinds(r) == {"take_profit": "strong"} and "take-profit 20.60" in r.signals[0].reason


def test_recorded_take_profit_one_tick_away_does_not_fire():
    assert evaluate(pos("20.59", high="20.59", target="20.60"), T).signals == ()


def test_take_profit_is_one_signal_when_both_the_pct_and_the_target_are_hit():
    r = evaluate(pos("22.00", high="22.00", target="21.00"), T)
    assert [s.kind for s in r.signals] == ["take_profit"] and r.signals[0].strength == "strong"


# ---------------------------------------------------------------- trailing stop

def test_trailing_stop_fires_at_exactly_3_pct_below_the_high_when_that_locks_in_a_gain():
    # high 21.00 -> level 20.37 > entry 20.00; the price is exactly at the level.
    r = evaluate(pos("20.37", high="21.00"), T)
    assert kinds(r) == {"trailing_stop": "strong"} and r.action == "exit"
    assert "20.37" in r.signals[0].reason and "21.00" in r.signals[0].reason


def test_trailing_stop_does_not_fire_one_tick_above_its_level():
    assert "trailing_stop" not in kinds(evaluate(pos("20.38", high="21.00"), T))


def test_trailing_stop_never_fires_before_the_position_was_in_profit():
    # high_water == entry: never in profit; a 2.5% drop is the stop_loss rule's business, not the trailing stop's.
    r = evaluate(pos("19.50", high="20.00"), T)
    assert "trailing_stop" not in kinds(r) and kinds(r) == {"stop_loss": "moderate"}


def test_trailing_stop_stays_off_when_its_level_would_be_below_the_entry():
    # high 20.40 -> level 19.788 < entry 20.00: it would protect no gain.
    assert "trailing_stop" not in kinds(evaluate(pos("19.70", high="20.40"), T))


def test_trailing_stop_stays_off_when_its_level_is_exactly_the_entry():
    # high 100 -> level 97.00 == entry 97.00: break-even is not a gain, so it stays off even at the level.
    p = PositionView("X", 100, D("97.00"), D("97.00"), D("100.00"), None, None, None)
    assert "trailing_stop" not in kinds(evaluate(p, T))


def test_a_high_water_below_entry_after_averaging_up_keeps_the_trailing_stop_off():
    assert evaluate(pos("19.90", high="19.95"), T).signals == ()


# ---------------------------------------------------------------- RSI

def test_rsi_at_exactly_overbought_is_moderate():
    r = evaluate(pos("20.10"), T, rsi=75.0)
    assert kinds(r) == {"rsi_overbought": "moderate"} and r.action == "uncertain"


def test_rsi_just_below_overbought_is_nothing():
    assert evaluate(pos("20.10"), T, rsi=74.99).signals == ()


def test_an_oversold_rsi_is_not_an_exit_signal_for_a_long():
    assert evaluate(pos("20.10"), T, rsi=5.0).signals == ()


# ---------------------------------------------------------------- patterns

def test_a_bullish_breakout_that_fell_back_below_its_level_is_a_moderate_pattern_failure():
    r = evaluate(pos("20.40", high="20.80"), T, patterns=[bullish(20.5)])
    assert kinds(r) == {"pattern_failure": "moderate"} and "20.5" in r.signals[0].reason


def test_the_plain_level_key_works_when_there_is_no_breakout_level():
    assert kinds(evaluate(pos("20.40", high="20.80"), T, patterns=[bullish(20.5, key="level")])) == {
        "pattern_failure": "moderate"}


def test_a_price_exactly_at_the_breakout_level_has_not_failed():
    assert evaluate(pos("20.50", high="20.80"), T, patterns=[bullish(20.5)]).signals == ()


def test_a_pending_breakout_never_reached_is_not_a_failure():
    # the level (21.00) is above every price since entry (high 20.80): the breakout has not happened yet.
    assert evaluate(pos("20.40", high="20.80"), T, patterns=[bullish(21.0)]).signals == ()


def test_a_bullish_pattern_without_a_usable_level_is_ignored():
    for levels in ({}, {"support": 19.0}, {"breakout_level": "n/a"}, {"breakout_level": float("nan")}, None):
        p = {**bullish(20.5), "levels": levels}
        assert evaluate(pos("20.40", high="20.80"), T, patterns=[p]).signals == ()


@pytest.mark.parametrize("name", ["breakdown", "bearish_engulfing", "evening_star", "shooting_star", "double_top"])
def test_a_bearish_pattern_is_a_moderate_pattern_failure(name):
    r = evaluate(pos("20.10"), T, patterns=[bearish(name)])
    assert kinds(r) == {"pattern_failure": "moderate"} and name in r.signals[0].reason


def test_a_known_bearish_name_counts_when_the_pattern_has_no_direction():
    assert kinds(evaluate(pos("20.10"), T, patterns=[bearish("double_top", direction=None)])) == {
        "pattern_failure": "moderate"}


def test_neutral_patterns_are_ignored():
    assert evaluate(pos("20.10"), T, patterns=[bearish("doji", direction="neutral")]).signals == ()


def test_several_failing_patterns_fold_into_one_signal_and_do_not_force_an_exit_alone():
    r = evaluate(pos("20.40", high="20.80"), T, patterns=[bearish("shooting_star"), bearish("evening_star"),
                                                           bullish(20.5)])
    assert [s.kind for s in r.signals] == ["pattern_failure"] and r.action == "uncertain"
    assert all(n in r.signals[0].reason for n in ("shooting_star", "evening_star", "bull_flag"))


# ---------------------------------------------------------------- the decision

def test_no_signals_means_hold():
    r = evaluate(pos("20.10"), T, rsi=50.0, patterns=[bullish(19.0)])
    assert r.action == "hold" and r.signals == () and r.reason.startswith("hold")


def test_exactly_one_moderate_signal_is_the_uncertain_band():
    r = evaluate(pos("19.55"), T)                      # -2.25%: moderate stop_loss only
    assert r.action == "uncertain" and len(r.moderate) == 1 and not r.strong
    assert "stop_loss" in r.reason and r.reason.startswith("uncertain")


def test_two_moderate_signals_exit():
    r = evaluate(pos("19.55"), T, patterns=[bearish()])
    assert r.action == "exit" and len(r.moderate) == 2 and not r.strong
    assert "2 moderate signals" in r.reason


def test_a_strong_signal_exits_whatever_else_is_present():
    r = evaluate(pos("21.70", high="21.70"), T, rsi=10.0)
    assert r.action == "exit" and r.strong


def test_strong_signals_are_listed_before_moderate_ones():
    r = evaluate(pos("21.34", high="22.00"), T, rsi=80.0, patterns=[bearish()])
    assert [s.strength for s in r.signals] == ["strong", "moderate", "moderate", "moderate"]
    assert r.signals[0].kind == "trailing_stop"


def test_held_seconds_comes_from_now_and_opened_at_and_no_rule_depends_on_time():
    early, late = evaluate(pos("19.55"), T, now=NOW), evaluate(pos("19.55"), T, now=NOW + timedelta(days=3))
    assert early.held_seconds == 7200 and late.held_seconds == 7200 + 3 * 86400
    assert (early.action, early.signals) == (late.action, late.signals)
    assert evaluate(pos("19.55"), T).held_seconds is None


def test_to_dict_is_compact_json_with_decimals_as_strings():
    r = evaluate(pos("19.40", stop="19.50"), T, now=NOW)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["action"] == "exit" and d["pnl_pct"] == "-0.030000" and d["held_seconds"] == 7200
    assert d["signals"][0] == {"kind": "hard_stop", "strength": "strong",
                               "reason": "price 19.40 is at or below the stop 19.50"}


def test_signal_refuses_an_unknown_strength():
    with pytest.raises(ValueError, match="strength"):
        Signal("stop_loss", "weak", "x")


def test_same_inputs_give_the_same_report_and_inputs_are_not_mutated():
    p = pos("20.37", high="21.00", stop="19.00", target="23.00")
    pats = [bullish(20.5), bearish()]
    snapshot = json.dumps(pats)
    first = evaluate(p, T, rsi=80.0, patterns=pats, now=NOW)
    second = evaluate(p, T, rsi=80.0, patterns=pats, now=NOW)
    assert first == second and first.to_dict() == second.to_dict() and json.dumps(pats) == snapshot


# ---------------------------------------------------------------- properties

cents = st.integers(min_value=1, max_value=200_000).map(lambda c: D(c) / 100)
maybe_rsi = st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False))
pattern = st.fixed_dictionaries({
    "name": st.sampled_from(["bull_flag", "ascending_triangle", "breakout", "breakdown", "double_top", "doji",
                             "bearish_engulfing", "hammer"]),
    "direction": st.sampled_from(["bullish", "bearish", "neutral"]),
    "confidence": st.floats(min_value=0, max_value=1),
    "levels": st.one_of(st.just({}), st.builds(lambda v: {"breakout_level": v},
                                               st.floats(min_value=0.01, max_value=3000, allow_nan=False))),
})


def _moved(base: D, basis_points: int) -> D:
    return max(D("0.0001"), (base * (1 + D(basis_points) / 10_000)).quantize(D("0.0001")))


@st.composite
def positions(draw) -> PositionView:
    """Mostly within -15%..+20% of the entry (where the thresholds live), sometimes anywhere."""
    entry = draw(cents)
    price = draw(st.one_of(st.integers(min_value=-1500, max_value=2000).map(lambda bp: _moved(entry, bp)), cents))
    high = _moved(max(entry, price), draw(st.integers(min_value=0, max_value=2000)))
    stop = draw(st.one_of(st.none(), st.integers(min_value=-2000, max_value=0).map(lambda bp: _moved(entry, bp))))
    target = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=3000).map(lambda bp: _moved(entry, bp))))
    return PositionView("X", draw(st.integers(min_value=1, max_value=10_000)), entry, price, high, stop, target,
                        OPENED)


@st.composite
def thresholds(draw) -> SignalThresholds:
    pct = st.integers(min_value=1, max_value=150).map(lambda b: D(b) / 1000)
    sl_m, sl_extra, tp_m, tp_extra = draw(pct), draw(pct), draw(pct), draw(pct)
    ob = draw(st.integers(min_value=51, max_value=100))
    return SignalThresholds(-(sl_m + sl_extra) / 2, -sl_m / 2, tp_m + tp_extra, tp_m, D(ob), D(30), draw(pct))


PROPS = settings(max_examples=200, deadline=None)


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=4))
def test_the_action_follows_from_the_signals_exactly(p, t, rsi, pats):
    r = evaluate(p, t, rsi=rsi, patterns=pats, now=NOW)
    assert r.action in ("exit", "hold", "uncertain")
    strong, moderate = len(r.strong), len(r.moderate)
    assert strong + moderate == len(r.signals)
    expected = "exit" if strong or moderate >= 2 else "uncertain" if moderate == 1 else "hold"
    assert r.action == expected
    if not r.signals:
        assert r.action != "exit"
    if strong:
        assert r.action == "exit"
    assert len({s.kind for s in r.signals}) == len(r.signals)          # at most one signal per kind
    json.dumps(r.to_dict())


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=4), st.integers(min_value=0, max_value=500))
def test_a_price_at_or_below_the_hard_stop_always_exits(p, t, rsi, pats, cents_above):
    p = replace(p, stop_loss=p.price + D(cents_above) / 100)
    r = evaluate(p, t, rsi=rsi, patterns=pats)
    assert r.action == "exit" and r.signals[0].kind == "hard_stop"


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=4))
def test_evaluate_is_pure(p, t, rsi, pats):
    assert evaluate(p, t, rsi=rsi, patterns=pats, now=NOW) == evaluate(p, t, rsi=rsi, patterns=pats, now=NOW)


@PROPS
@given(positions(), thresholds())
def test_trailing_stop_fires_only_when_its_level_protects_a_gain(p, t):
    r = evaluate(p, t)
    level = max(p.high_water, p.price) * (1 - t.trailing_stop_pct)
    assert ("trailing_stop" in kinds(r)) == (level > p.entry_price and p.price <= level)


@PROPS
@given(positions(), thresholds())
def test_pnl_pct_has_the_sign_of_the_move(p, t):
    r = evaluate(p, t)
    assert (r.pnl_pct > 0) <= (p.price > p.entry_price) and (r.pnl_pct < 0) <= (p.price < p.entry_price)


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=2))
def test_when_indicators_do_not_matter_the_price_only_report_stands(p, t, rsi, pats):
    if not signals.indicators_matter(t, rsi=rsi, patterns=pats):
        assert evaluate(p, t, rsi=rsi, patterns=pats, now=NOW) == evaluate(p, t, now=NOW)


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=4))
def test_indicators_added_to_a_price_only_report_give_evaluates_report(p, t, rsi, pats):
    """with_indicators (the monitor's and the rules' second look) is evaluate with the indicators, field for field
    (signals, their order, action, P&L, reason, held seconds), without working the price rules out again."""
    price_only = evaluate(p, t, now=NOW)
    assert signals.with_indicators(price_only, p, t, rsi=rsi, patterns=pats) == evaluate(
        p, t, rsi=rsi, patterns=pats, now=NOW)


@PROPS
@given(positions(), thresholds(), maybe_rsi, st.lists(pattern, max_size=4))
def test_indicators_read_once_give_the_same_reports(p, t, rsi, pats):
    """The monitor reads a session's RSI and patterns once (rsi_reading, PatternSet) and judges every pass with them:
    the same reports as with the raw values, and indicators_matter is never True where they add nothing."""
    reading, ready = signals.rsi_reading(rsi), signals.PatternSet.of(pats)
    price_only = evaluate(p, t, now=NOW)
    assert evaluate(p, t, rsi=reading, patterns=ready, now=NOW) == evaluate(p, t, rsi=rsi, patterns=pats, now=NOW)
    assert signals.with_indicators(price_only, p, t, rsi=reading, patterns=ready) == evaluate(
        p, t, rsi=rsi, patterns=pats, now=NOW)
    if not signals.indicators_matter(t, rsi=reading, patterns=ready):
        assert evaluate(p, t, rsi=rsi, patterns=pats, now=NOW) == price_only


def test_a_pattern_set_refuses_what_evaluate_refuses():
    with pytest.raises(TypeError, match="patterns must be mappings"):
        signals.PatternSet.of(["double_top"])
    assert not signals.PatternSet.of([{"name": "doji", "direction": "neutral", "confidence": 0.6}])


def test_indicators_matter_reads_rsi_as_evaluate_does_at_a_threshold_with_no_exact_float():
    t = replace(T, rsi_overbought=D("72.3"))
    assert signals.indicators_matter(t, rsi=72.3) and "rsi_overbought" in kinds(evaluate(pos("20.00"), t, rsi=72.3))
    assert not signals.indicators_matter(t, rsi=72.29) and not signals.indicators_matter(t, rsi=float("nan"))


# ---------------------------------------------------------------- the protective stop's level
def test_protective_level_is_the_tightest_price_only_exit_and_rises_with_the_high():
    # no recorded stop, never in profit: stop_loss_strong (-3% of 20.00)
    assert signals.protective_level(pos("20.00"), T) == D("19.4000")
    # a recorded stop above that wins
    assert signals.protective_level(pos("20.00", stop="19.60"), T) == D("19.60")
    # the trailing stop counts once it protects a gain: high 21.00 -> 20.37 (> entry 20.00)
    assert signals.protective_level(pos("20.80", high="21.00", stop="19.60"), T) == D("20.3700")
    # a high whose trailing level is still below the entry does not count
    assert signals.protective_level(pos("20.50", high="20.50", stop="19.60"), T) == D("19.60")


@PROPS
@given(positions(), thresholds())
def test_a_price_at_the_protective_level_exits_and_one_tick_above_a_stop_level_never_does_by_a_price_rule(p, t):
    level = signals.protective_level(p, t)
    at = replace(p, price=level, high_water=max(p.high_water, level))
    assert evaluate(at, t, now=NOW).action == "exit"        # the broker's stop sells where the monitor would
    above = replace(p, price=level + D("0.0001"), high_water=max(p.high_water, level + D("0.0001")))
    strong_price_rules = {"hard_stop", "stop_loss", "trailing_stop"}
    assert not strong_price_rules & {s.kind for s in evaluate(above, t, now=NOW).strong}


# ---------------------------------------------------------------- the band a pushed price is first checked against
@PROPS
@given(positions(), thresholds())
def test_a_price_only_evaluation_exits_exactly_when_the_price_is_outside_the_band(p, t):
    """The pushed-price path checks the band first and evaluates only outside it: it must miss no exit and add none.
    The band is worked out with the high as it stands; a price above the high raises the high, never the low end
    (a trailing level below a new high is still below the price)."""
    low, high = signals.price_exit_band(p, t)
    exits = evaluate(p, t, now=NOW).action == "exit"
    assert exits == (p.price <= low or p.price >= high)


@settings(max_examples=200, deadline=None)
@given(price=st.decimals(min_value=D("18.00"), max_value=D("23.00"), places=2),
       high=st.decimals(min_value=D("20.00"), max_value=D("24.00"), places=2),
       stop=st.one_of(st.none(), st.decimals(min_value=D("18.00"), max_value=D("19.90"), places=2)),
       later=st.integers(min_value=-7200, max_value=10 * 86400))
def test_a_report_as_of_another_time_is_evaluate_at_that_time(price, high, stop, later):
    """signals.as_of: what a monitor pass reuses when nothing about a position moved: the same report as evaluate
    at the new time, held time included (and before the opening, none of it: 0)."""
    p = pos(str(price), high=str(max(high, price)), stop=None if stop is None else str(stop))
    then = NOW + timedelta(seconds=later)
    assert as_of(evaluate(p, T, now=NOW), p, then) == evaluate(p, T, now=then)
    assert as_of(evaluate(p, T, now=NOW), p, None) == evaluate(p, T)
