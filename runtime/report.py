"""`./run.sh report`: the live account of this agent — positions, P&L, AI spend, recent decisions and errors."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from replay.stats import _fmt


async def live_report(pool, settings, *, now: datetime) -> str:
    """The live (or paper) account of settings.agent_id exactly: never a replay's or a day demo's rows."""
    from zoneinfo import ZoneInfo

    from core.calendar import local_day_start
    from execution.store import REALIZED_SINCE
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
