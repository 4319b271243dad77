from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from core.ticks import is_on_tick, round_lots, round_to_tick, tick_above, tick_below, tick_size


@pytest.mark.parametrize("price, tick", [
    ("0.01", "0.001"), ("0.25", "0.001"), ("0.251", "0.005"), ("0.50", "0.005"), ("0.51", "0.01"),
    ("10", "0.01"), ("10.02", "0.02"), ("20", "0.02"), ("20.05", "0.05"), ("100", "0.05"), ("100.1", "0.1"),
    ("200", "0.1"), ("200.2", "0.2"), ("500", "0.2"), ("500.5", "0.5"), ("1000", "0.5"), ("1001", "1"),
    ("2000", "1"), ("2002", "2"), ("5000", "2"), ("5005", "5"), ("9995", "5"),
])
def test_hkex_boundary_price_belongs_to_lower_band(price, tick):
    assert tick_size(D(price), "hkex") == D(tick)


@pytest.mark.parametrize("price, tick", [("1", "0.01"), ("1.00", "0.01"), ("0.9999", "0.0001"), ("250.37", "0.01")])
def test_us_dollar_and_above_trade_in_cents(price, tick):
    assert tick_size(D(price), "us") == D(tick)


def test_rounding_across_an_hkex_band_boundary():
    # 0.2512 is in the 0.005 band: below it the grid is 0.25, above it 0.255
    assert round_to_tick(D("0.2512"), "hkex", "down") == D("0.25")
    assert round_to_tick(D("0.2512"), "hkex", "up") == D("0.255")
    assert round_to_tick(D("0.2512"), "hkex", "nearest") == D("0.25")
    assert round_to_tick(D("10.01"), "hkex", "down") == D("10")
    assert round_to_tick(D("10.01"), "hkex", "up") == D("10.02")


def test_neighbouring_ticks_step_into_the_right_band():
    assert tick_above(D("0.25"), "hkex") == D("0.255")
    assert tick_below(D("0.25"), "hkex") == D("0.249")
    assert tick_above(D("0.995"), "hkex") == D("1.00")
    assert tick_below(D("1.00"), "us") == D("0.9999")
    assert tick_above(D("0.9999"), "us") == D("1.0000")


def test_on_tick():
    assert is_on_tick(D("0.255"), "hkex")
    assert not is_on_tick(D("0.253"), "hkex")
    assert is_on_tick(D("0.253"), "us")
    assert not is_on_tick(D("1.005"), "us")


def test_floats_and_non_positive_prices_are_refused():
    with pytest.raises(TypeError):
        tick_size(1.5, "hkex")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        round_to_tick(D("0"), "us", "down")
    with pytest.raises(ValueError):
        tick_size(D("1"), "lse")  # type: ignore[arg-type]


def test_round_lots_rounds_down_to_whole_lots():
    assert round_lots(1999, 500) == 1500
    assert round_lots(499, 500) == 0
    assert round_lots(7, 1) == 7
    with pytest.raises(ValueError):
        round_lots(100, 0)


prices = st.decimals(min_value=D("0.01"), max_value=D("9995"), places=5, allow_nan=False, allow_infinity=False)
schemes = st.sampled_from(["hkex", "us"])


@settings(max_examples=300, deadline=None)
@given(prices, schemes)
def test_rounded_price_is_on_tick_and_within_one_tick(price, scheme):
    price = D(price)
    down = round_to_tick(price, scheme, "down")
    up = round_to_tick(price, scheme, "up")
    near = round_to_tick(price, scheme, "nearest")
    tick = tick_size(price, scheme)
    for r in (down, up, near):
        assert is_on_tick(r, scheme)
        assert abs(r - price) < tick or r == price
    assert down <= price <= up
    assert abs(near - price) <= tick / 2
    # no valid price hides between the rounded value and the input
    assert tick_above(down, scheme) > price or down == price
    assert tick_below(up, scheme) < price or up == price
