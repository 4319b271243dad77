"""The fake Alpaca's assets and market data routes (a mixin of FakeAlpaca), as Alpaca documents them (sources in
docs/notes/alpaca.md, section 7):

  GET /v2/assets (status, asset_class, exchange)   the listings (`securities_of(market)`): inactive when delisted,
                                                   not tradable when suspended or on OTC
  GET /v2/assets/{symbol}                          one of them; 404 for a symbol Alpaca does not list
  GET /v2/stocks/bars (symbols, timeframe, start, end, limit, page_token, sort)
                                                   many symbols in one answer, sorted by symbol then time; `limit`
                                                   (default 1000, at most `bars_page_max` = Alpaca's 10,000) counts
                                                   bars across all the symbols; `next_page_token` until the last page
  GET /v2/stocks/snapshots, /quotes/latest, /trades/latest (symbols)
                                                   unknown symbols are left out of the answer

`limit_rate(n, per_seconds, match=...)` makes the fake answer like Alpaca's rate limit: every answer to a matching
request carries X-RateLimit-Limit / -Remaining / -Reset (epoch seconds), and a request beyond n in the last
`per_seconds` (by `rate_clock`) gets 429 {"code": 42910000, "message": "rate limit exceeded"} with Retry-After
(whole seconds until the window has room) and is not counted. `count(kind)` says how many requests of a kind
came (bars, snapshots, assets, rate_limited).
"""
from __future__ import annotations

import base64
import math
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from core.instruments import Bar
from tests.fakes.alpaca_wire import (ID_SPACE, NEW_YORK, TIMEFRAMES, _Answer, _bar_json, _error, _f, _midnight,
                                     _time_param, _ts)
from tests.fakes.universe import Security, securities_of

RATE_LIMITED = {"code": 42910000, "message": "rate limit exceeded"}
KIND_PATHS = {"bars": "/v2/stocks/bars", "snapshots": "/v2/stocks/snapshots", "assets": "/v2/assets"}


