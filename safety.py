"""The safety gate: pure functions from (intent, context, limits) to a verdict. No I/O, no clock of its own.

Every entry the agent makes — Claude, the rules engine, replay — is judged by `evaluate_entry`; `execute_trade`
runs it itself, whatever `check_risk` said before. Exits (`evaluate_exit`) are judged only on whether they can be
placed at all: entry limits (daily loss, position count, the per-cycle cap) never block a way out.

A verdict names every rule that failed, not just the first, so the model can fix everything in one retry.

Entry rules, in the order they are reported:
  trading_state        today's realised + unrealised P&L at or below -daily_loss_limit, or reconciliation found
                       something it could not explain: the agent is REDUCING — exits only.
  market_open          the exchange is in continuous trading now (not pre-open, lunch, closed or a holiday).
  monitor_watching     when the position monitor daemon is required, its last beat is recent enough: nobody
                       enters a position that nothing would watch.
  long_only            entries buy; exits go through close_position.
  currency             the instrument trades in the account's currency.
  already_held         one position per symbol (the stop and take-profit belong to one entry).
  entry_working        no second entry order while one for the symbol is still working (unfilled or partly).
  one_entry_per_day    no second entry in a symbol on the same trading day unless allow_reentry_same_day.
  max_positions        open positions plus symbols with a working entry stay at or below max_positions.
  orders_per_cycle     at most max_orders_per_cycle orders in one cycle.
  quote                a usable quote (positive prices) no older than max_quote_age_seconds.
  limit_price          a limit order carries a limit price.
  price_collar         a limit price within price_collar_pct of the last trade (fat-finger guard).
  stop_loss            every entry has a stop below the entry price and no further than max_stop_distance_pct;
                       when none is given, entry x (1 - position_stop_loss_pct).
  take_profit          if given, above the entry price.
  quantity             after rounding down to board lots and capping by max_position_value, buying power (never
                       more than cash less every working entry, unless allow_margin) and the loss budget left
                       today (every working entry and this one stopped out together may not take the day past
                       daily_loss_limit), at least one lot remains.
Committed exposure: working entry orders count with the open positions in every limit above.
  min_position_value   the position is worth at least min_position_value.
Adjustments (reported, not failures): quantity rounded down to lots or capped; limit and stop rounded onto the
tick grid (a buy limit down, the stop down).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Sequence

from core.account import Account, Position
from core.instruments import Instrument, Quote
from core.orders import OrderSide, OrderType
from core.state import TradingState
from core.ticks import is_on_tick, round_lots, round_to_tick

# Headroom kept when sizing against buying power: fees and a market order's slippage come on top of the price.
COST_BUFFER = Decimal("0.005")


@dataclass(frozen=True)
class RiskLimits:
    max_positions: int
    max_position_value: Decimal
    min_position_value: Decimal
    daily_loss_limit: Decimal
    position_stop_loss_pct: Decimal
    price_collar_pct: Decimal = Decimal("0.05")
    max_orders_per_cycle: int = 5
    allow_reentry_same_day: bool = False
    allow_margin: bool = False
    max_stop_distance_pct: Decimal = Decimal("0.10")
    max_quote_age_seconds: int = 300


@dataclass(frozen=True)
class MarketStatus:
    status: str                      # 'open' | 'lunch' | 'pre_open' | 'closed'
    next_open: datetime | None = None


@dataclass(frozen=True)
class EntryIntent:
    symbol: str
    side: OrderSide
    quantity: int | None             # shares, or
    notional: Decimal | None         # an amount of money to invest
    order_type: OrderType
    limit_price: Decimal | None = None
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None


@dataclass(frozen=True)
class WorkingEntry:
    """An entry order still working at the broker: what it may still buy, at what price, with which stop."""
    symbol: str
    quantity: int                    # shares not yet filled
    price: Decimal                   # its limit, or the last price for a market order
    stop_loss: Decimal | None = None

    @property
    def value(self) -> Decimal:
        return self.price * self.quantity

    def risk(self, default_stop_pct: Decimal) -> Decimal:
        """What it loses if it fills and is stopped out."""
        stop = self.stop_loss if self.stop_loss is not None else self.price * (1 - default_stop_pct)
        return max(self.price - stop, Decimal(0)) * self.quantity


@dataclass(frozen=True)
class RiskContext:
    now: datetime
    account: Account
    positions: Sequence[Position]
    realized_pnl_today: Decimal
    unrealized_pnl: Decimal
    quote: Quote
    instrument: Instrument
    market: MarketStatus
    entries_today: frozenset[str] = frozenset()
    orders_this_cycle: int = 0
    trading_state: TradingState = TradingState.ACTIVE   # as stored (reconciliation may have set REDUCING)
    pending_buy_value: Decimal = Decimal(0)              # open buy orders the buying power does not reserve
    working_entries: Sequence[WorkingEntry] = ()         # entry orders still working (committed exposure)
    monitor_beat_age: float | None = None                # seconds since the daemon's last beat (None: never)
    monitor_beat_limit: float | None = None              # None: the daemon is not required here


@dataclass(frozen=True)
class Failure:
    rule: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    approved: bool
    failures: tuple[Failure, ...] = ()
    adjusted_quantity: int = 0
    limit_price: Decimal | None = None
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    reference_price: Decimal | None = None
    adjustments: tuple[str, ...] = ()
    trading_state: TradingState = TradingState.ACTIVE

    @property
    def failed_rules(self) -> tuple[str, ...]:
        return tuple(f.rule for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"approved": self.approved, "quantity": self.adjusted_quantity,
                             "trading_state": self.trading_state.value}
        if self.failures:
            d["failed"] = [{"rule": f.rule, "reason": f.reason} for f in self.failures]
        for key in ("limit_price", "stop_loss", "take_profit", "reference_price"):
            value = getattr(self, key)
            if value is not None:
                d[key] = str(value)
        if self.adjustments:
            d["adjustments"] = list(self.adjustments)
        return d


def trading_state(realized_pnl_today: Decimal, unrealized_pnl: Decimal, limits: RiskLimits,
                  stored: TradingState = TradingState.ACTIVE) -> TradingState:
    """HALTED if stored so; REDUCING once today's loss reaches the limit or when reconciliation said so."""
    if stored is TradingState.HALTED:
        return stored
    if stored is TradingState.REDUCING or realized_pnl_today + unrealized_pnl <= -limits.daily_loss_limit:
        return TradingState.REDUCING
    return TradingState.ACTIVE


