"""The account as the agent sees it: the broker's truth joined with our records (stops, entry times, P&L)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from brokers.base import both
from core.account import Account, Position
from core.calendar import MarketCalendar
from core.clock import Clock
from core.state import TradingState
from execution.store import LATEST_STATE, REALIZED_SINCE, WORKING, state_from

if TYPE_CHECKING:
    import asyncpg

    from brokers.base import BrokerClient


@dataclass(frozen=True)
class HeldPosition:
    symbol: str
    quantity: int
    avg_price: Decimal
    market_price: Decimal | None
    position_id: int | None = None
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    opened_at: datetime | None = None
    high_water_mark: Decimal | None = None

    @property
    def unrealized_pnl(self) -> Decimal:
        if self.market_price is None:
            return Decimal(0)
        return (self.market_price - self.avg_price) * self.quantity

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"symbol": self.symbol, "quantity": self.quantity, "avg_price": str(self.avg_price)}
        if self.market_price is not None:
            d["price"] = str(self.market_price)
            d["unrealized_pnl"] = str(self.unrealized_pnl.quantize(Decimal("0.01")))
            d["pnl_pct"] = round(float(self.market_price / self.avg_price - 1), 4) if self.avg_price else None
        if self.stop_loss is not None:
            d["stop_loss"] = str(self.stop_loss)
        if self.take_profit is not None:
            d["take_profit"] = str(self.take_profit)
        if self.high_water_mark is not None:
            d["high_since_entry"] = str(self.high_water_mark)
        return d


@dataclass(frozen=True)
class PortfolioSnapshot:
    account: Account
    positions: tuple[HeldPosition, ...]
    realized_pnl_today: Decimal
    entries_today: frozenset[str]
    open_orders: tuple[dict, ...] = field(default_factory=tuple)
    pending_buy_value: Decimal = Decimal(0)
    stored_state: TradingState = TradingState.ACTIVE      # as recorded in agent_state (ACTIVE when none is)
    working_orders: tuple[dict, ...] = ()                 # the same orders with typed values (Decimal prices)

    @property
    def unrealized_pnl(self) -> Decimal:
        return sum((p.unrealized_pnl for p in self.positions), Decimal(0))

    @property
    def pnl_today(self) -> Decimal:
        return self.realized_pnl_today + self.unrealized_pnl

    def broker_positions(self) -> list[Position]:
        return [Position(p.symbol, p.quantity, p.avg_price, p.market_price) for p in self.positions]


# Everything of ours a snapshot needs, in one statement (one round trip, one consistent view).
_OURS = """SELECT
    ARRAY(SELECT (position_id, symbol, stop_loss, take_profit, opened_at, high_water_mark) FROM positions
          WHERE agent_id = $1 AND status = 'open') AS positions,
    (""" + REALIZED_SINCE + """) AS realized,
    ARRAY(SELECT DISTINCT symbol FROM orders WHERE agent_id = $1 AND intent = 'entry' AND created_at >= $2
          AND status <> 'rejected') AS entries,
    ARRAY(SELECT (client_order_id, symbol, side, quantity, filled_quantity, limit_price, status, intent, stop_loss)
          FROM orders WHERE agent_id = $1 AND status IN """ + WORKING + """
          ORDER BY order_id) AS open_orders,
    (""" + LATEST_STATE + """) AS state"""
_ORDER_FIELDS = ("client_order_id", "symbol", "side", "quantity", "filled_quantity", "limit_price", "status", "intent",
                 "stop_loss")


class Portfolio:
    def __init__(self, pool: "asyncpg.Pool", broker: "BrokerClient", clock: Clock, calendar: MarketCalendar,
                 agent_id: str, *, reads=None, held_high_water=None) -> None:
        self.pool = pool
        self.reads = reads if reads is not None else pool        # see execution/store.py
        # position_id -> the high-water mark a held monitor status row will raise it to (Store.held_high_water)
        self.held_high_water = held_high_water
        self.broker = broker
        self.clock = clock
        self.calendar = calendar
        self.agent_id = agent_id

    async def snapshot(self) -> PortfolioSnapshot:
        """The broker's account and positions joined with our records; our one read runs alongside the broker's
        (after it, when the broker's books are in our database: brokers.base.both)."""
        now = self.clock.now()
        (account, broker_positions), ours = await both(
            self.broker, self.broker.get_account_and_positions(),
            self.reads.fetchrow(_OURS, self.agent_id, self.calendar.day_start(now)))
        return _snapshot(account, broker_positions, ours, self.held_high_water)


def _snapshot(account: Account, broker_positions: list[Position], ours, held_high_water=None) -> PortfolioSnapshot:
    records = {r[1]: r for r in ours["positions"]}

    def held(p: Position) -> HeldPosition:
        if p.symbol not in records:            # the broker holds it, we have no record (reconciliation adopts it)
            return HeldPosition(p.symbol, p.quantity, p.avg_price, p.market_price)
        position_id, _symbol, stop_loss, take_profit, opened_at, high_water = records[p.symbol]
        pending = held_high_water(position_id) if held_high_water is not None else None
        if pending is not None and (high_water is None or pending > high_water):
            high_water = pending               # as the held status row's write will raise it
        return HeldPosition(p.symbol, p.quantity, p.avg_price, p.market_price, position_id, stop_loss, take_profit,
                            opened_at, high_water)

    open_orders = [dict(zip(_ORDER_FIELDS, o)) for o in ours["open_orders"]]
    pending_buy = Decimal(0)
    for o in open_orders:
        if o["side"] == "buy" and o["limit_price"] is not None:
            pending_buy += o["limit_price"] * (o["quantity"] - o["filled_quantity"])
    return PortfolioSnapshot(
        account=account, positions=tuple(held(p) for p in broker_positions), realized_pnl_today=ours["realized"],
        entries_today=frozenset(ours["entries"]),
        open_orders=tuple({k: (str(v) if isinstance(v, Decimal) else v) for k, v in o.items() if v is not None}
                          for o in open_orders),
        pending_buy_value=pending_buy,
        working_orders=tuple(open_orders),
        stored_state=state_from(ours["state"]))
