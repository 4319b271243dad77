"""safety.py: every rule fails when it should, names itself, and an approved entry never breaks a limit."""
from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from hypothesis import given, settings, strategies as st

import safety
from core.account import Account, Position
from core.instruments import Instrument, Quote
from core.orders import OrderSide, OrderType
from core.ticks import is_on_tick

NOW = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)   # 10:30 HKT
INST = Instrument("0700.HK", "HKEX", "HKD", 100, tick_scheme="hkex")
LIMITS = safety.RiskLimits(max_positions=3, max_position_value=D(10000), min_position_value=D(2000),
                           daily_loss_limit=D(1000), position_stop_loss_pct=D("0.03"), price_collar_pct=D("0.05"),
                           max_orders_per_cycle=2, allow_reentry_same_day=False, max_stop_distance_pct=D("0.10"),
                           max_quote_age_seconds=300)


def ctx(**kw) -> safety.RiskContext:
    base = dict(now=NOW, account=Account("HKD", D(100000), D(100000), D(100000)), positions=[],
                realized_pnl_today=D(0), unrealized_pnl=D(0),
                quote=Quote("0700.HK", D("19.98"), D("20.00"), D("20.00"), 100000, NOW - timedelta(seconds=30)),
                instrument=INST, market=safety.MarketStatus("open"))
    base.update(kw)
    return safety.RiskContext(**base)


def intent(**kw) -> safety.EntryIntent:
    base = dict(symbol="0700.HK", side=OrderSide.BUY, quantity=400, notional=None, order_type=OrderType.LIMIT,
                limit_price=D("20.00"))
    base.update(kw)
    return safety.EntryIntent(**base)


def rules(v: safety.Verdict) -> set[str]:
    return set(v.failed_rules)


def test_a_clean_entry_is_approved_with_a_default_stop_on_the_tick_grid():
    v = safety.evaluate_entry(intent(), ctx(), LIMITS)
    assert v.approved and v.adjusted_quantity == 400 and v.limit_price == D("20.00")
    assert v.stop_loss == D("19.40") and is_on_tick(v.stop_loss, "hkex")
    assert v.to_dict()["approved"] is True and "failed" not in v.to_dict()


def test_every_failed_rule_is_named_not_just_the_first():
    c = ctx(market=safety.MarketStatus("lunch", NOW + timedelta(hours=1)), orders_this_cycle=2,
            entries_today=frozenset({"0700.HK"}))
    v = safety.evaluate_entry(intent(limit_price=D("30.00")), c, LIMITS)
    assert not v.approved and v.adjusted_quantity == 0
    assert {"market_open", "orders_per_cycle", "one_entry_per_day", "price_collar"} <= rules(v)
    assert "lunch" in dict((f.rule, f.reason) for f in v.failures)["market_open"]


def test_daily_loss_limit_turns_the_state_to_reducing_and_blocks_entries():
    v = safety.evaluate_entry(intent(), ctx(realized_pnl_today=D(-700), unrealized_pnl=D(-300)), LIMITS)
    assert not v.approved and "trading_state" in rules(v)
    assert v.trading_state is safety.TradingState.REDUCING
    assert safety.trading_state(D(-700), D(-299), LIMITS) is safety.TradingState.ACTIVE
    assert safety.trading_state(D(-700), D(-300), LIMITS) is safety.TradingState.REDUCING


def test_a_stored_reducing_or_halted_state_blocks_entries_whatever_the_pnl():
    for stored in (safety.TradingState.REDUCING, safety.TradingState.HALTED):
        v = safety.evaluate_entry(intent(), ctx(trading_state=stored), LIMITS)
        assert rules(v) == {"trading_state"} and v.trading_state is stored


def test_the_loss_budget_left_caps_the_size_so_a_stop_out_cannot_breach_the_limit():
    # 900 lost already, 100 left; stop 0.60 below -> at most 166 shares -> 100 (one lot)
    v = safety.evaluate_entry(intent(), ctx(realized_pnl_today=D(-900)), replace(LIMITS, min_position_value=D(0)))
    assert v.approved and v.adjusted_quantity == 100
    assert any("daily loss budget" in n for n in v.adjustments)


def test_quantity_is_rounded_down_to_lots_and_capped_by_max_position_value():
    v = safety.evaluate_entry(intent(quantity=1250), ctx(), LIMITS)
    assert v.approved and v.adjusted_quantity == 500          # 10000 / 20 = 500
    v = safety.evaluate_entry(intent(quantity=350), ctx(), LIMITS)
    assert v.adjusted_quantity == 300 and any("rounded down to whole lots" in n for n in v.adjustments)


