"""alpaca-py, contained: importing it, its two clients, the worker threads, timeouts, retries and errors.

alpaca-py is synchronous (requests), so every call runs in `asyncio.to_thread`. Two SDK knobs are private and set
here on purpose: each client's `requests.Session` gets the configured timeout (alpaca-py sets none, so a silent
server would hang a worker thread forever), and alpaca-py's own retry (3 x 3 s on 429/504, blind to Retry-After)
is off in favour of ours.

Errors (`AlpacaSession.call`): 429 is retried up to `retry_attempts` times, waiting Retry-After (or
X-RateLimit-Reset, or a backoff; a wait above `max_retry_wait_seconds` is not made), then `RateLimited` (a
BrokerUnavailable saying how long Alpaca asked us to wait). Waits use the injected `sleep`, and X-RateLimit-Reset
(epoch seconds) is read against the injected clock, so tests on a simulated clock do not wait for real. A call
that pages (alpaca-py follows next_page_token inside one call) and meets a 429 is retried whole.
Network errors, timeouts, 5xx, 401 (and 403 outside order entry: bad keys) -> BrokerUnavailable (`AnswerLost`
when the request may or may not have been carried out); a 404 -> `NotFound`; any other 4xx -> `AlpacaRefused`
(an InvalidRequest; order entry turns it into OrderRejected). A read whose connection dropped is resent once;
an order submission never is (the client looks it up instead).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from types import SimpleNamespace
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import requests

from core.clock import Clock, RealClock
from core.errors import BrokerError, BrokerUnavailable, InvalidRequest
from core.config_model import AlpacaConfig
from core.errors import ConfigError

log = logging.getLogger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"


class AlpacaRefused(InvalidRequest):
    """Alpaca answered 4xx: `status`, Alpaca's `code` and `message`. Order entry turns it into OrderRejected."""

    def __init__(self, what: str, status: int, code: Any, message: str) -> None:
        super().__init__(f"alpaca refused {what}: {message} (HTTP {status}" + (f", code {code})" if code else ")"))
        self.status, self.code, self.message = status, code, message


class NotFound(AlpacaRefused):
    """404: no such order, asset or position."""