def _money(x: Decimal) -> str:
    return f"{x.quantize(Decimal('0.01'))}"


def stale_quote(now: datetime, quoted_at: datetime, market_status: str, max_age_seconds: int) -> str | None:
    """The fresh-quote rule: why a quote from `quoted_at` is too old to enter on at `now`, or None. Only while the
    market is open (a closed market's last price is the close, whatever its age)."""
    age = (now - quoted_at).total_seconds()
    if market_status != "open" or age <= max_age_seconds:
        return None
    return f"the last quote is {age:.0f}s old (limit {max_age_seconds}s)"


def evaluate_entry(intent: EntryIntent, ctx: RiskContext, limits: RiskLimits) -> Verdict:
    """Judge an entry. Pure: everything it needs is in its arguments."""
    fails: list[Failure] = []
    notes: list[str] = []
    fail = lambda rule, reason: fails.append(Failure(rule, reason))   # noqa: E731
    inst, quote = ctx.instrument, ctx.quote
    scheme = inst.tick_scheme

    state = trading_state(ctx.realized_pnl_today, ctx.unrealized_pnl, limits, ctx.trading_state)
    pnl = ctx.realized_pnl_today + ctx.unrealized_pnl
    if state is TradingState.HALTED:
        fail("trading_state", "HALTED: the kill switch ran; no new entries until an operator resumes trading")
    elif state is TradingState.REDUCING:
        if pnl <= -limits.daily_loss_limit:
            fail("trading_state", f"REDUCING: today's P&L {_money(pnl)} has reached the daily loss limit "
                                  f"-{limits.daily_loss_limit}; no new entries today, exits only")
        else:
            fail("trading_state", "REDUCING: reconciliation found a discrepancy today; no new entries, exits only")
    if ctx.market.status != "open":
        when = f"; next open {ctx.market.next_open.isoformat()}" if ctx.market.next_open else ""
        fail("market_open", f"the market is {ctx.market.status}{when}")
    if ctx.monitor_beat_limit is not None and ctx.market.status == "open" and (
            ctx.monitor_beat_age is None or ctx.monitor_beat_age > ctx.monitor_beat_limit):
        seen = "has never beaten" if ctx.monitor_beat_age is None else f"last beat {ctx.monitor_beat_age:.0f}s ago"
        fail("monitor_watching", f"the position monitor daemon {seen} (limit {ctx.monitor_beat_limit:.0f}s): no new "
                                 f"entries until it runs again (./run.sh monitor / systemctl status)")
    if intent.side is not OrderSide.BUY:
        fail("long_only", "entries must buy; use close_position to sell a holding")
    if inst.currency != ctx.account.currency:
        fail("currency", f"{intent.symbol} trades in {inst.currency}, the account is in {ctx.account.currency}")
    held = {p.symbol for p in ctx.positions if p.quantity > 0}
    working = [w for w in ctx.working_entries if w.quantity > 0]
    committed = held | {w.symbol for w in working}
    if intent.symbol in held:
        fail("already_held", f"already holding {intent.symbol}; one position per symbol")
    elif intent.symbol in ctx.entries_today and not limits.allow_reentry_same_day:
        fail("one_entry_per_day", f"{intent.symbol} was already entered today")
    if any(w.symbol == intent.symbol for w in working):
        fail("entry_working", f"an entry order for {intent.symbol} is still working; wait for it to fill or cancel")
    if intent.symbol not in committed and len(committed) >= limits.max_positions:
        fail("max_positions", f"{len(held)} positions open and {len(committed) - len(held)} more with working "
                              f"entries; the limit is {limits.max_positions}")
    if ctx.orders_this_cycle >= limits.max_orders_per_cycle:
        fail("orders_per_cycle", f"{ctx.orders_this_cycle} orders already this cycle; "
                                 f"the limit is {limits.max_orders_per_cycle}")

    # ---- the price the order will pay
    ref: Decimal | None = None
    limit_price: Decimal | None = None
    if quote.last <= 0 or quote.ask <= 0 or quote.bid <= 0:
        fail("quote", f"no usable quote for {intent.symbol} (bid {quote.bid}, ask {quote.ask}, last {quote.last})")
    else:
        stale = stale_quote(ctx.now, quote.timestamp, ctx.market.status, limits.max_quote_age_seconds)
        if stale:
            fail("quote", f"{stale}; wait for a fresh price")
    if intent.order_type is OrderType.LIMIT:
        if intent.limit_price is None:
            fail("limit_price", "a limit order needs limit_price")
        elif intent.limit_price <= 0:
            fail("limit_price", f"limit_price must be positive (got {intent.limit_price})")
        else:
            limit_price = round_to_tick(intent.limit_price, scheme, "down")
            if limit_price <= 0:
                fail("limit_price", f"limit_price {intent.limit_price} is below the smallest tick")
                limit_price = None
            elif limit_price != intent.limit_price:
                notes.append(f"limit_price {intent.limit_price} rounded down to the tick grid: {limit_price}")
            if limit_price is not None and quote.last > 0:
                deviation = abs(limit_price / quote.last - 1)
                if deviation > limits.price_collar_pct:
                    fail("price_collar", f"limit_price {limit_price} is {deviation:.1%} from the last price "
                                         f"{quote.last}; the collar is {limits.price_collar_pct:.1%}")
            ref = limit_price
    elif quote.ask > 0:
        ref = quote.ask

    # ---- the stop and the target
    stop: Decimal | None = None
    if ref is not None:
        if intent.stop_loss is None:
            stop = round_to_tick(ref * (1 - limits.position_stop_loss_pct), scheme, "down")
            notes.append(f"stop_loss set to {stop} ({limits.position_stop_loss_pct:.1%} below {ref})")
        else:
            stop = intent.stop_loss if is_on_tick(intent.stop_loss, scheme) else round_to_tick(
                intent.stop_loss, scheme, "down")
            if stop != intent.stop_loss:
                notes.append(f"stop_loss {intent.stop_loss} rounded down to the tick grid: {stop}")
            if stop >= ref:
                fail("stop_loss", f"stop_loss {stop} must be below the entry price {ref}")
            elif stop <= 0 or (ref - stop) / ref > limits.max_stop_distance_pct:
                fail("stop_loss", f"stop_loss {stop} is {(ref - stop) / ref:.1%} below the entry price {ref}; "
                                  f"the most allowed is {limits.max_stop_distance_pct:.1%}")
        if intent.take_profit is not None and intent.take_profit <= ref:
            fail("take_profit", f"take_profit {intent.take_profit} must be above the entry price {ref}")

    # ---- how many shares
    quantity = 0
    if ref is not None and ref > 0:
        lot = inst.lot_size
        if intent.quantity is not None:
            wanted = intent.quantity
        elif intent.notional is not None:
            wanted = int((intent.notional / ref).to_integral_value(ROUND_FLOOR))
        else:
            wanted = 0
        quantity = round_lots(max(wanted, 0), lot)
        if quantity != wanted and quantity > 0:
            notes.append(f"quantity {wanted} rounded down to whole lots of {lot}: {quantity}")
        caps = [("max_position_value", int((limits.max_position_value / ref).to_integral_value(ROUND_FLOOR)),
                 f"max_position_value {limits.max_position_value}")]
        spendable = ctx.account.buying_power - ctx.pending_buy_value
        what_power = f"buying power {_money(spendable)}"
        if not limits.allow_margin:           # never borrow: cash less what working entries may still spend
            on_cash = ctx.account.cash - sum((w.value for w in working), Decimal(0))
            if on_cash < spendable:
                spendable, what_power = on_cash, (f"cash {_money(ctx.account.cash)} less working entries "
                                                  f"({_money(on_cash)} left; allow_margin is off)")
        caps.append(("buying_power", int((spendable / (ref * (1 + COST_BUFFER))).to_integral_value(ROUND_FLOOR))
                     if spendable > 0 else 0, what_power))
        if stop is not None and stop < ref:
            at_risk = sum((w.risk(limits.position_stop_loss_pct) for w in working), Decimal(0))
            loss_room = limits.daily_loss_limit + min(pnl, Decimal(0)) - at_risk
            caps.append(("daily_loss_limit", int((loss_room / (ref - stop)).to_integral_value(ROUND_FLOOR))
                         if loss_room > 0 else 0,
                         f"the {_money(loss_room)} of daily loss budget left after {_money(at_risk)} at risk in "
                         f"working entries (a stop-out loses {ref - stop}/share)"))
        for rule, cap_shares, what in caps:
            capped = round_lots(max(cap_shares, 0), lot)
            if quantity > capped:
                if capped < lot:
                    fail(rule, f"one lot of {lot} at {ref} ({_money(lot * ref)}) exceeds {what}")
                else:
                    notes.append(f"quantity reduced from {quantity} to {capped} by {what}")
                quantity = capped
        if wanted > 0 and quantity == 0 and not any(f.rule in ("max_position_value", "buying_power", "daily_loss_limit")
                                                    for f in fails):
            fail("quantity", f"{wanted} shares is less than one lot of {lot}")
        if wanted <= 0:
            fail("quantity", "the order is for no shares")
        value = quantity * ref
        if quantity > 0 and value < limits.min_position_value:
            fail("min_position_value", f"the position would be worth {_money(value)}, below min_position_value "
                                       f"{limits.min_position_value}")

    approved = not fails and quantity > 0
    return Verdict(approved=approved, failures=tuple(fails), adjusted_quantity=quantity if approved else 0,
                   limit_price=limit_price, stop_loss=stop, take_profit=intent.take_profit, reference_price=ref,
                   adjustments=tuple(notes), trading_state=state)


