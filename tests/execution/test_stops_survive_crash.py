"""Stops that survive our crash: the agent (a trade cycle that bought three positions; its monitor pass put their
protective stops at the broker) and the monitor daemon are both killed with SIGKILL. The venue (the fake Alpaca,
which keeps running: it is the broker) then sees the prices fall through the stops: its stops sell every
position while nothing of ours runs. After restart, reconciliation records those fills with their P&L, and no
order was sent twice."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from decimal import Decimal

import pytest
import yaml

from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.fakes.movable import MovableMarket
from tests.venues import NY_OPEN_AT, US_FEES, liquid_symbols, paper_config, us_market, us_settings


async def wait_for(predicate, what: str, timeout: float = 60.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.slow
async def test_agent_and_monitor_killed_the_brokers_stops_exit_every_position_and_reconciliation_books_them(
        pool, pg_url, tmp_path):
    from tests.fakes.alpaca_server import FakeAlpaca

    clock = SimulatedClock(NY_OPEN_AT)
    feed = MovableMarket(us_market(), clock)
    account = f"alpaca_{uuid.uuid4().hex[:8]}"
    fake = FakeAlpaca(pg_url=pg_url, market=feed, clock=clock, account_id=account, calendar=MarketCalendar("NYSE"),
                      paper_config=paper_config(fees=US_FEES))
    await asyncio.to_thread(fake.start)
    agent = f"t_crash_{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen] = []
    try:
        settings = us_settings(fake, ALPACA_STREAM_URL=fake.stream_url)
        config = yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
        config.update(broker="alpaca", real_money=False)
        config["agent"]["id"] = agent
        config["market"] = {"exchange": "NYSE", "timezone": "America/New_York", "currency": "USD",
                            "sessions": {"regular": {"open": "09:30", "close": "16:00"}}, "default_lot_size": 1}
        config["market_data"]["source"] = "broker"
        config["alpaca"]["paper"] = True
        config.pop("paper", None)
        path = tmp_path / "alpaca.yaml"
        path.write_text(yaml.safe_dump(config))
        env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID=agent, CATALYST_SIMULATED_NOW=NY_OPEN_AT.isoformat(),
                             CATALYST_SIMULATED_START=NY_OPEN_AT.isoformat(), CATALYST_SIMULATED_SPEED="1",
                             **{k: v for k, v in settings.env.values.items() if k.startswith("ALPACA_")})
        symbols = liquid_symbols(feed, NY_OPEN_AT)[:3]

        agent_proc = subprocess.Popen([PYTHON, "-m", "tests.workers.protected_entries", str(path), ",".join(symbols)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(agent_proc)
        line = await asyncio.wait_for(asyncio.to_thread(agent_proc.stdout.readline), 120)
        assert line.strip() == "READY", agent_proc.stderr.read() if agent_proc.poll() is not None else line
        monitor_proc = subprocess.Popen([PYTHON, "position_monitor_service.py", "--config", str(path)], cwd=ROOT,
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(monitor_proc)

        async def monitoring():
            return await pool.fetchval(
                "SELECT count(*) FROM service_health WHERE agent_id = $1 AND service = 'position_monitor' "
                "AND details->>'state' = 'monitoring'", agent)
        await wait_for(monitoring, "the monitor daemon's first pass")

        # both die at once, positions open and protected only at the broker now
        kill(agent_proc)
        kill(monitor_proc)
        positions = await pool.fetch("SELECT * FROM positions WHERE agent_id = $1 AND status = 'open' "
                                     "ORDER BY symbol", agent)
        assert [p["symbol"] for p in positions] == sorted(symbols)
        stops = {r["symbol"]: r for r in await pool.fetch(
            "SELECT * FROM orders WHERE agent_id = $1 AND intent = 'protective_stop' AND status = 'submitted'", agent)}
        assert sorted(stops) == sorted(symbols)                  # exactly one working stop per position
        assert all(stops[p["symbol"]]["quantity"] == p["quantity"] for p in positions)
        placed_before = len(fake.requests_for("POST", "/v2/orders"))

        # the market falls through every stop while nothing of ours runs
        for p in positions:
            feed.move(p["symbol"], stops[p["symbol"]]["stop_price"] * Decimal("0.97"))

        async def flat_at_the_broker():
            return not (await asyncio.to_thread(fake.run, fake.paper.get_positions()))
        await wait_for(flat_at_the_broker, "the broker's stops to sell every position", timeout=30)

        # restart: reconciliation books what the broker did
        recon = await asyncio.to_thread(subprocess.run, [PYTHON, "startup_monitor.py", "--config", str(path)],
                                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert recon.returncode == 0, recon.stdout + recon.stderr
        for p in positions:
            closed = await pool.fetchrow("SELECT * FROM positions WHERE position_id = $1", p["position_id"])
            assert closed["status"] == "closed" and closed["exit_reason"] == "protective_stop", dict(closed)
            sells = await pool.fetch("SELECT f.* FROM fills f JOIN orders o USING (order_id) WHERE o.agent_id = $1 "
                                     "AND o.symbol = $2 AND f.side = 'sell'", agent, p["symbol"])
            buys = await pool.fetch("SELECT f.* FROM fills f JOIN orders o USING (order_id) WHERE o.agent_id = $1 "
                                    "AND o.symbol = $2 AND f.side = 'buy'", agent, p["symbol"])
            assert sum(f["quantity"] for f in sells) == p["quantity"]
            expected = (sum((f["price"] - p["avg_entry_price"]) * f["quantity"] for f in sells)
                        - sum(f["fee"] for f in sells) - sum(f["fee"] for f in buys))
            assert closed["realized_pnl"] == expected
            assert closed["realized_pnl"] < 0                    # sold below the entry, at the stop
        # no order twice: one buy and one stop per symbol, every one of them sent exactly once
        orders = await pool.fetch("SELECT symbol, side, intent, status, client_order_id FROM orders "
                                  "WHERE agent_id = $1 ORDER BY order_id", agent)
        assert sorted((o["symbol"], o["side"], o["intent"], o["status"]) for o in orders) == sorted(
            [(s, "buy", "entry", "filled") for s in symbols] + [(s, "sell", "protective_stop", "filled")
                                                                 for s in symbols])
        posts = fake.requests_for("POST", "/v2/orders")
        sent = [r.body["client_order_id"] for r in posts]
        assert len(sent) == len(set(sent)) == placed_before == len(orders)
        assert await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND status IN "
                                   "('pending_submit', 'submitted')", agent) == 0
    finally:
        for proc in procs:
            kill(proc)
        await asyncio.to_thread(fake.stop)
