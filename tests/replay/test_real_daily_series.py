"""Replay on real history no one here wrote: GOOG daily (shipped with backtesting.py, 2010 H1) under the NYSE calendar. The
replay trades, and every fill is inside its day's bar (a slipped market order never fills below the low or above
the high) and on the US tick grid; an hourly series trades on its own bars."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from brokers.paper.broker import PaperBroker
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.config_model import PaperConfig
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType
from core.ticks import is_on_tick
from data.bar_files import BarFileSource
from replay.runner import run_replay
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings
from tests.venues import US_FEES, US_MARKET


@pytest.fixture(scope="module")
def goog_dir(tmp_path_factory):
    from backtesting.test import GOOG
    path = tmp_path_factory.mktemp("goog")
    frame = GOOG.rename(columns=str.lower)
    frame.index = frame.index.strftime("%Y-%m-%d")
    frame.index.name = "timestamp"
    frame.to_csv(path / "GOOG.csv")
    return path, {d: row for d, row in frame.iterrows()}


@pytest.mark.slow
async def test_a_goog_daily_replay_trades_and_every_fill_is_inside_its_bar(pool, agent_id, goog_dir, tmp_path):
    directory, by_day = goog_dir
    settings = agent_settings(agent_id, scan={"max_price": Decimal(2000), "min_history_bars": 60},
                              rules={"rsi_min": Decimal(30), "rsi_max": Decimal(80), "require_above_sma20": False})
    settings = settings.__class__(config=settings.config.model_copy(update={
        "market": US_MARKET, "paper": PaperConfig(initial_cash=Decimal(100_000), fees=US_FEES)}),
        env=settings.env, config_path=settings.config_path)
    result = await run_replay(settings, pool, build=builder(pool), start=date(2010, 1, 4), end=date(2010, 6, 30),
                              data=directory, progress=False, out_dir=tmp_path)
    assert result.failed is None
    fills = await pool.fetch("SELECT side, price, filled_at FROM fills WHERE agent_id = $1", result.agent_id)
    assert fills, "the replay placed no trade on real data"
    nyse = MarketCalendar("NYSE")
    for f in fills:
        bar = by_day[nyse.local_date(f["filled_at"]).isoformat()]
        assert Decimal(str(bar["low"])) <= f["price"] <= Decimal(str(bar["high"])), (f, dict(bar))
        assert is_on_tick(f["price"], "us"), f


async def test_market_orders_on_real_daily_bars_fill_inside_the_day_and_never_better_than_the_quote(pool, agent_id,
                                                                                                 goog_dir):
    """Every session of GOOG 2010 H1 at the paper venue: market orders placed after the opening print fill on
    arrival, at its quote; orders placed in the last minute work and fill at the closing print. Each fill lies
    inside the day's bar (days that open at their high, or close at their low, are in there) and on the tick
    grid; a buy pays at least the ask it was shown, a sell gets at most the bid."""
    directory, by_day = goog_dir
    nyse = MarketCalendar("NYSE")
    days = nyse.trading_days(date(2010, 1, 5), date(2010, 6, 30))   # the file's first day has no opening volume
    clock = SimulatedClock(nyse.session_bounds(days[0])[0][0])
    broker = PaperBroker(pool, BarFileSource(directory, "NYSE", calendar=nyse), clock, nyse, account_id=agent_id,
                         currency="USD", config=PaperConfig(initial_cash=Decimal(100_000), fees=US_FEES))
    await broker.connect()

    async def market(label: str, side: OrderSide) -> None:
        quote = await broker.get_quote("GOOG")
        r = await broker.place_order(OrderRequest(f"{agent_id}-{label}", "GOOG", side, 10, OrderType.MARKET))
        for f in r.fills:                                   # a fill on arrival is priced from the quote shown
            assert (f.price >= quote.ask) if side is OrderSide.BUY else (f.price <= quote.bid), (f, quote)

    await (clock.set(clock.now() + timedelta(minutes=1)) or market("first", OrderSide.BUY))
    for n, day in enumerate(days):
        (open_, close), = nyse.session_bounds(day)
        clock.set(open_ + timedelta(minutes=1))             # after the opening print
        await market(f"{n}-os", OrderSide.SELL)
        await market(f"{n}-ob", OrderSide.BUY)
        clock.set(close - timedelta(minutes=1))             # these work, and fill at the closing print
        await market(f"{n}-cs", OrderSide.SELL)
        await market(f"{n}-cb", OrderSide.BUY)
    clock.set(close + timedelta(minutes=1))
    orders = await broker.get_orders()
    assert len(orders) == 1 + 4 * len(days) and all(o.status is OrderStatus.FILLED for o in orders), \
        [o for o in orders if o.status is not OrderStatus.FILLED][:3]
    outside = []
    for o in orders:
        for f in o.fills:
            bar = by_day[nyse.local_date(f.timestamp).isoformat()]
            if not Decimal(str(bar["low"])) <= f.price <= Decimal(str(bar["high"])):
                outside.append((o.side.value, f.price, f.timestamp.isoformat(), dict(bar)))
            assert is_on_tick(f.price, "us"), f
    assert outside == []


@pytest.mark.slow
async def test_an_hourly_replay_on_real_data_trades_on_its_own_bars(pool, agent_id, tmp_path):
    """EURUSD hourly (backtesting.py) as a US symbol: the paper venue fills on the file's hourly bars (it used to ask
    for one-minute bars, which an hourly file cannot give, and no order ever filled); fills are stamped at the end
    of the bar they traded in, never before it completed."""
    from backtesting.test import EURUSD
    directory = tmp_path / "fx"
    directory.mkdir()
    frame = EURUSD.rename(columns=str.lower)
    frame.index = frame.index.tz_localize("UTC").strftime("%Y-%m-%dT%H:%M:%S+00:00")
    frame.index.name = "timestamp"
    frame.to_csv(directory / "EURUSD.csv")
    settings = agent_settings(agent_id, scan={"min_turnover": Decimal(0), "min_history_bars": 20},
                              rules={"rsi_min": Decimal(1), "rsi_max": Decimal(99), "require_above_sma20": False},
                              trading={"min_position_value": Decimal(100)})
    settings = settings.__class__(config=settings.config.model_copy(update={
        "market": US_MARKET, "paper": PaperConfig(initial_cash=Decimal(100_000), fees=US_FEES)}),
        env=settings.env, config_path=settings.config_path)
    result = await run_replay(settings, pool, build=builder(pool), start=date(2017, 6, 1), end=date(2017, 7, 31),
                              data=directory, progress=False, out_dir=tmp_path)
    assert result.failed is None, result.failed
    fills = await pool.fetch("SELECT price, filled_at FROM fills WHERE agent_id = $1", result.agent_id)
    assert fills, await pool.fetch("SELECT status, reason FROM orders WHERE agent_id = $1", result.agent_id)
    hourly = {ts: row for ts, row in frame.iterrows()}
    worked = [f for f in fills if f["filled_at"].minute == 0 and f["filled_at"].second == 0]
    for f in worked:                       # a working order's fill: at the end of the hourly bar it traded in
        start = (f["filled_at"] - __import__("datetime").timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        assert start in hourly, f
