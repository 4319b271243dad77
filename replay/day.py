"""`./run.sh day`: the most recent completed session of the configured market, replayed on a simulated clock.

A one-session replay (replay/runner.py drives the clock): scan before the open -> a trade cycle at each cron time
of the session (the market's cron file, the one `replay` reads) -> close before the bell, with the position
monitor's passes in between, all through the production path (the cycle runner, the tool executor, safety, the
order path, the broker, PostgreSQL). It runs at any hour (nights and weekends included) because the clock is
simulated; it trades under its own agent id (`<agent>-day-<session date>-<run>`) so it never mixes with the live
paper account.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import date, datetime, timedelta

from core.calendar import MarketCalendar
from core.clock import RealClock, SimulatedClock
from core.settings import Settings
from core.logcontext import log_context
from replay.runner import (Build, Drive, drive_day, prepare_history, quote_age_for, replay_monitor, schedule_for,
                           widen_quote_age)

log = logging.getLogger("catalyst.day")

# How often the position monitor checks between cycles in the simulated day (the daemon's poll is finer).
MONITOR_EVERY = timedelta(minutes=5)


def most_recent_session(calendar: MarketCalendar, now: datetime) -> date:
    """The latest trading day whose session has fully ended before `now`."""
    day = now.astimezone(calendar.tz).date()
    while True:
        if calendar.is_trading_day(day):
            bounds = calendar.session_bounds(day)
            if bounds and bounds[-1][1] <= now:
                return day
        day -= timedelta(days=1)


async def run_day(settings: Settings, pool, *, build: Build, session: date | None = None,
                  clock: SimulatedClock | None = None) -> dict:
    """One session. `clock`, if given, is the simulated clock to drive (a test shares it with a fake broker)."""
    calendar = MarketCalendar(settings.config.market.exchange)
    session = session or most_recent_session(calendar, RealClock().now())
    agent_id = f"{settings.agent_id}-day-{session:%Y%m%d}-{uuid.uuid4().hex[:4]}"
    cfg = settings.config.model_copy(update={"agent": settings.config.agent.model_copy(update={"id": agent_id}),
                                             "monitor": replay_monitor(settings.config.monitor)})
    day_settings = replace(settings, config=cfg)
    await prepare_history(build, day_settings, calendar, session, session)
    clock = clock or SimulatedClock(calendar.day_start(calendar.session_bounds(session)[0][0]))
    agent = await build(day_settings, clock)
    age = quote_age_for(agent.universe)
    if age is not None:
        agent.settings = widen_quote_age(agent.settings, age)
    daily_only, schedule = schedule_for(agent, calendar)
    today = schedule(session)
    clock.set(today[0][0] if today else calendar.session_bounds(session)[0][0])
    orders = [0]

    def on_cycle(at: datetime, mode: str, outcome) -> None:
        orders[0] += outcome.orders_placed
        print(f"  {at.astimezone(calendar.tz):%H:%M} {mode:<5} {outcome.status:<13} {outcome.orders_placed} orders  "
              f"{_brief(outcome.summary)}")

    def on_monitor_exits(at: datetime, exits: list) -> None:
        orders[0] += sum(1 for e in exits if e.get("sent"))   # not: the broker's stop had sold it, already exiting
        for e in exits:
            print(f"  {at.astimezone(calendar.tz):%H:%M} monitor exit {e['symbol']} ({e['intent']}): {e['status']}")

    drive = Drive(on_cycle=on_cycle, on_monitor_exits=on_monitor_exits)
    with log_context(agent_id=agent_id):
        try:
            await drive_day(agent, clock, calendar, session, today, agent.monitor(), monitor_every=MONITOR_EVERY,
                            daily_only=daily_only, drive=drive)
        finally:
            await agent.store.settle()           # the audit rows held or sent behind since the last cycle (execution/store.py)
    await agent.orders.sync_open_orders()      # a protective stop may have sold after the day's last pass
    account = await agent.broker.get_account()
    positions = await agent.broker.get_positions()
    fills = await pool.fetchval("SELECT count(*) FROM fills WHERE agent_id = $1", agent_id)
    stops = await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1 AND intent = 'protective_stop' "
                                "AND status <> 'rejected'", agent_id)      # placed by the monitor's passes
    realized = await pool.fetchval("SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1 "
                                   "AND status = 'closed'", agent_id)
    return {"agent_id": agent_id, "session": session.isoformat(), "cycles": drive.cycles,
            "orders": orders[0] + stops, "protective_stops": stops, "fills": fills, "cash": account.cash,
            "equity": account.equity, "initial_cash": settings.config.paper.initial_cash,
            "realized_pnl": realized, "open_positions": {p.symbol: p.quantity for p in positions}}


def _brief(summary: dict) -> str:
    parts = []
    for key in ("candidates", "entries", "exits"):
        if summary.get(key):
            parts.append(f"{key}: {', '.join(map(str, summary[key]))[:60]}")
    if summary.get("stale_quotes"):
        parts.append(f"waiting for fresh quotes: {', '.join(summary['stale_quotes'])}"[:80])
    if summary.get("next_open"):
        parts.append(f"next open {summary['next_open']}")
    return "; ".join(parts)
