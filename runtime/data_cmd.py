"""`./run.sh data sync | status | import DIR`: the bar store from the command line."""
from __future__ import annotations

import sys
from pathlib import Path

from core.clock import process_clock
from core.errors import BrokerUnavailable
from core.settings import Settings
from data.importer import import_bar_files
from data.store import BarStore
from data.sync import terminal_progress
from runtime.bootstrap import EXIT_BROKER, EXIT_OK
from runtime.wiring import build_services

EXIT_PARTIAL = 6          # the sync skipped something (a spent quota): the summary says what; run again later


async def run_data_command(settings: Settings, pool, args: list[str]) -> int:
    action = args[0]
    try:
        services = await build_services(settings, pool, process_clock())
    except BrokerUnavailable as exc:
        print(f"broker unavailable: {exc}", file=sys.stderr)
        return EXIT_BROKER
    try:
        if action == "sync":
            summary = await services.sync.run(progress=terminal_progress("sync"))
            print(summary.render())
            return EXIT_OK if summary.status == "done" else EXIT_PARTIAL
        if action == "status":
            print(await status(services.bar_store, services.sync.spec.kind))
            return EXIT_OK
        directory = Path(args[1]).expanduser().resolve()
        store = BarStore(pool, dataset=f"files:{settings.config.market.exchange}:{directory}",
                         exchange=settings.config.market.exchange, calendar=services.calendar)
        report = await import_bar_files(directory, store, now=services.clock.now())
        print(report.render(settings.config.market.exchange))
        print(f"to trade on them: market_data.source: files, market_data.directory: {directory}")
        return EXIT_OK
    finally:
        await services.broker.disconnect()


async def status(store: BarStore, universe_kind: str) -> str:
    coverage = await store.coverage("1d")
    fresh = await store.freshness()
    securities = await store.instruments(listed_only=False)
    lines = [f"bar store {store.dataset}: {len(securities)} securities, {len(coverage)} with daily bars"]
    for timeframe, last in sorted(fresh.items()):
        lines.append(f"  {timeframe}: last bar completed {last.astimezone(store.calendar.tz):%Y-%m-%d %H:%M} "
                     f"{store.calendar.tz}")
    if coverage:
        firsts = sorted(c.first for c in coverage)
        lasts = sorted(c.last for c in coverage)
        gaps = [c for c in coverage if c.missing_sessions]
        lines.append(f"  first bars {firsts[0]} .. {firsts[-1]}; last bars {lasts[0]} .. {lasts[-1]}; "
                     f"{sum(c.bars for c in coverage)} bars")
        lines.append(f"  {len(gaps)} symbols with gaps" + (": " + ", ".join(
            f"{c.symbol} ({c.missing_sessions})" for c in gaps[:8]) if gaps else ""))
    syncs = await store.pool.fetch("SELECT status, started_at, summary FROM data_syncs WHERE dataset = $1 "
                                   "ORDER BY started_at DESC LIMIT 3", store.dataset)
    for r in syncs:
        s = r["summary"]
        lines.append(f"  sync {r['started_at']:%Y-%m-%d %H:%M} UTC {r['status']}: up to {s.get('up_to')}, "
                     f"{s.get('bars_added', 0)} bars added, {len(s.get('skipped') or {})} skipped")
    if not coverage:
        lines.append("  empty: run ./run.sh data sync")
    return "\n".join(lines)
