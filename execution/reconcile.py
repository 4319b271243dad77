"""Reconciliation: bring our records in line with the broker's truth (seed §10.1 "Position sync mismatch").

Run pre-market (`python startup_monitor.py`, cron) and at the start of every scan, trade and close cycle.

1. Orders left `pending_submit` (by a crash, or still being sent by another process) are looked up at the broker
   by client_order_id, however young: found -> recorded with its fills (so our own order is never mistaken for
   someone else's position); not found -> marked rejected ("never reached the broker") once older than a grace
   period (an order another process is sending right now is left alone); never resent.
2. Open orders are synced: fills that happened while nothing ran are recorded, positions follow from them.
3. Broker orders we have no row for: with our agent's client-id prefix they are ambiguous (we sent something we
   did not record); others are reported as foreign.
4. Positions are compared with the broker's, after the fills. A symbol that differs first has our working orders
   in it asked again by client id (another process may have just sent one) and the broker asked again; only a
   difference that survives that is corrected: missing here -> adopted (default stop) and
   ambiguous; held here but not at the broker -> closed (a stop filled at the broker, a manual close) and its open
   sell orders cancelled; quantity differs -> set to the broker's, ambiguous when the broker holds more.
   One `decisions` audit row (engine 'reconcile') per correction.
5. Protective stops at the broker (execution/protection.py) are brought in line: a missing one is placed again,
   one whose position is gone is cancelled. They are our orders like any other: synced in step 2 (a stop that
   fired while nothing ran books its fills and closes its position with its P&L), never unknown, never resent.
6. Anything ambiguous sets the trading state to REDUCING (no new entries) with the exact reasons. It stays so
   until a person has looked and runs `python startup_monitor.py --resume "why it is fine"` (also clears HALTED).

Exit codes of the command: 0 in sync (corrections, if any, were applied and audited), 5 action needed
(ambiguous: entries stopped), 2 config, 3 database, 4 broker unreachable, 75 another run of this agent is busy.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from core.clock import Clock
from core.errors import BrokerError, BrokerUnavailable
from core.orders import client_id_prefix
from core.state import TradingState
from core.ticks import round_to_tick
from execution.order_path import OrderPath
from execution.store import LATEST_STATE, WORKING, Store, state_from

if TYPE_CHECKING:
    import asyncpg

    from brokers.base import BrokerClient
    from execution.protection import Protection

log = logging.getLogger("catalyst.reconcile")

EXIT_ACTION_NEEDED = 5
PENDING_GRACE = timedelta(seconds=60)


@dataclass
class ReconcileReport:
    agent_id: str
    resolved: list[str] = field(default_factory=list)        # pending_submit orders resolved, with how
    fills_recorded: int = 0
    corrections: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)       # protective stops placed again or replaced
    foreign_orders: list[str] = field(default_factory=list)
    state: str = "ACTIVE"
    broker_error: str | None = None

    @property
    def clean(self) -> bool:
        return not self.ambiguous and self.broker_error is None

    @property
    def exit_code(self) -> int:
        if self.broker_error is not None:
            return 4
        return EXIT_ACTION_NEEDED if self.ambiguous else 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], 0) or k == "state"}

    def render(self) -> str:
        if self.broker_error:
            return f"Reconciliation for {self.agent_id}: broker unreachable ({self.broker_error}); nothing changed"
        head = (f"Reconciliation for {self.agent_id}: "
                + ("IN SYNC" if not self.ambiguous else "ACTION NEEDED — new entries stopped (REDUCING)"))
        lines = [head, f"  pending orders resolved: {len(self.resolved)}; fills recorded: {self.fills_recorded}; "
                       f"corrections: {len(self.corrections)}; orders cancelled: {len(self.cancelled)}; "
                       f"trading state: {self.state}"]
        lines += [f"  resolved   {x}" for x in self.resolved]
        lines += [f"  corrected  {x}" for x in self.corrections]
        lines += [f"  cancelled  {x}" for x in self.cancelled]
        lines += [f"  protected  {x}" for x in self.protected]
        lines += [f"  foreign    {x}" for x in self.foreign_orders]
        lines += [f"  AMBIGUOUS  {x}" for x in self.ambiguous]
        return "\n".join(lines)


class Reconciler:
    def __init__(self, *, pool: "asyncpg.Pool", store: Store, reads=None, orders: OrderPath, broker: "BrokerClient",
                 clock: Clock, agent_id: str, stop_loss_pct: Decimal,
                 protection: "Protection | None" = None) -> None:
        self.pool = pool
        self.reads = reads if reads is not None else pool        # see execution/store.py
        self.store = store
        self.orders = orders
        self.broker = broker
        self.clock = clock
        self.agent_id = agent_id
        self.stop_loss_pct = stop_loss_pct
        self.protection = protection
        # Crash-only steps (1 and 3 below) look for what a process that died or another program left: a cron run
        # is one process per cycle, so they run every cycle there; a process that runs many cycles (replay, day,
        # eval: it holds its agent's lock throughout) runs them on its first reconciliation, and step 1 again
        # whenever its own order path left a write-ahead row unsettled (or a young one was left for its sender).
        self._swept = False
        self._recheck_pending = False
        self._last_health: tuple | None = None      # the last service_health row this process wrote
        self._last_seen: dict | None = None         # the report it was made from

    async def run(self, *, grace: timedelta = PENDING_GRACE) -> ReconcileReport:
        return await _reconcile(self, grace)


# Ours, in one statement: open positions, working sells, the recorded state, and every working order (step 2).
_RECORDS = """SELECT ARRAY(SELECT (position_id, symbol, quantity) FROM positions
                           WHERE agent_id = $1 AND status = 'open') AS positions,
                     ARRAY(SELECT (client_order_id, symbol) FROM orders WHERE agent_id = $1 AND side = 'sell'
                           AND status IN """ + WORKING + """) AS sells,
                     (""" + LATEST_STATE + """) AS state,
                     ARRAY(SELECT (client_order_id, status, filled_quantity) FROM orders WHERE agent_id = $1
                           AND status IN """ + WORKING + """ ORDER BY order_id) AS working"""


async def _positions(services: Reconciler, records=None) -> tuple[dict, Any, dict]:
    """The broker's positions, and ours with our working sells and the recorded state (one statement; `records`
    when read since the last change of ours: a difference it shows is checked again, so an earlier read of ours
    can cost a second look, never a wrong correction)."""
    held = {p.symbol: p for p in await services.broker.get_positions()}
    if records is None:
        records = await services.reads.fetchrow(_RECORDS, services.agent_id)
    ours = {symbol: {"position_id": pid, "symbol": symbol, "quantity": qty}
            for pid, symbol, qty in records["positions"]}
    return held, records, ours


async def _reconcile(services: Reconciler, grace: timedelta) -> ReconcileReport:
    report = ReconcileReport(agent_id=services.agent_id)
    pool, broker, now = services.pool, services.broker, services.clock.now()
    fills_before = services.orders.fills_recorded
    first = not services._swept
    try:
        # 1. orders a crash left between the write-ahead row and the broker's answer
        pending = first or services._recheck_pending or services.orders.unsettled
        services._recheck_pending = False
        for row in await pool.fetch("SELECT client_order_id, symbol, side, quantity, created_at FROM orders "
                                    "WHERE agent_id = $1 AND status = 'pending_submit' ORDER BY order_id",
                                    services.agent_id) if pending else ():
            coid = row["client_order_id"]
            result = await broker.get_order_by_client_id(coid)
            if result is not None:
                outcome = await services.orders.record_result(result)
                report.resolved.append(f"{coid}: reached the broker ({outcome.status}, "
                                       f"{outcome.filled_quantity}/{outcome.quantity} filled); recorded")
            elif row["created_at"] > now - grace:
                services._recheck_pending = True
                continue                   # young: its process may be sending it right now
            else:
                await pool.execute("UPDATE orders SET status = 'rejected', reason = $2, updated_at = $3 "
                                   "WHERE client_order_id = $1", coid,
                                   "never reached the broker: the process stopped before sending it; not resent",
                                   now)
                services.orders.unsettled.discard(coid)
                report.resolved.append(f"{coid}: never reached the broker; marked rejected, not resent")
            await services.store.audit(row["symbol"], "reconcile_pending_order", report.resolved[-1],
                         {"client_order_id": coid})
        # 2. open orders: fills while nothing ran
        records = await services.reads.fetchrow(_RECORDS, services.agent_id)
        if await services.orders.sync_open_orders(records["working"]):
            records = None                 # something was recorded: step 4 reads ours again
        # 3. broker orders we never recorded
        at_broker = await broker.get_orders(open_only=True) if first else []
        known = {r["client_order_id"] for r in await pool.fetch(
            "SELECT client_order_id FROM orders WHERE agent_id = $1 AND client_order_id = ANY($2::text[])",
            services.agent_id, [o.client_order_id for o in at_broker])} if at_broker else set()
        prefix = client_id_prefix(services.agent_id)
        for o in at_broker:
            if o.client_order_id in known:
                continue
            text = f"{o.client_order_id}: {o.side.value} {o.quantity} {o.symbol} {o.status.value}"
            if o.client_order_id.startswith(prefix):
                report.ambiguous.append(f"open broker order {text} carries our client-id prefix but has no "
                                        f"orders row")
            else:
                report.foreign_orders.append(text)
        # 4. positions
        held, records, ours = await _positions(services, records)
        differing = {s for s in set(held) | set(ours)
                     if s not in held or s not in ours or held[s].quantity != ours[s]["quantity"]}
        if differing:                      # our own orders in flight first (another process may have sent one)
            for coid in await pool.fetch(
                    f"SELECT client_order_id FROM orders WHERE agent_id = $1 AND symbol = ANY($2::text[]) "
                    f"AND status IN {WORKING} ORDER BY order_id", services.agent_id, sorted(differing)):
                await services.orders.sync(coid["client_order_id"])
            held, records, ours = await _positions(services)
        stop_pct = services.stop_loss_pct
        for symbol, p in held.items():
            row = ours.get(symbol)
            if row is None:
                inst = await broker.get_instrument(symbol)
                stop = round_to_tick(p.avg_price * (1 - stop_pct), inst.tick_scheme, "down")
                await pool.execute(
                    """INSERT INTO positions (agent_id, symbol, quantity, avg_entry_price, stop_loss, high_water_mark,
                           opened_at) VALUES ($1, $2, $3, $4, $5, $4, $6)""",
                    services.agent_id, symbol, p.quantity, p.avg_price, stop, now)
                text = (f"{symbol}: held at the broker ({p.quantity} @ {p.avg_price}) with no position here; adopted "
                        f"with a stop at {stop}")
                report.corrections.append(text)
                report.ambiguous.append(f"{symbol}: position of unknown origin ({p.quantity} shares); confirm it "
                                        f"is yours, then resume trading")
                await services.store.audit(symbol, "reconcile_adopted", text, {"broker_quantity": p.quantity,
                                                                           "avg_price": p.avg_price})
            elif row["quantity"] != p.quantity:
                await pool.execute("UPDATE positions SET quantity = $2 WHERE position_id = $1", row["position_id"],
                                   p.quantity)
                text = f"{symbol}: quantity {row['quantity']} here, {p.quantity} at the broker; set to {p.quantity}"
                report.corrections.append(text)
                if p.quantity > row["quantity"]:
                    report.ambiguous.append(f"{symbol}: the broker holds {p.quantity - row['quantity']} more shares "
                                            f"than any fill of ours explains")
                await services.store.audit(symbol, "reconcile_quantity", text,
                             {"was": row["quantity"], "broker": p.quantity, "position_id": row["position_id"]})
        for symbol, row in ours.items():
            if symbol in held:
                continue
            await pool.execute("UPDATE positions SET status = 'closed', quantity = 0, closed_at = $2, "
                               "exit_reason = 'closed_at_broker' WHERE position_id = $1", row["position_id"], now)
            text = (f"{symbol}: {row['quantity']} shares open here but none at the broker (a stop filled there or a "
                    f"manual close); position closed, realised P&L unknown to us")
            report.corrections.append(text)
            await services.store.audit(symbol, "reconcile_closed", text, {"position_id": row["position_id"],
                                                                      "quantity": row["quantity"]})
        # 5. sell orders for positions that no longer exist
        for coid, symbol in records["sells"]:
            if symbol not in held:
                await services.orders.cancel(coid)
                report.cancelled.append(f"{coid} (sell {symbol}: no position any more)")
                await services.store.audit(symbol, "reconcile_cancel", report.cancelled[-1], {"client_order_id": coid})
        # 6. protective stops follow the positions (restored where one went missing)
        if services.protection is not None and services.protection.active:
            protected = await services.protection.ensure()
            report.protected += protected.placed + protected.raised
            report.protected += [f"NOT PLACED {e}" for e in protected.errors]
    except (BrokerUnavailable, BrokerError, OSError) as exc:
        report.broker_error = f"{type(exc).__name__}: {exc}"
        log.error("reconciliation stopped: %s", report.broker_error)
        report.state = (await services.store.trading_state()).value
        return report
    report.fills_recorded = services.orders.fills_recorded - fills_before
    services._swept = True

    state = state_from(records["state"])
    if report.ambiguous:
        await services.store.set_trading_state(TradingState.REDUCING,
                                               "reconciliation: " + "; ".join(report.ambiguous), "reconcile")
        state = TradingState.REDUCING
    report.state = state.value
    level = logging.WARNING if report.ambiguous else logging.INFO
    log.log(level, "reconciliation: %d resolved, %d fills, %d corrections, %d cancelled, %d ambiguous; state %s",
            len(report.resolved), report.fills_recorded, len(report.corrections), len(report.cancelled),
            len(report.ambiguous), report.state)
    from core.redaction import redact_row
    seen = report.to_dict()
    if seen != services._last_seen:        # the same report as last time makes the same health row
        health = ("degraded" if report.ambiguous else "healthy",
                  redact_row(json.loads(json.dumps(seen, default=str))))
        if health != services._last_health:    # a process running many cycles records each change, not each repeat
            # service_health is read by no SoleReads query (runtime/lane_pool.py): not counted as a change
            await getattr(pool, "execute_apart", pool.execute)(
                "INSERT INTO service_health (agent_id, service, status, details, checked_at) "
                "VALUES ($1, 'reconcile', $2, $3, $4)", services.agent_id, *health, now)
            services._last_health = health
        services._last_seen = seen
    return report
