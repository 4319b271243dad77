"""Wiring: the only place that builds objects and knows the concrete broker.

`build_services` turns settings, a database pool and a clock into the connected parts of one process; the parts
receive what they use through their constructors, and `Services` hands out the per-cycle ones (a Trader, a tool
executor, an engine, the position monitor). Nothing below `runtime` imports this module.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import signals
from core.calendar import MarketCalendar
from core.clock import Clock, RealClock, ScaledClock
from core.paths import project_path
from core.errors import ConfigError
from core.settings import Settings
from core.feeds import UniverseSpec
from core.symbols import canonical_symbol
from data.market import MarketData
from data.scan import Scanner
from data.store import BarStore
from data.sync import Sync
from engines.advisor import Advisor
from engines.answers import AnswerBook
from engines.budget import AIBudget
from engines.rules import RulesEngine
from execution.monitor import PositionMonitor
from execution.order_path import OrderPath
from execution.portfolio import Portfolio
from execution.protection import Protection
from execution.reconcile import Reconciler
from execution.store import Store
from execution.trader import Trader
from runtime.cycle import CycleRunner
from tool_executor import ToolExecutor

if TYPE_CHECKING:
    import asyncpg

    from brokers.base import BrokerClient
    from core.feeds import MarketDataSource
    from data.news import NewsProvider

log = logging.getLogger("catalyst.wiring")


@dataclass
class Services:
    """The connected parts of one process (one agent id, one clock)."""
    settings: Settings
    pool: "asyncpg.Pool"
    clock: Clock
    calendar: MarketCalendar
    broker: "BrokerClient"
    universe: "MarketDataSource"
    market: MarketData
    news: "NewsProvider"
    store: Store
    orders: OrderPath
    portfolio: Portfolio
    scanner: Scanner
    reconciler: Reconciler
    bar_store: BarStore
    sync: Sync
    # cycles left running by a dead process are looked for once per process (a cron run is one cycle; a process
    # running many cycles holds its agents' locks throughout, and what others leave their own next run finds)
    interrupted_swept: bool = False
    # the rules engine made for these settings (it keeps nothing of a cycle; made again when the settings change)
    _rules: tuple | None = field(default=None, init=False, repr=False)

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id

    # ------------------------------------------------------------------ per cycle
    def trader(self, *, cycle_id: uuid.UUID | None, engine: str) -> Trader:
        return Trader(broker=self.broker, orders=self.orders, portfolio=self.portfolio, store=self.store,
                      clock=self.clock, calendar=self.calendar, trading=self.settings.config.trading,
                      cycle_id=cycle_id, engine=engine, monitor_beat_limit=self.beat_limit())

    def beat_limit(self) -> float | None:
        """How old the monitor daemon's beat may be before entries stop; None when the daemon is not required
        (a simulated clock drives its own monitor in-process)."""
        m = self.settings.config.monitor
        required = m.require_daemon == "always" or (m.require_daemon == "live" and isinstance(self.clock, RealClock))
        return float(m.beat_limit_seconds) if required else None

    def executor(self, *, mode: str, cycle_id: uuid.UUID | None, engine: str) -> ToolExecutor:
        return ToolExecutor(trader=self.trader(cycle_id=cycle_id, engine=engine), market=self.market,
                            scanner=self.scanner, news=self.news, mode=mode,
                            exchange=self.settings.config.market.exchange)

    def budget(self, purpose: str) -> AIBudget:
        ai = self.settings.config.ai
        limit = ai.monitor_daily_budget_usd if purpose == "monitor" else ai.daily_budget_usd
        return AIBudget(self.pool, self.clock, self.agent_id, daily_limit=limit, purpose=purpose,
                        total_limit=ai.total_budget_usd, total_scope=ai.total_budget_scope)

    def advisor(self) -> Advisor:
        return Advisor(self.settings, self.budget("monitor"),
                       answers=AnswerBook(self.pool, reuse=self.settings.config.ai.reuse_answers))

    def thresholds(self) -> signals.SignalThresholds:
        cfg = self.settings.config
        return signals.SignalThresholds.from_config(cfg.signals, cfg.trading.trailing_stop_pct)

    def protection(self) -> Protection:
        """The one Protection of these services: reconciliation and every monitor share it."""
        return self.reconciler.protection

    def monitor(self, *, advisor=None) -> PositionMonitor:
        cfg = self.settings.config
        return PositionMonitor(
            trader=self.trader(cycle_id=None, engine="monitor"), market=self.market, store=self.store,
            clock=self.clock, thresholds=self.thresholds(),
            advisor=advisor if advisor is not None else self.advisor(),
            advice_hold=timedelta(minutes=cfg.monitor.advice_hold_minutes), protection=self.protection())

    async def choose_engine(self, mode: str):
        """Claude when configured and within budget; otherwise the rules engine, with the reason."""
        settings = self.settings
        if not settings.env.get("ANTHROPIC_API_KEY"):
            return self._rules_engine(), "no ANTHROPIC_API_KEY: the offline rules engine decides"
        from engines.claude import ClaudeEngine
        budget = self.budget("trade")
        engine = ClaudeEngine(settings, budget=budget, store=self.store,
                              answers=AnswerBook(self.pool, reuse=settings.config.ai.reuse_answers),
                              prompt_caching=settings.config.ai.prompt_caching)
        remaining = await budget.remaining()
        if remaining < engine.first_call_estimate(mode):
            return self._rules_engine(), (f"AI budget for today is spent ({remaining:.4f} USD left of "
                                           f"{budget.daily_limit}): the offline rules engine decides")
        return engine, f"Claude ({settings.config.ai.model}) decides"

    def _rules_engine(self) -> RulesEngine:
        if self._rules is None or self._rules[0] is not self.settings:
            self._rules = (self.settings, RulesEngine(self.settings))
        return self._rules[1]

    def cycles(self) -> CycleRunner:
        sweep, self.interrupted_swept = not self.interrupted_swept, True
        return CycleRunner(pool=self.pool, clock=self.clock, calendar=self.calendar, agent_id=self.agent_id,
                           timezone=self.settings.config.market.timezone, reconciler=self.reconciler,
                           executor=self.executor, choose_engine=self.choose_engine,
                           after_trade=lambda: self.monitor().run_pass(),
                           lock_dir=self.settings.var_dir / "locks" if sweep else None, store=self.store)

    async def run_cycle(self, mode: str, *, engine=None):
        """One scan, trade or close cycle (a `trading_cycles` row); see runtime/cycle.py."""
        return await self.cycles().run(mode, engine=engine)


# ---------------------------------------------------------------- building

def build_source(settings: Settings, calendar: MarketCalendar) -> "MarketDataSource":
    """The market history the paper broker fills against and the scan reads."""
    md = settings.config.market_data
    if md.source == "files":
        from data.bar_files import BarFileSource
        market = settings.config.market
        return BarFileSource(project_path(md.directory), market.exchange,
                             default_lot=market.default_lot_size if market.exchange == "HKEX" else None)
    from brokers.paper.simulated import SimulatedMarket
    key = (md.seed, settings.config.market.exchange, md.universe_size, repr(calendar))
    market = _SIMULATED.get(key)
    if market is None:
        market = _SIMULATED[key] = SimulatedMarket(seed=md.seed, exchange=key[1], n_symbols=md.universe_size,
                                                   calendar=calendar)
    return market


# One simulated market per (seed, exchange, size) in a process: it is a pure function of those and the time asked
# about, so the sessions a process wires (replay's history sync and its run, eval's engines) share the paths it
# has already computed instead of computing them again.
_SIMULATED: dict[tuple, "MarketDataSource"] = {}


def dataset_of(settings: Settings) -> str:
    """The bar store's dataset this configuration reads: where its history comes from."""
    cfg, md = settings.config, settings.config.market_data
    exchange = cfg.market.exchange
    if cfg.broker == "alpaca":
        return f"alpaca:{cfg.alpaca.data_feed}"
    if cfg.broker == "moomoo":
        return f"moomoo:{exchange}"
    if md.source == "files":
        return f"files:{exchange}:{project_path(md.directory).resolve()}"
    return f"sim:{exchange}:{md.seed}:{md.universe_size}"


