"""Protective stops at the broker: one working sell STOP order per open position, so a position stays protected
while our machine, the daemon or the network is down.

The level is `signals.protective_level` (the highest price at which a price-only strong exit fires: the recorded
stop, stop_loss_strong, or the trailing stop once it protects a gain), rounded down onto the tick grid; the stop
holds the whole position. `ensure()` brings the broker in line with that, for every open position:
  none working                -> place one (through the order path: write-ahead row, our client id, intent
                                 'protective_stop'; a refusal is reported and tried again on the next call)
  one, lower than wanted      -> raise it: cancel, then place the new level (only when the rise is at least
                                 RAISE_STEP of the price, so a slowly rising high does not churn orders)
  one, wrong quantity         -> replace it (a partial exit or an added lot)
  more than one               -> keep the newest, cancel the rest
  an exit already working     -> leave the position alone (the exit owns its shares)
  the price already through   -> no stop (the venue would refuse it or sell at once; the monitor exits)
Cancel-then-place never leaves two stops selling the same shares; a cancel the venue has not confirmed yet stops
the replacement until the next call. `release_stops(orders, store, symbol)` cancels a position's stops before any other exit (the
monitor's, a tool's, the close cycle's): the two never both sell.

Called by the monitor on every pass (so a rising trailing stop follows the high), after reconciliation (a stop
that went missing is restored) and by the daemon at start. Where the venue holds no stop orders
(`broker.supports_stop_orders()` False) or `monitor.broker_stops` is off, nothing is placed and `active` says so:
heartbeat reports those positions as protected only by the monitor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import signals
from core.orders import OrderSide, OrderStatus, OrderType
from core.ticks import round_to_tick
from execution.order_path import OrderPath
from execution.store import Store

if TYPE_CHECKING:
    from brokers.base import BrokerClient

log = logging.getLogger("catalyst.protection")

INTENT = "protective_stop"
RAISE_STEP = Decimal("0.002")       # a stop is raised when the new level is at least 0.2% of the price higher


@dataclass
class ProtectionReport:
    placed: list[str] = field(default_factory=list)
    raised: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.placed or self.raised or self.cancelled)


class Protection:
    def __init__(self, *, broker: "BrokerClient", orders: OrderPath, store: Store,
                 thresholds: signals.SignalThresholds, enabled: bool = True) -> None:
        self.broker = broker
        self.orders = orders
        self.store = store
        self.thresholds = thresholds
        self.enabled = enabled
        self._instruments: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        """True when positions are protected at the broker (the venue holds stops and the config wants them)."""
        return self.enabled and self.broker.supports_stop_orders()

    async def level(self, row: Mapping[str, Any], high_water: Decimal | None = None) -> Decimal:
        """The stop price for a position row (positions_to_monitor), on the tick grid."""
        hwm = high_water or row["high_water_mark"] or row["avg_entry_price"]
        view = signals.PositionView(symbol=row["symbol"], quantity=row["quantity"], entry_price=row["avg_entry_price"],
                                    price=hwm, high_water=max(hwm, row["avg_entry_price"]),
                                    stop_loss=row["stop_loss"], take_profit=row["take_profit"])
        raw = signals.protective_level(view, self.thresholds)
        scheme = (await self._instrument(row["symbol"])).tick_scheme
        return round_to_tick(raw, scheme, "down")

    async def ensure(self, rows: Sequence[Mapping[str, Any]] | None = None, *,
                     prices: Mapping[str, Decimal] | None = None,
                     high_water: Mapping[int, Decimal] | None = None) -> ProtectionReport:
        """Bring the broker's protective stops in line with the open positions (see the module doc). `prices`: the
        latest price per symbol where known; `high_water`: raised high-water marks not yet stored (position_id)."""
        report = ProtectionReport()
        if not self.active:
            return report
        if rows is None:
            rows = await self.store.positions_to_monitor()
        stops = await self.store.working_stops()
        open_symbols = {r["symbol"] for r in rows}
        for symbol, working in stops.items():           # stops whose position is gone (reconciliation also does it)
            if symbol not in open_symbols:
                for o in working:
                    await self._cancel(o["client_order_id"], report, f"{symbol}: no open position")
        for row in rows:
            symbol = row["symbol"]
            try:
                await self._ensure_one(row, stops.get(symbol, []), report, prices or {}, high_water or {})
            except Exception as exc:         # one position's trouble never stops the others' protection
                report.errors.append(f"{symbol}: {type(exc).__name__}: {exc}")
                log.error("protective stop for %s: %s", symbol, exc)
        if report.changed or report.errors:
            log.info("protective stops: %d placed, %d raised, %d cancelled, %d errors", len(report.placed),
                     len(report.raised), len(report.cancelled), len(report.errors))
        return report

    # ------------------------------------------------------------ one position
    async def _ensure_one(self, row, working: list, report: ProtectionReport, prices, high_water) -> None:
        symbol = row["symbol"]
        if row["exit_working"]:
            report.skipped.append(f"{symbol}: an exit is working")
            return
        level = await self.level(row, high_water.get(row["position_id"]))
        price = prices.get(symbol)
        if len(working) > 1:                         # keep the newest
            for o in working[:-1]:
                await self._cancel(o["client_order_id"], report, f"{symbol}: a second protective stop")
            working = working[-1:]
        if working:
            o = working[0]
            if o["status"] == OrderStatus.CANCEL_PENDING.value:
                report.skipped.append(f"{symbol}: a cancel is pending at the broker")
                return
            remaining = o["quantity"] - o["filled_quantity"]
            if o["filled_quantity"]:
                report.skipped.append(f"{symbol}: the stop has triggered and is filling")
                return
            if remaining == row["quantity"] and level < o["stop_price"] * (1 + RAISE_STEP):
                return                               # in place (a rise under RAISE_STEP is not worth an order)
            if price is not None and price <= level:
                report.skipped.append(f"{symbol}: price {price} is at or below the new level {level}; keeping "
                                      f"{o['stop_price']}")
                return
            if not await self._cancel(o["client_order_id"], report,
                                      f"{symbol}: replaced by a stop at {level} for {row['quantity']}"):
                return
            placed = await self._place(row, level, report)
            if placed:
                report.raised.append(f"{symbol}: {o['stop_price']} -> {level}")
            return
        if price is not None and price <= level:
            report.skipped.append(f"{symbol}: price {price} is at or below the stop level {level}; the monitor exits")
            return
        await self._place(row, level, report)

    async def _place(self, row, level: Decimal, report: ProtectionReport) -> bool:
        symbol = row["symbol"]
        outcome = await self.orders.submit(cycle_id=None, symbol=symbol, side=OrderSide.SELL,
                                           quantity=row["quantity"], order_type=OrderType.STOP, stop_price=level,
                                           intent=INTENT)
        if not outcome.accepted:
            report.errors.append(f"{symbol}: protective stop at {level} not placed: {outcome.reason}")
            log.warning("protective stop for %s at %s not placed: %s", symbol, level, outcome.reason)
            return False
        report.placed.append(f"{symbol}: stop {row['quantity']} @ {level} ({outcome.client_order_id})")
        return True

    async def _cancel(self, client_order_id: str, report: ProtectionReport, why: str) -> bool:
        await self.orders.cancel(client_order_id)
        status = await self._status(client_order_id)
        if status is OrderStatus.CANCELLED:
            report.cancelled.append(f"{client_order_id} ({why})")
            return True
        report.skipped.append(f"{client_order_id}: not cancelled yet ({status.value if status else 'unknown'})")
        return False

    async def _status(self, client_order_id: str) -> OrderStatus | None:
        return await _status(self.store, client_order_id)

    async def _instrument(self, symbol: str):
        inst = self._instruments.get(symbol)
        if inst is None:
            inst = self._instruments[symbol] = await self.broker.get_instrument(symbol)
        return inst


async def release_stops(orders: OrderPath, store: Store, symbol: str) -> tuple[list[str], bool]:
    """Cancel every protective stop of `symbol` before another exit sells. Returns the ids cancelled and whether
    they are all out of the way (False: one triggered, filled or is not cancelled yet - re-read the position)."""
    cancelled, clear = [], True
    for o in await store.working_orders(symbol):
        if o["intent"] != INTENT:
            continue
        await orders.cancel(o["client_order_id"])
        status = await _status(store, o["client_order_id"])
        if status is OrderStatus.CANCELLED:
            cancelled.append(o["client_order_id"])
        else:
            clear = False
            log.warning("protective stop %s of %s not cancelled (%s)", o["client_order_id"], symbol,
                        status.value if status else "unknown")
    return cancelled, clear


async def _status(store: Store, client_order_id: str) -> OrderStatus | None:
    value = await store.pool.fetchval("SELECT status FROM orders WHERE client_order_id = $1", client_order_id)
    return OrderStatus(value) if value else None
