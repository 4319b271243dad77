"""The README's main command: `./run.sh day` — an offline trading day (scan -> trades -> close) with the rules
engine, the paper broker and embedded PostgreSQL, run as a real process. What it prints is what its rows say,
and the rows agree with each other: orders with their fills, positions with the fills that made them, the paper
account's cash with every fill."""
from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from decimal import Decimal

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env

# seed §10.2 health checks, asked for this run's agent id only
SEED_POSITIONS = "SELECT COUNT(*) FROM positions WHERE agent_id = $1;"
SEED_RECENT_LOGS = "SELECT * FROM agent_logs WHERE agent_id = $1 ORDER BY timestamp DESC LIMIT 10;"

SUMMARY = re.compile(r"Simulated session (?P<session>\d{4}-\d\d-\d\d) done \(agent id (?P<agent>\S+)\): "
                     r"(?P<cycles>\d+) cycles, (?P<orders>\d+) orders \((?P<stops>\d+) protective stops\), (?P<fills>\d+) fills; "
                     r"equity (?P<equity>-?[\d.]+) \((?P<change>[+-][\d.]+)\), "
                     r"realized P&L (?P<realized>-?[\d.]+); held overnight: (?P<held>.*)\.$", re.M)
CENT = Decimal("0.01")


@pytest.mark.slow
async def test_an_offline_day_prints_what_its_rows_say_and_the_rows_agree(pool, pg_url, tmp_path):
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID="daytest")
    out = subprocess.run([PYTHON, "unified_agent.py", "--mode", "day"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    printed = SUMMARY.search(out.stdout)
    assert printed, out.stdout[-3000:]
    agent = printed["agent"]
    assert agent.startswith(f"daytest-day-{printed['session'].replace('-', '')}-")

    def rows(sql: str, *args):
        return pool.fetch(sql, agent, *args)

    for table in ("trading_cycles", "scan_results", "orders", "fills", "positions", "decisions", "patterns",
                  "agent_logs", "position_monitor_status"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE agent_id = $1", agent) > 0, table

    # cycles: as printed, one scan, one close, every trade time, all by the rules engine, none failed (a trade
    # time after a half day's close is market_closed)
    cycles = await rows("SELECT mode, engine, status, orders_placed FROM trading_cycles WHERE agent_id = $1")
    assert len(cycles) == int(printed["cycles"])
    modes = [c["mode"] for c in cycles]
    assert modes.count("scan") == 1 and modes.count("close") == 1 and modes.count("trade") >= 10, modes
    assert {c["engine"] for c in cycles} == {"rules"}
    assert {c["status"] for c in cycles} <= {"completed", "market_closed"}, cycles

    # orders: the printed count is every order the broker accepted -- the cycles', the monitor's exits and the
    # protective stops the monitor's passes keep at the broker (one working per open position at the end)
    orders = await rows("SELECT * FROM orders WHERE agent_id = $1 ORDER BY order_id")
    assert not [o for o in orders if o["status"] == "pending_submit"], "an order was left unresolved"
    accepted = [o for o in orders if o["status"] != "rejected"]
    assert len(accepted) == int(printed["orders"]) > 0
    stops = [o for o in accepted if o["intent"] == "protective_stop"]
    assert len(stops) == int(printed["stops"])
    monitor_exit_lines = [line for line in re.findall(r"^  \d\d:\d\d monitor exit (\S+) \((\w+)\): (\w+)$",
                                                      out.stdout, re.M)
                          if line[2] not in ("closed_by_broker_stop", "exit_in_progress", "refused")]
    assert sum(c["orders_placed"] for c in cycles) + len(monitor_exit_lines) + len(stops) == len(accepted)
    assert sorted((o["symbol"], o["intent"], o["status"]) for o in accepted
                  if o["cycle_id"] is None and o["intent"] != "protective_stop") == sorted(monitor_exit_lines)
    open_symbols = {p["symbol"] for p in await rows("SELECT symbol FROM positions WHERE agent_id = $1 "
                                                    "AND status = 'open'")}
    working = [o["symbol"] for o in stops if o["status"] == "submitted"]
    # a day runs without stops at the broker unless monitor.broker_stops_in_replay; with them, one per open position
    assert sorted(working) == (sorted(open_symbols) if stops else [])
    assert not [o for o in orders if o["intent"] == "entry" and o["stop_loss"] is None], "an entry without a stop"

    # fills: as printed; each order's filled quantity and fees are exactly its fills'
    fills = await rows("SELECT f.*, o.position_id FROM fills f JOIN orders o USING (order_id) "
                       "WHERE f.agent_id = $1 ORDER BY f.fill_row_id")
    assert len(fills) == int(printed["fills"]) > 0
    by_order = defaultdict(list)
    for f in fills:
        by_order[f["order_id"]].append(f)
    for o in orders:
        mine = by_order.get(o["order_id"], [])
        assert o["filled_quantity"] == sum(f["quantity"] for f in mine), dict(o)
        assert o["fees"] == sum((f["fee"] for f in mine), Decimal(0)) + o["fees_booked"], dict(o)
        assert all(f["side"] == o["side"] and f["symbol"] == o["symbol"] for f in mine)

    # positions come only from fills; a closed one's realised P&L is its fills' P&L net of every fee
    positions = await rows("SELECT * FROM positions WHERE agent_id = $1 ORDER BY position_id")
    by_position = defaultdict(list)
    for f in fills:
        by_position[f["position_id"]].append(f)
    assert await pool.fetchval(SEED_POSITIONS, agent) == len(positions) == len(by_position)
    assert {p["position_id"] for p in positions} == set(by_position)
    closed_pnl = Decimal(0)
    for p in positions:
        mine = by_position[p["position_id"]]
        bought = sum(f["quantity"] for f in mine if f["side"] == "buy")
        sold = sum(f["quantity"] for f in mine if f["side"] == "sell")
        fees = sum((f["fee"] for f in mine), Decimal(0))
        assert p["quantity"] == bought - sold and p["fees"] == fees, dict(p)
        if p["status"] == "closed":
            cash_flow = sum((f["quantity"] * f["price"] * (1 if f["side"] == "sell" else -1) for f in mine),
                            Decimal(0))
            assert sold == bought and p["realized_pnl"] == cash_flow - fees, dict(p)
            closed_pnl += p["realized_pnl"]
    assert closed_pnl.quantize(CENT) == Decimal(printed["realized"])
    held = dict(item.split(" x") for item in printed["held"].split(", ")) if printed["held"] != "none" else {}
    assert {s: int(q) for s, q in held.items()} == {p["symbol"]: p["quantity"] for p in positions
                                                    if p["status"] == "open"}
    at_broker = await rows("SELECT symbol, quantity FROM paper_positions WHERE agent_id = $1")
    assert {r["symbol"]: r["quantity"] for r in at_broker} == {s: int(q) for s, q in held.items()}

    # the paper account's cash moved by exactly what our fills say
    account = await pool.fetchrow("SELECT cash, initial_cash FROM paper_accounts WHERE agent_id = $1", agent)
    flow = sum((f["quantity"] * f["price"] * (1 if f["side"] == "sell" else -1) - f["fee"] for f in fills),
               Decimal(0))
    assert account["cash"] == account["initial_cash"] + flow
    assert (Decimal(printed["equity"]) - account["initial_cash"]).quantize(CENT) == Decimal(printed["change"])

    # the newest log lines are this agent's close cycle, and the day logged no errors (seed §7 "recent errors")
    recent = await pool.fetch(SEED_RECENT_LOGS, agent)
    assert len(recent) == 10 and {r["agent_id"] for r in recent} == {agent}
    assert any(r["message"].startswith("close cycle completed") for r in recent), [r["message"] for r in recent]
    assert not await rows("SELECT * FROM agent_logs WHERE level = 'ERROR' AND agent_id = $1 "
                          "ORDER BY timestamp DESC LIMIT 20")
