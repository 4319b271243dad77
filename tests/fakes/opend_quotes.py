"""The fake OpenD's quote side (a mixin of FakeOpenD), answering as the OpenAPI docs say OpenD does (sources in
docs/notes/moomoo.md, section 8):

  3203 Qot_GetSecuritySnapshot    at most `snapshot_max_codes` (400) codes a request; at most 60 requests in any
                                  30 seconds; an unknown code refuses the whole request ("Unknown stock HK.x")
  3103 Qot_RequestHistoryKL       at most `kline_page_max` (1000) K-lines a page, nextReqKey for the next page;
                                  at most 60 FIRST pages in any 30 seconds (later pages are not limited); a code
                                  not fetched in the last 30 days takes one unit of `history_quota`; none left ->
                                  refused ("insufficient history K-line quota")
  3104 Qot_RequestHistoryKLQuota  used, remaining and (bGetDetail) each code fetched in the last 30 days with its
                                  last request time
  3202 Qot_GetStaticInfo          a market's securities of one type (delisted ones flagged), or a code list: an
                                  unknown code comes back named "未知股票" with `delisting` set, never an error
  3205 Qot_GetPlateSecurity       a plate's constituents (a Universe's `plates`; any market: Motherboard and
                                  LIST1910); at most 10 requests in any 30 seconds

Frequency limits ("at most n in 30 seconds: the 1st and the (n+1)th more than 30 seconds apart") are measured on
`rate_clock` (wall time unless a test passes its simulated clock): a request that would be the (n+1)th within 30
seconds is refused with "Request too frequent ..." and not counted. `accepted_at[kind]` holds when each accepted
request of a kind arrived; `count(kind)` how many requests of a kind came (snapshot, kline, kline_first_page,
quota, basicinfo, plate); `refused[kind]` how many were refused for frequency.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from core.ticks import tick_size
from tests.fakes.opend_wire import (HKT, KL_MINUTES, NOT_SUPPORTED, QOT_MARKET_HK, _Conn, _local, _parse_local,
                                    _Refuse)
from tests.fakes.universe import Security, Universe, securities_of

KINDS = {3203: "snapshot", 3103: "kline", 3104: "quota", 3202: "basicinfo", 3205: "plate"}
SEC_TYPE = {"stock": 3, "etf": 4, "warrant": 5}            # Qot_Common.SecurityType: Eqty, Trust, Warrant
STOCK_TYPES = {3: "stock", 4: "etf", 5: "warrant"}
EXCH_TYPE = {"main": 1, "gem": 2}                          # Qot_Common.ExchType: HK_MainBoard, HK_GEMBoard
SUSPENDED, DELISTED = 9, 13                                # Qot_Common.SecurityStatus
UNKNOWN_NAME = "未知股票"
QUOTA_DAYS = timedelta(days=30)


class QuoteHandlers:
    """Qot_* protocols over the fake's price feed (`self.market`) and its listings (`securities_of`)."""

    def _init_quotes(self) -> None:
        self.limits: dict[str, tuple[int, float]] = {"snapshot": (60, 30.0), "kline_first_page": (60, 30.0),
                                                     "plate": (10, 30.0)}
        self.snapshot_max_codes = 400
        self.kline_page_max = 1000
        self.history_quota = 1000
        self.accepted_at: dict[str, list[datetime]] = {k: [] for k in self.limits}
        self.refused: Counter[str] = Counter()
        self._kl_first: dict[str, datetime] = {}       # code -> when it took a quota unit
        self._kl_last: dict[str, datetime] = {}        # code -> its last request
        self._listing: dict[str, Security] | None = None
        self._so_far: dict[tuple[str, datetime], tuple[Any, Any, Any, Any]] = {}   # (symbol, now) -> the day so far

    # ------------------------------------------------------------ observation (any thread)
    def count(self, kind: str) -> int:
        if kind == "kline_first_page":
            return sum(1 for r in self.requests_for(3103) if "nextReqKey" not in r.body.get("c2s", {}))
        proto = {v: k for k, v in KINDS.items()}[kind]
        return len(self.requests_for(proto))

    def quota_used(self) -> int:
        now = self.rate_clock.now()
        return sum(1 for t in self._kl_first.values() if now - t < QUOTA_DAYS)

    # ------------------------------------------------------------ limits
    def _throttle(self, kind: str) -> None:
        limit, window = self.limits[kind]
        now = self.rate_clock.now()
        since = now - timedelta(seconds=window)
        recent = 0                      # counted from the newest back: the times are appended as they come
        for t in reversed(self.accepted_at[kind]):
            if t < since or recent >= limit:
                break
            recent += 1
        if recent >= limit:
            self.refused[kind] += 1
            raise _Refuse(f"Request too frequent: at most {limit} requests of this interface in {window:g} "
                          f"seconds")
        self.accepted_at[kind].append(now)

    def _take_quota(self, code: str) -> None:
        now = self.rate_clock.now()
        self._kl_first = {c: t for c, t in self._kl_first.items() if now - t < QUOTA_DAYS}
        if code not in self._kl_first:
            if len(self._kl_first) >= self.history_quota:
                raise _Refuse(f"Insufficient history K-line quota: {self.history_quota} securities in the last "
                              f"30 days, none left (see get_history_kl_quota)")
            self._kl_first[code] = now
        self._kl_last[code] = now

    # ------------------------------------------------------------ listings
    def _securities(self) -> dict[str, Security]:
        if self._listing is None:
            self._listing = {s.symbol: s for s in securities_of(self.market)}
        return self._listing

    def _instrument(self, market: int, code: str) -> Any:
        try:
            if market != QOT_MARKET_HK:
                raise KeyError(code)
            return self.market.instrument(code)
        except KeyError:
            raise _Refuse(f"Unknown stock HK.{code}") from None

    @staticmethod
    def _code(symbol: str) -> str:
        return symbol.zfill(5) if symbol.isdigit() else symbol

    def _static(self, target: Any, sec: Security) -> None:
        basic = target.basic
        basic.security.market, basic.security.code = QOT_MARKET_HK, self._code(sec.symbol)
        basic.id = int(hashlib.sha1(sec.symbol.encode()).hexdigest()[:12], 16)
        basic.lotSize = self.market.instrument(sec.symbol).lot_size
        basic.secType, basic.name = SEC_TYPE[sec.kind], sec.name
        basic.listTime, basic.delisting = sec.listed.isoformat(), sec.status == "delisted"
        basic.listTimestamp = datetime.combine(sec.listed, datetime.min.time(), HKT).timestamp()
        basic.exchType = EXCH_TYPE.get(sec.board, 1)

    async def _on_3202(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        listing = self._securities()
        if len(c2s.securityList):
            for wanted in c2s.securityList:
                sec = None
                try:
                    sec = listing.get(self.market.instrument(wanted.code).symbol) if wanted.market == 1 else None
                except KeyError:
                    pass
                row = s2c.staticInfoList.add()
                if sec is None:          # as OpenD: the code as asked, "unknown stock", defaults, delisting set
                    b = row.basic
                    b.security.market, b.security.code, b.name = wanted.market, wanted.code, UNKNOWN_NAME
                    b.id, b.lotSize, b.secType, b.listTime, b.delisting = 0, 0, 0, "", True
                else:
                    self._static(row, sec)
            return
        if c2s.market != QOT_MARKET_HK:
            return
        kind = STOCK_TYPES.get(c2s.secType)
        for sec in listing.values():
            if sec.kind == kind:
                self._static(s2c.staticInfoList.add(), sec)

    async def _on_3205(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        self._throttle("plate")
        plates = self.market.plates if isinstance(self.market, Universe) else {}
        if not plates:
            everything = [s.symbol for s in self._securities().values() if s.status != "delisted"]
            plates = {"Motherboard": everything, "LIST1910": everything}
        members = plates.get(c2s.plate.code) if c2s.plate.market == QOT_MARKET_HK else None
        if members is None:
            raise _Refuse(f"Unknown plate HK.{c2s.plate.code}")
        listing = self._securities()
        for symbol in members:
            self._static(s2c.staticInfoList.add(), listing[symbol])

    # ------------------------------------------------------------ snapshots
    async def _on_3203(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        self._throttle("snapshot")
        if len(c2s.securityList) > self.snapshot_max_codes:
            raise _Refuse(f"Too many securities in one request: {len(c2s.securityList)}, at most "
                          f"{self.snapshot_max_codes}")
        now = self.clock.now()
        listing = self._securities()
        for sec in c2s.securityList:
            inst = self._instrument(sec.market, sec.code)
            known = listing.get(inst.symbol)
            q = self.market.quote(inst.symbol, now)
            open_, high, low, prev_close = self._day_so_far(inst.symbol, now, q)
            basic = s2c.snapshotList.add().basic
            basic.security.market, basic.security.code, basic.name = QOT_MARKET_HK, sec.code, inst.name
            basic.type = SEC_TYPE[known.kind] if known else 3
            basic.isSuspend = bool(known and known.status == "suspended")
            basic.listTime = known.listed.isoformat() if known else "2015-01-02"
            basic.lotSize = inst.lot_size
            if known and known.status != "listed":
                basic.secStatus = SUSPENDED if known.status == "suspended" else DELISTED
            basic.priceSpread = float(tick_size(q.last, "hkex"))
            basic.updateTime = _local(q.timestamp)[:19]
            basic.openPrice, basic.highPrice, basic.lowPrice = float(open_), float(high), float(low)
            basic.lastClosePrice, basic.curPrice = float(prev_close), float(q.last)
            basic.volume, basic.turnover, basic.turnoverRate = q.volume, float(q.last * q.volume), 0.0
            basic.bidPrice, basic.askPrice = float(q.bid), float(q.ask)

    def _day_so_far(self, symbol: str, now: datetime, q: Any) -> tuple[Any, Any, Any, Any]:
        """(open, high, low, previous close) of the session up to `now`, from its minute bars; kept per instant
        (a sync asks for the same 700 codes' snapshots at the same simulated instant again and again)."""
        key = (symbol, now)
        if key not in self._so_far:
            state = self.calendar.state(now)
            day = state.session_date or self.calendar.previous_trading_day(self.calendar.local_date(now))
            opens = self.calendar.session_bounds(day)
            today = self.market.bars(symbol, "1m", opens[0][0], now) if opens else []
            prev_close = self.market.quote(symbol, opens[0][0]).last if opens else q.last
            if len(self._so_far) > 50_000:
                self._so_far.clear()
            self._so_far[key] = (today[0].open if today else q.last, max((b.high for b in today), default=q.last),
                                 min((b.low for b in today), default=q.last), prev_close)
        return self._so_far[key]

    # ------------------------------------------------------------ history K-lines and their quota
    async def _on_3103(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        if c2s.klType not in KL_MINUTES:
            raise _Refuse(f"K-line type {c2s.klType} {NOT_SUPPORTED}")
        inst = self._instrument(c2s.security.market, c2s.security.code)
        first_page = not c2s.HasField("nextReqKey")
        if first_page:
            self._throttle("kline_first_page")
            self._take_quota(c2s.security.code)
        minutes = KL_MINUTES[c2s.klType]
        begin, end = _parse_local(c2s.beginTime), _parse_local(c2s.endTime, end=True)
        timeframe = {0: "1d", 60: "1h"}.get(minutes, f"{minutes}m")
        bars = self.market.bars(inst.symbol, timeframe, begin - timedelta(days=1), min(end, self.clock.now()))
        labelled = [(label, b) for b in bars if begin <= (label := self._label(b.start, minutes)) <= end]
        offset = int(c2s.nextReqKey or b"0")
        asked = c2s.maxAckKLNum if c2s.HasField("maxAckKLNum") and c2s.maxAckKLNum > 0 else self.kline_page_max
        page = labelled[offset:offset + min(asked, self.kline_page_max)]
        s2c.security.market, s2c.security.code, s2c.name = QOT_MARKET_HK, c2s.security.code, inst.name
        for label, b in page:
            kl = s2c.klList.add()
            kl.time = label.astimezone(HKT).strftime("%Y-%m-%d %H:%M:%S")
            kl.isBlank = False
            kl.openPrice, kl.highPrice, kl.lowPrice = float(b.open), float(b.high), float(b.low)
            kl.closePrice, kl.volume, kl.turnover = float(b.close), b.volume, float(b.close * b.volume)
        if offset + len(page) < len(labelled):
            s2c.nextReqKey = str(offset + len(page)).encode()

    def _label(self, start: datetime, minutes: int) -> datetime:
        """OpenD's time key: the END of an intraday bar (never past its interval's end); midnight for a day."""
        if minutes == 0:
            return datetime.combine(self.calendar.local_date(start), datetime.min.time(), HKT)
        for open_, close in self.calendar.session_bounds(self.calendar.local_date(start)):
            if open_ <= start < close:
                return min(start + timedelta(minutes=minutes), close)
        return start + timedelta(minutes=minutes)

    async def _on_3104(self, conn: _Conn, c2s: Any, s2c: Any) -> None:
        now = self.rate_clock.now()
        active = {c: t for c, t in self._kl_first.items() if now - t < QUOTA_DAYS}
        s2c.usedQuota, s2c.remainQuota = len(active), max(0, self.history_quota - len(active))
        if c2s.bGetDetail:
            for code in sorted(active):
                item = s2c.detailList.add()
                item.security.market, item.security.code = QOT_MARKET_HK, code
                try:
                    item.name = self.market.instrument(code).name
                except KeyError:
                    pass
                last = self._kl_last[code]
                item.requestTime = last.astimezone(HKT).strftime("%Y-%m-%d %H:%M:%S")
                item.requestTimeStamp = int(last.timestamp())