def universe_spec(settings: Settings) -> UniverseSpec:
    u = settings.config.market_data.universe
    exchange = settings.config.market.exchange
    symbols = tuple(dict.fromkeys(canonical_symbol(s, exchange) for s in u.symbols))      # one per instrument
    return UniverseSpec(kind=u.kind, symbols=symbols, index=u.index, min_turnover=u.min_turnover,
                        max_symbols=u.max_symbols)


def build_sync(settings: Settings, store: BarStore, broker: "BrokerClient", clock: Clock) -> Sync:
    cfg = settings.config
    source = cfg.broker if cfg.broker != "paper" else f"paper:{cfg.market_data.source}"
    return Sync(store=store, history=broker, spec=universe_spec(settings),
                history_days=cfg.market_data.history_days, clock=clock, source=source)


def build_broker(settings: Settings, pool: "asyncpg.Pool", clock: Clock, calendar: MarketCalendar,
                 source: "MarketDataSource", *, reads=None) -> "BrokerClient":
    name = settings.config.broker
    if name == "paper":
        from brokers.paper.broker import PaperBroker
        return PaperBroker(pool, source, clock, calendar, account_id=settings.agent_id,
                           currency=settings.config.market.currency, config=settings.config.paper, reads=reads)
    # The venues' rate windows run on real time; CATALYST_RATE_SPEED (tests, rehearsal) runs them faster.
    speed = settings.env.get("CATALYST_RATE_SPEED")
    rate = ScaledClock(float(speed)) if speed else None
    timing = {"rate_clock": rate, "sleep": rate.sleep} if rate else {}
    if name == "alpaca":
        from brokers.alpaca import AlpacaBroker
        return AlpacaBroker.from_settings(settings, clock=clock, calendar=calendar, **timing)
    if name == "moomoo":
        from brokers.moomoo import MoomooBroker
        return MoomooBroker.from_settings(settings, clock=clock, calendar=calendar, **timing)
    raise ConfigError(f"{settings.config_path}: unknown broker {name!r}")


