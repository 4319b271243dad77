"""Wiring: build the broker, market data, news and order path for a process from its settings.

This is the only module that knows broker names; everything else talks to `BrokerClient`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.clock import Clock
from core.paths import project_path
from core.settings import ConfigError, Settings


if TYPE_CHECKING:
    import asyncpg

    from brokers.base import BrokerClient
    from core.calendar import MarketCalendar
    from data.market import MarketData
    from data.news import NewsProvider
    from execution.order_path import OrderPath


@dataclass
class Services:
    settings: Settings
    pool: "asyncpg.Pool"
    clock: Clock
    calendar: "MarketCalendar"
    broker: "BrokerClient"
    market: "MarketData"
    news: "NewsProvider"
    orders: "OrderPath"

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id


def build_source(settings: Settings, calendar: "MarketCalendar"):
    """The market data source the paper broker fills against and the scan reads."""
    md = settings.config.market_data
    if md.source == "files":
        from data.bar_files import BarFileSource
        return BarFileSource(project_path(md.directory), settings.config.market.exchange)
    from brokers.paper.simulated import SimulatedMarket
    return SimulatedMarket(seed=md.seed, exchange=settings.config.market.exchange, n_symbols=md.universe_size,
                           calendar=calendar)


def build_broker(settings: Settings, pool: "asyncpg.Pool", clock: Clock, calendar: "MarketCalendar", source):
    name = settings.config.broker
    if name == "paper":
        from brokers.paper.broker import PaperBroker
        return PaperBroker(pool, source, clock, calendar, account_id=settings.agent_id,
                           currency=settings.config.market.currency, config=settings.config.paper)
    if name == "alpaca":
        from brokers.alpaca import AlpacaBroker
        return AlpacaBroker.from_settings(settings, clock=clock, calendar=calendar)
    if name == "moomoo":
        from brokers.moomoo import MoomooBroker
        return MoomooBroker.from_settings(settings, clock=clock, calendar=calendar)
    raise ConfigError(f"{settings.config_path}: unknown broker {name!r}")


def build_news(settings: Settings) -> "NewsProvider":
    from data.news import AlpacaNewsProvider, FileNewsProvider, NoNewsProvider
    if settings.config.news.directory:
        return FileNewsProvider(project_path(settings.config.news.directory))
    key, secret = settings.env.get("ALPACA_API_KEY"), settings.env.get("ALPACA_SECRET_KEY")
    if key and secret and settings.config.market.exchange in {"NYSE", "NASDAQ"}:
        return AlpacaNewsProvider(key, secret)
    return NoNewsProvider()


async def build_services(settings: Settings, pool: "asyncpg.Pool", clock: Clock) -> Services:
    from core.calendar import MarketCalendar
    from data.market import MarketData
    from execution.order_path import OrderPath

    calendar = MarketCalendar(settings.config.market.exchange)
    source = build_source(settings, calendar)
    broker = build_broker(settings, pool, clock, calendar, source)
    await broker.connect()
    signals = settings.config.signals
    market = MarketData(broker=broker, source=source, clock=clock, calendar=calendar,
                        rsi_overbought=float(signals.rsi_overbought), rsi_oversold=float(signals.rsi_oversold))
    return Services(settings=settings, pool=pool, clock=clock, calendar=calendar, broker=broker, market=market,
                    news=build_news(settings), orders=OrderPath(pool, broker, clock, settings.agent_id))
