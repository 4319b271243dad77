"""A venue fake in a process of its own, for bench_monitor.py: a real venue is another process (another machine),
so its work must not share the daemon's interpreter (its GIL) while the monitor's latency is measured.

Run by the bench, never by hand: `python bench/fake_venue.py '<json>'` with
  {"venue": "opend" | "alpaca", "pg_url", "account_id", "start" (ISO market instant), "t0" (the parent's
   time.perf_counter() at that instant: CLOCK_MONOTONIC, the same in every process), "log_dir", "rate_speed"}.
It starts the fake (tests/fakes) on a MovableMarket over the same SimulatedMarket the parent prices from, prints one
line `@@ {"host", "port"}` (OpenD) or `@@ {"api_key", "secret_key", "base_url", "stream_url"}` (Alpaca), then
answers one JSON command per stdin line, each with one `@@ ` line:
  {"op": "move", "symbol", "price", "timeout"}  the symbol trades at `price` from now on (pushed at once to the
      followed connections); answers {"wait": seconds from the move to the arrival of the first place-order request
      for that symbol (stamped by the fake on arrival), or null after `timeout`; "moved": the fake's
      time.perf_counter() at the move, CLOCK_MONOTONIC as the parent's)}
  {"op": "stop"}                                   stops the fake and exits.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED, N_SYMBOLS = 7, 700                  # the feed both processes price from


class WallClock:
    """The market's clock moving with the wall clock from a session instant (fills and rows happen at 'now').
    `t0`: the perf_counter reading at `start` (given, so processes sharing it agree on the market's now)."""

    def __init__(self, start: datetime, t0: float | None = None) -> None:
        self.start, self.t0 = start, time.perf_counter() if t0 is None else t0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.perf_counter() - self.t0)


def feed(exchange: str, clock: WallClock):
    from brokers.paper.simulated import SimulatedMarket
    from core.calendar import MarketCalendar
    from tests.fakes.movable import MovableMarket
    calendar = MarketCalendar(exchange)
    market = MovableMarket(SimulatedMarket(seed=SEED, exchange=exchange, n_symbols=N_SYMBOLS, calendar=calendar),
                           clock)
    market.quote(market.instruments()[0].symbol, clock.now())     # the session's daily paths, before any request
    return market, calendar


def _log_gc_pauses(path: Path) -> None:
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) > 0.01:
            with path.open("a") as out:
                out.write(f"{started[0]:.3f} gen{info['generation']} {took * 1000:.0f} ms\n")
    gc.callbacks.append(on_gc)


def say(what: dict) -> None:
    print("@@ " + json.dumps(what), flush=True)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    from core.clock import ScaledClock
    from tests.venues import paper_config
    clock = WallClock(datetime.fromisoformat(cfg["start"]), cfg["t0"])
    cash = Decimal(10) ** 9
    if cfg["venue"] == "opend":
        from brokers.moomoo import load_sdk
        from tests.fakes.opend_server import FakeOpenD
        load_sdk(Path(cfg["log_dir"]))
        market, calendar = feed("HKEX", clock)
        # OpenD's rate windows (60 snapshots / 30 s ...) run faster on both sides: setup is not throttled
        fake = FakeOpenD(pg_url=cfg["pg_url"], market=market, clock=clock, account_id=cfg["account_id"],
                         paper_config=paper_config(initial_cash=cash), calendar=calendar,
                         rate_clock=ScaledClock(cfg["rate_speed"]))
        fake.subscription_quota = 1000        # a large account's quota
        fake.start()
        say({"host": fake.host, "port": fake.port})

        def arrived(r, symbol: str) -> bool:
            return r.proto_id == 2202 and symbol.zfill(5) in str(r.body.get("c2s", {}).get("code", ""))
    elif cfg["venue"] == "alpaca":
        from tests.fakes.alpaca_server import FakeAlpaca
        from tests.venues import US_FEES
        market, calendar = feed("NYSE", clock)
        fake = FakeAlpaca(pg_url=cfg["pg_url"], market=market, clock=clock, account_id=cfg["account_id"],
                          calendar=calendar, paper_config=paper_config(fees=US_FEES, initial_cash=cash))
        fake.start()
        fake.stream.symbol_limit = None        # Algo Trader Plus: no websocket symbol limit
        say({"api_key": fake.api_key, "secret_key": fake.secret_key, "base_url": fake.base_url,
             "stream_url": fake.stream_url})

        def arrived(r, symbol: str) -> bool:
            return (r.method == "POST" and r.path.startswith("/v2/orders") and isinstance(r.body, dict)
                    and r.body.get("symbol") == symbol)
    else:
        raise SystemExit(f"unknown venue {cfg['venue']!r}")
    # A venue is not a Python process: its answers never wait behind a full garbage collection of the fake's
    # ~1M objects (SDK, pandas, the market's paths; 100-200 ms each). Collected and frozen once, as the daemon does
    # for its own heap (runtime/heap.py), so what the bench times is the monitor's path, not the fake's GC.
    gc.collect()
    gc.freeze()
    if os.environ.get("BENCH_GC_LOG"):        # a path: every collection over 10 ms in the fake is written there
        _log_gc_pauses(Path(os.environ["BENCH_GC_LOG"]))
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "stop":
                break
            if cmd["op"] != "move":
                raise SystemExit(f"unknown command {cmd!r}")
            seen = len(fake.requests)          # only what arrives after the move is looked at
            t0 = time.perf_counter()
            market.move(cmd["symbol"], Decimal(cmd["price"]))
            wait = None
            while wait is None and time.perf_counter() < t0 + cmd["timeout"]:
                new = fake.requests[seen:]
                hits = [r.received for r in new if r.received >= t0 and arrived(r, cmd["symbol"])]
                if hits:
                    wait = min(hits) - t0
                else:                          # the arrival is the fake's own stamp: how often we look changes
                    time.sleep(0.02)           # nothing but how soon we answer (and a busy look would steal its GIL)
            say({"wait": wait, "moved": t0})
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
