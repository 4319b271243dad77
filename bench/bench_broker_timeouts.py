"""How long the live broker adapters take to give up, or to wait, when the venue misbehaves: the timing half of
tests/test_alpaca_broker.py and tests/test_moomoo_broker.py (the tests assert behaviour only; wall-clock bounds
live here, where a loaded machine makes a FAIL a thing to look at rather than a red build).

Each case runs the real SDK against the wire-level fakes (tests/fakes/) on an embedded PostgreSQL, and prints the
time taken, its bound, and the ratio to a baseline measured in the same run (the same venue answering a plain
account read at once):

  alpaca  Retry-After: 1 on a 429 is honoured                         >= 0.95 s
          Retry-After: 120 (above max_retry_wait_seconds) is not waited   < 2 s
          a server that keeps dropping connections: one resend, then out  < 3 s
          an order whose answer is late (timeout 0.5 s, answer at 1.5 s)  < 1.4 s  (found by client_order_id)
  moomoo  connect with no OpenD listening (connect timeout 1 s)           < 3 s
          an OpenD that never answers a read, request timeout 15 s         15..17 s, one request  (the SDK's own
          ... and request timeout 30 s                                      30..32 s, one request   12 s fired
                                                                                 first and was retried: 24 s)
          an OpenD that stays down (connect 1 s, request timeout 3 s)     < 6 s
          a process that found no OpenD exits by itself                   < 30 s   (baseline: python -c pass)

Run: ./run.sh bench broker_timeouts
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from brokers.alpaca import AlpacaBroker  # noqa: E402
from brokers.moomoo import NOT_RUNNING, MoomooBroker, load_sdk  # noqa: E402
from core.calendar import MarketCalendar  # noqa: E402
from core.clock import SimulatedClock  # noqa: E402
from core.errors import BrokerUnavailable  # noqa: E402
from core.orders import OrderRequest, OrderSide, OrderStatus, OrderType  # noqa: E402
from core.config_model import MoomooConfig  # noqa: E402
from runtime import database  # noqa: E402
from tests.fakes.alpaca_server import FakeAlpaca  # noqa: E402
from tests.fakes.opend_server import FakeOpenD  # noqa: E402
from tests.venues import NYSE, NY_OPEN_AT as NY_OPEN  # noqa: E402
from tests.venues import US_FEES, us_market, us_settings, us_symbols  # noqa: E402
from tests.venues import OPEN_AT as HK_OPEN, paper_config, shared_market  # noqa: E402

RUNS = 5
HKEX = MarketCalendar("HKEX")
RATE_LIMITED = {"code": 42910000, "message": "rate limit exceeded"}
PASSWORD = "bench-trade-pw"
P_GET_FUNDS = 2101                  # Trd_GetFunds: accinfo_query


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await work()
    return time.perf_counter() - t0


async def baseline(work: Callable[[], Awaitable[object]]) -> float:
    return statistics.median([await timed(work) for _ in range(RUNS)])


async def expect_unavailable(work: Awaitable[object]) -> None:
    try:
        await work
    except BrokerUnavailable:
        return
    raise SystemExit("expected BrokerUnavailable, the call succeeded")


def report(results: list[bool], case: str, took: float, base: float, *, below: float | None = None,
           above: float | None = None) -> None:
    ok = (below is None or took < below) and (above is None or took >= above)
    if below is not None and above is not None:
        bound = f"{above:g}..{below:g} s"
    else:
        bound = f"< {below:g} s" if below is not None else f">= {above:g} s"
    print(f"{case:<62} {took:7.3f} s  (bound {bound:>9}; {took / base:8.1f}x baseline)  {'PASS' if ok else 'FAIL'}")
    results.append(ok)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def alpaca_cases(url: str, results: list[bool]) -> None:
    clock = SimulatedClock(NY_OPEN)
    fake = FakeAlpaca(pg_url=url, market=us_market(), clock=clock, account_id=f"bench_{uuid.uuid4().hex[:8]}",
                      calendar=NYSE, paper_config=paper_config(fees=US_FEES))
    await asyncio.to_thread(fake.start)
    brokers: list[AlpacaBroker] = []

    async def connect(timeout_seconds: float = 5) -> AlpacaBroker:
        broker = AlpacaBroker.from_settings(us_settings(fake, timeout_seconds=timeout_seconds), clock=clock,
                                            calendar=NYSE)
        brokers.append(broker)
        await broker.connect()
        return broker

    try:
        broker = await connect()
        base = await baseline(broker.get_account)
        print(f"alpaca baseline: GET /v2/account through alpaca-py, median of {RUNS}: {base * 1000:.1f} ms")

        fake.fail_next(429, RATE_LIMITED, headers={"Retry-After": "1"}, match="GET /v2/positions")
        report(results, "alpaca: Retry-After 1 s is honoured", await timed(broker.get_positions), base, above=0.95)

        fake.fail_next(429, RATE_LIMITED, headers={"Retry-After": "120"}, match="GET /v2/account")
        took = await timed(lambda: expect_unavailable(broker.get_account()))
        report(results, "alpaca: Retry-After 120 s is not waited for", took, base, below=2)

        fake.drop_connections(2, match="GET /v2/positions")
        took = await timed(lambda: expect_unavailable(broker.get_positions()))
        report(results, "alpaca: dropped connections: one resend, then BrokerUnavailable", took, base, below=3)

        slow = await connect(timeout_seconds=0.5)
        fake.delay_next(1.5, match="POST /v2/orders")
        request = OrderRequest(f"bench-slow-{uuid.uuid4().hex[:6]}", us_symbols()[0], OrderSide.BUY, 1,
                               OrderType.MARKET)
        t0 = time.perf_counter()
        result = await slow.place_order(request)
        took = time.perf_counter() - t0
        if result.status is not OrderStatus.FILLED:
            raise SystemExit(f"the late order should be found filled: {result}")
        report(results, "alpaca: late order answer (0.5 s timeout) found by client id", took, base, below=1.4)
    finally:
        for broker in brokers:
            await broker.disconnect()
        await asyncio.to_thread(fake.stop)


async def moomoo_cases(url: str, log_dir: Path, results: list[bool]) -> None:
    load_sdk(log_dir)
    clock = SimulatedClock(HK_OPEN)
    fake = FakeOpenD(pg_url=url, market=shared_market(), clock=clock, account_id=f"bench_{uuid.uuid4().hex[:8]}",
                     paper_config=paper_config(), calendar=HKEX, trade_password=PASSWORD)
    await asyncio.to_thread(fake.start)
    brokers: list[MoomooBroker] = []
    try:
        config = MoomooConfig(host=fake.host, port=fake.port, trade_env="simulate", connect_timeout_seconds=1)
        broker = MoomooBroker(config, log_dir=log_dir, clock=clock, calendar=HKEX, request_timeout_seconds=3,
                              reconnect_interval_seconds=0.3)
        brokers.append(broker)
        await broker.connect()
        base = await baseline(broker.get_account)
        print(f"moomoo baseline: accinfo_query through OpenD, median of {RUNS}: {base * 1000:.1f} ms")

        nowhere = MoomooBroker(MoomooConfig(port=closed_port(), connect_timeout_seconds=1), log_dir=log_dir,
                               clock=clock, calendar=HKEX)
        took = await timed(lambda: expect_unavailable(nowhere.connect()))
        report(results, "moomoo: connect with no OpenD (connect timeout 1 s)", took, base, below=3)

        fake.silence(P_GET_FUNDS)
        for timeout in (15, 30):
            silent = MoomooBroker(config, log_dir=log_dir, clock=clock, calendar=HKEX,
                                  request_timeout_seconds=timeout, reconnect_interval_seconds=0.3)
            brokers.append(silent)
            await silent.connect()
            asked = len(fake.requests_for(P_GET_FUNDS))
            took = await timed(lambda: expect_unavailable(silent.get_account()))
            if len(fake.requests_for(P_GET_FUNDS)) - asked != 1:
                raise SystemExit(f"a silent read was sent {len(fake.requests_for(P_GET_FUNDS)) - asked} times")
            report(results, f"moomoo: a silent read, request timeout {timeout} s (one request)", took, base,
                   above=timeout, below=timeout + 2)

        await asyncio.to_thread(fake.stop)
        took = await timed(lambda: expect_unavailable(broker.get_account()))
        report(results, "moomoo: OpenD stays down (connect 1 s, request 3 s)", took, base, below=6)
    finally:
        for broker in brokers:
            await broker.disconnect()
        await asyncio.to_thread(fake.stop)


def process_case(tmp: Path, results: list[bool]) -> None:
    def run(script: str) -> float:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env={"HOME": str(tmp / "home"), "PATH": "/usr/bin:/bin"})
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"the process failed: {out.stdout}{out.stderr}")
        if script != "pass" and NOT_RUNNING not in out.stdout:
            raise SystemExit(f"expected {NOT_RUNNING!r}: {out.stdout}")
        return took

    (tmp / "home").mkdir(exist_ok=True)
    base = statistics.median(run("pass") for _ in range(RUNS))
    script = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from core.errors import BrokerUnavailable
from brokers.moomoo import MoomooBroker
from core.clock import RealClock
from core.config_model import MoomooConfig
from core.calendar import MarketCalendar
async def main():
    b = MoomooBroker(MoomooConfig(port={closed_port()}, connect_timeout_seconds=1), log_dir={str(tmp / 'plogs')!r},
                     clock=RealClock(), calendar=MarketCalendar("HKEX"))
    try:
        await b.connect()
    except BrokerUnavailable as exc:
        print("UNAVAILABLE", exc)
asyncio.run(main())
"""
    print(f"process baseline: python -c pass, median of {RUNS}: {base * 1000:.1f} ms")
    report(results, "moomoo: a process that found no OpenD exits by itself", run(script), base, below=30)


async def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-broker-"))
    url = await asyncio.to_thread(database.start_embedded, tmp / "pg")
    results: list[bool] = []
    try:
        pool = await database.create_pool(url)
        await database.ensure_schema(pool)
        await pool.close()
        await alpaca_cases(url, results)
        await moomoo_cases(url, tmp / "logs", results)
        await asyncio.to_thread(process_case, tmp, results)
        ok = all(results)
        print(f"targets ({sum(results)}/{len(results)} within their bounds): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        database.stop_embedded(tmp / "pg")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
