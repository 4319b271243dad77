"""The live path, as processes: with `broker: moomoo` and a fake OpenD serving ~700 real-looking HKEX listings (and
the same with `broker: alpaca` and a fake Alpaca serving ~700 US listings, 200 requests a minute),
`./run.sh data sync` fills the bar store with 500+ symbols x a year; a second sync asks the fake for nothing it
already has; a sync killed halfway and run again ends with the same rows as an uninterrupted one; then `scan`
and `trade` pick and buy symbols of that universe (0700-style codes), with lots and ticks from `securities`.

The agent runs as `python unified_agent.py` against the fake at the socket. Its market clock is fixed inside a
session (CATALYST_SIMULATED_NOW, as the fake's), and OpenD's rate windows run 2,000 times faster on both sides
(CATALYST_RATE_SPEED / the fake's rate clock), so the documented 60-requests-per-30-s limit is kept, not waited.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import yaml

from core.calendar import MarketCalendar
from core.clock import ScaledClock, SimulatedClock
from core.ticks import is_on_tick
from tests.conftest import PYTHON, ROOT, forget_dataset, subprocess_env
from tests.fakes.universe import Universe

NOW = datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)          # Tuesday 10:30 in Hong Kong
SPEED = 2000


@pytest.fixture
async def opend(pool, pg_url, tmp_path):
    from brokers.moomoo import load_sdk
    from tests.fakes.opend_server import FakeOpenD
    from tests.venues import paper_config
    load_sdk(tmp_path / "logs")
    fake = FakeOpenD(pg_url=pg_url, market=Universe("HKEX", n=700), clock=SimulatedClock(NOW),
                     account_id=f"opend_{uuid.uuid4().hex[:8]}", paper_config=paper_config(),
                     calendar=MarketCalendar("HKEX"), rate_clock=ScaledClock(SPEED))
    await asyncio.to_thread(fake.start)
    yield fake
    await asyncio.to_thread(fake.stop)
    await forget_dataset(pool, "moomoo:HKEX")


def agent_env(tmp_path, pg_url, fake, agent_id: str) -> tuple[dict, str]:
    config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    config["broker"] = "moomoo"
    config["moomoo"].update(host=fake.host, port=fake.port, connect_timeout_seconds=5)
    config["market_data"].update(source="broker", history_days=370)
    config["market_data"]["universe"].update(kind="board", min_turnover=0, max_symbols=520)
    path = tmp_path / "moomoo.yaml"
    path.write_text(yaml.safe_dump(config))
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent_id, CATALYST_SIMULATED_NOW=NOW.isoformat(),
                         CATALYST_RATE_SPEED=str(SPEED))
    return env, str(path)


def run(env, config: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "unified_agent.py", "--config", config, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


async def stored(pool) -> list[tuple]:
    return [tuple(r) for r in await pool.fetch(
        "SELECT symbol, bar_start, open, high, low, close, volume FROM bars WHERE dataset = 'moomoo:HKEX' "
        "ORDER BY symbol, bar_start")]


async def forget(pool) -> None:
    await forget_dataset(pool, "moomoo:HKEX")


@pytest.mark.slow
async def test_moomoo_sync_scan_and_trade_real_looking_symbols(pool, pg_url, tmp_path, opend):
    await forget(pool)
    opend.history_quota = 5000
    env, config = agent_env(tmp_path, pg_url, opend, f"t_e2e_{uuid.uuid4().hex[:6]}")

    # 1. a sync killed halfway, then run again ...
    proc = subprocess.Popen([PYTHON, "unified_agent.py", "--config", config, "--mode", "data", "sync"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if opend.count("kline") >= 250 or proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = opend.count("kline")
    assert 0 < killed_at < 520, killed_at
    resumed = run(env, config, "--mode", "data", "sync")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    after_resume = await stored(pool)

    # ... ends with the same rows as an uninterrupted one
    await forget(pool)
    full = run(env, config, "--mode", "data", "sync")
    assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-2000:]
    assert await stored(pool) == after_resume
    symbols = await pool.fetchval("SELECT count(DISTINCT symbol) FROM bars WHERE dataset = 'moomoo:HKEX'")
    assert symbols >= 500
    assert len(after_resume) >= 500 * 240                                   # a year of sessions each

    # 2. a second sync asks for nothing it already has
    before = {k: opend.count(k) for k in ("kline", "snapshot", "basicinfo", "quota", "plate")}
    again = run(env, config, "--mode", "data", "sync")
    assert again.returncode == 0 and "0 bars added" in again.stdout, again.stdout
    assert {k: opend.count(k) for k in before} == before

    # 3. scan and trade pick and buy symbols of that universe, with lots and ticks from securities
    scan = run(env, config, "--mode", "scan")
    assert scan.returncode == 0, scan.stdout[-2000:] + scan.stderr[-2000:]
    agent = env["AGENT_ID"]
    picked = [r["symbol"] for r in await pool.fetch(
        "SELECT symbol FROM scan_results WHERE agent_id = $1 ORDER BY rank", agent)]
    listed = {r["symbol"]: r for r in await pool.fetch(
        "SELECT symbol, lot_size, tick_scheme FROM securities WHERE dataset = 'moomoo:HKEX'")}
    assert picked and set(picked) <= set(listed)
    assert all(s.isdigit() and len(s) in (4, 5) for s in picked), picked[:10]
    trade = run(env, config, "--mode", "trade")
    assert trade.returncode == 0, trade.stdout[-2000:] + trade.stderr[-2000:]
    orders = await pool.fetch("SELECT symbol, quantity, limit_price, status FROM orders WHERE agent_id = $1 "
                              "AND intent = 'entry'", agent)
    assert orders, trade.stdout
    for o in orders:
        assert o["symbol"] in listed and o["quantity"] % listed[o["symbol"]]["lot_size"] == 0
        assert o["limit_price"] is None or is_on_tick(Decimal(o["limit_price"]), listed[o["symbol"]]["tick_scheme"])
    placed = [r for r in opend.requests if r.proto_id == 2202]
    assert len(placed) >= len([o for o in orders if o["status"] != "rejected"]) > 0


@pytest.fixture
async def alpaca(pool, pg_url):
    from tests.fakes.alpaca_server import FakeAlpaca
    from tests.venues import US_FEES
    from tests.venues import paper_config
    us_now = datetime(2026, 11, 24, 15, 30, tzinfo=timezone.utc)       # 10:30 in New York
    fake = FakeAlpaca(pg_url=pg_url, market=Universe("US", n=700), clock=SimulatedClock(us_now),
                      account_id=f"alpaca_{uuid.uuid4().hex[:8]}", calendar=MarketCalendar("NYSE"),
                      paper_config=paper_config(fees=US_FEES), rate_clock=ScaledClock(SPEED))
    fake.bars_page_max = 10_000                                          # Alpaca's page: several pages here
    fake.limit_rate(200, 60.0)                                           # Alpaca's 200 a minute, 429 past it
    await asyncio.to_thread(fake.start)
    yield fake, us_now
    await asyncio.to_thread(fake.stop)
    await forget_dataset(pool, "alpaca:iex")


@pytest.mark.slow
async def test_alpaca_sync_scan_and_trade_real_looking_symbols(pool, pg_url, tmp_path, alpaca):
    fake, us_now = alpaca
    await forget_dataset(pool, "alpaca:iex")
    config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    config.update(broker="alpaca", paper={"initial_cash": 200000})
    config["market"] = {"exchange": "NYSE", "timezone": "America/New_York", "currency": "USD",
                        "sessions": {"regular": {"open": "09:30", "close": "16:00"}}, "default_lot_size": 1}
    config["market_data"].update(source="broker", history_days=370)
    config["market_data"]["universe"].update(kind="board", min_turnover=0, max_symbols=520)
    config["trading"].update(max_position_value=10000, min_position_value=100)
    path = tmp_path / "alpaca.yaml"
    path.write_text(yaml.safe_dump(config))
    agent = f"t_e2e_us_{uuid.uuid4().hex[:6]}"
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent, CATALYST_SIMULATED_NOW=us_now.isoformat(),
                         CATALYST_RATE_SPEED=str(SPEED), ALPACA_API_KEY=fake.api_key,
                         ALPACA_SECRET_KEY=fake.secret_key, ALPACA_BASE_URL=fake.base_url,
                         ALPACA_DATA_URL=fake.base_url)
    sync = run(env, str(path), "--mode", "data", "sync")
    assert sync.returncode == 0, sync.stdout[-2000:] + sync.stderr[-2000:]
    assert await pool.fetchval("SELECT count(DISTINCT symbol) FROM bars WHERE dataset = 'alpaca:iex'") >= 500
    bars_requests = fake.count("bars")
    assert bars_requests >= 3                                            # grouped, multi-symbol, paged
    again = run(env, str(path), "--mode", "data", "sync")
    assert again.returncode == 0 and "0 bars added" in again.stdout, again.stdout
    assert fake.count("bars") == bars_requests
    scan = run(env, str(path), "--mode", "scan")
    assert scan.returncode == 0, scan.stdout[-2000:] + scan.stderr[-2000:]
    trade = run(env, str(path), "--mode", "trade")
    assert trade.returncode == 0, trade.stdout[-2000:] + trade.stderr[-2000:]
    listed = {r["symbol"] for r in await pool.fetch("SELECT symbol FROM securities WHERE dataset = 'alpaca:iex'")}
    orders = await pool.fetch("SELECT symbol, limit_price FROM orders WHERE agent_id = $1 AND intent = 'entry'",
                              agent)
    assert orders and {o["symbol"] for o in orders} <= listed, trade.stdout
    assert all(o["symbol"].replace(".", "").isalpha() for o in orders)
    assert all(o["limit_price"] is None or is_on_tick(Decimal(o["limit_price"]), "us") for o in orders)
