"""A full offline trading day (scan -> trades -> close) with a live broker adapter, its real SDK talking over a real
socket to a wire-level fake backed by the simulated exchange: the same kinds of rows as with the paper broker."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import date, datetime, timezone

import pytest

from core.clock import ScaledClock, SimulatedClock
from core.calendar import MarketCalendar
from brokers.paper.simulated import SimulatedMarket
from replay.day import run_day
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings
from tests.conftest import forget_dataset
from tests.venues import paper_config

# OpenD's rate windows (60 K-line requests a 30 s) kept, on both sides, 2,000 times faster than real time.
RATE_SPEED = 2000
SESSION = date(2026, 11, 24)                       # a Tuesday; the day starts at 08:00 HKT on the shared clock


async def assert_a_trading_day(pool, summary: dict) -> None:
    agent = summary["agent_id"]
    counts = {t: await pool.fetchval(f"SELECT count(*) FROM {t} WHERE agent_id = $1", agent)
              for t in ("trading_cycles", "scan_results", "orders", "fills", "positions", "decisions")}
    assert all(n > 0 for n in counts.values()), counts
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND status = 'failed'",
                               agent) == 0
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND status = 'pending_submit'",
                               agent) == 0


@pytest.mark.slow
async def test_an_offline_day_through_moomoo_and_a_fake_opend(pool, pg_url, tmp_path):
    from brokers.moomoo import load_sdk
    from core.config_model import MoomooConfig
    from tests.fakes.opend_server import FakeOpenD

    load_sdk(tmp_path / "logs")
    await forget_dataset(pool, "moomoo:HKEX")                # this day's market only (see forget_dataset)
    calendar = MarketCalendar("HKEX")
    clock = SimulatedClock(datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc))
    account = f"opend_{uuid.uuid4().hex[:8]}"
    fake = FakeOpenD(pg_url=pg_url, market=SimulatedMarket(seed=7, exchange="HKEX", n_symbols=240, calendar=calendar),
                     clock=clock, account_id=account, paper_config=paper_config(), calendar=calendar,
                     rate_clock=ScaledClock(RATE_SPEED))
    await asyncio.to_thread(fake.start)
    try:
        settings = agent_settings(f"t_mm_{uuid.uuid4().hex[:6]}", env={"CATALYST_LOG_DIR": str(tmp_path / "logs"),
                                                                        "CATALYST_RATE_SPEED": str(RATE_SPEED)})
        cfg = settings.config.model_copy(update={"broker": "moomoo", "moomoo": MoomooConfig(
            host=fake.host, port=fake.port, trade_env="simulate", connect_timeout_seconds=5)})
        settings = replace(settings, config=cfg)
        summary = await run_day(settings, pool, build=builder(pool), session=SESSION, clock=clock)
    finally:
        await asyncio.to_thread(fake.stop)
    await assert_a_trading_day(pool, summary)
    placed = [r for r in fake.requests if r.proto_id == 2202]          # Trd_PlaceOrder over the wire
    assert len(placed) == await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND status <> "
                                              "'rejected'", summary["agent_id"]) > 0


@pytest.mark.slow
async def test_an_offline_day_through_alpaca_and_a_fake_rest_server(pool, pg_url):
    from tests.fakes.alpaca_server import FakeAlpaca
    from tests.venues import US_FEES, us_settings

    await forget_dataset(pool, "alpaca:iex")
    calendar = MarketCalendar("NYSE")
    clock = SimulatedClock(datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc))          # 07:00 New York
    fake = FakeAlpaca(pg_url=pg_url, market=SimulatedMarket(seed=7, exchange="NYSE", n_symbols=240, calendar=calendar),
                      clock=clock, account_id=f"alpaca_{uuid.uuid4().hex[:8]}", calendar=calendar,
                      paper_config=paper_config(fees=US_FEES))
    await asyncio.to_thread(fake.start)
    try:
        settings = us_settings(fake)
        agent = f"t_al_{uuid.uuid4().hex[:6]}"
        settings = replace(settings, config=settings.config.model_copy(update={
            "agent": settings.config.agent.model_copy(update={"id": agent})}))
        summary = await run_day(settings, pool, build=builder(pool), session=SESSION, clock=clock)
    finally:
        await asyncio.to_thread(fake.stop)
    await assert_a_trading_day(pool, summary)
    posts = fake.requests_for("POST", "/v2/orders")
    assert len(posts) == await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND status <> "
                                             "'rejected'", summary["agent_id"]) > 0
