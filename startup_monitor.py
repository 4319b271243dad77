"""`python startup_monitor.py [--resume REASON]`: reconciliation as a command (cron pre-market; every cycle runs
it too). The work is in execution/reconcile.py.

Exit codes: 0 in sync (corrections, if any, were applied and audited), 5 action needed (ambiguous: entries
stopped), 2 config, 3 database, 4 broker unreachable, 75 another run of this agent is busy.
"""
from __future__ import annotations

import argparse
import sys

from core.clock import RealClock
from core.errors import BrokerUnavailable
from core.state import TradingState
from execution.reconcile import EXIT_ACTION_NEEDED
from runtime.bootstrap import EXIT_BROKER, EXIT_DATABASE, process, run, run_lock, settings_or_exit
from runtime.wiring import build_services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="startup_monitor.py", description="Reconcile records with the broker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--resume", metavar="REASON", default=None,
                        help="after checking the reported discrepancies: set the trading state back to ACTIVE")
    args = parser.parse_args(argv)
    try:
        settings = settings_or_exit(args.config)
        with run_lock(settings, "reconcile"):
            return run(_main(settings, args.resume))
    except SystemExit as exc:
        return int(exc.code or 0)


async def _main(settings, resume: str | None) -> int:
    async with process(settings, "reconcile") as proc:
        if proc.pool is None:
            print(f"database unavailable: {proc.database_error}", file=sys.stderr)
            return EXIT_DATABASE
        try:
            services = await build_services(settings, proc.pool, RealClock())
        except BrokerUnavailable as exc:
            print(f"broker unavailable: {exc}", file=sys.stderr)
            return EXIT_BROKER
        report = await services.reconciler.run()
        print(report.render())
        if resume is not None and report.exit_code in (0, EXIT_ACTION_NEEDED):
            await services.store.set_trading_state(TradingState.ACTIVE, f"resumed by operator: {resume}", "operator")
            print(f"trading state set to ACTIVE ({resume})")
            return 0
        return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
