"""`./run.sh broker-check [--symbol S] [--i-understand-real-money]`: a safe smoke test of the configured broker.

Connect, account, positions, a quote, daily bars, then one limit buy of the smallest lot at a price that cannot
fill (well under the bid, inside the venue's price bands), found again by our client id, cancelled, and confirmed
cancelled — each step timed, in a table. The order goes through the order path (a write-ahead row) under the agent
id `<agent>-check`, so it never mixes with the agent's own orders. A real-money account is refused unless
`--i-understand-real-money` is given.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from core.clock import RealClock
from core.orders import OrderSide, OrderStatus, OrderType
from core.settings import Settings
from core.ticks import round_to_tick, tick_below
from execution.order_path import OrderPath
from runtime.wiring import build_services

EXIT_CHECK_FAILED = 7
REAL_MONEY_ENVIRONMENTS = {"live", "real"}


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str


def table(steps: list[Step]) -> str:
    width = max(len(s.name) for s in steps)
    lines = [f"  {'step':<{width}}  ok    ms      detail"]
    lines += [f"  {s.name:<{width}}  {'ok ' if s.ok else 'FAIL'}  {s.ms:6.0f}  {s.detail}" for s in steps]
    return "\n".join(lines)


def price_that_cannot_fill(bid: Decimal, scheme: str) -> Decimal:
    """Far enough under the bid not to fill in the seconds the check takes, near enough for the venue to accept:
    HKEX refuses bids more than 24 spreads from the nominal price, so 20 ticks under; US: 10% under."""
    if scheme == "hkex":
        price = bid
        for _ in range(20):
            price = tick_below(price, scheme)
        return price
    return round_to_tick(bid * Decimal("0.90"), scheme, "down")


async def run_broker_check(settings: Settings, pool, *, symbol: str | None, real_money_ok: bool,
                           clock=None) -> tuple[int, str]:
    steps: list[Step] = []
    clock = clock or RealClock()

    async def step(name: str, coro, describe) -> object:
        t0 = time.perf_counter()
        try:
            value = await coro
        except Exception as exc:
            steps.append(Step(name, False, (time.perf_counter() - t0) * 1000, f"{type(exc).__name__}: {exc}"[:160]))
            raise
        steps.append(Step(name, True, (time.perf_counter() - t0) * 1000, describe(value)))
        return value

    services = None
    try:
        services = await step("connect", build_services(settings, pool, clock),
                              lambda s: f"{settings.config.broker} ({s.broker.environment})")
        broker = services.broker
        if broker.environment in REAL_MONEY_ENVIRONMENTS and not real_money_ok:
            steps.append(Step("real money", False, 0, f"the account is {broker.environment!r}: refusing to place "
                                                      f"an order; add --i-understand-real-money to go on"))
            return EXIT_CHECK_FAILED, table(steps)
        account = await step("account", broker.get_account(),
                             lambda a: f"{a.currency} cash {a.cash:,.2f}, buying power {a.buying_power:,.2f}")
        await step("positions", broker.get_positions(), lambda ps: f"{len(ps)} positions")
        if symbol is None:
            listed = await services.bar_store.instruments()
            symbol = listed[0].symbol if listed else ("0700" if settings.config.market.exchange == "HKEX" else "AAPL")
        instrument = await step("instrument", broker.get_instrument(symbol),
                                lambda i: f"{i.symbol} {i.name} lot {i.lot_size} {i.currency}")
        quote = await step("quote", broker.get_quote(symbol), lambda q: f"bid {q.bid} ask {q.ask} last {q.last}")
        now = clock.now()
        await step("daily bars", broker.get_bars(symbol, "1d", now - timedelta(days=30), now),
                   lambda bars: f"{len(bars)} bars, last {bars[-1].start:%Y-%m-%d}" if bars else "none")
        price = price_that_cannot_fill(quote.bid, instrument.tick_scheme)
        if price * instrument.lot_size > account.cash:
            steps.append(Step("limit buy", False, 0, f"one lot at {price} costs more than the cash"))
            return EXIT_CHECK_FAILED, table(steps)
        orders = OrderPath(pool, broker, clock, f"{settings.agent_id}-check")
        placed = await step("limit buy", orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.BUY,
                                                       quantity=instrument.lot_size, order_type=OrderType.LIMIT,
                                                       limit_price=price, intent="entry"),
                            lambda o: f"{o.client_order_id}: {o.status} {o.quantity} @ {price}"
                                      + (f" ({o.reason})" if o.reason else ""))
        if placed.status in ("rejected", "pending_submit", "filled"):
            steps[-1].ok = placed.status != "rejected" and placed.status != "pending_submit"
            if not steps[-1].ok:
                return EXIT_CHECK_FAILED, table(steps)
        found = await step("find by client id", broker.get_order_by_client_id(placed.client_order_id),
                           lambda r: f"{r.status.value}, {r.filled_quantity}/{r.quantity} filled" if r else "NOT FOUND")
        if found is None:
            steps[-1].ok = False
        await step("cancel", orders.cancel(placed.client_order_id), lambda ok: "accepted" if ok else "refused")
        final = None
        for _ in range(20):                       # a venue may take a moment to confirm
            final = await broker.get_order_by_client_id(placed.client_order_id)
            if final is not None and final.status in (OrderStatus.CANCELLED, OrderStatus.FILLED):
                break
            await asyncio.sleep(0.25)
        ok = final is not None and final.status is OrderStatus.CANCELLED
        steps.append(Step("confirmed cancelled", ok, 0, final.status.value if final else "order not found"))
        return (0 if all(s.ok for s in steps) else EXIT_CHECK_FAILED), table(steps)
    except Exception:
        return EXIT_CHECK_FAILED, table(steps)
    finally:
        if services is not None:
            await services.broker.disconnect()