def test_a_notional_becomes_whole_lots():
    v = safety.evaluate_entry(intent(quantity=None, notional=D(5000)), ctx(), LIMITS)
    assert v.approved and v.adjusted_quantity == 200


def test_less_than_one_lot_and_below_min_value_are_refused():
    assert "quantity" in rules(safety.evaluate_entry(intent(quantity=50), ctx(), LIMITS))
    assert "min_position_value" in rules(safety.evaluate_entry(intent(quantity=100), ctx(),
                                                               replace(LIMITS, min_position_value=D(2001))))


def test_buying_power_caps_and_then_refuses():
    poor = Account("HKD", D(5000), D(5000), D(5000))
    v = safety.evaluate_entry(intent(quantity=400), ctx(account=poor), replace(LIMITS, min_position_value=D(0)))
    assert v.approved and v.adjusted_quantity == 200          # 5000 / (20 * 1.005) = 248 -> 200
    broke = Account("HKD", D(1500), D(1500), D(1500))
    v = safety.evaluate_entry(intent(), ctx(account=broke), LIMITS)
    assert "buying_power" in rules(v)


def test_limit_price_is_rounded_down_to_tick_and_collared_against_the_last_trade():
    v = safety.evaluate_entry(intent(limit_price=D("20.013")), ctx(), LIMITS)
    assert v.limit_price == D("20.00") and v.approved
    assert "price_collar" in rules(safety.evaluate_entry(intent(limit_price=D("21.10")), ctx(), LIMITS))
    assert "price_collar" in rules(safety.evaluate_entry(intent(limit_price=D("18.90")), ctx(), LIMITS))
    assert safety.evaluate_entry(intent(limit_price=D("20.95")), ctx(), LIMITS).approved


def test_a_limit_order_needs_a_limit_price_and_a_market_order_prices_off_the_ask():
    assert "limit_price" in rules(safety.evaluate_entry(intent(limit_price=None), ctx(), LIMITS))
    v = safety.evaluate_entry(intent(order_type=OrderType.MARKET, limit_price=None), ctx(), LIMITS)
    assert v.approved and v.reference_price == D("20.00") and v.limit_price is None


def test_stop_loss_must_be_below_entry_and_not_too_far():
    assert "stop_loss" in rules(safety.evaluate_entry(intent(stop_loss=D("20.50")), ctx(), LIMITS))
    assert "stop_loss" in rules(safety.evaluate_entry(intent(stop_loss=D("17.00")), ctx(), LIMITS))
    v = safety.evaluate_entry(intent(stop_loss=D("19.013")), ctx(), LIMITS)
    assert v.approved and v.stop_loss == D("19.00")


def test_take_profit_must_be_above_entry():
    assert "take_profit" in rules(safety.evaluate_entry(intent(take_profit=D("19.00")), ctx(), LIMITS))
    assert safety.evaluate_entry(intent(take_profit=D("22.00")), ctx(), LIMITS).approved


def test_max_positions_and_already_held():
    held = [Position(s, 100, D(10)) for s in ("A", "B", "C")]
    assert "max_positions" in rules(safety.evaluate_entry(intent(), ctx(positions=held), LIMITS))
    v = safety.evaluate_entry(intent(), ctx(positions=[Position("0700.HK", 100, D(20))]), LIMITS)
    assert rules(v) == {"already_held"}


def test_reentry_same_day_is_allowed_only_when_configured():
    c = ctx(entries_today=frozenset({"0700.HK"}))
    assert rules(safety.evaluate_entry(intent(), c, LIMITS)) == {"one_entry_per_day"}
    assert safety.evaluate_entry(intent(), c, replace(LIMITS, allow_reentry_same_day=True)).approved


def test_a_stale_or_empty_quote_is_refused():
    stale = Quote("0700.HK", D("19.98"), D("20.00"), D("20.00"), 1, NOW - timedelta(minutes=10))
    assert rules(safety.evaluate_entry(intent(), ctx(quote=stale), LIMITS)) == {"quote"}
    empty = Quote("0700.HK", D(0), D(0), D(0), 0, NOW)
    assert "quote" in rules(safety.evaluate_entry(intent(), ctx(quote=empty), LIMITS))


def test_currency_mismatch_and_selling_are_refused():
    usd = Instrument("AAPL", "NASDAQ", "USD", 1, tick_scheme="us")
    assert "currency" in rules(safety.evaluate_entry(intent(), ctx(instrument=usd), LIMITS))
    assert "long_only" in rules(safety.evaluate_entry(intent(side=OrderSide.SELL), ctx(), LIMITS))


