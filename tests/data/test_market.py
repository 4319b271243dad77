"""MarketData (data/market.py): the agent's view of a symbol's daily history."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest

from brokers.paper.simulated import SimulatedMarket
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from data.market import MarketData
from data.store import BarStore

CAL = MarketCalendar("HKEX")


class VenueBars:
    """A broker's get_bars over the simulated market (the path when the bar store does not hold the symbol)."""

    def __init__(self, market: SimulatedMarket) -> None:
        self.market = market

    async def get_bars(self, symbol, timeframe, start, end):
        return self.market.bars(symbol, timeframe, start, end)


@pytest.mark.parametrize("source", ["bar store", "broker"])
async def test_daily_technicals_do_not_depend_on_the_hour_of_the_days_first_request(pool, source):
    """The day job and the monitor daemon, each with its own cache, get the same daily technicals on the same day:
    the window starts 400 days before the day, not before the moment of the first request. (A daily bar starts at
    the open, so a first request at the open took in the bar of 400 days back and one an hour later did not: two
    processes could read different RSI and MACD for the same session.)"""
    market = SimulatedMarket(seed=11, exchange="HKEX", n_symbols=3, calendar=CAL)
    day = next(d for d in CAL.trading_days(date(2026, 10, 1), date(2026, 11, 20))
               if CAL.session_bounds(d - timedelta(days=400)))
    opening, close = CAL.session_bounds(day)[0][0], CAL.session_bounds(day)[-1][1]
    symbol = market.instruments()[0].symbol
    store = None
    if source == "bar store":
        store = BarStore(pool, dataset=f"test:{uuid.uuid4().hex[:8]}", exchange="HKEX", calendar=CAL)
        await store.write_bars("1d", {symbol: market.bars(symbol, "1d", opening - timedelta(days=600), close)},
                               source="test", now=close)
    seen = []
    for at in (opening, opening + timedelta(hours=4)):
        view = MarketData(broker=VenueBars(market), clock=SimulatedClock(at), calendar=CAL, daily=store)
        seen.append(await view.technicals(symbol))
    assert seen[0]["bars_used"] > 250
    assert seen[0] == seen[1]