def build_news(settings: Settings) -> "NewsProvider":
    from data.news import AlpacaNewsProvider, FileNewsProvider, NoNewsProvider
    if settings.config.news.directory:
        return FileNewsProvider(project_path(settings.config.news.directory))
    key, secret = settings.env.get("ALPACA_API_KEY"), settings.env.get("ALPACA_SECRET_KEY")
    if key and secret and settings.config.market.exchange in {"NYSE", "NASDAQ"}:
        return AlpacaNewsProvider(key, secret)
    return NoNewsProvider()


async def build_services(settings: Settings, pool: "asyncpg.Pool", clock: Clock, *,
                         sole_writer: bool = False) -> Services:
    """Every part of one process, the broker connected. `sole_writer`: this process is the only one writing this
    agent id's rows (replay and day hold its lock, under an id no other run uses): its reads of them are served
    again while nothing of this process has touched the database since, and the monitor's status rows wait for
    the next cycle (runtime/lane_pool.py SoleReads, execution/store.py)."""
    from runtime.lane_pool import SoleReads
    reads = SoleReads(pool) if sole_writer else pool
    cfg = settings.config
    agent_id = settings.agent_id
    calendar = MarketCalendar(cfg.market.exchange)
    source = build_source(settings, calendar)
    broker = build_broker(settings, pool, clock, calendar, source, reads=reads)
    await broker.connect()
    bar_store = BarStore(pool, dataset=dataset_of(settings), exchange=cfg.market.exchange, calendar=calendar)
    market = MarketData(broker=broker, clock=clock, calendar=calendar,
                        rsi_overbought=float(cfg.signals.rsi_overbought),
                        rsi_oversold=float(cfg.signals.rsi_oversold), daily=bar_store)
    store = Store(pool, clock, agent_id, reads=reads, hold_monitor=sole_writer)
    orders = OrderPath(pool, broker, clock, agent_id, held_cycle_start=store.take_cycle_start)
    sync = build_sync(settings, bar_store, broker, clock)
    return Services(
        settings=settings, pool=pool, clock=clock, calendar=calendar, broker=broker, universe=source,
        market=market, news=build_news(settings), store=store, orders=orders,
        portfolio=Portfolio(pool, broker, clock, calendar, agent_id, reads=reads,
                            held_high_water=store.held_high_water),
        scanner=Scanner(pool=pool, store=bar_store, clock=clock, calendar=calendar, scan=cfg.scan,
                        max_position_value=cfg.trading.max_position_value, agent_id=agent_id,
                        refresh=sync, live=cfg.broker != "paper", before_write=store.write_cycle_start),
        bar_store=bar_store, sync=sync,
        reconciler=Reconciler(pool=pool, reads=reads, store=store, orders=orders, broker=broker, clock=clock, agent_id=agent_id,
                              stop_loss_pct=cfg.trading.position_stop_loss_pct,
                              protection=Protection(broker=broker, orders=orders, store=store,
                                                    thresholds=signals.SignalThresholds.from_config(
                                                        cfg.signals, cfg.trading.trailing_stop_pct),
                                                    enabled=cfg.monitor.broker_stops)))


def builder(pool: "asyncpg.Pool"):
    """`build(settings, clock)` on this pool: what replay and day are given to wire each run. Each agent id it
    wires holds that id's run lock for the rest of the process, so its cycles read as alive to other runs (and as
    interrupted once the process is gone)."""
    from runtime.lock import AgentLock
    held: dict[str, AgentLock] = {}

    async def build(settings: Settings, clock: Clock) -> Services:
        if settings.agent_id not in held:
            held[settings.agent_id] = AgentLock(settings.var_dir / "locks", settings.agent_id).acquire("replay")
        return await build_services(settings, pool, clock, sole_writer=True)
    return build
