"""The venues tests share: the simulated HKEX market the paper broker and the OpenD fake sit on, the US one behind
the Alpaca fake, their paper configurations and settings. Plain helpers (fixtures live in conftest.py)."""
from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from brokers.paper.broker import PaperBroker
from brokers.paper.simulated import SimulatedMarket
from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.config_model import AlpacaConfig, FeeSchedule, MarketConfig
from core.environment import Environment
from core.settings import Settings, load_settings

if TYPE_CHECKING:
    from tests.fakes.alpaca_server import FakeAlpaca


# ---------------------------------------------------------------- HKEX (paper broker, OpenD fake)

# Tuesday 2026-11-24 10:30 Hong Kong time: the market is open.
OPEN_AT = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)
SEED = 7

_market = None


def shared_market() -> SimulatedMarket:
    global _market
    if _market is None:
        _market = SimulatedMarket(seed=SEED, exchange="HKEX")
    return _market


def paper_config(**changes):
    cfg = load_settings(env=Environment()).config.paper
    return cfg.model_copy(update=changes)


async def make_broker(pool, account_id: str, clock, **changes) -> PaperBroker:
    broker = PaperBroker(pool, shared_market(), clock, MarketCalendar("HKEX"), account_id=account_id,
                         currency="HKD", config=paper_config(**changes))
    await broker.connect()
    return broker


async def advance_trading_minutes(clock: SimulatedClock, calendar: MarketCalendar, minutes: int) -> None:
    left = minutes
    while left > 0:
        if calendar.is_open(clock.now()):
            clock.advance(timedelta(minutes=1))
            left -= 1
        else:
            clock.set(calendar.state(clock.now()).next_open)


def liquid_symbols(market: SimulatedMarket, at: datetime) -> list[str]:
    """Symbols priced 5..60 HKD with a lot worth < 10,000 HKD that traded at least 20 lots in the 5 minutes to OPEN_AT,
    cheapest lot first."""
    picks = []
    for inst in market.instruments():
        q = market.quote(inst.symbol, at)
        recent = sum(b.volume for b in market.bars(inst.symbol, "1m", OPEN_AT - timedelta(minutes=5), OPEN_AT))
        if (Decimal(5) <= q.last <= Decimal(60) and q.last * inst.lot_size < 10_000
                and recent >= 20 * inst.lot_size):
            picks.append((q.last * inst.lot_size, inst.symbol))
    return [s for _, s in sorted(picks)][:5]


# ---------------------------------------------------------------- US (Alpaca fake)

# Tuesday 2026-11-24 10:30 New York time: the market is open.
NY_OPEN_AT = datetime(2026, 11, 24, 15, 30, tzinfo=timezone.utc)
NYSE = MarketCalendar("NYSE")
# Alpaca charges no commission; the SEC fee on sells is taken from cash (as Alpaca does), not reported per order.
US_FEES = FeeSchedule(commission_rate=0, commission_min=0, stamp_duty_rate=0, stamp_duty_round_up=False,
                      trading_fee_rate=0, sfc_levy_rate=0, settlement_fee_rate=0, settlement_fee_min=0,
                      settlement_fee_max=0, sell_only_rate=Decimal("0.0000278"))
US_MARKET = MarketConfig(exchange="NYSE", timezone="America/New_York", currency="USD",
                         sessions={"regular": {"open": "09:30", "close": "16:00"}}, default_lot_size=1)

_us_market: SimulatedMarket | None = None


def us_market() -> SimulatedMarket:
    global _us_market
    if _us_market is None:
        _us_market = SimulatedMarket(seed=SEED, exchange="NYSE", calendar=NYSE)
    return _us_market


@functools.cache
def us_symbols() -> list[str]:
    """$5..60 symbols, cheapest first, that traded at least 20,000 shares in the 5 minutes to OPEN_AT but under
    $500k (so half the account's buying power is more than an order's 10% share of that depth: the partial-fill
    test) and that later trade 0.5% under the bid before the close (the limit-order test needs the market to
    cross; in a deterministic simulated market that is a fact the venue can look up)."""
    picks = []
    m = us_market()
    close = NYSE.state(NY_OPEN_AT).next_close
    for inst in m.instruments():
        q = m.quote(inst.symbol, NY_OPEN_AT)
        recent = sum(b.volume for b in m.bars(inst.symbol, "1m", NY_OPEN_AT - timedelta(minutes=5), NY_OPEN_AT))
        if not (Decimal(5) <= q.last <= Decimal(60) and recent >= 20_000 and recent * q.last <= 500_000):
            continue
        if min(b.low for b in m.bars(inst.symbol, "1m", NY_OPEN_AT, close)) < q.bid * Decimal("0.995"):
            picks.append((q.last, inst.symbol))
    return [s for _, s in sorted(picks)][:5]


def us_settings(fake: "FakeAlpaca | None" = None, *, paper: bool = True, timeout_seconds: float = 5,
                **env: str | None) -> Settings:
    values = {"ALPACA_API_KEY": "PKTESTKEY", "ALPACA_SECRET_KEY": "test-secret-key"}
    if fake is not None:
        values.update(ALPACA_API_KEY=fake.api_key, ALPACA_SECRET_KEY=fake.secret_key, ALPACA_BASE_URL=fake.base_url,
                      ALPACA_DATA_URL=fake.base_url)
    values.update(env)
    base = load_settings(env=Environment())
    alpaca = AlpacaConfig(paper=paper, timeout_seconds=timeout_seconds)
    config = base.config.model_copy(update={"broker": "alpaca", "market": US_MARKET, "real_money": not paper,
                                            "alpaca": alpaca})
    return Settings(config=config, env=Environment(values={k: v for k, v in values.items() if v is not None}),
                    config_path=base.config_path)


# ---------------------------------------------------------------- waiting without waiting

class Sleep:
    """The broker's sleep: moves the simulated clock instead of waiting, and remembers each wait."""

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(timedelta(seconds=seconds))
