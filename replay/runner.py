"""Replay: the same agent over history, through the production code path, on a simulated clock.

`./run.sh replay --start YYYY-MM-DD --end YYYY-MM-DD [--data DIR] [--engine rules|claude]`

The clock walks every trading day of the exchange calendar in [start, end]. On each day it runs the scan, trade
and close cycles at the times `config/cron.d` gives them (its UTC minute and hour fields, weekdays from its
day-of-week field), and the position monitor's pass every `--monitor-every` minutes (default 5) while the market
is open in between: `run_cycle`, the tool executor, the safety gate, the order path, the paper broker and
PostgreSQL — nothing replay-specific decides anything. Market data is the simulated market, or the bar files in
DIR (`market_data.source: files`), which answer only what has completed by the clock's now (data/source.py), so
no decision can see a later bar.

Every row is written under the agent id `<agent>-replay-<run id>`, never the live agent's: live queries, the live
report and reconciliation all select by the live agent id, so replay rows never mix with them.

With bar files that hold daily bars only, the cron schedule means nothing (nothing happens between a bar's open
and its close), so each day runs at the bar's open (scan, a monitor pass, a trade cycle) and in the session's
last minute (a monitor pass, the close cycle). Orders fill at the two prints such a file offers, the day's open
and its close (data/bar_files.py): a decision at the open is made on yesterday's bar and fills at today's open;
one at the close is made knowing today's open and fills at today's close. `--monitor-every` does not apply,
and the fresh-quote limit (`trading.max_quote_age_seconds`) is widened to DAILY_QUOTE_AGE (intraday files: two of their
bars, see quote_age_for): a daily price is
always up to a session (or a long weekend) old.
"""
from __future__ import annotations

import asyncio
import sys
import time as _time
import uuid
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.environment import Environment
from core.settings import Settings
from replay.plot import Plotter
from replay.prefetch import Prefetch, dsn_of, worth_starting
from replay.schedule import day_schedule, read_schedule
from replay.stats import EquityPoint, Metrics, compute_metrics, load_costs, load_trades, render_table


class Session(Protocol):
    """One wired agent on a simulated clock (runtime/wiring.py builds it): what replay drives."""
    settings: Settings
    broker: Any
    universe: Any

    sync: Any
    store: Any

    async def run_cycle(self, mode: str) -> Any: ...

    def monitor(self) -> Any: ...


