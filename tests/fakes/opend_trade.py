"""The fake OpenD's trading side: accounts, funds, positions, orders, deals, fees and their pushes (a mixin of
FakeOpenD; see opend_server.py for what it models).

Orders OpenD has accepted but the paper exchange does not hold (yet) are `_held`: a late fill's market order until
its delay passes, a short sell on the margin account for good, a stop order until it triggers. They are listed,
pushed and cancelled like any other.

Position and order lists honour `filterConditions.codeList` as OpenD does (only those codes' rows); such a request
reads only those codes' orders from the paper exchange, so an exit's checks stay cheap however big the book is.

Stop orders (Trd_Common.OrderType_Stop, "止损市价单"), as the docs describe them:
  - only the REAL account takes them: paper trading supports limit and market orders only, and day orders only
    (futu-api-doc/en/qa/trade.html, Q1); a paper account refuses a stop and a GTC order;
  - `auxPrice` is the trigger and is required ("aux_price: 止损/止盈类订单必传"); a sell stop's trigger must be below
    the current price and a buy stop's above it (futuhk.com/en/support/topic346, "Stop order");
  - day or GTC (TimeInForce_GTC "撤单前有效，最多持续90自然日", Trd_Common.proto); a HK market order is a day order
    only ("港股、A 股、环球期货的市价单仅支持当日有效", the place_order docs);
  - held by the broker, not at the exchange, and not freezing the position until triggered ("Placement of the
    conditional order does not directly freeze the customer's buying power or position", topic346 5.1): the
    position's canSellQty does not count an untriggered stop;
  - triggered only in the continuous trading session, when the last price trades at or through the trigger (at or
    below for a sell): it then goes to the exchange as a market order and fills like one; the order keeps its id,
    its type (stop) and its trigger, and moves SUBMITTED -> FILLED_ALL (or FAILED with the exchange's reason, e.g. a
    position sold meanwhile). Untriggered it is listed as SUBMITTED (unverified against a live OpenD: it may show
    WAITING_SUBMIT there; the adapter reads both as working).
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from decimal import Decimal
from typing import Any

from brokers.paper.broker import PaperBroker
from core.errors import InvalidRequest, OrderRejected
from core.orders import OrderRequest, OrderResult, OrderSide, OrderStatus, OrderType
from tests.fakes.opend_wire import (_STATUS, CURRENCY_HKD, FINANCING_MARGIN_RATE, NOT_SUPPORTED, ORDER_MARKET,
                                    ORDER_NORMAL, ORDER_STOP, PAPER_DAY_ONLY, PAPER_NO_DEALS, PAPER_NO_FEES,
                                    PAPER_ORDER_TYPES, QOT_MARKET_HK, REAL, REAL_ACC, SEC_MARKET_HK,
                                    SHORT_MARGIN_RATE, SIM_OPTION_ACC, SIM_STOCK_ACC, SIMULATE, TIF_DAY, TIF_GTC,
                                    TRD_MARKET_HK, _Conn, _local, _Order, _parse_local, _Refuse)


FEW = 50          # orders read one by one for a filtered request; more: one read of the whole book


class TradeHandlers:
    """Trd_* protocols over one paper account per OpenD account (`self._paper`)."""

    # ------------------------------------------------------------ accounts
    async def _on_2001(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        for acc_id, env, sim_type in ((SIM_OPTION_ACC, SIMULATE, 2), (SIM_STOCK_ACC, SIMULATE, 1),
                                      (REAL_ACC, REAL, None)):
            acc = s2c.accList.add()
            acc.trdEnv, acc.accID, acc.accType = env, acc_id, 2
            acc.trdMarketAuthList.append(TRD_MARKET_HK)
            if sim_type is not None:
                acc.simAccType = sim_type
            else:
                acc.securityFirm, acc.cardNum, acc.uniCardNum = self.firm, "1001318721909873", "1001100000000001"
            acc.accStatus, acc.accRole = 0, 1

    async def _on_2005(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if not c2s.unlock:
            self.unlocked = False
            return
        if self.password_md5 is None or c2s.pwdMD5 != self.password_md5:
            raise _Refuse("Incorrect trade password")
        self.unlocked = True

    async def _on_2008(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        conn.accounts = set(c2s.accIDList)

    def _account(self, header: Any, *, trading: bool = False) -> PaperBroker:
        broker = self._paper.get(header.accID)
        if broker is None or header.trdEnv != (REAL if header.accID == REAL_ACC else SIMULATE):
            raise _Refuse(f"account {header.accID} does not exist in trading environment {header.trdEnv}")
        if header.trdMarket != TRD_MARKET_HK:
            raise _Refuse("this account trades only the HK market")
        if trading and header.accID == REAL_ACC and not self.unlocked:
            raise _Refuse("Please unlock trade first")
        return broker

    @staticmethod
    def _header(target: Any, header: Any) -> None:
        target.trdEnv, target.accID, target.trdMarket = header.trdEnv, header.accID, header.trdMarket

    async def _on_2101(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        acct = await self._account(c2s.header).get_account()
        self._header(s2c.header, c2s.header)
        f = s2c.funds
        frozen, market_val = acct.cash - acct.buying_power, acct.equity - acct.cash
        if c2s.header.accID in self.margin_accounts:     # the docs' approximations, from the net assets not frozen
            power = max((acct.equity - frozen) / FINANCING_MARGIN_RATE - market_val, Decimal(0))
            f.maxPowerShort = float(max((acct.equity - frozen) / SHORT_MARGIN_RATE, Decimal(0)))
        else:
            power = acct.buying_power
        f.power, f.totalAssets, f.cash = float(power), float(acct.equity), float(acct.cash)
        f.marketVal, f.frozenCash, f.netCashPower = float(market_val), float(frozen), float(acct.buying_power)
        f.debtCash, f.avlWithdrawalCash, f.currency = 0.0, float(acct.buying_power), CURRENCY_HKD

    def _symbol_of(self, code: str) -> str | None:
        try:
            return self.market.instrument(code).symbol
        except KeyError:
            return None

    async def _selling(self, acc_id: int, codes: Any = ()) -> dict[str, int]:
        """Shares in open sell orders, by symbol (at the exchange or held by OpenD), except untriggered stops: a
        conditional order freezes no position until it triggers."""
        selling: dict[str, int] = {}
        for meta, o in await self._results(acc_id, codes=codes):
            if meta.order_type == ORDER_STOP and meta.order_id in self._held:
                continue
            if o.side is OrderSide.SELL and o.status.is_open:
                selling[o.symbol] = selling.get(o.symbol, 0) + o.remaining_quantity
        return selling

    async def _on_2102(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        broker = self._account(c2s.header)
        self._header(s2c.header, c2s.header)
        codes = list(c2s.filterConditions.codeList)
        selling = await self._selling(c2s.header.accID, codes)
        if codes:                         # filterConditions.codeList: those codes' positions only
            held = [await broker.get_position(symbol) for symbol in dict.fromkeys(
                self._symbol_of(code) for code in codes) if symbol is not None]
        else:
            held = await broker.get_positions()
        for p in (p for p in held if p is not None):
            row = s2c.positionList.add()
            row.positionID = int(hashlib.sha1(p.symbol.encode()).hexdigest()[:12], 16)
            row.positionSide, row.code, row.name = 0, p.symbol, self.market.instrument(p.symbol).name
            row.qty, row.canSellQty = p.quantity, max(p.quantity - selling.get(p.symbol, 0), 0)
            row.price, row.val = float(p.market_price), float(p.market_value)
            row.plVal = float((p.market_price - p.avg_price) * p.quantity)
            row.costPrice = row.averageCostPrice = row.dilutedCostPrice = float(p.avg_price)
            row.secMarket, row.trdMarket, row.currency = SEC_MARKET_HK, TRD_MARKET_HK, CURRENCY_HKD

    # ------------------------------------------------------------ orders
    def _mine(self, acc_id: int, codes: Any = ()) -> dict[str, _Order]:
        """The account's orders (of those codes only, when given) by paper id: from an index, not a scan of every
        order the fake has taken."""
        of_code = self._orders_of.get(acc_id, {})
        wanted = dict.fromkeys(codes) if codes else of_code
        return {coid: meta for code in wanted for coid, meta in of_code.get(code, {}).items()}

    def _keep(self, meta: _Order) -> None:
        self._orders[meta.order_id] = meta
        self._orders_of.setdefault(meta.acc_id, {}).setdefault(meta.code, {})[meta.paper_coid] = meta

    def _fill_order(self, target: Any, meta: _Order, r: OrderResult, *, stale: bool = False) -> None:
        target.trdSide = 1 if r.side is OrderSide.BUY else 2
        target.orderType = meta.order_type
        if meta.aux_price is not None:
            target.auxPrice = meta.aux_price
        filled = 0 if stale else r.filled_quantity
        if stale or r.status is not OrderStatus.CANCELLED:
            target.orderStatus = 5 if stale else _STATUS[r.status]
        else:
            target.orderStatus = 14 if r.filled_quantity else 15
        target.orderID, target.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        target.code, target.name, target.qty = meta.code, self.market.instrument(r.symbol).name, r.quantity
        target.price = float(r.limit_price or 0)
        target.createTime, target.updateTime = _local(r.submitted_at), _local(r.updated_at or r.submitted_at)
        target.createTimestamp = r.submitted_at.timestamp()
        target.fillQty, target.fillAvgPrice = filled, float(r.avg_fill_price or 0) if filled else 0.0
        target.lastErrMsg = "" if stale else (r.reason or "")
        target.secMarket, target.trdMarket, target.currency, target.timeInForce = (SEC_MARKET_HK, TRD_MARKET_HK,
                                                                                    CURRENCY_HKD, meta.time_in_force)
        if meta.remark is not None:
            target.remark = meta.remark

    def _fill_deal(self, target: Any, meta: _Order, r: OrderResult, fill: Any) -> None:
        if fill.fill_id not in self._fill_ids:
            self._fill_ids[fill.fill_id] = next(self._deal_ids)
        target.trdSide = 1 if r.side is OrderSide.BUY else 2
        target.fillID, target.fillIDEx = self._fill_ids[fill.fill_id], fill.fill_id
        target.orderID, target.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        target.code, target.name = meta.code, self.market.instrument(r.symbol).name
        target.qty, target.price, target.createTime = fill.quantity, float(fill.price), _local(fill.timestamp)
        target.createTimestamp, target.status = fill.timestamp.timestamp(), 0
        target.secMarket, target.trdMarket = SEC_MARKET_HK, TRD_MARKET_HK

    async def _results(self, acc_id: int, *, codes: Any = (), ids: set[int] | None = None, live: bool = False
                       ) -> list[tuple[_Order, OrderResult]]:
        """The account's orders (`codes`: of those codes only; `ids`: of those order ids only; `live`: only those
        whose last push was not final), in the order they were placed. A few are read one by one; many, in one read
        of the whole book."""
        mine = self._mine(acc_id, codes)
        if ids is not None:
            mine = {k: m for k, m in mine.items() if m.order_id in ids}
        if live:
            mine = {k: m for k, m in mine.items() if not (m.pushed and m.pushed[0].is_terminal)}
        if (codes or ids is not None or live) and len(mine) <= FEW:
            found = [await self._paper[acc_id].get_order_by_client_id(coid) for coid in mine]
            placed = sorted(((mine[r.client_order_id], r) for r in found if r is not None),
                            key=lambda pair: pair[0].order_id)
        else:
            placed = [(mine[r.client_order_id], r) for r in await self._paper[acc_id].get_orders()
                      if r.client_order_id in mine]
        at_exchange = {meta.order_id for meta, _ in placed}
        held = [(self._orders[order_id], r) for order_id, r in list(self._held.items())
                if self._orders[order_id].acc_id == acc_id and order_id not in at_exchange
                and (not codes or self._orders[order_id].code in codes) and (ids is None or order_id in ids)]
        return placed + held

    def _today(self, r: OrderResult) -> bool:
        now = self.clock.now()
        return r.status.is_open or self.calendar.local_date(r.submitted_at) == self.calendar.local_date(now)

    @staticmethod
    def _matches(c2s: Any, meta: _Order, r: OrderResult, *, by_time: bool) -> bool:
        fc = c2s.filterConditions
        if fc.codeList and meta.code not in fc.codeList:
            return False
        if fc.idList and meta.order_id not in fc.idList:
            return False
        if fc.orderIDExList and f"FAKE{meta.order_id}" not in fc.orderIDExList:
            return False
        if by_time and fc.beginTime and r.submitted_at < _parse_local(fc.beginTime):
            return False
        if by_time and fc.endTime and r.submitted_at > _parse_local(fc.endTime, end=True):
            return False
        return True

    async def _order_list(self, c2s: Any, s2c: Any, *, today: bool) -> None:
        self._account(c2s.header)
        self._header(s2c.header, c2s.header)
        wanted = set(c2s.filterStatusList)
        fc = c2s.filterConditions
        # an id filter (the SDK's own read-back of an order it just placed) reads those orders only, as OpenD
        # answers from its cache; `_matches` still applies every filter
        ids = None
        if fc.idList or fc.orderIDExList:
            ids = set(fc.idList) | {i for i in map(_order_id, fc.orderIDExList) if i is not None}
        for meta, r in await self._results(c2s.header.accID, codes=list(fc.codeList), ids=ids):
            if (today and not self._today(r)) or not self._matches(c2s, meta, r, by_time=not today):
                continue
            row = s2c.orderList.add()
            self._fill_order(row, meta, r, stale=self.stale_order_lists)
            if wanted and row.orderStatus not in wanted:
                del s2c.orderList[-1]

    async def _on_2201(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        await self._order_list(c2s, s2c, today=True)
        return await self._changes(c2s.header.accID)

    async def _on_2221(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._order_list(c2s, s2c, today=False)

    async def _on_2202(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        broker = self._account(c2s.header, trading=True)
        if c2s.packetID.connID != conn.conn_id:
            raise _Refuse("packetID.connID does not match this connection")
        if c2s.secMarket not in (0, SEC_MARKET_HK):
            raise _Refuse("this account trades only the HK market")
        if c2s.trdSide not in (1, 2):
            raise _Refuse("short selling is not supported for HK stocks in this account")
        paper = c2s.header.trdEnv == SIMULATE
        tif = c2s.timeInForce if c2s.HasField("timeInForce") else TIF_DAY
        if paper and c2s.orderType not in (ORDER_NORMAL, ORDER_MARKET):
            raise _Refuse(PAPER_ORDER_TYPES)
        if paper and tif != TIF_DAY:
            raise _Refuse(PAPER_DAY_ONLY)
        if c2s.orderType not in (ORDER_NORMAL, ORDER_MARKET, ORDER_STOP):
            raise _Refuse(f"order type {c2s.orderType} {NOT_SUPPORTED}")
        if tif not in (TIF_DAY, TIF_GTC):
            raise _Refuse(f"time in force {tif} {NOT_SUPPORTED}")
        if c2s.orderType == ORDER_MARKET and tif != TIF_DAY:
            raise _Refuse("market orders of HK stocks support only good-for-day (DAY) orders")
        if c2s.HasField("remark") and len(c2s.remark.encode()) > 64:
            raise _Refuse("remark is longer than 64 bytes")
        if c2s.qty != int(c2s.qty) or c2s.qty <= 0:
            raise _Refuse(f"quantity {c2s.qty} must be a positive whole number of shares")
        self._instrument(QOT_MARKET_HK, c2s.code)
        if self._rejections:
            raise _Refuse(self._rejections.pop(0))
        acc_id = c2s.header.accID
        meta = _Order(order_id=next(self._order_ids), acc_id=acc_id, paper_coid="",
                      remark=c2s.remark if c2s.HasField("remark") else None, code=c2s.code,
                      order_type=c2s.orderType, time_in_force=tif)
        meta.paper_coid = f"fake-{meta.order_id}"
        market, stop = c2s.orderType == ORDER_MARKET, c2s.orderType == ORDER_STOP
        side = OrderSide.BUY if c2s.trdSide == 1 else OrderSide.SELL
        if stop:
            self._check_trigger(c2s, side)
            meta.aux_price = c2s.auxPrice
        try:
            if stop:
                request = OrderRequest(client_order_id=meta.paper_coid, symbol=c2s.code, side=side,
                                       quantity=int(c2s.qty), order_type=OrderType.STOP,
                                       stop_price=Decimal(repr(c2s.auxPrice)))
            else:
                request = OrderRequest(client_order_id=meta.paper_coid, symbol=c2s.code, side=side,
                                       quantity=int(c2s.qty),
                                       order_type=OrderType.MARKET if market else OrderType.LIMIT,
                                       limit_price=None if market else Decimal(repr(c2s.price)))
        except InvalidRequest as exc:
            raise _Refuse(str(exc)) from None
        short = (not stop and request.side is OrderSide.SELL
                 and request.quantity > await self._free_to_sell(acc_id, c2s.code))
        if stop:
            self._hold(meta, request)                # held by the broker until it triggers
        elif short and acc_id == REAL_ACC and acc_id in self.margin_accounts:
            self._hold(meta, request)                # OpenD takes it (a short); the paper exchange lends no shares
        elif market and self.fill_delay is not None and not short and await self._affordable(broker, request):
            self._hold(meta, request)
            task = asyncio.create_task(self._place_late(meta, request, self.fill_delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            try:
                await broker.place_order(request)
            except OrderRejected as exc:
                raise _Refuse(exc.reason) from None      # OpenD refuses the request: no order exists
        self._keep(meta)
        self._header(s2c.header, c2s.header)
        s2c.orderID, s2c.orderIDEx = meta.order_id, f"FAKE{meta.order_id}"
        return await self._changes(acc_id)

    def _check_trigger(self, c2s: Any, side: OrderSide) -> None:
        """A stop needs a trigger on the right side of the market: below it to sell, above it to buy."""
        if not c2s.HasField("auxPrice") or c2s.auxPrice <= 0:
            raise _Refuse("aux_price (the trigger price) is required for a stop order")
        last = self.market.quote(self.market.instrument(c2s.code).symbol, self.clock.now()).last
        trigger = Decimal(repr(c2s.auxPrice))
        if side is OrderSide.SELL and trigger >= last:
            raise _Refuse(f"the trigger price of a sell stop order must be below the current price {last}")
        if side is OrderSide.BUY and trigger <= last:
            raise _Refuse(f"the trigger price of a buy stop order must be above the current price {last}")

    async def _trigger_stops(self, symbol: str | None = None) -> None:
        """Resting stops (of `symbol`, or all) whose trigger the last price has reached go to the exchange as market
        orders (continuous session only); their pushes follow."""
        now = self.clock.now()
        if not self.calendar.is_open(now):
            return
        wanted = None if symbol is None else self.market.instrument(symbol).symbol
        fired: set[int] = set()
        for order_id, r in list(self._held.items()):
            meta = self._orders.get(order_id)
            if (meta is None or meta.order_type != ORDER_STOP or r.status is not OrderStatus.SUBMITTED
                    or order_id in self._firing):
                continue
            inst = self.market.instrument(r.symbol)
            if wanted is not None and inst.symbol != wanted:
                continue
            last = self.market.quote(inst.symbol, now).last
            if not (last <= r.stop_price if r.side is OrderSide.SELL else last >= r.stop_price):
                continue
            self._firing.add(order_id)
            try:
                try:
                    await self._paper[meta.acc_id].place_order(OrderRequest(
                        client_order_id=meta.paper_coid, symbol=r.symbol, side=r.side, quantity=r.quantity,
                        order_type=OrderType.MARKET))
                except OrderRejected:
                    pass                             # the paper exchange keeps the refused order, with its reason
                del self._held[order_id]
                fired.add(meta.acc_id)
            finally:
                self._firing.discard(order_id)
        for acc_id in fired:
            await self._flush(await self._changes(acc_id))

    async def _free_to_sell(self, acc_id: int, code: str) -> int:
        """Shares of `code` held less those in its open sells (that code's position and orders only)."""
        position = await self._paper[acc_id].get_position(code)
        held = position.quantity if position is not None else 0
        return held - (await self._selling(acc_id, [code])).get(code, 0)

    async def _affordable(self, broker: PaperBroker, request: OrderRequest) -> bool:
        """A buy the account's cash covers at the ask (what a late fill may accept before it reaches the exchange)."""
        if request.side is OrderSide.SELL:
            return True
        ask = self.market.quote(request.symbol, self.clock.now()).ask
        return ask * request.quantity <= (await broker.get_account()).buying_power

    def _hold(self, meta: _Order, request: OrderRequest) -> None:
        now = self.clock.now()
        self._held[meta.order_id] = OrderResult(
            client_order_id=meta.paper_coid, broker_order_id=f"FAKE{meta.order_id}", symbol=request.symbol,
            side=request.side, order_type=request.order_type, quantity=request.quantity,
            limit_price=request.limit_price, status=OrderStatus.SUBMITTED, submitted_at=now, updated_at=now,
            stop_price=request.stop_price)

    async def _place_late(self, meta: _Order, request: OrderRequest, delay: float) -> None:
        """The held market order reaches the paper exchange (unless it was cancelled meanwhile) and fills there; the
        exchange's refusal shows as a FAILED order."""
        await asyncio.sleep(delay)
        if self._held[meta.order_id].status is not OrderStatus.SUBMITTED:
            return
        try:
            await self._paper[meta.acc_id].place_order(request)
        except OrderRejected:
            pass                                     # the paper exchange keeps the refused order, with its reason
        del self._held[meta.order_id]
        await self._flush(await self._changes(meta.acc_id))

    async def _on_2205(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        broker = self._account(c2s.header, trading=True)
        if c2s.modifyOrderOp != 2:
            raise _Refuse(f"modify operation {c2s.modifyOrderOp} {NOT_SUPPORTED} (only cancel)")
        if c2s.forAll:
            mine = [o for o in self._orders.values() if o.acc_id == c2s.header.accID]
        else:                               # the order by its id (from the index, not a scan of every order)
            found = sorted({c2s.orderID, _order_id(c2s.orderIDEx) or c2s.orderID})
            mine = [o for o in map(self._orders.get, found) if o is not None and o.acc_id == c2s.header.accID]
            if not mine:
                raise _Refuse(f"order {c2s.orderIDEx or c2s.orderID} does not exist")
        for meta in mine:
            held = self._held.get(meta.order_id)
            r = held or await broker.get_order_by_client_id(meta.paper_coid)
            if r.status.is_terminal and not c2s.forAll:
                raise _Refuse(f"order {meta.order_id} is {r.status.value} and can no longer be cancelled")
            if held is None:
                await broker.cancel_order(meta.paper_coid)
            elif held.status.is_open:
                self._held[meta.order_id] = replace(held, status=OrderStatus.CANCELLED, reason="cancelled by request",
                                                    updated_at=self.clock.now())
        self._header(s2c.header, c2s.header)
        s2c.orderID = mine[0].order_id if mine and not c2s.forAll else 0
        s2c.orderIDEx = f"FAKE{mine[0].order_id}" if mine and not c2s.forAll else ""
        return await self._changes(c2s.header.accID)

    async def _deals(self, c2s: Any, s2c: Any, *, today: bool) -> None:
        self._account(c2s.header)
        if c2s.header.trdEnv == SIMULATE:
            raise _Refuse(PAPER_NO_DEALS)
        self._header(s2c.header, c2s.header)
        for meta, r in await self._results(c2s.header.accID):
            if not self._matches(c2s, meta, r, by_time=False):
                continue
            for fill in r.fills:
                local = self.calendar.local_date(fill.timestamp)
                if today and local != self.calendar.local_date(self.clock.now()):
                    continue
                if not today and not (_parse_local(c2s.filterConditions.beginTime) <= fill.timestamp
                                      <= _parse_local(c2s.filterConditions.endTime, end=True)):
                    continue
                self._fill_deal(s2c.orderFillList.add(), meta, r, fill)

    async def _on_2211(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._deals(c2s, s2c, today=True)

    async def _on_2222(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        await self._deals(c2s, s2c, today=False)

    async def _on_2225(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        self._account(c2s.header)
        if c2s.header.trdEnv == SIMULATE:
            raise _Refuse(PAPER_NO_FEES)
        self._header(s2c.header, c2s.header)
        results = {f"FAKE{meta.order_id}": r for meta, r in await self._results(c2s.header.accID)}
        for order_id in c2s.orderIdExList:
            if order_id not in results:
                raise _Refuse(f"order {order_id} does not exist")
            fee = s2c.orderFeeList.add()
            fee.orderIDEx, fee.feeAmount = order_id, float(results[order_id].fees)
            item = fee.feeList.add()
            item.title, item.value = "Total charges", float(results[order_id].fees)

    async def _changes(self, acc_id: int) -> list[tuple[int, Any, int]]:
        """Order (and, for REAL, deal) pushes for whatever changed since the last ones."""
        pushes: list[tuple[int, Any, int]] = []
        order_pb, fill_pb = self._module(2208), self._module(2218)
        env = REAL if acc_id == REAL_ACC else SIMULATE
        for meta, r in await self._results(acc_id, live=True):     # a final push is never followed by another
            state = (r.status, r.filled_quantity, tuple(f.fill_id for f in r.fills))
            if state == meta.pushed:
                continue
            seen = set(meta.pushed[2]) if meta.pushed else set()
            meta.pushed = state
            push = order_pb.Response()
            push.retType = 0
            push.s2c.header.trdEnv, push.s2c.header.accID, push.s2c.header.trdMarket = env, acc_id, TRD_MARKET_HK
            self._fill_order(push.s2c.order, meta, r)
            pushes.append((2208, push, acc_id))
            if env == REAL:
                for fill in r.fills:
                    if fill.fill_id in seen:
                        continue
                    deal = fill_pb.Response()
                    deal.retType = 0
                    deal.s2c.header.trdEnv, deal.s2c.header.accID = env, acc_id
                    deal.s2c.header.trdMarket = TRD_MARKET_HK
                    self._fill_deal(deal.s2c.orderFill, meta, r, fill)
                    pushes.append((2218, deal, acc_id))
        return pushes


def _order_id(order_id_ex: str) -> int | None:
    """The order id in the fake's orderIDEx ("FAKE<id>"), None for any other string."""
    digits = order_id_ex[4:] if order_id_ex.startswith("FAKE") else ""
    return int(digits) if digits.isdigit() else None
