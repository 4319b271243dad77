"""The Trader: entries and exits for one cycle (or the monitor), each through the safety gate and the one order path.

Claude's tools, the rules engine (through the same tools) and the position monitor all trade through here, so an
entry is always judged by `safety.evaluate_entry` right before it is sent, an exit by `safety.evaluate_exit`, and
every outcome is recorded in `decisions`.
"""
from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import safety
from brokers.base import both
from core.calendar import MarketCalendar
from core.clock import Clock
from core.orders import OrderSide, OrderType
from core.state import TradingState
from execution.order_path import OrderPath
from execution.protection import INTENT as PROTECTIVE_STOP
from execution.protection import release_stops
from execution.portfolio import Portfolio, PortfolioSnapshot
from execution.store import Store

if TYPE_CHECKING:
    from brokers.base import BrokerClient
    from core.config_model import TradingConfig

log = logging.getLogger("catalyst.trader")


def risk_limits(t: "TradingConfig") -> safety.RiskLimits:
    """The safety gate's limits, from the `trading` section of the config."""
    return safety.RiskLimits(
        max_positions=t.max_positions, max_position_value=t.max_position_value,
        min_position_value=t.min_position_value, daily_loss_limit=t.daily_loss_limit,
        position_stop_loss_pct=t.position_stop_loss_pct, price_collar_pct=t.price_collar_pct,
        max_orders_per_cycle=t.max_orders_per_cycle, allow_reentry_same_day=t.allow_reentry_same_day,
        allow_margin=t.allow_margin,
        max_stop_distance_pct=t.max_stop_distance_pct, max_quote_age_seconds=t.max_quote_age_seconds)