async def prepare_history(build: "Build", settings: Settings, calendar: MarketCalendar, start: date, end: date) -> None:
    """Bring the bar store's history up to `end` before the clock starts: a session wired on a clock just after
    `end` asks the venue (the simulated market or bar files) once, rather than each simulated day asking for one
    more bar. Reads stay point in time: nothing is visible before its bar has completed on the replay's clock."""
    after = calendar.session_bounds(end)[-1][1] + timedelta(minutes=1)
    prep = await build(settings, SimulatedClock(after))
    lookback = settings.config.scan.lookback_days
    since = start - timedelta(days=max(settings.config.market_data.history_days, lookback * 7 // 5 + 30))
    try:
        summary = await prep.sync.run(since=since)
    finally:
        await prep.broker.disconnect()
    if summary.status != "done":
        raise RuntimeError(summary.render())


# Builds a Session for these settings on this clock (the broker connected).
Build = Callable[[Settings, SimulatedClock], Awaitable[Session]]


# With daily bars the latest price is the previous print: at the open, yesterday's close (a long weekend or a
# holiday old). The fresh-quote rule, there to stop live trading on a stalled feed, would refuse every entry.
DAILY_QUOTE_AGE = timedelta(days=10)


def widen_quote_age(settings: Settings, age: timedelta) -> Settings:
    """The fresh-quote limit widened to what the data's resolution allows (never narrowed)."""
    cfg = settings.config
    seconds = max(int(age.total_seconds()), cfg.trading.max_quote_age_seconds)
    trading = cfg.trading.model_copy(update={"max_quote_age_seconds": seconds})
    return replace(settings, config=cfg.model_copy(update={"trading": trading}))


def quote_age_for(universe) -> timedelta | None:
    """How old a price may be on this data: a daily file's up to a long weekend; an intraday file's two of its bars
    (the last completed bar closed up to one bar ago, and a quote is its close)."""
    if getattr(universe, "daily_only", False):
        return DAILY_QUOTE_AGE
    minutes = getattr(universe, "coarsest_minutes", None)
    return timedelta(minutes=2 * minutes) if minutes else None


def daily_bar_schedule(calendar, day: date) -> list[tuple[datetime, str]]:
    """With daily bars only: at the bar's open the scan, a monitor pass and a trade cycle (deciding on yesterday's
    bar, filling at the opening print); in the session's last minute a monitor pass and the close cycle
    (deciding on the day's open, filling at the closing print). See data/bar_files.py for the two prints."""
    bounds = calendar.session_bounds(day)
    if not bounds:
        return []
    opens, closes = bounds[0][0], bounds[-1][1] - timedelta(minutes=1)
    return [(opens, "scan"), (opens, "monitor"), (opens, "trade"), (closes, "monitor"), (closes, "close")]


# ---------------------------------------------------------------- the run

@dataclass
class ReplayResult:
    run_id: str
    agent_id: str
    days: int
    cycles: int
    monitor_passes: int
    curve: list[EquityPoint]
    metrics: Metrics
    table: str
    png: Path
    wall_seconds: float
    orders_sent: int = 0
    orders_failed: int = 0
    prefetched: int = 0            # daily analytics taken from the prefetch process instead of worked out here

    @property
    def failed(self) -> str | None:
        """Why this replay is not a success, or None: every order it tried failed (a broken data path, not a
        strategy that chose not to trade)."""
        if self.orders_sent and self.orders_failed == self.orders_sent:
            return (f"every one of the {self.orders_sent} orders this replay sent failed (rejected or never "
                    f"sent); see `SELECT status, reason FROM orders WHERE agent_id = '{self.agent_id}'`")
        return None


def replay_monitor(monitor):
    """The monitor of a replayed agent: protective stops at the broker only with monitor.broker_stops_in_replay."""
    return monitor.model_copy(update={"broker_stops": monitor.broker_stops and monitor.broker_stops_in_replay})


def replay_settings(settings: Settings, *, run_id: str, engine: str, data: Path | None) -> Settings:
    cfg = settings.config
    cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"id": f"{cfg.agent.id}-replay-{run_id}"}),
                                 "broker": "paper", "monitor": replay_monitor(cfg.monitor)})
    if data is not None:
        cfg = cfg.model_copy(update={"market_data": cfg.market_data.model_copy(
            update={"source": "files", "directory": str(data)})})
    values = dict(settings.env.values)
    values.pop("AGENT_ID", None)
    if engine == "rules":
        values.pop("ANTHROPIC_API_KEY", None)
    elif not values.get("ANTHROPIC_API_KEY"):
        raise ReplayRefused("--engine claude needs ANTHROPIC_API_KEY")
    return replace(settings, config=cfg, env=Environment(values=values, env_file=settings.env.env_file))


class ReplayRefused(ValueError):
    """The replay cannot run as asked (dates outside every calendar, no trading days, no engine key)."""


# ---------------------------------------------------------------- the clock driver, shared by replay and day

@dataclass
class Drive:
    """What happened while the clock walked: counts, and hooks a caller may set to watch it."""
    cycles: int = 0
    monitor_passes: int = 0
    on_cycle: Callable[[datetime, str, Any], None] | None = None
    on_monitor_exits: Callable[[datetime, list], None] | None = None


