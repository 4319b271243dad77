"""`--mode heartbeat`: is this agent able to trade? Config, database + schema, broker, the bar store's freshness.

Writes a `service_health` row and an agent_logs line, prints a short summary, and returns an exit code:
0 healthy, 3 database problem, 4 broker problem, 6 market data missing the last session (a live broker's store).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from core.settings import Settings

log = logging.getLogger("catalyst.heartbeat")

EXIT_OK = 0
EXIT_DATABASE = 3
EXIT_BROKER = 4
EXIT_DATA = 6
EXIT_UNWATCHED = 8


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False


@dataclass
class HealthReport:
    agent_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        for c in self.checks:
            if not c.ok:
                return {"database": EXIT_DATABASE, "broker": EXIT_BROKER, "market data": EXIT_DATA,
                        "monitor": EXIT_UNWATCHED}.get(c.name, 1)        # the first failing check, in order
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {c.name: {"ok": c.ok, "detail": c.detail, **({"skipped": True} if c.skipped else {})}
                for c in self.checks}

    def render(self) -> str:
        head = f"Catalyst heartbeat — agent {self.agent_id}: {'HEALTHY' if self.healthy else 'UNHEALTHY'}"
        rows = [f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<9} {c.detail}" for c in self.checks]
        return "\n".join([head, *rows])


BrokerCheck = Callable[[], Awaitable[str]]


async def store_check(settings: Settings, pool, now) -> Check:
    """The bar store's newest bar per timeframe; a live broker's store missing the last completed session fails
    (the scan would refuse to run), a paper one only says so (its scan brings it up to date itself)."""
    from core.calendar import MarketCalendar
    from data.store import BarStore
    from data.sync import last_completed_session
    from runtime.wiring import dataset_of

    calendar = MarketCalendar(settings.config.market.exchange)
    store = BarStore(pool, dataset=dataset_of(settings), exchange=settings.config.market.exchange, calendar=calendar)
    fresh = await store.freshness()
    target = last_completed_session(calendar, now)
    live = settings.config.broker != "paper"
    shown = ", ".join(f"{tf} to {last.astimezone(calendar.tz):%Y-%m-%d}" for tf, last in sorted(fresh.items()))
    daily = fresh.get("1d")
    if target is not None and (daily is None or daily < calendar.session_bounds(target)[-1][1]):
        why = (f"{store.dataset}: {'empty' if not fresh else shown}; missing the session of {target} — "
               f"run ./run.sh data sync")
        return Check("market data", not live, why if live else why + " (the paper scan syncs it itself)")
    return Check("market data", True, f"{store.dataset}: {shown}")


async def monitor_check(settings: Settings, pool, now) -> Check:
    """Nobody trades unwatched: during a session with open positions the monitor daemon's last beat must be
    younger than monitor.beat_limit_seconds."""
    from core.calendar import MarketCalendar
    limit = settings.config.monitor.beat_limit_seconds
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM positions WHERE agent_id = $1 AND status = 'open') AS open, "
        "(SELECT max(checked_at) FROM service_health WHERE agent_id = $1 AND service = 'position_monitor') AS beat",
        settings.agent_id)
    age = None if row["beat"] is None else (now - row["beat"]).total_seconds()
    seen = "never" if age is None else f"{age:.0f}s ago"
    if not MarketCalendar(settings.config.market.exchange).is_open(now) or not row["open"]:
        return Check("monitor", True, f"last beat {seen}; not needed now (market closed or no open positions)")
    if age is None or age > limit:
        return Check("monitor", False, f"{row['open']} open positions and the position monitor's last beat was "
                                       f"{seen} (limit {limit}s): new entries are refused; start it (./run.sh "
                                       f"monitor, systemctl start position-monitor)")
    return Check("monitor", True, f"last beat {seen} (limit {limit}s), watching {row['open']} positions")


async def protection_check(settings: Settings, pool) -> Check:
    """Which open positions have a protective stop working at the broker, and which are protected only by the
    monitor (the venue holds no stops for this account, monitor.broker_stops is off, or it is not placed yet).
    Informational: the monitor places a missing stop on its next pass."""
    rows = await pool.fetch(
        "SELECT p.symbol, EXISTS (SELECT 1 FROM orders o WHERE o.agent_id = p.agent_id AND o.symbol = p.symbol "
        "AND o.intent = 'protective_stop' AND o.status IN ('pending_submit', 'submitted', 'partially_filled')) "
        "AS stopped FROM positions p WHERE p.agent_id = $1 AND p.status = 'open' ORDER BY p.symbol",
        settings.agent_id)
    if not rows:
        return Check("protection", True, "no open positions")
    bare = [r["symbol"] for r in rows if not r["stopped"]]
    if not bare:
        return Check("protection", True, f"all {len(rows)} open positions have a stop at the broker")
    why = ("monitor.broker_stops is off" if not settings.config.monitor.broker_stops else
           f"{settings.config.broker} holds no stop orders for this account, or the stop is not placed yet")
    return Check("protection", True, f"{len(bare)} of {len(rows)} open positions protected only by the monitor "
                                     f"({why}): {', '.join(bare[:10])}{' ...' if len(bare) > 10 else ''}")


async def run_heartbeat(settings: Settings, *, database: tuple[Any, Any] | None, database_error: str | None,
                        broker_check: BrokerCheck | None, now=None) -> HealthReport:
    """`database` is (DatabaseTarget, pool) when the database opened, else `database_error` says why."""
    from runtime.database import schema_file_version

    report = HealthReport(agent_id=settings.agent_id)
    cfg = settings.config
    report.checks.append(Check("config", True,
                               f"{settings.config_path.name}: {cfg.market.exchange} {cfg.market.currency}, "
                               f"max {cfg.trading.max_positions} positions, AI budget ${cfg.ai.daily_budget_usd}/day"))
    pool = None
    if database is None:
        report.checks.append(Check("database", False, f"unreachable: {database_error}"))
    else:
        target, pool = database
        t0 = time.perf_counter()
        try:
            have = await pool.fetchval("SELECT max(version) FROM schema_version")
            want = schema_file_version()
            ms = (time.perf_counter() - t0) * 1000
            if have == want:
                report.checks.append(Check("database", True, f"{target.description}, schema v{have}, {ms:.0f} ms"))
            else:
                report.checks.append(Check("database", False,
                                           f"{target.description}: schema v{have}, expected v{want} — apply "
                                           f"sql/schema-catalyst-trading.sql"))
        except Exception as exc:
            report.checks.append(Check("database", False, f"query failed: {exc}"))
            pool = None

    if broker_check is None:
        report.checks.append(Check("broker", False, "not checked: the database is down (the paper broker keeps "
                                                    "its account there; live brokers are checked after it)",
                                   skipped=True))
    else:
        try:
            report.checks.append(Check("broker", True, await broker_check()))
        except Exception as exc:
            report.checks.append(Check("broker", False, str(exc) or type(exc).__name__))

    if pool is not None and now is not None:
        try:
            report.checks.append(await store_check(settings, pool, now))
        except Exception as exc:
            report.checks.append(Check("market data", False, f"could not read the bar store: {exc}"))
        try:
            report.checks.append(await monitor_check(settings, pool, now))
        except Exception as exc:
            report.checks.append(Check("monitor", False, f"could not read the monitor's beats: {exc}"))
        try:
            report.checks.append(await protection_check(settings, pool))
        except Exception as exc:
            report.checks.append(Check("protection", False, f"could not read the protective stops: {exc}"))


    status = "healthy" if report.healthy else "unhealthy"
    if report.healthy:
        log.info("heartbeat: %s", status, extra={})
    else:
        log.error("heartbeat: %s — %s", status, "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok))
    if pool is not None:
        try:
            from core.redaction import redact_row
            await pool.execute(
                "INSERT INTO service_health (agent_id, service, status, details) VALUES ($1, 'agent', $2, $3)",
                settings.agent_id, status, redact_row(report.as_dict()))
        except Exception as exc:
            log.error("heartbeat: could not write service_health: %s", exc)
    return report