class Trader:
    def __init__(self, *, broker: "BrokerClient", orders: OrderPath, portfolio: Portfolio, store: Store,
                 clock: Clock, calendar: MarketCalendar, trading: "TradingConfig", cycle_id: uuid.UUID | None,
                 engine: str, monitor_beat_limit: float | None = None) -> None:
        self.broker = broker
        self.orders = orders
        self.portfolio = portfolio
        self.store = store
        self.clock = clock
        self.calendar = calendar
        self.trading = trading
        self.cycle_id = cycle_id
        self.engine = engine
        self.monitor_beat_limit = monitor_beat_limit      # None: the daemon is not required
        self.orders_placed = 0

    # ------------------------------------------------------------------ the gate's inputs
    def limits(self) -> safety.RiskLimits:
        return risk_limits(self.trading)

    def market_status(self) -> safety.MarketStatus:
        state = self.calendar.state(self.clock.now())
        return safety.MarketStatus(status=state.status, next_open=state.next_open)

    async def risk_context(self, symbol: str) -> tuple[safety.RiskContext, PortfolioSnapshot]:
        snap = await self.portfolio.snapshot()
        quote = await self.broker.get_quote(symbol)
        instrument = await self.broker.get_instrument(symbol)
        ctx = safety.RiskContext(
            now=self.clock.now(), account=snap.account, positions=snap.broker_positions(),
            realized_pnl_today=snap.realized_pnl_today, unrealized_pnl=snap.unrealized_pnl, quote=quote,
            instrument=instrument, market=self.market_status(), entries_today=snap.entries_today,
            orders_this_cycle=self.orders_placed, trading_state=snap.stored_state,
            pending_buy_value=Decimal(0),   # the broker's buying power already reserves open buy orders
            working_entries=await self._working_entries(snap, symbol, quote),
            monitor_beat_age=await self._beat_age(), monitor_beat_limit=self.monitor_beat_limit)
        return ctx, snap

    async def _beat_age(self) -> float | None:
        if self.monitor_beat_limit is None:
            return None
        last = await self.store.last_beat()
        return None if last is None else (self.clock.now() - last).total_seconds()

    async def _working_entries(self, snap: PortfolioSnapshot, symbol: str, quote) -> list[safety.WorkingEntry]:
        """Entry orders still working, priced at their limit (a market order at its symbol's last price)."""
        entries = [o for o in snap.working_orders if o["side"] == "buy"]
        unpriced = sorted({o["symbol"] for o in entries if o["limit_price"] is None} - {symbol})
        last = {symbol: quote.last}
        if unpriced:
            last.update({s: q.last for s, q in (await self.broker.get_quotes(unpriced)).items()})
        out = []
        for o in entries:
            price = o["limit_price"] if o["limit_price"] is not None else last.get(o["symbol"])
            if price is None or price <= 0:
                price = o["stop_loss"] / (1 - self.trading.position_stop_loss_pct) if o["stop_loss"] else None
            if price is not None:
                out.append(safety.WorkingEntry(o["symbol"], o["quantity"] - o["filled_quantity"], Decimal(price),
                                               o["stop_loss"]))
        return out

    def intent(self, *, symbol: str, quantity: int | None, value: Decimal | None, order_type: str | None,
               limit_price: Decimal | None, stop_loss: Decimal | None,
               take_profit: Decimal | None) -> safety.EntryIntent:
        return safety.EntryIntent(symbol=symbol, side=OrderSide.BUY, quantity=quantity, notional=value,
                                  order_type=OrderType(order_type or self.trading.default_order_type),
                                  limit_price=limit_price, stop_loss=stop_loss, take_profit=take_profit)

    # ------------------------------------------------------------------ entries
    async def check_entry(self, intent: safety.EntryIntent) -> safety.Verdict:
        """The verdict the gate would give now (advice: `enter` computes it again itself)."""
        ctx, _ = await self.risk_context(intent.symbol)
        return safety.evaluate_entry(intent, ctx, self.limits())

    async def enter(self, intent: safety.EntryIntent, reasoning: str, *, requested: dict | None = None) -> dict:
        ctx, _ = await self.risk_context(intent.symbol)
        verdict = safety.evaluate_entry(intent, ctx, self.limits())   # computed here, whatever check_risk said
        if not verdict.approved:
            await self.record_decision(intent.symbol, "refused", reasoning, verdict=verdict.to_dict(),
                                       details={"requested": requested or {}})
            return {"status": "refused", **verdict.to_dict()}
        outcome = await self.orders.submit(
            cycle_id=self.cycle_id, symbol=intent.symbol, side=OrderSide.BUY, quantity=verdict.adjusted_quantity,
            order_type=intent.order_type,
            limit_price=verdict.limit_price if intent.order_type is OrderType.LIMIT else None,
            stop_loss=verdict.stop_loss, take_profit=intent.take_profit, intent="entry")
        if outcome.accepted:
            self.orders_placed += 1
        await self.record_decision(intent.symbol, "buy" if outcome.accepted else "rejected", reasoning,
                                   verdict=verdict.to_dict(), details={"order": outcome.to_dict()})
        return {"status": outcome.status, "order": outcome.to_dict(), "verdict": verdict.to_dict()}

    # ------------------------------------------------------------------ exits
    async def exit_position(self, symbol: str, quantity: int | None, reason: str, intent: str = "exit") -> dict:
        """Sell a position through the one order path. Used by close_position, close_all and the monitor."""
        market = self.market_status()
        # this symbol's position only (an exit's cost stays flat in the book), read with our working orders for it
        held, working = await both(self.broker, self.broker.get_position(symbol), self.store.working_orders(symbol))
        instrument = await self.broker.get_instrument(symbol)
        verdict = safety.evaluate_exit(symbol, quantity, held, instrument, market)
        if not verdict.approved:
            await self.record_decision(symbol, "exit_refused", reason, verdict=verdict.to_dict())
            return {"status": "refused", **verdict.to_dict()}
        if any(o["intent"] == PROTECTIVE_STOP for o in working):
            # the protective stop at the broker goes first, so the two never both sell
            released, clear = await release_stops(self.orders, self.store, symbol)
            held = await self.broker.get_position(symbol)
            if held is None:
                text = f"the protective stop at the broker sold {symbol} before this exit"
                await self.record_decision(symbol, "closed_by_stop", reason, details={"detail": text})
                return {"status": "closed_by_broker_stop", "detail": text}
            if not clear:
                text = (f"the protective stop for {symbol} could not be cancelled yet (triggered or cancel pending); "
                        f"not sending another sell")
                await self.record_decision(symbol, "exit_in_progress", reason, details={"detail": text})
                return {"status": "exit_in_progress", "detail": text}
            verdict = safety.evaluate_exit(symbol, quantity, held, instrument, market)
            if not verdict.approved:
                await self.record_decision(symbol, "exit_refused", reason, verdict=verdict.to_dict())
                return {"status": "refused", **verdict.to_dict(), "cancelled_stops": released}
            working = [o for o in working if o["intent"] != PROTECTIVE_STOP]
        # A closing position stops buying; an exit already working is not doubled.
        cancelled = []
        for o in working:
            if o["side"] == "buy" and await self.orders.cancel(o["client_order_id"]):
                cancelled.append(o["client_order_id"])
        sells = [o for o in working if o["side"] == "sell"]
        if sells:
            await self.orders.sync(sells[-1]["client_order_id"])
            text = (f"an exit for {symbol} is already working ({sells[-1]['client_order_id']}, "
                    f"{sells[-1]['filled_quantity']}/{sells[-1]['quantity']} filled); not sending another")
            await self.record_decision(symbol, "exit_in_progress", reason,
                                       details={"working": sells[-1]["client_order_id"], "cancelled_buys": cancelled})
            return {"status": "exit_in_progress", "detail": text, "cancelled_buy_orders": cancelled}
        if cancelled:                              # a cancelled entry may have filled more before it stopped
            held = await self.broker.get_position(symbol)
            verdict = safety.evaluate_exit(symbol, quantity, held, instrument, market)
            if not verdict.approved:
                await self.record_decision(symbol, "exit_refused", reason, verdict=verdict.to_dict())
                return {"status": "refused", **verdict.to_dict(), "cancelled_buy_orders": cancelled}
        outcome = await self.orders.submit(cycle_id=self.cycle_id, symbol=symbol, side=OrderSide.SELL,
                                           quantity=verdict.adjusted_quantity, order_type=OrderType.MARKET,
                                           intent=intent)
        if outcome.accepted:
            self.orders_placed += 1
        await self.record_decision(symbol, "close" if outcome.accepted else "exit_rejected", reason,
                                   verdict=verdict.to_dict(), details={"order": outcome.to_dict(), "intent": intent})
        return {"status": outcome.status, "order": outcome.to_dict()}

    async def close_all(self, reason: str) -> dict:
        """The kill switch: cancel every working order, HALT new entries, exit every position."""
        cancelled = []
        for o in await self.store.working_orders():
            if await self.orders.cancel(o["client_order_id"]):
                cancelled.append(o["client_order_id"])
        await self.store.set_trading_state(TradingState.HALTED, f"kill switch (close_all): {reason}", self.engine)
        results = {}
        for p in await self.broker.get_positions():
            results[p.symbol] = await self.exit_position(p.symbol, None, reason, intent="kill_switch")
        return {"cancelled_orders": cancelled, "exits": results}

    # ------------------------------------------------------------------ the record
    async def record_decision(self, symbol: str | None, action: str, reasoning: str, *, verdict: dict | None = None,
                              details: dict[str, Any] | None = None) -> int:
        return await self.store.record_decision(cycle_id=self.cycle_id, engine=self.engine, symbol=symbol,
                                                action=action, reasoning=reasoning, verdict=verdict, details=details)