async def drive_day(session: Session, clock: SimulatedClock, calendar: MarketCalendar, day: date,
                    schedule: list[tuple[datetime, str]], monitor, *, monitor_every: timedelta, daily_only: bool,
                    drive: Drive) -> None:
    """One trading day: each scheduled cycle at its time, the position monitor's passes in between (every
    `monitor_every` while the market is open, as the daemon makes them), until the session's close."""

    async def monitor_pass() -> None:
        result = await monitor.run_pass()
        drive.monitor_passes += 1
        if result.exits and drive.on_monitor_exits:
            drive.on_monitor_exits(clock.now(), result.exits)

    # The day's continuous trading intervals: the clock only walks from the previous trading day's close to this
    # day's, so "open" and "the next open" are read from these (calendar.state's answers, without asking it at
    # every step).
    intervals = calendar.session_bounds(day)

    def is_open(t: datetime) -> bool:
        return any(o <= t < c for o, c in intervals)

    async def monitor_until(when: datetime) -> None:
        """The daemon's passes before `when`: every monitor_every while the market is open; while it is closed
        (lunch, nights, weekends) the daemon sleeps until the next open, and so does the clock here."""
        while clock.now() + monitor_every <= when:
            now = clock.now()
            if not is_open(now):
                next_open = next((o for o, _ in intervals if o > now), None)     # None: tomorrow, after `when`
                if next_open is None or next_open > now + monitor_every:
                    if next_open is None or next_open > when:
                        return
                    clock.set(next_open)
                    continue
            clock.advance(monitor_every)
            if is_open(clock.now()):
                await monitor_pass()

    for at, mode in schedule:
        if not daily_only:
            await monitor_until(at)
        if at > clock.now():
            clock.set(at)
        if mode == "monitor":
            await monitor_pass()
            continue
        outcome = await session.run_cycle(mode)
        drive.cycles += 1
        if drive.on_cycle:
            drive.on_cycle(at, mode, outcome)
    close = calendar.session_bounds(day)[-1][1]
    if not daily_only:
        await monitor_until(close)
    clock.set(max(clock.now(), close + timedelta(minutes=1)))


def schedule_for(session: Session, calendar: MarketCalendar, cron_text: str | None = None
                 ) -> tuple[bool, Callable[[date], list[tuple[datetime, str]]]]:
    """(daily_only, day -> schedule): the cron schedule of the configured market, or with daily bars only the
    bar's open and the session's last minute."""
    daily_only = bool(getattr(session.universe, "daily_only", False))
    if daily_only:
        return True, lambda day: daily_bar_schedule(calendar, day)
    entries = read_schedule(session.settings.config.market.exchange, cron_text)
    return False, lambda day: day_schedule(entries, day)


# ---------------------------------------------------------------- replay

