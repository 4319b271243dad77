"""Catalyst entry point: `python unified_agent.py --mode scan|trade|close|heartbeat`.

Exit codes (also in the README):
  0 done / healthy            2 configuration error        3 database unavailable
  4 broker unavailable        75 another run of this agent is in progress
  1 unexpected error (see agent_logs / logs/agent.log)
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from runtime.bootstrap import EXIT_BROKER, EXIT_CONFIG, EXIT_DATABASE, EXIT_OK, EXIT_UNEXPECTED

MODES = ("heartbeat", "scan", "trade", "close", "day", "replay", "report", "data", "broker-check", "eval")

log = logging.getLogger("catalyst.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unified_agent.py", description="Catalyst trading agent")
    parser.add_argument("--mode", required=True, choices=MODES, help="what this run does")
    parser.add_argument("--config", default=None, help="path to trading_config.yaml (default: config/)")
    parser.add_argument("words", nargs="*", metavar="ARG", help="data: sync | status | import DIR")
    check = parser.add_argument_group("broker-check")
    check.add_argument("--symbol", default=None, help="broker-check: the symbol to quote and order (default: the "
                                                      "first of the bar store's universe)")
    check.add_argument("--i-understand-real-money", dest="real_money_ok", action="store_true",
                       help="broker-check: allow the test order on a real-money account (smallest lot, a price "
                            "that cannot fill, cancelled at once)")
    replay = parser.add_argument_group("replay")
    replay.add_argument("--start", type=_date, help="replay: first day (YYYY-MM-DD)")
    replay.add_argument("--end", type=_date, help="replay: last day (YYYY-MM-DD)")
    replay.add_argument("--data", type=Path, default=None, help="replay: folder of bar files (default: the "
                                                                   "simulated market)")
    replay.add_argument("--engine", choices=("rules", "claude"), default="rules", help="replay: who decides")
    replay.add_argument("--monitor-every", type=int, default=5, metavar="MINUTES",
                        help="replay: minutes between position monitor passes (default 5)")
    replay.add_argument("--no-prefetch", action="store_true",
                        help="replay: no second process working out the next day's analytics (~160 MB less memory, "
                             "slower)")
    evaluation = parser.add_argument_group("eval (replay's --start, --end, --data too)")
    evaluation.add_argument("--engines", default="rules", help="eval: rules,claude[:MODEL] (comma-separated)")
    evaluation.add_argument("--baselines", default="buy_and_hold,cash", help="eval: buy_and_hold,cash or none")
    evaluation.add_argument("--reuse-answers", action="store_true",
                            help="eval: answer from recorded model answers when the request is the same (free)")
    evaluation.add_argument("--max-usd", type=_usd, default=None, help="eval: USD cap over the whole eval")
    args = parser.parse_args(argv)
    if args.mode in ("replay", "eval") and (args.start is None or args.end is None or args.start > args.end):
        parser.error(f"{args.mode} needs --start and --end, start on or before end")
    if args.mode == "data" and (not args.words or args.words[0] not in ("sync", "status", "import")
                                or (args.words[0] == "import") != (len(args.words) == 2)
                                or (args.words[0] != "import" and len(args.words) != 1)):
        parser.error("data needs one of: sync | status | import DIR")
    if args.mode != "data" and args.words:
        parser.error(f"unexpected arguments: {' '.join(args.words)}")
    return args


def _usd(text: str):
    from decimal import Decimal, InvalidOperation
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}")
    return value


def _date(text: str):
    from datetime import date
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.bootstrap import run, run_lock, settings_or_exit
    try:
        settings = settings_or_exit(args.config)
        # day and replay trade under agent ids of their own, report only reads: they never hold the live agent's lock
        unlocked = ("day", "replay", "report", "data", "broker-check", "eval")     # own ids, own locks, or read-only
        with run_lock(settings, args.mode, take=args.mode not in unlocked), \
                run_lock(settings, "data", take=args.mode == "data", name=f"{settings.agent_id}-data"), \
                run_lock(settings, "check", take=args.mode == "broker-check", name=f"{settings.agent_id}-check"):
            return run(_run(settings, args))
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def _run(settings, args: argparse.Namespace) -> int:
    from runtime.bootstrap import process

    level = None
    if args.mode == "replay" and not settings.env.get("LOG_LEVEL"):
        level = "WARNING"      # a year of INFO lines costs a quarter of a replay's time; LOG_LEVEL=INFO keeps them
    # a replay's progress line owns the terminal; its warnings go to the log file and DB
    console = "ERROR" if args.mode == "replay" else "WARNING"
    # simulated runs (their rows can be produced again) skip waiting for each commit's WAL flush
    async with process(settings, args.mode, level=level, console_level=console,
                       durable=args.mode not in ("day", "replay")) as proc:
        try:
            return await _dispatch(settings, args, proc)
        except Exception as exc:
            if proc.pool is not None and not await _database_answers(proc.pool):
                log.error("run stopped: the database went away (%s: %s)", type(exc).__name__, exc)
                print(f"database unavailable: it stopped answering mid-run ({type(exc).__name__}: {exc}); "
                      f"the next run reconciles what this one left", file=sys.stderr)
                return EXIT_DATABASE
            log.exception("run failed")
            print("unexpected error; details in agent_logs and logs/agent.log", file=sys.stderr)
            return EXIT_UNEXPECTED


async def _database_answers(pool) -> bool:
    try:
        return await asyncio.wait_for(pool.fetchval("SELECT 1"), 3) == 1
    except Exception:
        return False


async def _dispatch(settings, args: argparse.Namespace, proc) -> int:
    from core.clock import process_clock
    from core.errors import BrokerUnavailable
    from runtime.wiring import build_services, builder

    pool = proc.pool
    if args.mode == "heartbeat":
        from runtime.retention import purge_old_logs
        from runtime.heartbeat import run_heartbeat
        report = await run_heartbeat(settings, database=(proc.target, pool) if pool else None,
                                     database_error=proc.database_error,
                                     broker_check=_broker_check(settings, pool) if pool else None,
                                     now=process_clock().now())
        if pool is not None:
            keep = settings.config.logging
            purged = await purge_old_logs(pool, agent_id=settings.agent_id, days=keep.db_retention_days,
                                          replay_days=keep.replay_retention_days)
            if purged:
                log.info("retention: deleted %d agent_logs rows older than %d days (day and replay runs: %d days)",
                         purged, keep.db_retention_days, keep.replay_retention_days)
        print(report.render())
        return report.exit_code
    if pool is None:
        print(f"database unavailable: {proc.database_error}", file=sys.stderr)
        return EXIT_DATABASE

    build = builder(pool)

    if args.mode == "day":
        from replay.day import run_day
        print(f"Catalyst day on the simulated market (simulated clock, paper broker, "
              f"{'Claude' if settings.env.get('ANTHROPIC_API_KEY') else 'offline rules engine'}):")
        summary = await run_day(settings, pool, build=build)
        print(_day_summary(summary))
        return EXIT_OK
    if args.mode == "replay":
        from datetime import timedelta

        from replay.runner import ReplayRefused, run_replay
        try:
            result = await run_replay(settings, pool, build=build, start=args.start, end=args.end,
                                      engine=args.engine, data=args.data,
                                      monitor_every=timedelta(minutes=args.monitor_every),
                                      prefetch=False if args.no_prefetch else None)
        except ReplayRefused as exc:
            print(f"replay: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(result.table)
        print(f"{result.cycles} cycles and {result.monitor_passes} monitor passes in {result.wall_seconds:.1f} s; "
              f"equity curve: {result.png}")
        print(f"every decision, order and log line is under agent id {result.agent_id} "
              f"(warnings: {settings.log_dir / 'agent.log'})")
        if result.failed:
            print(f"replay FAILED: {result.failed}", file=sys.stderr)
            return EXIT_UNEXPECTED
        return EXIT_OK
    if args.mode == "broker-check":
        from runtime.broker_check import run_broker_check
        code, text = await run_broker_check(settings, pool, symbol=args.symbol, real_money_ok=args.real_money_ok)
        print(f"broker check of {settings.config.broker} for agent {settings.agent_id}:\n{text}")
        print("PASS" if code == 0 else "FAIL")
        return code
    if args.mode == "data":
        from runtime.data_cmd import run_data_command
        return await run_data_command(settings, pool, args.words)
    if args.mode == "eval":
        from replay.eval import EngineSpec, run_eval
        from replay.runner import ReplayRefused
        try:
            engines = [EngineSpec.parse(e) for e in args.engines.split(",") if e.strip()]
            baselines = [] if args.baselines in ("", "none") else [b.strip() for b in args.baselines.split(",")]
            result = await run_eval(settings, pool, build=build, start=args.start, end=args.end, engines=engines,
                                    baseline_names=baselines, data=args.data, reuse_answers=args.reuse_answers,
                                    max_usd=args.max_usd)
        except ReplayRefused as exc:
            print(f"eval: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(result.table)
        print(f"equity curves and drawdowns: {result.png}")
        return EXIT_OK
    if args.mode == "report":
        from runtime.report import live_report
        print(await live_report(pool, settings, now=process_clock().now()))
        return EXIT_OK
    try:
        services = await build_services(settings, pool, process_clock())
    except BrokerUnavailable as exc:
        print(f"broker unavailable: {exc}", file=sys.stderr)
        return EXIT_BROKER
    outcome = await services.run_cycle(args.mode)
    print(outcome.message)
    return EXIT_OK


def _broker_check(settings, pool):
    async def check() -> str:
        import time

        from core.clock import process_clock
        from runtime.wiring import build_services
        t0 = time.perf_counter()
        services = await build_services(settings, pool, process_clock())
        try:
            acct = await services.broker.get_account()
            positions = await services.broker.get_positions()
        finally:
            await services.broker.disconnect()
        ms = (time.perf_counter() - t0) * 1000
        return (f"{settings.config.broker} ({services.broker.environment}): {acct.currency} cash {acct.cash:,.2f}, "
                f"equity {acct.equity:,.2f}, "
                f"{len(positions)} positions, {ms:.0f} ms")
    return check


def _day_summary(s: dict) -> str:
    change = s["equity"] - s["initial_cash"]
    held = ", ".join(f"{k} x{v}" for k, v in s["open_positions"].items()) or "none"
    return (f"Simulated session {s['session']} done (agent id {s['agent_id']}): {s['cycles']} cycles, "
            f"{s['orders']} orders ({s.get('protective_stops', 0)} protective stops), {s['fills']} fills; equity {s['equity']:.2f} ({change:+.2f}), "
            f"realized P&L {s['realized_pnl']:.2f}; held overnight: {held}.\n"
            f"Everything is in PostgreSQL: trading_cycles, orders, fills, positions, decisions, scan_results, "
            f"agent_logs (agent_id = '{s['agent_id']}').")


if __name__ == "__main__":
    sys.exit(main())
