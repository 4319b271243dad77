"""Where a paper fill is priced: slippage, the bar that bounds it, the price a working order gets in a bar.

One rule holds every fill: it lies inside the bar it trades in (a price no one traded that bar is not a fill), on
the tick grid, and never better than the quote the venue showed (a market buy pays at least the ask, a sell gets
at most the bid). Feeds build their quotes inside their last bar, so the two rules agree; where a feed's quote
sits outside its bar (the simulated market's one tick either side of a minute's close), the quote wins.
"""
from __future__ import annotations

from decimal import Decimal

from core.instruments import Bar
from core.orders import OrderSide
from core.ticks import TickScheme, round_to_tick

BPS = Decimal("0.0001")


def slipped(price: Decimal, slippage_bps: Decimal, scheme: TickScheme, side: OrderSide) -> Decimal:
    """`price` worsened by the slippage (up for a buy, down for a sell), onto the tick grid the worse way."""
    factor = slippage_bps * BPS
    raw = price * (1 + factor) if side is OrderSide.BUY else price * (1 - factor)
    return round_to_tick(raw, scheme, "up" if side is OrderSide.BUY else "down")


def within(price: Decimal, bar: Bar, scheme: TickScheme) -> Decimal:
    """`price` moved into the bar's [low, high], on the grid (a low off the grid rounds up, a high down)."""
    low, high = round_to_tick(bar.low, scheme, "up"), round_to_tick(bar.high, scheme, "down")
    return min(max(price, low), high)


def on_arrival(touch: Decimal, bar: Bar | None, slippage_bps: Decimal, scheme: TickScheme,
               side: OrderSide) -> Decimal:
    """A market order filled when it arrives: the touch (ask for a buy, bid for a sell) slipped, kept inside the
    last completed bar (the one the quote was built from) but never better than the touch."""
    price = slipped(touch, slippage_bps, scheme, side)
    if bar is None:
        return price
    bounded = within(price, bar, scheme)
    return max(bounded, touch) if side is OrderSide.BUY else min(bounded, touch)


def in_bar(bar: Bar, side: OrderSide, limit: Decimal | None, slippage_bps: Decimal,
           scheme: TickScheme) -> Decimal | None:
    """What a working order gets in a bar, or None when the bar never traded at a price it accepts: a market
    order the bar's open slipped (inside the bar); a limit the limit, or the open when the bar opened through it."""
    if limit is None:
        return within(slipped(bar.open, slippage_bps, scheme, side), bar, scheme)
    if side is OrderSide.BUY:
        return min(limit, bar.open) if bar.low <= limit else None
    return max(limit, bar.open) if bar.high >= limit else None


def stop_triggered(bar: Bar, stop: Decimal, slippage_bps: Decimal, scheme: TickScheme) -> Decimal | None:
    """A sell stop in a bar: None unless the bar traded at or below the stop; then a market sell from the stop
    (from the open when the bar opened below it: a gap), slipped, inside the bar."""
    if bar.low > stop:
        return None
    return within(slipped(min(stop, bar.open), slippage_bps, scheme, OrderSide.SELL), bar, scheme)