def test_exits_are_never_blocked_by_entry_limits():
    v = safety.evaluate_exit("0700.HK", None, Position("0700.HK", 300, D(20)), INST, safety.MarketStatus("open"))
    assert v.approved and v.adjusted_quantity == 300
    v = safety.evaluate_exit("0700.HK", 250, Position("0700.HK", 300, D(20)), INST, safety.MarketStatus("open"))
    assert v.approved and v.adjusted_quantity == 200
    v = safety.evaluate_exit("0700.HK", 5000, Position("0700.HK", 350, D(20)), INST, safety.MarketStatus("open"))
    assert v.approved and v.adjusted_quantity == 350         # the whole position, odd lot included


def test_an_exit_needs_a_position_and_an_open_market():
    v = safety.evaluate_exit("0700.HK", None, None, INST, safety.MarketStatus("closed", NOW))
    assert rules(v) == {"no_position", "market_open"} and not v.approved
    assert rules(safety.evaluate_exit("0700.HK", 50, Position("0700.HK", 300, D(20)), INST,
                                      safety.MarketStatus("open"))) == {"quantity"}


def test_the_verdict_depends_only_on_its_arguments():
    held = [Position("B", 100, D(10)), Position("A", 200, D(5))]
    c, i = ctx(positions=held), intent()
    before = copy.deepcopy((c, i))
    first = safety.evaluate_entry(i, c, LIMITS)
    assert first.approved and first.adjusted_quantity == 400
    # refusals in between leave nothing behind that changes the next answer
    for refused in (intent(quantity=50), intent(limit_price=D("30.00")), intent(side=OrderSide.SELL)):
        assert not safety.evaluate_entry(refused, c, LIMITS).approved
    assert safety.evaluate_entry(i, c, LIMITS) == first
    assert (c, i) == before and held == [Position("B", 100, D(10)), Position("A", 200, D(5))]   # inputs untouched
    # its clock is ctx.now, never the machine's: the same 30-second-old quote is stale ten minutes later
    assert rules(safety.evaluate_entry(i, replace(c, now=NOW + timedelta(minutes=10)), LIMITS)) == {"quote"}


prices = st.decimals(min_value=D("0.01"), max_value=D("500"), places=2)


@settings(max_examples=300, deadline=None)
@given(quantity=st.one_of(st.none(), st.integers(-10, 10**7)), notional=st.one_of(st.none(), st.decimals(
    min_value=D(-1000), max_value=D(10**8), places=2)), limit=st.one_of(st.none(), prices), last=prices,
    stop=st.one_of(st.none(), prices), cash=st.decimals(min_value=D(0), max_value=D(10**6), places=2),
    pnl=st.decimals(min_value=D(-2000), max_value=D(2000), places=2), market=st.booleans(),
    order_type=st.sampled_from(list(OrderType)), lot=st.sampled_from([1, 100, 500, 2000]))
def test_an_approved_entry_never_breaks_a_limit(quantity, notional, limit, last, stop, cash, pnl, market,
                                                order_type, lot):
    inst = replace(INST, lot_size=lot)
    q = Quote("0700.HK", last, last, last, 1000, NOW)
    c = ctx(quote=q, instrument=inst, account=Account("HKD", cash, cash, cash), realized_pnl_today=pnl,
            market=safety.MarketStatus("open" if market else "closed"))
    i = intent(quantity=quantity, notional=notional, limit_price=limit, stop_loss=stop, order_type=order_type)
    v = safety.evaluate_entry(i, c, LIMITS)
    for f in v.failures:
        assert f.rule and f.reason
    if not v.approved:
        assert v.adjusted_quantity == 0 and v.failures
        return
    ref = v.reference_price
    assert market and pnl > -LIMITS.daily_loss_limit
    assert v.adjusted_quantity > 0 and v.adjusted_quantity % lot == 0
    assert v.adjusted_quantity * ref <= LIMITS.max_position_value
    assert v.adjusted_quantity * ref >= LIMITS.min_position_value
    assert v.adjusted_quantity * ref <= cash
    assert v.stop_loss is not None and 0 < v.stop_loss < ref and (ref - v.stop_loss) / ref <= D("0.10")
    assert pnl - (ref - v.stop_loss) * v.adjusted_quantity >= -LIMITS.daily_loss_limit
    if order_type is OrderType.LIMIT:
        assert is_on_tick(v.limit_price, "hkex") and abs(v.limit_price / last - 1) <= LIMITS.price_collar_pct
