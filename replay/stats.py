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
from datetime import date, datetime
from decimal import Decimal
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
    # each position's fills summed in one pass over the agent's orders (not two lookups of the fills per position)
    rows = await pool.fetch(
        """WITH f AS (SELECT o.position_id, sum(f.quantity) FILTER (WHERE f.side = 'buy') AS bought,
                             sum(f.price * f.quantity) FILTER (WHERE f.side = 'sell') AS sold_value,
                             sum(f.quantity) FILTER (WHERE f.side = 'sell') AS sold
                      FROM fills f JOIN orders o USING (order_id)
                      WHERE o.agent_id = $1 AND o.position_id IS NOT NULL GROUP BY o.position_id)
           SELECT p.symbol, p.avg_entry_price, p.realized_pnl, p.opened_at, p.closed_at, p.exit_reason, f.bought,
                  f.sold_value / nullif(f.sold, 0) AS exit_price
           FROM positions p LEFT JOIN f ON f.position_id = p.position_id
           WHERE p.agent_id = $1 AND p.status = 'closed' ORDER BY p.closed_at, p.position_id""",
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