async def run_replay(settings: Settings, pool, *, build: Build, start: date, end: date, engine: str = "rules",
                     data: Path | None = None, monitor_every: timedelta = timedelta(minutes=5),
                     out_dir: Path | None = None, progress: bool = True, run_id: str | None = None,
                     cron_text: str | None = None, prefetch: bool | None = None) -> ReplayResult:
    from core.logcontext import log_context

    t0 = _time.perf_counter()
    run_id = run_id or uuid.uuid4().hex[:8]
    rs = replay_settings(settings, run_id=run_id, engine=engine, data=data)
    calendar = MarketCalendar(rs.config.market.exchange)
    if start < calendar.first_day or end > calendar.last_day:
        raise ReplayRefused(f"{start}..{end} reaches outside the {calendar.code} calendar "
                            f"({calendar.first_day}..{calendar.last_day}); choose dates inside it")
    days = calendar.trading_days(start, end)
    if not days:
        raise ReplayRefused(f"no trading days on {calendar.code} between {start} and {end}")
    plotter = await Plotter.start()                   # matplotlib loads in its own process meanwhile
    if prefetch is None:                              # (None: when it pays for itself; True: always)
        prefetch = worth_starting(len(days))
    ahead = await Prefetch.start() if prefetch else None      # so does the process working out daily analytics
    drawing: asyncio.Task | None = None
    try:
        with log_context(agent_id=rs.agent_id):          # agent_logs rows go under the replay's agent id
            await prepare_history(build, rs, calendar, days[0], days[-1])
            clock = SimulatedClock(datetime.combine(days[0], time(0), tzinfo=timezone.utc) - timedelta(hours=12))
            session = await build(rs, clock)
            daily_only, schedule = schedule_for(session, calendar, cron_text)
            age = quote_age_for(session.universe)
            if age is not None:
                session.settings = widen_quote_age(session.settings, age)
            first_day = schedule(days[0])
            first = first_day[0][0] if first_day else calendar.session_bounds(days[0])[0][0]
            clock.set(first - timedelta(minutes=1))
            monitor = session.monitor()
            # before the first cycle: the starting point
            opening, held = await session.broker.get_account_and_positions()
            if ahead is not None:
                _begin_prefetch(ahead, pool, session, calendar, days)
                await ahead.first_day()
            curve: list[EquityPoint] = [EquityPoint(day=days[0] - timedelta(days=1), equity=opening.equity,
                                                    cash=opening.cash, invested=opening.equity - opening.cash)]
            drive = Drive()
            try:
                for n, day in enumerate(days, 1):
                    if ahead is not None:
                        ahead.feed(n - 1, day, [p.symbol for p in held])
                    await drive_day(session, clock, calendar, day, schedule(day), monitor, monitor_every=monitor_every,
                                    daily_only=daily_only, drive=drive)
                    account, held = await session.broker.get_account_and_positions()
                    curve.append(EquityPoint(day=day, equity=account.equity, cash=account.cash,
                                             invested=account.equity - account.cash))
                    if progress:
                        _progress(n, len(days), day, account.equity, t0)
                # the curve is whole: drawn by the plotting process while the rest of the report is made here
                title = (f"Replay {start} .. {end} ({len(days)} days, {engine} engine"
                         f"{', daily bars: cycles at open and close' if daily_only else ''}) — agent id {rs.agent_id}")
                out_dir = out_dir or rs.var_dir / "replays"
                out_dir.mkdir(parents=True, exist_ok=True)
                drawing = asyncio.ensure_future(plotter.draw({"equity": curve}, out_dir / f"{rs.agent_id}.png",
                                                             title=title))
            finally:
                await session.store.settle()     # audit rows held or sent behind since the last cycle (store.py)
        if progress and sys.stderr.isatty():
            print(file=sys.stderr)
        trades = await load_trades(pool, rs.agent_id)
        fees, ai_cost, ai_calls = await load_costs(pool, rs.agent_id)
        metrics = compute_metrics(curve, trades, fees_paid=fees, ai_cost_usd=ai_cost, ai_calls=ai_calls)
        png = await drawing
        sent = await pool.fetchrow("SELECT count(*) AS n, count(*) FILTER (WHERE status IN ('rejected', "
                                   "'pending_submit')) AS failed FROM orders WHERE agent_id = $1", rs.agent_id)
        return ReplayResult(run_id, rs.agent_id, len(days), drive.cycles, drive.monitor_passes, curve, metrics,
                            render_table(metrics, title=title), png, _time.perf_counter() - t0, sent["n"],
                            sent["failed"], ahead.served if ahead is not None else 0)
    finally:
        if drawing is not None and not drawing.done():     # the report failed before the PNG was taken
            drawing.cancel()
            await asyncio.gather(drawing, return_exceptions=True)
        await plotter.close()               # (asked to draw, it has ended already)
        if ahead is not None:
            await ahead.close()


def _begin_prefetch(ahead: Prefetch, pool, session, calendar: MarketCalendar, days: list[date]) -> None:
    """Send the prefetch process its request, when the session has the parts it serves and the pool a DSN."""
    dsn = dsn_of(pool)
    parts = [getattr(session, name, None) for name in ("market", "scanner", "bar_store")]
    if dsn is None or None in parts:
        return
    market, scanner, store = parts
    ahead.begin(dsn=dsn, settings=session.settings, days=days, calendar=calendar, market=market, scanner=scanner,
                store=store, universe=getattr(session, "universe", None))


def _progress(n: int, total: int, day: date, equity, t0: float) -> None:
    """One line redrawn in place on a terminal; to a file or pipe, a plain line every tenth of the run."""
    width = 30
    done = int(width * n / total)
    elapsed = _time.perf_counter() - t0
    eta = elapsed / n * (total - n)
    line = (f"[{'#' * done}{'.' * (width - done)}] {n}/{total} days  {day}  equity {equity:,.2f}  "
            f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left")
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + " ")
    elif n == total or n % max(total // 10, 1) == 0:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
