"""`python startup_monitor.py [--resume REASON]`: reconciliation as a command (cron pre-market; every cycle runs
it too). The work is in execution/reconcile.py.

Exit codes: 0 in sync (corrections, if any, were applied and audited), 5 action needed (ambiguous: entries
stopped), 2 config, 3 database, 4 broker unreachable, 75 another run of this agent is busy.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import safety
from execution.reconcile import EXIT_ACTION_NEEDED, reconcile
from core.errors import BrokerUnavailable
from execution.store import set_trading_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="startup_monitor.py", description="Reconcile records with the broker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--resume", metavar="REASON", default=None,
                        help="after checking the reported discrepancies: set the trading state back to ACTIVE")
    args = parser.parse_args(argv)
    from runtime.lock import EXIT_LOCKED, AgentBusy, AgentLock
    from core.settings import ConfigError, load_settings
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    lock = AgentLock(settings.var_dir / "locks", settings.agent_id)
    try:
        lock.acquire("reconcile")
    except AgentBusy as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_LOCKED
    try:
        return asyncio.run(_main(settings, args.resume))
    finally:
        lock.release()


async def _main(settings, resume: str | None) -> int:
    from core.clock import RealClock
    from runtime.database import DatabaseUnavailable, open_database
    from db_logger import setup_logging
    from runtime.wiring import build_services

    try:
        target, pool = await open_database(settings)
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 3
    pipeline = setup_logging(agent_id=settings.agent_id, log_dir=settings.log_dir, secrets=settings.env.secrets,
                             level=settings.config.logging.level, dsn=target.url,
                             file_keep_days=settings.config.logging.file_retention_days)
    try:
        try:
            services = await build_services(settings, pool, RealClock())
        except BrokerUnavailable as exc:
            print(f"broker unavailable: {exc}", file=sys.stderr)
            return 4
        report = await reconcile(services)
        print(report.render())
        if resume is not None and report.exit_code in (0, EXIT_ACTION_NEEDED):
            await set_trading_state(services, safety.TradingState.ACTIVE, f"resumed by operator: {resume}",
                                    "operator")
            print(f"trading state set to ACTIVE ({resume})")
            return 0
        return report.exit_code
    finally:
        await pool.close()
        pipeline.close(timeout=5.0)


if __name__ == "__main__":
    sys.exit(main())
