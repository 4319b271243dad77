"""Reports: metrics of a replay (or any agent id) as a terminal table and an equity-curve PNG; the live account.

Metrics (compute_metrics), from the day-end equity curve and the closed positions:
  net_pnl          end equity - start equity (fees are paid from cash, so this is net of every fee)
  return_pct       net_pnl / start equity
  max_drawdown_pct the largest fall from a running peak of equity, as a fraction of that peak
  max_drawdown_days the longest run of days spent below a previous peak
  sharpe           mean / sample std of daily equity returns x sqrt(252); n/a with < 2 returns or no variation
  trades, wins, losses, win_rate   closed positions; a win has realized_pnl (net of fees) > 0
  avg_win, avg_loss, profit_factor sum of wins / |sum of losses| (n/a without losses)
  exposure_pct     mean over days of invested / equity
  stops, take_profits closed positions whose exit reason is stop_loss or trailing_stop / take_profit
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class EquityPoint:
    day: date
    equity: Decimal
    cash: Decimal
    invested: Decimal


@dataclass(frozen=True)
class Trade:
    symbol: str
    quantity: int
    entry_price: Decimal
    exit_price: Decimal | None
    pnl: Decimal
    opened_at: datetime
    closed_at: datetime | None
    exit_reason: str | None


@dataclass(frozen=True)
class Metrics:
    start_equity: Decimal
    end_equity: Decimal
    net_pnl: Decimal
    return_pct: float
    max_drawdown_pct: float
    max_drawdown_days: int
    sharpe: float | None
    trades: int
    wins: int
    losses: int
    win_rate: float | None
    avg_win: Decimal | None
    avg_loss: Decimal | None
    profit_factor: float | None
    exposure_pct: float
    fees_paid: Decimal
    ai_cost_usd: Decimal
    ai_calls: int
    stops: int
    take_profits: int


def compute_metrics(curve: Sequence[EquityPoint], trades: Sequence[Trade], *, fees_paid: Decimal,
                    ai_cost_usd: Decimal, ai_calls: int) -> Metrics:
    if not curve:
        raise ValueError("an equity curve needs at least one point")
    equity = [float(p.equity) for p in curve]
    peak, mdd, under, longest = equity[0], 0.0, 0, 0
    for e in equity:
        if e >= peak:
            peak, under = e, 0
        else:
            under += 1
            longest = max(longest, under)
            mdd = max(mdd, (peak - e) / peak)
    returns = [b / a - 1 for a, b in zip(equity, equity[1:]) if a]
    sharpe = None
    if len(returns) >= 2 and statistics.stdev(returns) > 0:
        sharpe = statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(252)
    wins = [t.pnl for t in trades if t.pnl > 0]
    losses = [t.pnl for t in trades if t.pnl <= 0]
    start, end = curve[0].equity, curve[-1].equity
    return Metrics(
        start_equity=start, end_equity=end, net_pnl=end - start, return_pct=float((end - start) / start),
        max_drawdown_pct=mdd, max_drawdown_days=longest, sharpe=sharpe, trades=len(trades), wins=len(wins),
        losses=len(losses), win_rate=len(wins) / len(trades) if trades else None,
        avg_win=sum(wins) / len(wins) if wins else None, avg_loss=sum(losses) / len(losses) if losses else None,
        profit_factor=float(sum(wins) / -sum(losses)) if losses and sum(losses) < 0 else None,
        exposure_pct=statistics.mean(float(p.invested / p.equity) if p.equity else 0.0 for p in curve),
        fees_paid=fees_paid, ai_cost_usd=ai_cost_usd, ai_calls=ai_calls,
        stops=sum(1 for t in trades if t.exit_reason in ("stop_loss", "trailing_stop")),
        take_profits=sum(1 for t in trades if t.exit_reason == "take_profit"))


async def load_trades(pool, agent_id: str) -> list[Trade]:
    rows = await pool.fetch(
        """SELECT p.symbol, p.avg_entry_price, p.realized_pnl, p.opened_at, p.closed_at, p.exit_reason,
                  (SELECT sum(f.quantity) FROM fills f JOIN orders o USING (order_id)
                    WHERE o.position_id = p.position_id AND f.side = 'buy') AS bought,
                  (SELECT sum(f.price * f.quantity) / nullif(sum(f.quantity), 0) FROM fills f JOIN orders o
                    USING (order_id) WHERE o.position_id = p.position_id AND f.side = 'sell') AS exit_price
           FROM positions p WHERE p.agent_id = $1 AND p.status = 'closed' ORDER BY p.closed_at, p.position_id""",
        agent_id)
    return [Trade(r["symbol"], int(r["bought"] or 0), r["avg_entry_price"], r["exit_price"], r["realized_pnl"],
                  r["opened_at"], r["closed_at"], r["exit_reason"]) for r in rows]


async def load_costs(pool, agent_id: str) -> tuple[Decimal, Decimal, int]:
    fees = await pool.fetchval("SELECT coalesce(sum(fee), 0) FROM fills WHERE agent_id = $1", agent_id)
    booked = await pool.fetchval("SELECT coalesce(sum(fees_booked), 0) FROM orders WHERE agent_id = $1", agent_id)
    ai = await pool.fetchrow("SELECT coalesce(sum(cost_usd), 0) AS usd, count(*) AS n FROM ai_usage "
                             "WHERE agent_id = $1 AND status = 'settled'", agent_id)
    return fees + booked, ai["usd"], ai["n"]


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "money":
        return f"{Decimal(value):,.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(m: Metrics, *, title: str) -> str:
    rows = [("start equity", _fmt(m.start_equity, "money")), ("end equity", _fmt(m.end_equity, "money")),
            ("net P&L (after fees)", _fmt(m.net_pnl, "money")), ("return", _fmt(m.return_pct, "pct")),
            ("max drawdown", _fmt(m.max_drawdown_pct, "pct")), ("longest drawdown", f"{m.max_drawdown_days} days"),
            ("Sharpe (annualised)", _fmt(m.sharpe)), ("closed trades", str(m.trades)),
            ("wins / losses", f"{m.wins} / {m.losses}"), ("win rate", _fmt(m.win_rate, "pct")),
            ("average win", _fmt(m.avg_win, "money")), ("average loss", _fmt(m.avg_loss, "money")),
            ("profit factor", _fmt(m.profit_factor)), ("stops / take-profits", f"{m.stops} / {m.take_profits}"),
            ("exposure", _fmt(m.exposure_pct, "pct")), ("fees paid", _fmt(m.fees_paid, "money")),
            ("AI cost (USD)", f"{m.ai_cost_usd:.4f} in {m.ai_calls} calls")]
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * (value_width + 2) + "+"
    body = [f"| {k:<{width}} | {v:>{value_width}} |" for k, v in rows]
    return "\n".join([title, line, *body, line])


def plot_equity(curve: Sequence[EquityPoint], path: Path, *, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [p.day for p in curve]
    equity = [float(p.equity) for p in curve]
    peak, drawdown = equity[0], []
    for e in equity:
        peak = max(peak, e)
        drawdown.append((e / peak - 1) * 100 if peak else 0.0)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), dpi=100,
                                      gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot(days, equity, color="tab:blue", linewidth=1.5, marker="o" if len(days) < 40 else None,
                 markersize=3)
        top.set_title(title, fontsize=10)
        top.set_ylabel("equity")
        top.grid(alpha=0.3)
        bottom.fill_between(days, drawdown, 0, color="tab:red", alpha=0.4)
        bottom.set_ylabel("drawdown %")
        bottom.grid(alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


async def live_report(pool, settings, *, now: datetime) -> str:
    """The live (or paper) account of settings.agent_id exactly: never a replay's or a day demo's rows."""
    from zoneinfo import ZoneInfo

    from portfolio import REALIZED_SINCE, local_day_start
    agent = settings.agent_id
    tz = ZoneInfo(settings.config.market.timezone)
    day_start = local_day_start(tz, now)
    utc_midnight = local_day_start(timezone.utc, now)
    out = [f"Catalyst report — agent {agent} — {now.astimezone(tz):%Y-%m-%d %H:%M} {settings.config.market.timezone}"]
    state = await pool.fetchrow("SELECT state, reason FROM agent_state WHERE agent_id = $1 "
                                "ORDER BY set_at DESC, state_id DESC LIMIT 1", agent)
    out.append(f"trading state: {state['state'] + ' (' + state['reason'] + ')' if state else 'ACTIVE'}")
    positions = await pool.fetch(
        """SELECT p.symbol, p.quantity, p.avg_entry_price, p.stop_loss, m.last_price, m.unrealized_pnl
           FROM positions p LEFT JOIN position_monitor_status m USING (position_id)
           WHERE p.agent_id = $1 AND p.status = 'open' ORDER BY p.opened_at""", agent)
    out.append(f"\nopen positions: {len(positions)}")
    for r in positions:
        out.append(f"  {r['symbol']:<10} {r['quantity']:>8} @ {r['avg_entry_price']:<10} stop {r['stop_loss']}  "
                   f"last {r['last_price'] if r['last_price'] is not None else 'n/a'}  "
                   f"P&L {_fmt(r['unrealized_pnl'], 'money')}")
    today = await pool.fetchval(REALIZED_SINCE, agent, day_start)
    total = await pool.fetchval("SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1", agent)
    marked = [r["unrealized_pnl"] for r in positions if r["unrealized_pnl"] is not None]
    unrealized = _fmt(sum(marked, Decimal(0)), "money") if marked else "n/a"
    out.append(f"\nP&L (net of fees): today {_fmt(today, 'money')} realised + {unrealized} unrealised at the "
               f"monitor's last check; total realised {_fmt(total, 'money')}")
    spend = {r["purpose"]: r["usd"] for r in await pool.fetch(
        "SELECT purpose, sum(cost_usd) AS usd FROM ai_usage WHERE agent_id = $1 AND created_at >= $2 "
        "AND status = 'settled' GROUP BY purpose", agent, utc_midnight)}
    ai = settings.config.ai
    out.append(f"AI spend today (UTC): trade {spend.get('trade', Decimal(0)):.4f} of {ai.daily_budget_usd} USD, "
               f"monitor {spend.get('monitor', Decimal(0)):.4f} of {ai.monitor_daily_budget_usd} USD")
    out.append("\nrecent decisions:")
    for r in await pool.fetch("SELECT created_at, engine, action, symbol, reasoning FROM decisions WHERE "
                              "agent_id = $1 AND action <> 'model_turn' ORDER BY created_at DESC, decision_id DESC "
                              "LIMIT 10", agent):
        out.append(f"  {r['created_at'].astimezone(tz):%m-%d %H:%M} {r['engine'] or '':<9} {r['action']:<16} "
                   f"{r['symbol'] or '':<8} {r['reasoning'][:80]}")
    out.append("\nrecent errors:")
    errors = await pool.fetch("SELECT timestamp, message FROM agent_logs WHERE agent_id = $1 AND level = 'ERROR' "
                              "ORDER BY timestamp DESC LIMIT 10", agent)
    out += [f"  {r['timestamp'].astimezone(tz):%m-%d %H:%M} {r['message'][:100]}" for r in errors] or ["  none"]
    return "\n".join(out)
