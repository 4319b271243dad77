"""`./run.sh day`: the most recent completed session of the simulated market, on a simulated clock.

scan before the open -> a trade cycle at each cron time of the session -> close before the bell, all through the
production path (run_cycle, the tool executor, safety, the order path, the paper broker, PostgreSQL). It runs at
any hour (nights and weekends included) because the clock is simulated; it trades under its own agent id
(`<agent>-day-<session date>-<run>`) so it never mixes with the live paper account.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone

from core.clock import RealClock, SimulatedClock
from core.settings import Settings
from runtime.cycle import run_cycle
from db_logger import log_context
from execution.monitor import PositionMonitor

log = logging.getLogger("catalyst.day")

# How often the position monitor checks between cycles in the simulated day (the daemon's poll is finer).
MONITOR_EVERY = timedelta(minutes=5)

# Local exchange times of the cycles (config/cron.d runs the same schedule in UTC for HKEX).
HKEX_SCHEDULE = [("scan", time(9, 0))] + [("trade", t) for t in (
    time(9, 30), time(10, 0), time(10, 30), time(11, 0), time(11, 30), time(13, 0), time(13, 30), time(14, 0),
    time(14, 30), time(15, 0), time(15, 30))] + [("close", time(15, 55))]
US_SCHEDULE = [("scan", time(9, 0))] + [("trade", time(h, m)) for h in range(9, 16) for m in (0, 30)
                                         if (h, m) >= (9, 30)] + [("close", time(15, 55))]


def most_recent_session(calendar, now: datetime) -> date:
    """The latest trading day whose session has fully ended before `now`."""
    day = now.astimezone(calendar.tz).date()
    while True:
        if calendar.is_trading_day(day):
            bounds = calendar.session_bounds(day)
            if bounds and bounds[-1][1] <= now:
                return day
        day -= timedelta(days=1)


async def run_day(settings: Settings, pool, *, session: date | None = None,
                  clock: SimulatedClock | None = None) -> dict:
    """One session. `clock`, if given, is the simulated clock to drive (a test shares it with a fake broker)."""
    from core.calendar import MarketCalendar
    from runtime.wiring import build_services

    calendar = MarketCalendar(settings.config.market.exchange)
    session = session or most_recent_session(calendar, RealClock().now())
    schedule = HKEX_SCHEDULE if settings.config.market.exchange == "HKEX" else US_SCHEDULE
    agent_id = f"{settings.agent_id}-day-{session:%Y%m%d}-{uuid.uuid4().hex[:4]}"
    cfg = settings.config.model_copy(update={"agent": settings.config.agent.model_copy(update={"id": agent_id})})
    day_settings = replace(settings, config=cfg)
    first = datetime.combine(session, schedule[0][1], tzinfo=calendar.tz).astimezone(timezone.utc)
    if clock is None:
        clock = SimulatedClock(first)
    else:
        clock.set(first)
    services = await build_services(day_settings, pool, clock)
    outcomes = []
    monitor = PositionMonitor(services)
    monitor_exits = 0
    with log_context(agent_id=agent_id):
        for mode, at in schedule:
            due = datetime.combine(session, at, tzinfo=calendar.tz).astimezone(timezone.utc)
            # the position monitor's checks between cycles, as the daemon would make them
            while clock.now() + MONITOR_EVERY < due:
                clock.advance(MONITOR_EVERY)
                if calendar.is_open(clock.now()):
                    result = await monitor.run_pass()
                    monitor_exits += len(result.exits)
                    for e in result.exits:
                        print(f"  {clock.now().astimezone(calendar.tz):%H:%M} monitor exit {e['symbol']} "
                              f"({e['intent']}): {e['status']}")
            clock.set(due)
            outcome = await run_cycle(services, mode)
            outcomes.append(outcome)
            print(f"  {at:%H:%M} {mode:<5} {outcome.status:<13} {outcome.orders_placed} orders  "
                  f"{_brief(outcome.summary)}")
    account = await services.broker.get_account()
    positions = await services.broker.get_positions()
    fills = await pool.fetchval("SELECT count(*) FROM fills WHERE agent_id = $1", agent_id)
    realized = await pool.fetchval("SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1 "
                                   "AND status = 'closed'", agent_id)
    return {"agent_id": agent_id, "session": session.isoformat(), "cycles": len(outcomes),
            "orders": sum(o.orders_placed for o in outcomes) + monitor_exits, "fills": fills, "cash": account.cash,
            "equity": account.equity, "initial_cash": settings.config.paper.initial_cash,
            "realized_pnl": realized, "open_positions": {p.symbol: p.quantity for p in positions}}


def _brief(summary: dict) -> str:
    parts = []
    for key in ("candidates", "entries", "exits"):
        if summary.get(key):
            parts.append(f"{key}: {', '.join(map(str, summary[key]))[:60]}")
    if summary.get("next_open"):
        parts.append(f"next open {summary['next_open']}")
    return "; ".join(parts)