class DataRoutes:
    """Assets and market data over the fake's price feed (`self.market`) and the paper broker's bars."""

    def _init_data(self) -> None:
        self.bars_page_max = 10_000
        self.rate: tuple[int, float, str] | None = None       # (requests, seconds, path prefix)
        self.accepted_at: list[datetime] = []
        self._bars_cache: OrderedDict[tuple, list[tuple[str, dict[str, Any]]]] = OrderedDict()
        self._listing: dict[str, Security] | None = None

    # ------------------------------------------------------------ configuration and observation (any thread)
    def limit_rate(self, requests: int, per_seconds: float = 60.0, *, match: str = "/v2/stocks") -> None:
        self.rate = (requests, per_seconds, match)

    def count(self, kind: str) -> int:
        if kind == "rate_limited":
            return sum(1 for r in self.requests if r.status == 429)
        path = KIND_PATHS[kind]
        return sum(1 for r in self.requests if r.method == "GET" and r.path == path)

    # ------------------------------------------------------------ the rate limit
    def _rate_check(self, path: str) -> dict[str, str]:
        """Alpaca's rate-limit headers for this request, or raise its 429."""
        if self.rate is None or not path.startswith(self.rate[2]):
            return {}
        limit, seconds, _ = self.rate
        with self._lock:
            now = self.rate_clock.now()
            window = timedelta(seconds=seconds)
            self.accepted_at[:] = [t for t in self.accepted_at if now - t < window]
            opens = self.accepted_at[0] + window if self.accepted_at else now + window
            headers = {"X-RateLimit-Limit": str(limit),
                       "X-RateLimit-Remaining": str(max(0, limit - len(self.accepted_at) - 1)),
                       "X-RateLimit-Reset": str(math.ceil(opens.timestamp()))}
            if len(self.accepted_at) >= limit:
                headers["X-RateLimit-Remaining"] = "0"
                headers["Retry-After"] = str(max(1, math.ceil((opens - now).total_seconds())))
                raise _Answer(429, RATE_LIMITED, headers)
            self.accepted_at.append(now)
        return headers

    # ------------------------------------------------------------ assets
    def _securities(self) -> dict[str, Security]:
        if self._listing is None:
            self._listing = {s.symbol: s for s in securities_of(self.market)}
        return self._listing

    def _asset_json(self, sec: Security) -> dict[str, Any]:
        return {"id": str(uuid.uuid5(ID_SPACE, sec.symbol)), "class": "us_equity",
                "exchange": sec.board if sec.board != "main" else "NYSE", "symbol": sec.symbol, "name": sec.name,
                "status": "inactive" if sec.status == "delisted" else "active",
                "tradable": sec.status == "listed" and sec.board != "OTC", "marginable": True,
                "maintenance_margin_requirement": 30, "shortable": False, "easy_to_borrow": False,
                "fractionable": False, "attributes": []}

    def _get_assets(self, q, body) -> tuple[int, Any]:
        if q.get("asset_class", "us_equity") != "us_equity":
            return 200, []
        rows = [self._asset_json(s) for s in self._securities().values()]
        if q.get("status"):
            rows = [a for a in rows if a["status"] == q["status"]]
        if q.get("exchange"):
            rows = [a for a in rows if a["exchange"] == q["exchange"]]
        return 200, rows

    def _get_asset(self, q, body, symbol: str) -> tuple[int, Any]:
        try:
            sec = self._securities().get(self.market.instrument(symbol).symbol)
        except KeyError:
            sec = None
        if sec is None:
            raise _error(404, 40410000, "asset not found")
        return 200, self._asset_json(sec)

    # ------------------------------------------------------------ market data
    def _symbols(self, q: dict[str, str]) -> list[str]:
        if not q.get("symbols"):
            raise _error(400, 40010001, "symbols is required")
        known = []
        for s in q["symbols"].split(","):
            try:
                self.market.instrument(s)
                known.append(s)
            except KeyError:
                continue                          # Alpaca leaves unknown symbols out of the answer
        return known

    def _get_bars(self, q, body) -> tuple[int, Any]:
        timeframe = TIMEFRAMES.get(q.get("timeframe", ""))
        if timeframe is None:
            raise _error(422, 42210000, f"invalid timeframe {q.get('timeframe')!r} for the fake Alpaca")
        items = self._bar_items(q, timeframe)
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        limit = min(int(q.get("limit") or 1000), self.bars_page_max)
        page = items[offset:offset + limit]
        token = base64.b64encode(str(offset + limit).encode()).decode() if offset + limit < len(items) else None
        out: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            out.setdefault(symbol, []).append(bar)
        return 200, {"bars": out, "next_page_token": token, "currency": "USD"}

    def _bar_items(self, q: dict[str, str], timeframe: str) -> list[tuple[str, dict[str, Any]]]:
        """Every bar the query asks for, sorted by symbol then time (Alpaca's order); the pages of one query share
        them."""
        key = (q.get("symbols"), timeframe, q.get("start"), q.get("end"), q.get("sort"), self.clock.now())
        with self._lock:
            hit = self._bars_cache.get(key)
        if hit is not None:
            return hit
        now = self.clock.now()
        end = min(_time_param(q.get("end")) or now, now)
        start = _time_param(q.get("start")) or end - timedelta(days=1)
        items: list[tuple[str, dict[str, Any]]] = []
        for symbol in sorted(set(self._symbols(q))):
            if timeframe == "1d":      # Alpaca stamps a session's bar at midnight New York; filter on that stamp
                bars = self.run(self.paper.get_bars(symbol, "1d", start - timedelta(days=1), end + timedelta(days=1)))
                rows = [(_midnight(b.start), b) for b in bars]
                rows = [(t, b) for t, b in rows if start <= t <= end]
            else:
                rows = [(b.start, b) for b in self.run(self.paper.get_bars(symbol, timeframe, start, end))]
            if q.get("sort", "asc") == "desc":
                rows.reverse()
            items.extend((symbol, _bar_json(b, t)) for t, b in rows)
        with self._lock:
            self._bars_cache[key] = items
            while len(self._bars_cache) > 4:
                self._bars_cache.popitem(last=False)
        return items

    def _get_snapshots(self, q, body) -> tuple[int, Any]:
        return 200, {s: self._snapshot(s) for s in self._symbols(q)}

    def _get_latest_quotes(self, q, body) -> tuple[int, Any]:
        return 200, {"quotes": {s: self._snapshot(s)["latestQuote"] for s in self._symbols(q)}}

    def _get_latest_trades(self, q, body) -> tuple[int, Any]:
        return 200, {"trades": {s: self._snapshot(s)["latestTrade"] for s in self._symbols(q)}}

    def _snapshot(self, symbol: str) -> dict[str, Any]:
        now = self.clock.now()
        quote = self.run(self.paper.get_quote(symbol))
        ts = _ts(quote.timestamp)
        daily = self.run(self.paper.get_bars(symbol, "1d", now - timedelta(days=10), now))
        bounds = self.calendar.session_bounds(now.astimezone(NEW_YORK).date())
        opened = bounds[0][0] if bounds and now > bounds[0][0] else None
        before = [b for b in daily if opened is None or b.start < opened]          # sessions before today's
        minutes = self.run(self.paper.get_bars(symbol, "1m", opened, now)) if opened else []
        if minutes:        # today's bar so far, from its minutes; the volume is the paper quote's session volume
            daily_bar = Bar(symbol, opened, minutes[0].open, max(b.high for b in minutes),
                            min(b.low for b in minutes), minutes[-1].close, quote.volume)
            prev = before[-1] if before else None
        else:
            daily_bar, prev = (before[-1] if before else None), (before[-2] if len(before) > 1 else None)
        return {
            "latestTrade": {"t": ts, "x": "V", "p": _f(quote.last), "s": 100, "c": ["@"], "i": 1, "z": "A"},
            "latestQuote": {"t": ts, "ax": "V", "ap": _f(quote.ask), "as": 1, "bx": "V", "bp": _f(quote.bid),
                            "bs": 1, "c": ["R"], "z": "A"},
            "minuteBar": _bar_json(minutes[-1], minutes[-1].start) if minutes else None,
            "dailyBar": _bar_json(daily_bar, _midnight(daily_bar.start)) if daily_bar else None,
            "prevDailyBar": _bar_json(prev, _midnight(prev.start)) if prev else None}
