"""What the bar store asks of Alpaca (`core.feeds.HistorySource`): the universe and daily bars, in Alpaca's
batches and within its rate limit. Sources for every number: docs/notes/alpaca.md, section 7.

Universe (`list_securities`), symbols canonical (core.symbols), US tick scheme, whole shares:

    'list'   GET /v2/assets?asset_class=us_equity (one request) for each symbol's name, exchange and status:
             inactive -> 'delisted', active but not tradable -> 'suspended'; a symbol Alpaca does not list is
             left out (logged). Then snapshots for the last session's dollar volume.
    'board'  GET /v2/assets?status=active&asset_class=us_equity: the tradable ones on NYSE, NASDAQ, ARCA, AMEX
             and BATS (not OTC), then snapshots (SNAPSHOTS_PER_REQUEST symbols a request): those whose last
             completed session traded at least `min_turnover` dollars (VWAP x volume), the `max_symbols` largest.
             (Alpaca's assets do not say which are ETFs: the board holds them too.)
    'index'  InvalidRequest: Alpaca has no index-constituents API.

Daily history (`daily_history`): GET /v2/stocks/bars with many symbols (StockBarsRequest, timeframe 1Day, the feed
from config `alpaca.data_feed`), one request group per first session wanted, BARS_SYMBOLS_PER_REQUEST symbols a
group, one yielded batch per group. Pages are BARS_PAGE (10,000, Alpaca's maximum) bars; the limit counts bars across
all the symbols, which come sorted by symbol, then time, so a page may hold only the first symbols: `next_page_token`
is followed until Alpaca returns none. alpaca-py's get_stock_bars follows it inside one call, so a 429 on page five
would resend pages one to four; here each page is its own SDK call (the data client's `get`, parsed by alpaca-py's
BarSet), and a 429 is waited out by `AlpacaSession.call` (Retry-After, else X-RateLimit-Reset) for that page only,
up to a whole minute window, RATE_RETRIES times; one that still does not clear -> `QuotaExhausted` after the
batches already yielded.

Adjustment: split-adjusted, as `AlpacaBroker.get_bars` returns them, so the store and the agent's live tools agree
(dividends are not adjusted; a split re-bases earlier bars, which are then on the old base until fetched again).
Daily bars are stamped at midnight New York by Alpaca and at the session open here (mapping.bar).
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, AsyncIterator

from brokers.alpaca import mapping
from brokers.alpaca.sdk import AlpacaSession, RateLimited
from core.clock import Clock
from core.errors import InvalidRequest
from core.feeds import Listing, QuotaExhausted, UniverseSpec
from core.instruments import Bar, Instrument
from core.symbols import InvalidSymbol, canonical_symbol

if TYPE_CHECKING:
    from core.calendar import MarketCalendar
    from core.config_model import AlpacaConfig

log = logging.getLogger(__name__)

BOARD_EXCHANGES = ("NYSE", "NASDAQ", "ARCA", "AMEX", "BATS")
BARS_SYMBOLS_PER_REQUEST = 200
BARS_PAGE = 10_000
SNAPSHOTS_PER_REQUEST = 200
RATE_WINDOW_SECONDS = 60.0       # Alpaca's limits are per minute
RATE_RETRIES = 5
CENT = Decimal("0.01")


class AlpacaHistory:
    """The bar store's questions to Alpaca's assets and market data endpoints."""

    def __init__(self, session: AlpacaSession, *, config: "AlpacaConfig", clock: Clock,
                 calendar: "MarketCalendar") -> None:
        self._session = session
        self.config = config
        self.clock = clock
        self.calendar = calendar

    # ------------------------------------------------------------ the universe
    async def list_securities(self, spec: UniverseSpec) -> list[Listing]:
        if spec.kind == "index":
            raise InvalidRequest("Alpaca has no index-constituents API: use universe kind 'list' (the index's "
                                 "symbols) or 'board' (NYSE/NASDAQ/ARCA/AMEX/BATS stocks filtered by turnover)")
        if spec.kind == "list":
            return await self._listed(spec.symbols)
        if spec.kind == "board":
            return await self._board(spec)
        raise InvalidRequest(f"unknown universe kind {spec.kind!r}; Alpaca answers 'list' and 'board'")

    async def _listed(self, symbols: tuple[str, ...]) -> list[Listing]:
        wanted = list(dict.fromkeys(canonical_symbol(s, "US") for s in symbols))
        if not wanted:
            return []
        assets = {a[0]: a for a in await self._assets(active_only=False) if a[0] in wanted}
        missing = [s for s in wanted if s not in assets]
        if missing:
            log.warning("alpaca lists no US equity %s; left out of the universe", ", ".join(missing))
        turnover = await self._turnovers([s for s in wanted if s in assets and assets[s][2] == "listed"])
        return [Listing(assets[s][1], status=assets[s][2], turnover=turnover.get(s))  # type: ignore[arg-type]
                for s in wanted if s in assets]

    async def _board(self, spec: UniverseSpec) -> list[Listing]:
        assets = [(s, inst) for s, inst, status, exchange in await self._assets(active_only=True)
                  if status == "listed" and exchange in BOARD_EXCHANGES]
        turnover = await self._turnovers([s for s, _ in assets])
        keep = [Listing(inst, turnover=turnover[s]) for s, inst in assets
                if s in turnover and turnover[s] >= spec.min_turnover]
        keep.sort(key=lambda li: (-(li.turnover or 0), li.instrument.symbol))
        return keep[:spec.max_symbols]

    async def _assets(self, *, active_only: bool) -> list[tuple[str, Instrument, str, str]]:
        """(canonical symbol, instrument, status, exchange) of every US equity Alpaca lists, in one request."""
        sdk, trading, _ = self._session.clients()
        request = sdk.GetAssetsRequest(asset_class=sdk.AssetClass.US_EQUITY,
                                       status="active" if active_only else None)
        out = []
        for asset in await self._call("assets", trading.get_all_assets, request):
            try:
                symbol = canonical_symbol(asset.symbol, "US")
            except InvalidSymbol:              # warrants, units, test symbols: not an instrument we can hold
                continue
            exchange = mapping.value(asset.exchange) or ""
            status = ("delisted" if mapping.value(asset.status) != "active"
                      else "listed" if asset.tradable else "suspended")
            inst = Instrument(symbol=symbol, exchange=exchange or "US", currency="USD", lot_size=1,
                              name=asset.name or "", tick_scheme="us")
            out.append((symbol, inst, status, exchange))
        return out

    async def _turnovers(self, symbols: list[str]) -> dict[str, Decimal]:
        """symbol -> dollar volume of its last completed session, from snapshots (SNAPSHOTS_PER_REQUEST a request);
        a symbol without a completed daily bar is left out."""
        sdk, _, data = self._session.clients()
        now = self.clock.now()
        out: dict[str, Decimal] = {}
        for i in range(0, len(symbols), SNAPSHOTS_PER_REQUEST):
            chunk = symbols[i:i + SNAPSHOTS_PER_REQUEST]
            request = sdk.StockSnapshotRequest(symbol_or_symbols=chunk, feed=sdk.DataFeed(self.config.data_feed))
            for symbol, snap in (await self._call(f"snapshots ({len(chunk)} symbols)", data.get_stock_snapshot,
                                                  request)).items():
                value = self._last_session_value(symbol, snap, now)
                if value is not None:
                    out[canonical_symbol(symbol, "US")] = value
        return out

    def _last_session_value(self, symbol: str, snap: Any, now: datetime) -> Decimal | None:
        for raw in (snap.daily_bar, snap.previous_daily_bar):      # today's bar is still forming while open
            if raw is None:
                continue
            _, done = mapping.bar(symbol, raw, "1d", self.calendar)
            if done <= now:
                price = mapping.dec(raw.vwap) if raw.vwap else mapping.dec(raw.close)
                return (price * int(raw.volume)).quantize(CENT)
        return None

    # ------------------------------------------------------------ daily history
    async def daily_history(self, wanted: list[tuple[str, date]], end: date) -> AsyncIterator[dict[str, list[Bar]]]:
        groups: dict[date, list[str]] = {}
        for symbol, start in wanted:
            groups.setdefault(start, []).append(canonical_symbol(symbol, "US"))
        sdk, _, _ = self._session.clients()
        frame = sdk.TimeFrame(1, sdk.TimeFrameUnit.Day)
        for start, symbols in sorted(groups.items()):
            symbols = list(dict.fromkeys(symbols))
            if start > end:
                yield {s: [] for s in symbols}
                continue
            for i in range(0, len(symbols), BARS_SYMBOLS_PER_REQUEST):
                chunk = symbols[i:i + BARS_SYMBOLS_PER_REQUEST]
                request = sdk.StockBarsRequest(
                    symbol_or_symbols=chunk, timeframe=frame, start=self._midnight(start), end=self._midnight(end),
                    feed=sdk.DataFeed(self.config.data_feed), adjustment=sdk.Adjustment.SPLIT, limit=BARS_PAGE)
                yield self._batch(chunk, await self._pages(request, f"{len(chunk)} symbols from {start}"),
                                  start, end)

    async def _pages(self, request: Any, what: str) -> dict[str, list[Any]]:
        """Every page of one bars request, each its own call (its own 429 retries), until no next_page_token."""
        sdk, _, data = self._session.clients()
        params = request.to_request_fields()
        found: dict[str, list[Any]] = {}
        page = 0
        while True:
            page += 1
            answer = await self._call(f"daily bars of {what}, page {page}", data.get, "/stocks/bars", dict(params))
            for symbol, bars in sdk.BarSet(answer.get("bars") or {}).data.items():
                found.setdefault(symbol, []).extend(bars)
            params["page_token"] = answer.get("next_page_token")
            if not params["page_token"]:
                return found

    def _batch(self, symbols: list[str], found: dict[str, list[Any]], start: date, end: date) -> dict[str, list[Bar]]:
        now = self.clock.now()
        out: dict[str, list[Bar]] = {s: [] for s in symbols}
        for symbol, raws in found.items():
            ours = canonical_symbol(symbol, "US")
            for raw in raws:
                bar, done = mapping.bar(ours, raw, "1d", self.calendar)
                if start <= self.calendar.local_date(bar.start) <= end and done <= now:
                    out.setdefault(ours, []).append(bar)
        return {s: sorted(bars, key=lambda b: b.start) for s, bars in out.items()}

    # ------------------------------------------------------------ plumbing
    def _midnight(self, day: date) -> datetime:
        """Alpaca stamps a session's daily bar at midnight New York of its date: the inclusive bound for `day`."""
        return datetime.combine(day, time(0), tzinfo=self.calendar.tz)

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """A read that waits out Alpaca's per-minute rate limit; a limit that does not clear -> QuotaExhausted."""
        try:
            return await self._session.call(what, fn, *args, attempts=RATE_RETRIES, max_wait=RATE_WINDOW_SECONDS)
        except RateLimited as exc:
            resets = (None if exc.retry_after is None
                      else self._session.clock.now() + timedelta(seconds=exc.retry_after))
            raise QuotaExhausted(str(exc), resets=resets) from exc