class RateLimited(BrokerUnavailable):
    """429 after every retry we were willing to make; `retry_after` is the wait Alpaca asked for (seconds), if it
    said."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AnswerLost(BrokerUnavailable):
    """No usable answer (timeout, dropped connection, 5xx): the request may or may not have been carried out."""


class AlpacaSession:
    """alpaca-py behind one broker: a `TradingClient` and a `StockHistoricalDataClient`, built off the event loop
    by `open`, and every SDK call made through `call`."""

    def __init__(self, config: AlpacaConfig, *, api_key: str, secret_key: str, base_url: str,
                 data_url: str | None, retry_attempts: int, max_retry_wait_seconds: float,
                 clock: Clock | None = None, sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.sleep = sleep or asyncio.sleep
        self.base_url = base_url
        self.data_url = data_url
        self.retry_attempts = retry_attempts
        self.max_retry_wait_seconds = max_retry_wait_seconds
        self._keys = (api_key, secret_key)
        self._sdk: SimpleNamespace | None = None
        self._trading: Any = None
        self._data: Any = None

    def __repr__(self) -> str:  # never the keys
        return f"AlpacaSession({self.base_url}, data={self.data_url or 'default'})"

    # ------------------------------------------------------------ connection
    @property
    def is_open(self) -> bool:
        return self._trading is not None

    async def open(self) -> None:
        if self._trading is None:
            self._sdk, self._trading, self._data = await asyncio.to_thread(self._build_clients)

    def close(self) -> None:
        for client in (self._trading, self._data):
            if client is not None:
                client._session.close()
        self._trading = self._data = None

    def clients(self) -> tuple[SimpleNamespace, Any, Any]:
        """(the SDK's names, the trading client, the data client); InvalidRequest before `open`."""
        if self._trading is None:
            raise InvalidRequest("alpaca broker: call connect() first")
        return self._sdk, self._trading, self._data

    def _build_clients(self) -> tuple[SimpleNamespace, Any, Any]:
        sdk = load_sdk()                        # the SDK pulls in pandas: imported off the event loop
        key, secret = self._keys
        trading = sdk.TradingClient(api_key=key, secret_key=secret, paper=self.config.paper,
                                    url_override=self.base_url)
        data = sdk.StockHistoricalDataClient(api_key=key, secret_key=secret, url_override=self.data_url)
        for client in (trading, data):
            client._session = TimeoutSession(self.config.timeout_seconds)
            client._retry = 0                   # our `call` retries 429s, honouring Retry-After
        return sdk, trading, data

    # ------------------------------------------------------------ one SDK call
    async def call(self, what: str, fn: Callable[..., Any], *args: Any, resend: bool = True,
                   entry: bool = False, attempts: int | None = None, max_wait: float | None = None) -> Any:
        """One SDK call in a worker thread, errors translated (module docstring). `resend`: a dropped
        connection may be retried once (reads and cancels; never an order submission). `entry`: order entry,
        where 403 is a refusal, not bad keys. `attempts` / `max_wait`: this call's 429 retries and longest wait
        (default: the session's), for jobs that can wait out a whole rate-limit window."""
        from alpaca.common.exceptions import APIError
        attempts = self.retry_attempts if attempts is None else attempts
        max_wait = self.max_retry_wait_seconds if max_wait is None else max_wait
        waited = dropped = 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except APIError as exc:
                status = exc.status_code
                wait = self._rate_limit_wait(exc, waited, max_wait) if status == 429 else None
                if status == 429 and waited < attempts and wait is not None:
                    waited += 1
                    log.info("alpaca %s: rate limited, retry %d in %.2f s", what, waited, wait)
                    await self.sleep(wait)
                    continue
                raise self._translate(what, exc, entry=entry, retries=waited) from exc
            except requests.exceptions.Timeout as exc:
                raise AnswerLost(f"alpaca: {what}: no answer within {self.config.timeout_seconds:g} s "
                                 f"from {_host(exc)}") from exc
            except requests.exceptions.ConnectionError as exc:
                if resend and dropped == 0:
                    dropped += 1
                    continue
                raise AnswerLost(f"alpaca: {what}: connection to {_host(exc)} failed: "
                                 f"{_root_cause(exc)}") from exc
            except requests.exceptions.RequestException as exc:
                raise AnswerLost(f"alpaca: {what}: request failed: {exc}") from exc
            except (ValueError, TypeError, KeyError) as exc:   # pydantic's ValidationError is a ValueError
                raise BrokerUnavailable(f"alpaca: {what}: reply not understood: {exc}") from exc

    def _rate_limit_wait(self, exc: Any, attempt: int, max_wait: float) -> float | None:
        """Seconds to wait before resending after a 429, or None when Alpaca asks for longer than we wait."""
        wait = self._asked_wait(exc)
        if wait is None:
            wait = min(0.25 * 2 ** attempt, max_wait)
        return wait if wait <= max_wait else None

    def _asked_wait(self, exc: Any) -> float | None:
        """The wait a 429 asked for: Retry-After (seconds or an HTTP date), else X-RateLimit-Reset (epoch s)."""
        headers = exc.response.headers if exc.response is not None else {}
        now = self.clock.now().timestamp()
        wait = _retry_after(headers.get("Retry-After"), now)
        if wait is None and headers.get("X-RateLimit-Reset", "").isdigit():
            wait = max(0.0, int(headers["X-RateLimit-Reset"]) - now)
        return wait

    def _translate(self, what: str, exc: Any, *, entry: bool, retries: int) -> BrokerError:
        status = exc.status_code
        code, message = _error_body(str(exc))
        if status is None or status >= 500:
            return AnswerLost(f"alpaca: {what}: server error (HTTP {status}): {message}")
        if status == 429:
            asked = self._asked_wait(exc)
            return RateLimited(f"alpaca: {what}: rate limited (HTTP 429) after {retries} retries: {message}"
                               + (f"; Alpaca asks to wait {asked:.0f} s" if asked is not None else ""), asked)
        if status == 401 or (status == 403 and not entry):
            which = "paper" if self.config.paper else "live"
            return BrokerUnavailable(f"alpaca: {what}: not authorized (HTTP {status}: {message}); check "
                                     f"ALPACA_API_KEY / ALPACA_SECRET_KEY are {which} keys for {self.base_url}")
        if status == 404:
            return NotFound(what, status, code, message)
        return AlpacaRefused(what, status, code, message)


# ---------------------------------------------------------------- endpoints

def clean_url(url: str | None) -> str | None:
    """alpaca-py appends /v2 itself; an endpoint written with it ('.../v2') would become '.../v2/v2'."""
    if not url:
        return None
    url = url.strip().rstrip("/")
    return url[:-3] if url.endswith("/v2") else url


def check_endpoint(base_url: str | None, paper: bool) -> None:
    host = urlsplit(clean_url(base_url) or "").hostname or ""
    if paper and host == urlsplit(LIVE_URL).hostname:
        raise ConfigError(f"ALPACA_BASE_URL is Alpaca's live endpoint ({base_url}) but alpaca.paper is true; "
                          f"set alpaca.paper: false and real_money: true to trade real money, or remove "
                          f"ALPACA_BASE_URL")
    if not paper and host == urlsplit(PAPER_URL).hostname:
        raise ConfigError(f"ALPACA_BASE_URL is Alpaca's paper endpoint ({base_url}) but alpaca.paper is false")


# ---------------------------------------------------------------- the SDK's names, and its session

def load_sdk() -> SimpleNamespace:
    from alpaca.common.enums import Sort
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.models import BarSet
    from alpaca.data.requests import StockBarsRequest, StockSnapshotRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import AssetClass, OrderSide as AlpacaSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.requests import (GetAssetsRequest, GetOrdersRequest, LimitOrderRequest, MarketOrderRequest,
                                         StopOrderRequest)
    return SimpleNamespace(
        Sort=Sort, Adjustment=Adjustment, DataFeed=DataFeed, StockHistoricalDataClient=StockHistoricalDataClient,
        StockBarsRequest=StockBarsRequest, StockSnapshotRequest=StockSnapshotRequest, TimeFrame=TimeFrame,
        TimeFrameUnit=TimeFrameUnit, TradingClient=TradingClient, OrderSide=AlpacaSide,
        QueryOrderStatus=QueryOrderStatus, TimeInForce=TimeInForce, GetOrdersRequest=GetOrdersRequest,
        LimitOrderRequest=LimitOrderRequest, MarketOrderRequest=MarketOrderRequest, StopOrderRequest=StopOrderRequest,
        AssetClass=AssetClass,
        GetAssetsRequest=GetAssetsRequest, BarSet=BarSet)


class TimeoutSession(requests.Session):
    """A Session whose requests time out (alpaca-py passes no timeout)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)


# ---------------------------------------------------------------- error details

def _error_body(text: str) -> tuple[Any, str]:
    try:
        body = json.loads(text)
    except ValueError:
        return None, text.strip()[:300] or "(empty body)"
    if isinstance(body, dict):
        return body.get("code"), str(body.get("message") or body)
    return None, str(body)[:300]


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (against `now`, epoch seconds)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _host(exc: Any) -> str:
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None) or ""
    return urlsplit(url).netloc or "alpaca"


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return f"{type(exc).__name__}: {exc}"
