"""`--mode heartbeat`: is this agent able to trade? Config, database + schema, broker.

Writes a `service_health` row and an agent_logs line, prints a short summary, and returns an exit code:
0 healthy, 3 database problem, 4 broker problem.
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
                return EXIT_DATABASE if c.name == "database" else EXIT_BROKER if c.name == "broker" else 1
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {c.name: {"ok": c.ok, "detail": c.detail, **({"skipped": True} if c.skipped else {})}
                for c in self.checks}

    def render(self) -> str:
        head = f"Catalyst heartbeat — agent {self.agent_id}: {'HEALTHY' if self.healthy else 'UNHEALTHY'}"
        rows = [f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<9} {c.detail}" for c in self.checks]
        return "\n".join([head, *rows])


BrokerCheck = Callable[[], Awaitable[str]]


async def run_heartbeat(settings: Settings, *, database: tuple[Any, Any] | None, database_error: str | None,
                        broker_check: BrokerCheck | None) -> HealthReport:
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

    status = "healthy" if report.healthy else "unhealthy"
    if report.healthy:
        log.info("heartbeat: %s", status, extra={})
    else:
        log.error("heartbeat: %s — %s", status, "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok))
    if pool is not None:
        try:
            await pool.execute(
                "INSERT INTO service_health (agent_id, service, status, details) VALUES ($1, 'agent', $2, $3)",
                settings.agent_id, status, report.as_dict())
        except Exception as exc:
            log.error("heartbeat: could not write service_health: %s", exc)
    return report
