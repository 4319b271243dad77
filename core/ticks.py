"""Tick sizes and board lots, in exact `Decimal`.

Two schemes:

* ``"hkex"`` — HKEX Part A spread table. Bands are "over X up to Y", so a price exactly on a band boundary
  belongs to the LOWER band: 0.25 trades in 0.001 steps, 0.255 is the next price above it.
* ``"us"`` — Reg NMS Rule 612: $0.01 at or above $1.00, $0.0001 below. Here a boundary belongs to the
  UPPER band: 1.00 has a tick of 0.01, and the price just below it is 0.9999.

Every band boundary is a multiple of the ticks on both sides, so the set of valid prices is well defined
and rounding a price onto its own band's grid never leaves a valid price. Floats are refused: money is exact.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

TickScheme = Literal["hkex", "us"]
RoundMode = Literal["down", "up", "nearest"]

# (upper bound of the band, tick). HKEX: a band is (previous upper, upper]. The last band is open-ended:
# HKEX's price ceiling is 9,995 but we keep stepping by 5 rather than refuse a price.
_HKEX_BANDS: tuple[tuple[Decimal, Decimal], ...] = tuple((Decimal(u), Decimal(t)) for u, t in (
    ("0.25", "0.001"), ("0.50", "0.005"), ("10", "0.01"), ("20", "0.02"), ("100", "0.05"), ("200", "0.1"),
    ("500", "0.2"), ("1000", "0.5"), ("2000", "1"), ("5000", "2"),
))
_HKEX_TOP_TICK = Decimal("5")

_US_BOUNDARY = Decimal("1")
_US_SUB_DOLLAR_TICK = Decimal("0.0001")
_US_TICK = Decimal("0.01")


def _check(price: Decimal) -> Decimal:
    if isinstance(price, float) or isinstance(price, bool):
        raise TypeError(f"prices must be Decimal (or int), not {type(price).__name__}: {price!r}")
    if isinstance(price, int):
        price = Decimal(price)
    if not isinstance(price, Decimal):
        raise TypeError(f"prices must be Decimal (or int), not {type(price).__name__}")
    if not price.is_finite() or price <= 0:
        raise ValueError(f"price must be a positive finite number, got {price}")
    return price


def _tick_left(price: Decimal, scheme: TickScheme) -> Decimal:
    """Tick of the band just below `price` (the band that holds price - ε)."""
    if scheme == "hkex":
        for upper, tick in _HKEX_BANDS:
            if price <= upper:
                return tick
        return _HKEX_TOP_TICK
    if scheme == "us":
        return _US_TICK if price > _US_BOUNDARY else _US_SUB_DOLLAR_TICK
    raise ValueError(f"unknown tick scheme {scheme!r}; expected 'hkex' or 'us'")


def _tick_right(price: Decimal, scheme: TickScheme) -> Decimal:
    """Tick of the band just above `price` (the band that holds price + ε)."""
    if scheme == "hkex":
        for upper, tick in _HKEX_BANDS:
            if price < upper:
                return tick
        return _HKEX_TOP_TICK
    if scheme == "us":
        return _US_TICK if price >= _US_BOUNDARY else _US_SUB_DOLLAR_TICK
    raise ValueError(f"unknown tick scheme {scheme!r}; expected 'hkex' or 'us'")


def tick_bands(scheme: TickScheme) -> tuple[tuple[tuple[Decimal, Decimal], ...], Decimal, bool]:
    """The table itself, for vectorised users: ((upper bound, tick), ...), the tick above the last bound, and
    whether a price equal to a bound belongs to the band below it (True for HKEX, False for US)."""
    if scheme == "hkex":
        return _HKEX_BANDS, _HKEX_TOP_TICK, True
    if scheme == "us":
        return ((_US_BOUNDARY, _US_SUB_DOLLAR_TICK),), _US_TICK, False
    raise ValueError(f"unknown tick scheme {scheme!r}; expected 'hkex' or 'us'")


def tick_size(price: Decimal, scheme: TickScheme) -> Decimal:
    """The minimum price step of the band `price` belongs to."""
    price = _check(price)
    # HKEX bands are upper-inclusive, US bands lower-inclusive.
    return _tick_left(price, scheme) if scheme == "hkex" else _tick_right(price, scheme)


def is_on_tick(price: Decimal, scheme: TickScheme) -> bool:
    """True when `price` is a price the exchange accepts."""
    price = _check(price)
    return price % tick_size(price, scheme) == 0


def round_to_tick(price: Decimal, scheme: TickScheme, mode: RoundMode) -> Decimal:
    """Round onto the tick grid: ``down`` for a buy limit, ``up`` for a sell limit, ``nearest`` for marks.

    ``down`` gives the largest valid price <= `price`, ``up`` the smallest valid price >= `price`;
    ``nearest`` picks the closer of the two (a tie goes up). All stay within one tick of `price`.
    """
    price = _check(price)
    tick = tick_size(price, scheme)
    rem = price % tick                  # exact in Decimal, unlike a division
    if rem == 0:
        return price.quantize(tick) if price.as_tuple().exponent < tick.as_tuple().exponent else price
    down = (price - rem).quantize(tick)
    up = (down + tick).quantize(tick)
    if mode == "down":
        return down
    if mode == "up":
        return up
    if mode == "nearest":
        return down if (price - down) < (up - price) else up
    raise ValueError(f"unknown rounding mode {mode!r}; expected 'down', 'up' or 'nearest'")


def tick_above(price: Decimal, scheme: TickScheme) -> Decimal:
    """The smallest valid price strictly above `price` (e.g. an ask one tick over the last trade)."""
    price = _check(price)
    if not is_on_tick(price, scheme):
        return round_to_tick(price, scheme, "up")
    return price + _tick_right(price, scheme)


def tick_below(price: Decimal, scheme: TickScheme) -> Decimal:
    """The largest valid price strictly below `price`; raises ValueError if none is positive."""
    price = _check(price)
    if not is_on_tick(price, scheme):
        return round_to_tick(price, scheme, "down")
    below = price - _tick_left(price, scheme)
    if below <= 0:
        raise ValueError(f"no valid price below {price} in the {scheme} scheme")
    return below


def round_lots(quantity: int, lot_size: int) -> int:
    """Round a share quantity down to whole board lots (never up: we do not buy more than asked)."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise TypeError(f"quantity must be an int, got {type(quantity).__name__}")
    if isinstance(lot_size, bool) or not isinstance(lot_size, int) or lot_size <= 0:
        raise ValueError(f"lot_size must be a positive int, got {lot_size!r}")
    if quantity < 0:
        raise ValueError(f"quantity must not be negative, got {quantity}")
    return quantity - quantity % lot_size
