"""report.py: metrics by hand, a PNG that opens, and a live report that never shows replay or demo rows."""
from __future__ import annotations

import math
from datetime import date, datetime, timezone
from decimal import Decimal as D

from replay.stats import EquityPoint, Trade, compute_metrics, render_table
from runtime.report import live_report
from replay.plot import plot_equity
from tests.agent_fixtures import agent_settings

T = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def curve(*values):
    return [EquityPoint(date(2026, 11, i + 1), D(v), D(v) / 2, D(v) / 2) for i, v in enumerate(values)]


def trade(pnl, reason="exit"):
    return Trade("S1", 100, D(10), D(11), D(pnl), T, T, reason)


def test_metrics_match_a_hand_computation():
    c = curve(100, 110, 99, 121)
    m = compute_metrics(c, [trade(30), trade(-10, "stop_loss"), trade(5, "take_profit")], fees_paid=D(3),
                        ai_cost_usd=D("0.5"), ai_calls=4)
    assert m.net_pnl == D(21) and abs(m.return_pct - 0.21) < 1e-12
    assert abs(m.max_drawdown_pct - 0.1) < 1e-12 and m.max_drawdown_days == 1
    r = [0.1, 99 / 110 - 1, 121 / 99 - 1]
    mean = sum(r) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    assert abs(m.sharpe - mean / std * math.sqrt(252)) < 1e-9
    assert (m.trades, m.wins, m.losses) == (3, 2, 1) and abs(m.win_rate - 2 / 3) < 1e-12
    assert m.profit_factor == 3.5 and m.avg_loss == D(-10) and (m.stops, m.take_profits) == (1, 1)
    assert abs(m.exposure_pct - 0.5) < 1e-12
    table = render_table(m, title="t")
    assert "max drawdown" in table and "10.00%" in table and "21.00" in table


def test_one_point_and_no_trades_give_n_a_not_errors():
    m = compute_metrics(curve(100), [], fees_paid=D(0), ai_cost_usd=D(0), ai_calls=0)
    assert m.sharpe is None and m.win_rate is None and m.profit_factor is None and m.max_drawdown_pct == 0
    assert "n/a" in render_table(m, title="t")


def test_the_equity_png_opens(tmp_path):
    import matplotlib.image
    path = plot_equity(curve(100, 104, 101, 108, 107), tmp_path / "eq.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[:2] == (600, 1000)


async def test_the_live_report_shows_only_the_live_agent(pool, agent_id):
    for who, symbol in ((agent_id, "LIVE1"), (f"{agent_id}-replay-abc", "REPLAY1"), (f"{agent_id}-day-x", "DAY1")):
        await pool.execute("INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, opened_at) "
                           "VALUES ($1, $2, 100, 10, $3)", who, symbol, T)
        await pool.execute("INSERT INTO decisions (agent_id, symbol, action, engine, reasoning) "
                           "VALUES ($1, $2, 'buy', 'rules', 'why')", who, symbol)
    text = await live_report(pool, agent_settings(agent_id), now=T)
    assert "LIVE1" in text and "REPLAY1" not in text and "DAY1" not in text
    assert "open positions: 1" in text and "AI spend today" in text and "trading state: ACTIVE" in text


async def test_the_live_reports_pnl_counts_today_as_the_safety_gate_does(pool, agent_id):
    """Today = the exchange's local day (10:00 Hong Kong here): closed today plus the entry fees of a position
    opened today; yesterday's close counts only in the total; the open position's mark comes from the monitor."""
    from datetime import timedelta
    yesterday = T - timedelta(days=1)
    rows = [("OPEN1", "open", T, None, D("-5")), ("WIN1", "closed", yesterday, T, D("100")),
            ("OLD1", "closed", yesterday - timedelta(days=1), yesterday, D("50"))]
    for symbol, status, opened, closed, pnl in rows:
        pid = await pool.fetchval(
            "INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, opened_at, status, closed_at, "
            "realized_pnl) VALUES ($1, $2, $3, 10, $4, $5, $6, $7) RETURNING position_id",
            agent_id, symbol, 100 if status == "open" else 0, opened, status, closed, pnl)
        if status == "open":
            await pool.execute("INSERT INTO position_monitor_status (position_id, agent_id, symbol, last_price, "
                               "unrealized_pnl) VALUES ($1, $2, $3, 10.2, 20)", pid, agent_id, symbol)
    text = await live_report(pool, agent_settings(agent_id), now=T)
    assert "today 95.00 realised + 20.00 unrealised" in text, text
    assert "total realised 145.00" in text
