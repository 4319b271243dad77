"""The fake OpenD's real-time side (a mixin of FakeOpenD): quote subscriptions and their pushes, as the OpenAPI docs
describe them.

  3001 Qot_Sub            subscribe / unsubscribe (securityList x subTypeList), isRegOrUnRegPush, isFirstPush
                          (default true: the current quote goes out right after the reply), isUnsubAll.
                          Quota: every (security, sub type) subscribed on ANY connection takes one unit of
                          `subscription_quota` (100 for a newly opened account; 300 / 1000 / 2000 by assets and
                          activity); a request that needs more than remains is refused whole ("Insufficient
                          subscription quota"). A subscription can be cancelled only once it is at least
                          `unsubscribe_after` old (one minute): an earlier unsubscribe is refused whole. A unit is
                          released when no connection holds that (security, sub type) any more; a connection that
                          closes releases its subscriptions that are a minute old at once, the younger ones when
                          they turn a minute old.
  3002 Qot_RegQotPush     (un)register pushes of subscribed securities on this connection (the SDK sends it after an
                          unsubscribe)
  3003 Qot_GetSubInfo     each connection's subscriptions (all connections with isReqAllConn), totalUsedQuota,
                          remainQuota
  3005 Qot_UpdateBasicQot the basic quote (SubType QUOTE) pushed to every connection registered for it: at once when
                          the price feed moves (a MovableMarket's `listen`), and on the fake's own cadence
                          (`push_interval` seconds) whenever a subscribed quote changed since it was last pushed.
                          A basic quote carries no bid or ask (Qot_Common.BasicQot): last, open, high, low, volume.

Sources: "Quote related" Q1-Q4 (openapi.moomoo.com/futu-api-doc/en/qa/quote.html: unsubscribe only after at least one
minute; the quota is released after all connections unsubscribed; a connection closed within the minute keeps the
quota until the minute is over), query_subscription (openapi.futunn.com/futu-api-doc/quote/query-subscription.html:
total_used, own_used, remain, sub_list) and the quota table (FutunnOpen/futu-agent-hub, Futu API Skills/futuapi/docs/
API_LIMITS.md: 100 / 300 / 1000 / 2000 subscriptions; "订阅后至少 1 分钟才能反订阅"). The wording of OpenD's
refusals is not documented; the fake's is its own.

Subscription ages are timed on `rate_clock` (wall time unless a test passes its simulated clock, so nobody waits a
real minute). Test controls: `stall()` (no quote pushes and no keep-alive answers, as an OpenD that hangs; `resume()`
ends it) and `drop_connections()` (opend_server.py). `pushed` counts the basic-quote pushes sent.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from core.instruments import Quote
from core.ticks import tick_size
from tests.fakes.opend_wire import QOT_MARKET_HK, _Conn, _local, _Refuse

SUB_BASIC = 1                       # Qot_Common.SubType_Basic: the SDK's SubType.QUOTE
P_KEEP_ALIVE, P_BASIC_QOT = 1004, 3005
INSUFFICIENT_QUOTA = "Insufficient subscription quota"
PRICED_BETWEEN_YIELDS = 50           # the fake's push cadence prices this many codes between answering requests
TOO_EARLY = "Unsubscribe failed: a subscription can be cancelled only after it has been held for at least one minute"

Key = tuple[str, int]               # (security code, sub type)


class PushHandlers:
    """Qot_Sub / Qot_RegQotPush / Qot_GetSubInfo and the basic-quote push."""

    def _init_push(self) -> None:
        self.subscription_quota = 100
        self.unsubscribe_after = timedelta(minutes=1)
        self.push_interval = 0.5
        self.pushed = 0
        self._subs: dict[int, dict[Key, datetime]] = {}         # conn id -> {(code, sub type): subscribed at}
        self._push_reg: dict[int, set[Key]] = {}                # conn id -> keys whose pushes it gets
        self._lingering: dict[Key, datetime] = {}               # a closed connection's young keys -> released at
        self._last_pushed: dict[tuple[int, str], Quote] = {}
        self._day_range: dict[tuple[str, Any], tuple[Any, Any]] = {}      # (code, session day) -> (high, low)
        self._day_open: dict[tuple[str, Any], Any] = {}                   # (code, session day) -> the open's price
        self._stalled = False

    # ------------------------------------------------------------ test controls (any thread)
    def stall(self) -> None:
        """Stop pushing quotes and answering keep-alives (requests of other kinds are still answered)."""
        self._stalled = True
        self._silent.add(P_KEEP_ALIVE)

    def resume(self) -> None:
        self._stalled = False
        self._silent.discard(P_KEEP_ALIVE)

    def subscriptions(self) -> dict[str, set[str]]:
        """What each open connection has subscribed (conn id as text -> codes), for assertions."""
        return {str(c): {code for code, _ in keys} for c, keys in list(self._subs.items()) if keys}

    # ------------------------------------------------------------ quota
    def _used(self) -> set[Key]:
        now = self.rate_clock.now()
        self._lingering = {k: t for k, t in self._lingering.items() if t > now}
        used = set(self._lingering)
        for keys in self._subs.values():
            used.update(keys)
        return used

    def _conn_closed(self, conn: _Conn) -> None:
        """A connection went away: its minute-old subscriptions are released now, the younger ones a minute after
        they were made (docs Q4)."""
        now = self.rate_clock.now()
        for key, since in self._subs.pop(conn.conn_id, {}).items():
            release = since + self.unsubscribe_after
            if release > now:
                self._lingering[key] = max(release, self._lingering.get(key, release))
        self._push_reg.pop(conn.conn_id, None)
        for mark in [m for m in self._last_pushed if m[0] == conn.conn_id]:
            del self._last_pushed[mark]

    # ------------------------------------------------------------ 3001 Qot_Sub
    async def _on_3001(self, conn: _Conn, c2s: Any, s2c: Any) -> list:
        mine = self._subs.setdefault(conn.conn_id, {})
        now = self.rate_clock.now()
        if c2s.HasField("isUnsubAll") and c2s.isUnsubAll:
            self._check_age(mine, list(mine), now)
            mine.clear()
            self._push_reg.pop(conn.conn_id, None)
            return []
        for sec in c2s.securityList:
            self._instrument(sec.market, sec.code)           # an unknown code refuses the whole request
        keys = [(sec.code, sub) for sec in c2s.securityList for sub in c2s.subTypeList]
        if not c2s.isSubOrUnSub:
            held = [k for k in keys if k in mine]
            self._check_age(mine, held, now)
            for key in held:
                del mine[key]
                self._push_reg.get(conn.conn_id, set()).discard(key)
            return []
        needed = {k for k in keys if k not in self._used()}
        if len(self._used()) + len(needed) > self.subscription_quota:
            left = self.subscription_quota - len(self._used())
            raise _Refuse(f"{INSUFFICIENT_QUOTA}: {len(needed)} more needed, {left} of {self.subscription_quota} "
                          f"left (see query_subscription)")
        for key in keys:
            mine.setdefault(key, now)
        if c2s.HasField("isRegOrUnRegPush"):
            self._register(conn, keys, c2s.isRegOrUnRegPush)
        first = not c2s.HasField("isFirstPush") or c2s.isFirstPush
        codes = sorted({code for code, sub in keys if sub == SUB_BASIC})
        if first and codes and not self._stalled and self._registered(conn, codes):
            now = self.clock.now()
            current = {c: self.market.quote(self.market.instrument(c).symbol, now) for c in codes}
            for c in codes:
                self._last_pushed[(conn.conn_id, c)] = current[c]
            self.pushed += len(codes)
            return [(P_BASIC_QOT, self._basic_push(codes, current), conn)]
        return []

    def _check_age(self, mine: dict[Key, datetime], keys: list[Key], now: datetime) -> None:
        young = sorted(key[0] for key in keys if now - mine[key] < self.unsubscribe_after)
        if young:
            raise _Refuse(f"{TOO_EARLY} ({', '.join(f'HK.{c}' for c in young[:5])}"
                          f"{' ...' if len(young) > 5 else ''})")

    def _register(self, conn: _Conn, keys: list[Key], on: bool) -> None:
        reg = self._push_reg.setdefault(conn.conn_id, set())
        subscribed = self._subs.get(conn.conn_id, {})
        for key in keys:
            if on and key in subscribed:
                reg.add(key)
            elif not on:
                reg.discard(key)

    def _registered(self, conn: _Conn, codes: list[str]) -> bool:
        reg = self._push_reg.get(conn.conn_id, set())
        return all((code, SUB_BASIC) in reg for code in codes)

    # ------------------------------------------------------------ 3002 Qot_RegQotPush, 3003 Qot_GetSubInfo
    async def _on_3002(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        keys = [(sec.code, sub) for sec in c2s.securityList for sub in c2s.subTypeList]
        self._register(conn, keys, c2s.isRegOrUnReg)

    async def _on_3003(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        for conn_id, keys in self._subs.items():
            own = conn_id == conn.conn_id
            if not keys or not (own or c2s.isReqAllConn):
                continue
            info = s2c.connSubInfoList.add()
            info.usedQuota, info.isOwnConnData = len(keys), own
            by_type: dict[int, list[str]] = {}
            for code, sub in keys:
                by_type.setdefault(sub, []).append(code)
            for sub, codes in sorted(by_type.items()):
                item = info.subInfoList.add()
                item.subType = sub
                for code in sorted(codes):
                    sec = item.securityList.add()
                    sec.market, sec.code = QOT_MARKET_HK, code
        used = len(self._used())
        s2c.totalUsedQuota, s2c.remainQuota = used, max(self.subscription_quota - used, 0)

    # ------------------------------------------------------------ 3005 Qot_UpdateBasicQot
    def _basic_push(self, codes: list[str], quotes: dict[str, Quote] | None = None) -> Any:
        """A Qot_UpdateBasicQot push of these codes. The day's open is the quote at the session's open and its
        high and low are the extremes of the quotes this fake has pushed (not the day's bars: a push must go out
        within milliseconds of a move, and nothing downstream reads them)."""
        push = self._module(P_BASIC_QOT).Response()
        push.retType = 0
        now = self.clock.now()
        state = self.calendar.state(now)
        day = state.session_date or self.calendar.previous_trading_day(self.calendar.local_date(now))
        opens = self.calendar.session_bounds(day)
        for code in codes:
            inst = self.market.instrument(code)
            q = (quotes or {}).get(code) or self.market.quote(inst.symbol, now)
            opened = self._day_open.get((code, day))
            if opened is None:
                opened = self.market.quote(inst.symbol, opens[0][0]).last if opens else q.last
                self._day_open[(code, day)] = opened
            high, low = self._day_range.get((code, day), (opened, opened))
            high, low = max(high, q.last), min(low, q.last)
            self._day_range[(code, day)] = high, low
            b = push.s2c.basicQotList.add()
            b.security.market, b.security.code, b.name = QOT_MARKET_HK, code, inst.name
            b.isSuspended, b.listTime = False, "2015-01-02"
            b.priceSpread, b.updateTime = float(tick_size(q.last, "hkex")), _local(q.timestamp)
            b.openPrice, b.highPrice, b.lowPrice = float(opened), float(high), float(low)
            b.curPrice, b.lastClosePrice = float(q.last), float(opened)
            b.volume, b.turnover, b.turnoverRate, b.amplitude = q.volume, float(q.last * q.volume), 0.0, 0.0
        return push

    async def _push_quotes(self, quotes: dict[str, Quote] | None = None, *, changed_only: bool = False) -> None:
        """Send each registered connection the basic quotes it follows (`quotes`: these codes at these quotes;
        otherwise every followed code at the feed's quote now, or only those that changed)."""
        if self._stalled:
            return
        now = self.clock.now()
        for conn_id, reg in list(self._push_reg.items()):
            conn = self._conns.get(conn_id)
            codes = sorted(code for code, sub in reg if sub == SUB_BASIC and (quotes is None or code in quotes))
            if conn is None or not codes:
                continue
            before = {c: self._last_pushed.get((conn_id, c)) for c in codes}
            current = {}
            for i, c in enumerate(codes):
                if i and i % PRICED_BETWEEN_YIELDS == 0:
                    await asyncio.sleep(0)      # OpenD answers requests while it pushes: so does the fake
                current[c] = (quotes or {}).get(c) or self.market.quote(self.market.instrument(c).symbol, now)
            # a code pushed meanwhile (a move, while this loop yielded) has a newer price out already
            codes = [c for c in codes if self._last_pushed.get((conn_id, c)) is before[c]]
            if changed_only:
                codes = [c for c in codes if self._last_pushed.get((conn_id, c)) != current[c]]
            if not codes:
                continue
            for c in codes:
                self._last_pushed[(conn_id, c)] = current[c]
            for i in range(0, len(codes), PRICED_BETWEEN_YIELDS):   # OpenD pushes as quotes change, not in one block
                if i:
                    await asyncio.sleep(0)
                chunk = codes[i:i + PRICED_BETWEEN_YIELDS]
                await self._send(conn, P_BASIC_QOT, next(self._push_serials), self._basic_push(chunk, current))
                self.pushed += len(chunk)

    async def _pulse(self) -> None:
        """The fake's own cadence: changed quotes go out, resting stop orders are checked against the feed."""
        while True:
            await asyncio.sleep(self.push_interval)
            try:
                await self._push_quotes(changed_only=True)
                await self._trigger_stops()
            except Exception:          # noqa: BLE001 - a connection closing mid-send; the next beat tries again
                continue

    # ------------------------------------------------------------ the feed moved (the test's thread)
    def _moved(self, symbol: str, quote: Quote) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._spawn, self._on_move(symbol, quote))

    async def _on_move(self, symbol: str, quote: Quote) -> None:
        code = self._code(self.market.instrument(symbol).symbol)
        await self._push_quotes({code: quote})
        await self._trigger_stops(symbol)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