def evaluate_exit(symbol: str, quantity: int | None, held: Position | Any | None, instrument: Instrument,
                  market: MarketStatus) -> Verdict:
    """Judge an exit. Only what makes the order impossible fails it; no entry limit applies.

    `held` is the broker's position (anything with `.quantity`), or None when nothing is held.
    A partial exit is rounded down to whole lots; a full exit sells everything held, odd lot included.
    """
    fails: list[Failure] = []
    notes: list[str] = []
    held_qty = int(getattr(held, "quantity", 0) or 0)
    if held_qty <= 0:
        fails.append(Failure("no_position", f"no open position in {symbol}"))
    if market.status != "open":
        when = f"; next open {market.next_open.isoformat()}" if market.next_open else ""
        fails.append(Failure("market_open", f"the market is {market.status}{when}"))
    qty = held_qty
    if quantity is not None and held_qty > 0:
        if quantity <= 0:
            fails.append(Failure("quantity", f"quantity must be positive (got {quantity})"))
        elif quantity >= held_qty:
            if quantity > held_qty:
                notes.append(f"quantity {quantity} is more than the {held_qty} held; selling all {held_qty}")
        else:
            qty = round_lots(quantity, instrument.lot_size)
            if qty == 0:
                fails.append(Failure("quantity", f"{quantity} shares is less than one lot of {instrument.lot_size}"))
            elif qty != quantity:
                notes.append(f"quantity {quantity} rounded down to whole lots of {instrument.lot_size}: {qty}")
    approved = not fails
    return Verdict(approved=approved, failures=tuple(fails), adjusted_quantity=qty if approved else 0,
                   adjustments=tuple(notes))
