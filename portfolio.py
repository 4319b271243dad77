"""The account as the agent sees it: the broker's truth joined with our records (stops, entry times, P&L)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from brokers.base import Account, Position

if TYPE_CHECKING:
    from services import Services


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
        return d


@dataclass(frozen=True)
class PortfolioSnapshot:
    account: Account
    positions: tuple[HeldPosition, ...]
    realized_pnl_today: Decimal
    entries_today: frozenset[str]
    open_orders: tuple[dict, ...] = field(default_factory=tuple)
    pending_buy_value: Decimal = Decimal(0)

    @property
    def unrealized_pnl(self) -> Decimal:
        return sum((p.unrealized_pnl for p in self.positions), Decimal(0))

    @property
    def pnl_today(self) -> Decimal:
        return self.realized_pnl_today + self.unrealized_pnl

    def broker_positions(self) -> list[Position]:
        return [Position(p.symbol, p.quantity, p.avg_price, p.market_price) for p in self.positions]


def trading_day_start(services: "Services", now: datetime) -> datetime:
    """Midnight of the exchange's local date, in UTC: 'today' for P&L and one-entry-per-day."""
    local = now.astimezone(services.calendar.tz)
    return datetime.combine(local.date(), time(0), tzinfo=services.calendar.tz).astimezone(timezone.utc)


async def snapshot(services: "Services") -> PortfolioSnapshot:
    """The broker's account and positions with our records; our four reads run alongside the broker's two (which
    stay one after the other: a broker session is not assumed to take concurrent calls)."""
    import asyncio
    now = services.clock.now()
    day_start = trading_day_start(services, now)
    pool, agent = services.pool, services.agent_id

    async def broker_view():
        return await services.broker.get_account(), await services.broker.get_positions()

    (account, broker_positions), records, realized, entries, open_orders = await asyncio.gather(
        broker_view(),
        pool.fetch("SELECT position_id, symbol, stop_loss, take_profit, opened_at FROM positions "
                   "WHERE agent_id = $1 AND status = 'open'", agent),
        pool.fetchval("SELECT coalesce(sum(realized_pnl), 0) FROM positions WHERE agent_id = $1 AND "
                      "((status = 'closed' AND closed_at >= $2) OR (status = 'open' AND opened_at >= $2))",
                      agent, day_start),
        pool.fetch("SELECT DISTINCT symbol FROM orders WHERE agent_id = $1 AND intent = 'entry' AND created_at >= $2 "
                   "AND status NOT IN ('rejected')", agent, day_start),
        pool.fetch("SELECT client_order_id, symbol, side, quantity, filled_quantity, limit_price, status, intent "
                   "FROM orders WHERE agent_id = $1 AND status IN ('pending_submit', 'submitted', 'partially_filled') "
                   "ORDER BY order_id", agent))
    rows = {r["symbol"]: r for r in records}
    held = tuple(HeldPosition(p.symbol, p.quantity, p.avg_price, p.market_price,
                              rows[p.symbol]["position_id"] if p.symbol in rows else None,
                              rows[p.symbol]["stop_loss"] if p.symbol in rows else None,
                              rows[p.symbol]["take_profit"] if p.symbol in rows else None,
                              rows[p.symbol]["opened_at"] if p.symbol in rows else None)
                 for p in broker_positions)
    pending_buy = Decimal(0)
    for o in open_orders:
        if o["side"] == "buy" and o["limit_price"] is not None:
            pending_buy += o["limit_price"] * (o["quantity"] - o["filled_quantity"])
    return PortfolioSnapshot(
        account=account, positions=held, realized_pnl_today=realized, entries_today=frozenset(r["symbol"] for r in entries),
        open_orders=tuple({k: (str(v) if isinstance(v, Decimal) else v) for k, v in dict(o).items() if v is not None}
                          for o in open_orders),
        pending_buy_value=pending_buy)
