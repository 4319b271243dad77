"""The simulated market: the default data source for people with no broker account.

It behaves like an exchange, not a random toy: real sessions (HKEX lunch break, holidays, half days), board
lots, the tick table, volatility that clusters, trends that come and go, overnight gaps and news jumps, a
U-shaped intraday volume curve — and it is a pure function of (seed, symbol, time). Two processes that ask
for the same symbol at the same instant get the same price, with no shared state and no dependence on call
order or on which other symbols exist. That is what lets the agent, the position monitor and a replay agree.

How a price is made
-------------------
1. Per symbol, static traits come from its own seeded stream: price level, volatility, beta, lot size,
   turnover, jump rate.
2. A daily path runs over the calendar's trading days from EPOCH (2015-01-01). Each symbol draws its own
   random numbers in blocks of 256 sessions (one seeded generator per block), so a day's draws never depend on
   how far ahead anybody looked. The recursion is vectorised across symbols:
     * GARCH(1,1) variance (alpha 0.09, beta 0.88, capped at 3.5x the long-run level; Student-t(5) shocks
       during the day), a fifth of it overnight — which makes opening gaps;
     * a market factor (its own seeded stream, 20% annual vol) times each symbol's beta;
     * trend regimes: a drift of +-(0.04..0.16) daily sigmas (or none) that switches about every 30 sessions;
     * jumps (1-3% of days, ~7% in size), 70% of them at the open as gaps, the rest intraday;
     * a slow pull (1/400 per day) back to the symbol's price level so twenty years stay in a sane range.
   High and low are drawn from the distribution of a Brownian bridge's extremes between open and close.
   Volume rises with volatility and with the size of the day's move.
3. Each (symbol, session) gets a minute path from its own seeded stream: a Brownian bridge from the open to the
   close with U-shaped variance, warped so that its extremes are exactly the day's high and low. Minute bars
   therefore aggregate exactly to the daily bar (open, high, low, close, volume).
Every price is put on the exchange tick grid (integers in units of 0.0001 internally; `Decimal` outside).
A quote at t is the close of the last minute completed by t (bid/ask one tick either side); at lunch it is the
morning close, overnight (and in a session's first minute) the previous close.

"Same numbers everywhere" holds for processes on the same numpy and exchange_calendars versions: the random
streams are numpy's, and the trading days come from the calendar. Prices before EPOCH do not exist (ValueError).
Every symbol trades every session: there are no listings, delistings or halts in this market.
"""
from __future__ import annotations

import functools
import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Sequence

import numpy as np

from core.instruments import Bar, Instrument, Quote, Timeframe
from core.calendar import MarketCalendar, exchange_code, to_ns, from_ns
from core.instruments import DAILY_FIELDS
from core.errors import UnknownSymbol
from core.ticks import TickScheme, tick_above, tick_bands, tick_below

if TYPE_CHECKING:
    import pandas as pd

EPOCH = date(2015, 1, 1)

_BLOCK = 256                     # sessions per random block
_CHUNK = 24                      # symbols computed together (bounds transient memory)
_UNITS = 10_000                  # prices are held as integers of 0.0001
_NS_MIN = 60_000_000_000
_MIN_DAY_LOTS = 400              # >= minutes in any session, so every minute trades at least one lot
_STREAM_META, _STREAM_DAILY, _STREAM_MINUTES = 1, 2, 3
_MARKET_KEY = "__market__"

_T_DF = 5.0
_T_SCALE = math.sqrt((_T_DF - 2.0) / _T_DF)   # unit-variance Student-t
_OVERNIGHT_SHARE = 0.2
_A_ON, _A_IN = math.sqrt(_OVERNIGHT_SHARE), math.sqrt(1.0 - _OVERNIGHT_SHARE)
_GARCH_ALPHA, _GARCH_BETA, _SIGMA_CAP = 0.09, 0.88, 3.5
_MEAN_REVERSION = 1.0 / 400.0
_REGIME_SWITCH_P = 1.0 / 30.0
_GAP_SHARE_OF_JUMPS = 0.7

_TIMEFRAME_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60}

_NAME_A = ("Harbour", "Jade", "Lotus", "Summit", "Pearl", "Crimson", "Golden", "Silver", "Azure", "Orchid",
           "Bamboo", "Phoenix", "Meridian", "Cobalt", "Evergreen", "Tidal", "Granite", "Willow", "Beacon",
           "Horizon", "Copper", "Ivory", "Maple", "Nimbus")
_NAME_B = ("Holdings", "Group", "Technology", "Properties", "Energy", "Biotech", "Logistics", "Foods", "Media",
           "Securities", "Retail", "Shipping", "Semiconductor", "Healthcare", "Resources", "Telecom")
_HK_LOTS = np.array([100, 200, 400, 500, 1000, 2000, 4000, 5000, 10000, 20000])

_MARKETS = {  # exchange code -> currency, tick scheme, minimum price
    "XHKG": ("HKD", "hkex", Decimal("0.01")),
    "XNYS": ("USD", "us", Decimal("0.01")),
}


# ---------------------------------------------------------------- tick grid, vectorised

class _Grid:
    """The tick table of data/ticks.py in integer units, for rounding whole float arrays at once."""

    def __init__(self, scheme: TickScheme, min_price: Decimal) -> None:
        bands, top, upper_inclusive = tick_bands(scheme)
        self.uppers = np.array([int(u * _UNITS) for u, _ in bands], dtype=np.float64)
        self.ticks = np.array([int(t * _UNITS) for _, t in bands] + [int(top * _UNITS)], dtype=np.int64)
        self.side = "left" if upper_inclusive else "right"
        self.min_units = int(min_price * _UNITS)

    def round(self, prices: np.ndarray) -> np.ndarray:
        """Nearest valid price, as int64 units; a price never falls below the exchange minimum."""
        pu = np.asarray(prices, dtype=np.float64) * _UNITS
        tick = self.ticks[np.searchsorted(self.uppers, pu, side=self.side)]
        return np.maximum(np.rint(pu / tick).astype(np.int64) * tick, self.min_units)


_TEN4 = Decimal(_UNITS)


@functools.lru_cache(maxsize=1 << 16)
def _dec(units: int) -> Decimal:
    return Decimal(int(units)) / _TEN4      # exact: the quotient has at most four decimals (prices repeat: cached)


@functools.lru_cache(maxsize=1 << 16)
def _touch(units: int, scheme: str) -> tuple[Decimal, Decimal, Decimal]:
    """(bid, last, ask) around a last price: one tick either side (prices repeat: cached)."""
    price = _dec(units)
    return tick_below(price, scheme), price, tick_above(price, scheme)


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


# ---------------------------------------------------------------- the universe

@dataclass(frozen=True, slots=True)
class _Traits:
    level: float          # long-run price the path is pulled toward
    start: float          # price at the epoch
    sigma: float          # long-run daily volatility
    beta: float
    turnover: float       # typical daily turnover, in currency
    lot: int
    jump_p: float


def _traits(seed: int, symbol: str, code: str) -> _Traits:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_hash(symbol), _STREAM_META]))
    u = rng.random(8)
    z = float(rng.standard_normal())
    if code == "XHKG":
        # penny stocks, small caps, mid caps, heavyweights — HKEX's long tail of cheap shares included
        bands = ((0.18, 0.2, 1.0), (0.50, 1.0, 10.0), (0.82, 10.0, 100.0), (1.01, 100.0, 500.0))
        lo, hi = next((a, b) for cut, a, b in bands if u[0] < cut)
        level = math.exp(math.log(lo) + u[1] * math.log(hi / lo))
        annual = 0.22 * math.exp(u[2] * math.log(0.55 / 0.22)) * (1.3 if level < 1.0 else 1.0)
        lot_value = 2_000.0 * math.exp(u[3] * math.log(15.0))          # 2k..30k HKD a board lot
        lot = int(_HK_LOTS[np.argmin(np.abs(np.log(_HK_LOTS * level / lot_value)))])
        turnover = 3e6 * math.exp(u[4] * math.log(250.0))
    else:
        level = 3.0 * math.exp(u[1] * math.log(400.0 / 3.0))
        annual = 0.20 * math.exp(u[2] * math.log(0.55 / 0.20))
        lot = 1
        turnover = 2e6 * math.exp(u[4] * math.log(250.0))
    return _Traits(level=level, start=level * math.exp(0.3 * z), sigma=annual / math.sqrt(252.0),
                   beta=0.5 + u[5], turnover=turnover, lot=lot, jump_p=0.01 + 0.02 * u[6])


def _symbols(code: str, n: int) -> list[str]:
    if code == "XHKG":
        if n > 9999:
            raise ValueError("at most 9999 simulated HKEX symbols")
        return [f"S{i:04d}" for i in range(1, n + 1)]
    out = []
    for i in range(n):          # SIMA..SIMZ, SIMAA.. (bijective base 26)
        k, suffix = i + 1, ""
        while k:
            k, r = divmod(k - 1, 26)
            suffix = chr(65 + r) + suffix
        out.append("SIM" + suffix)
    return out


def _name(i: int) -> str:
    return f"Sim {_NAME_A[i % len(_NAME_A)]} {_NAME_B[(i // len(_NAME_A) + i) % len(_NAME_B)]}"


# ---------------------------------------------------------------- the daily path

_N_DRAWS = 8   # overnight shock, intraday shock, jump/regime/high/low uniforms, jump size, volume noise


def _daily_draws(seed: int, key: str, n_blocks: int, out: list[np.ndarray], row: int) -> None:
    """Fill row `row` of each of the _N_DRAWS (symbol x session) arrays in `out` for one symbol, one seeded
    generator per block of sessions, so a session's numbers never depend on how far ahead anybody looked."""
    h = _stable_hash(key)
    t_len = out[0].shape[1]
    for b in range(n_blocks):
        rng = np.random.default_rng(np.random.SeedSequence([seed, h, _STREAM_DAILY, b]))
        block = np.empty((_N_DRAWS, _BLOCK))
        block[0] = rng.standard_normal(_BLOCK)
        block[1] = rng.standard_t(_T_DF, _BLOCK) * _T_SCALE       # fat tails during the day
        block[2:6] = rng.random((4, _BLOCK))
        block[6:8] = rng.standard_normal((2, _BLOCK))
        a = b * _BLOCK
        n = min(_BLOCK, t_len - a)
        for r in range(_N_DRAWS):
            out[r][row, a:a + n] = block[r, :n]


@dataclass(frozen=True, slots=True)
class _Daily:
    """Symbol-major (symbol x session) daily bars; prices in integer units."""
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    lots: np.ndarray         # volume in board lots
    sigma_in: np.ndarray     # intraday volatility (log), drives the minute path


def _simulate(draws: list[np.ndarray], level: np.ndarray, start: np.ndarray, sigma: np.ndarray, beta: np.ndarray,
              jump_p: np.ndarray, jump_size: float, market: tuple[np.ndarray, np.ndarray] | None,
              log_bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The daily recursion for a batch of symbols: draws (_N_DRAWS arrays of symbol x session), per-symbol
    traits as vectors. Every operation is elementwise per symbol, so a symbol's numbers do not depend on which
    others are in the batch. Returns log open, log close and the day's sigma, each symbol x session."""
    z_on, z_in, u_jump, u_regime, _, _, jump_z, _ = draws
    n, t_len = z_on.shape
    col = lambda v: np.asarray(v, dtype=np.float64)[:, None]  # noqa: E731
    level, start, sigma, beta, jump_p = col(level), col(start), col(sigma), col(beta), col(jump_p)

    # trend regimes: a fresh drift at every switch, held until the next one
    switch = u_regime < _REGIME_SWITCH_P
    switch[:, 0] = True
    pick_all = np.where(switch, u_regime / _REGIME_SWITCH_P, u_regime).clip(0.0, 1.0)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(t_len)[None, :], 0), axis=1)
    pick = np.take_along_axis(pick_all, last_switch, axis=1)
    strength = np.where(pick < 0.3, -(0.04 + 0.12 * pick / 0.3),
                        np.where(pick < 0.7, 0.0, 0.04 + 0.12 * (pick - 0.7) / 0.3))

    jump = np.where(u_jump < jump_p, jump_z * jump_size, 0.0)
    at_open = u_jump < jump_p * _GAP_SHARE_OF_JUMPS
    m_on, m_in = market if market is not None else (np.zeros(t_len), np.zeros(t_len))
    add_on = np.where(at_open, jump, 0.0) + beta * m_on[None, :]
    add_in = (np.where(at_open, 0.0, jump) + beta * m_in[None, :] + strength * sigma
              + _MEAN_REVERSION * np.log(level))
    zs_on, zs_in = z_on * _A_ON, z_in * _A_IN
    del switch, pick_all, last_switch, pick, strength, at_open
    var_bar = (sigma * sigma)[:, 0]
    omega = var_bar * (1.0 - _GARCH_ALPHA - _GARCH_BETA)
    cap = var_bar * _SIGMA_CAP ** 2
    lo_b, hi_b = log_bounds

    log_open = np.empty((n, t_len))
    log_close = np.empty((n, t_len))
    sig = np.empty((n, t_len))
    lp = np.log(start[:, 0])
    s2 = var_bar.copy()
    for t in range(t_len):
        s = np.sqrt(s2)
        e_on = s * zs_on[:, t]
        e_in = s * zs_in[:, t]
        lo = lp + e_on + add_on[:, t]
        lp = np.minimum(np.maximum(lo + e_in + add_in[:, t] - _MEAN_REVERSION * lp, lo_b), hi_b)
        log_open[:, t] = lo
        log_close[:, t] = lp
        sig[:, t] = s
        e = e_on + e_in + jump[:, t]
        s2 = np.minimum(omega + _GARCH_ALPHA * e * e + _GARCH_BETA * s2, cap)
    return log_open, log_close, sig


def _market_factor(seed: int, n_blocks: int, t_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The market's overnight and intraday log returns, from its own seeded stream."""
    draws = [np.empty((1, t_len)) for _ in range(_N_DRAWS)]
    _daily_draws(seed, _MARKET_KEY, n_blocks, draws, 0)
    one = np.ones(1)
    lo, lc, _ = _simulate(draws, one, one, one * (0.20 / math.sqrt(252.0)), one * 0.0, one * 0.006,
                          0.035, None, (one * -3.0, one * 3.0))
    prev = np.concatenate([[0.0], lc[0, :-1]])
    return lo[0] - prev, lc[0] - lo[0]


# ---------------------------------------------------------------- one session's minutes

@dataclass(frozen=True, slots=True)
class _Minutes:
    starts: np.ndarray       # int64 UTC ns
    open: np.ndarray         # int64 units
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray       # int64 shares
    cum_volume: np.ndarray
    interval: np.ndarray     # which continuous interval (0 morning, 1 afternoon) each minute belongs to
    offset: np.ndarray       # minutes since the start of that interval


def _u_curve(m: int, pm_start: int | None) -> np.ndarray:
    x = (np.arange(m) + 0.5) / m
    w = 0.6 + 2.2 * np.exp(-x / 0.04) + 1.4 * np.exp(-(1.0 - x) / 0.05)
    if pm_start is not None:      # the afternoon reopening after lunch draws its own burst
        xp = (np.arange(m) - pm_start) / m
        w += np.where(xp >= 0, 0.8 * np.exp(-np.clip(xp, 0, None) / 0.03), 0.0)
    return w


# ---------------------------------------------------------------- the market

class SimulatedMarket:
    """A deterministic simulated exchange; implements `data.source.MarketDataSource`."""

    def __init__(self, seed: int, exchange: str = "HKEX", n_symbols: int = 240,
                 calendar: MarketCalendar | None = None, *, minute_cache_size: int = 2048) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be positive, got {n_symbols}")
        code = exchange_code(exchange)
        self.calendar = calendar or MarketCalendar(exchange)
        if self.calendar.code != code:
            raise ValueError(f"calendar {self.calendar.code} does not match exchange {exchange} ({code})")
        self.seed = seed
        self._quote_minute: int | None = None     # quote(): answers for the current minute, by symbol
        self._quotes: dict[str, Quote] = {}
        self._starts: dict[int, datetime] = {}      # session open instants, by calendar row
        self.exchange = exchange.upper()
        self._code = code
        currency, scheme, min_price = _MARKETS[code]
        self._scheme: TickScheme = scheme  # type: ignore[assignment]
        self._grid = _Grid(self._scheme, min_price)
        symbols = _symbols(code, n_symbols)
        self._traits = [_traits(seed, s, code) for s in symbols]
        self._instruments = [Instrument(symbol=s, exchange=self.exchange, currency=currency, lot_size=tr.lot,
                                        name=_name(i), tick_scheme=self._scheme)
                             for i, (s, tr) in enumerate(zip(symbols, self._traits))]
        self._row = {s: i for i, s in enumerate(symbols)}

        table = self.calendar.table
        first = int(np.searchsorted(table.dates, np.datetime64(EPOCH, "D")))
        if first == 0 and table.dates[0] > np.datetime64(EPOCH, "D"):
            raise ValueError(f"the calendar must start on or before {EPOCH} (the simulated market's epoch)")
        self._first = first                       # calendar index of the first simulated session
        self._n_sessions = len(table.dates) - first
        self._daily: _Daily | None = None
        self._lock = threading.RLock()
        self._minutes: OrderedDict[tuple[int, int], _Minutes] = OrderedDict()
        self._minute_cache_size = minute_cache_size

    # ------------------------------------------------------------ universe

    def instruments(self) -> list[Instrument]:
        return list(self._instruments)

    def instrument(self, symbol: str) -> Instrument:
        return self._instruments[self._index(symbol)]

    def _index(self, symbol: str) -> int:
        try:
            return self._row[symbol]
        except KeyError:
            first, last = self._instruments[0].symbol, self._instruments[-1].symbol
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the simulated {self.exchange} market (seed "
                                f"{self.seed}) lists {len(self._instruments)} symbols, {first}..{last}") from None

    # ------------------------------------------------------------ daily path

    def _ensure(self, j: int) -> _Daily:
        """Daily bars computed at least through simulated session `j` (whole blocks, whole universe)."""
        if j >= self._n_sessions:
            raise ValueError(f"{self.calendar.code} calendar loaded here ends {self.calendar.last_day}; "
                             f"the simulated market cannot go past it")
        daily = self._daily
        if daily is not None and j < daily.close.shape[1]:
            return daily
        with self._lock:
            daily = self._daily
            if daily is None or j >= daily.close.shape[1]:
                self._daily = daily = self._compute(j)
        return daily

    def _compute(self, j: int) -> _Daily:
        """The whole universe's daily bars through session `j`, computed CHUNK symbols at a time: the recursion is
        elementwise per symbol, so chunking changes no number and caps the transient memory (the draws and the
        float64 intermediates) at a few MB — it matters on a 1 GB droplet running the monitor daemon."""
        n_blocks = j // _BLOCK + 1
        t_len = min(n_blocks * _BLOCK, self._n_sessions)
        market = _market_factor(self.seed, n_blocks, t_len)
        n = len(self._instruments)
        out = _Daily(open=np.empty((n, t_len), np.int32), high=np.empty((n, t_len), np.int32),
                     low=np.empty((n, t_len), np.int32), close=np.empty((n, t_len), np.int32),
                     lots=np.empty((n, t_len), np.int64), sigma_in=np.empty((n, t_len), np.float32))
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            part = self._compute_rows(a, b, n_blocks, t_len, market)
            for name in ("open", "high", "low", "close", "lots", "sigma_in"):
                getattr(out, name)[a:b] = getattr(part, name)
        return out

    def _compute_rows(self, a: int, b: int, n_blocks: int, t_len: int, market) -> _Daily:
        tr = self._traits[a:b]
        draws = [np.empty((len(tr), t_len)) for _ in range(_N_DRAWS)]
        for i, inst in enumerate(self._instruments[a:b]):
            _daily_draws(self.seed, inst.symbol, n_blocks, draws, i)
        vec = lambda f: np.array([getattr(x, f) for x in tr], dtype=np.float64)  # noqa: E731
        level, sigma, start = vec("level"), vec("sigma"), vec("start")
        floor, ceiling = (math.log(0.02), math.log(9000.0)) if self._scheme == "hkex" else (math.log(0.5), math.log(5000.0))
        bounds = (np.maximum(np.log(level) - 2.5, floor), np.minimum(np.log(level) + 2.5, ceiling))
        lo, lc, sig = _simulate(draws, level, start, sigma, vec("beta"), vec("jump_p"), 0.07, market, bounds)
        u_high, u_low, noise = draws[4], draws[5], draws[7]
        del draws
        sigma = sigma[:, None]
        # extremes of a Brownian bridge from open to close, drawn from their exact distribution
        c = lc - lo
        s_in = sig * _A_IN
        var2 = 2.0 * s_in * s_in
        g = self._grid
        o, cl = g.round(np.exp(lo)).astype(np.int32), g.round(np.exp(lc)).astype(np.int32)
        hi = np.maximum(g.round(np.exp(lo + 0.5 * (c + np.sqrt(c * c - var2 * np.log(u_high))))), np.maximum(o, cl))
        low = np.minimum(g.round(np.exp(lo + 0.5 * (c - np.sqrt(c * c - var2 * np.log(u_low))))), np.minimum(o, cl))
        del var2, c, lo, u_high, u_low
        # volume: more when volatility is high and when the day moves a lot
        move = np.abs(np.diff(lc, axis=1, prepend=np.log(start)[:, None])) / sigma
        shares = (vec("turnover")[:, None] / np.exp(lc) * np.exp(0.45 * noise - 0.1)
                  * (0.5 + 0.5 * sig / sigma) * (0.4 + 0.6 * move))
        lots = np.maximum(np.rint(shares / vec("lot")[:, None]), _MIN_DAY_LOTS).astype(np.int64)
        return _Daily(open=o.astype(np.int32), high=hi.astype(np.int32), low=low.astype(np.int32),
                      close=cl.astype(np.int32), lots=lots, sigma_in=s_in.astype(np.float32))

    # ------------------------------------------------------------ minute path

    def _session_of(self, t_ns: int) -> int:
        """Simulated session index of the last session that opened at or before t (may be -1)."""
        return int(np.searchsorted(self.calendar.table.opens, t_ns, "right")) - 1 - self._first

    def _minute_path(self, row: int, j: int) -> _Minutes:
        key = (row, j)
        with self._lock:
            hit = self._minutes.get(key)
            if hit is not None:
                self._minutes.move_to_end(key)
                return hit
        daily = self._ensure(j)
        made = self._make_minutes(row, j, daily)
        with self._lock:
            self._minutes[key] = made
            if len(self._minutes) > self._minute_cache_size:
                self._minutes.popitem(last=False)
        return made

    def _make_minutes(self, row: int, j: int, daily: _Daily) -> _Minutes:
        table = self.calendar.table
        ti = self._first + j
        intervals = table.intervals_ns(ti)
        starts = table.minute_starts_ns(ti)
        m = len(starts)
        interval = np.zeros(m, dtype=np.int64)
        pm_start = None
        if len(intervals) > 1:
            pm_start = int((intervals[0][1] - intervals[0][0]) // _NS_MIN)
            interval[pm_start:] = 1
        offset = (starts - np.array([a for a, _ in intervals])[interval]) // _NS_MIN

        o_u, h_u, l_u, c_u = (int(a[row, j]) for a in (daily.open, daily.high, daily.low, daily.close))
        lots, s_in = int(daily.lots[row, j]), float(daily.sigma_in[row, j])
        lot = self._instruments[row].lot_size
        day = table.dates[ti].astype(date)
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed, _stable_hash(self._instruments[row].symbol), _STREAM_MINUTES, day.toordinal()]))

        # a bridge from open to close with U-shaped variance, in log price
        w = _u_curve(m, pm_start)
        w_norm = w / w.mean()
        dw = rng.standard_normal(m) * np.sqrt(w_norm)
        walk = np.concatenate([[0.0], np.cumsum(dw)])
        tau = np.concatenate([[0.0], np.cumsum(w)]) / w.sum()
        step = s_in / math.sqrt(m)
        o_f, c_f, h_f, l_f = o_u / _UNITS, c_u / _UNITS, h_u / _UNITS, l_u / _UNITS
        path = np.exp(math.log(o_f) + tau * (math.log(c_f) - math.log(o_f)) + step * (walk - tau * walk[-1]))
        path[0], path[-1] = o_f, c_f
        # warp the excursions beyond the endpoints so the extremes are exactly the day's high and low
        top, bottom = max(o_f, c_f), min(o_f, c_f)
        peak, trough = float(path.max()), float(path.min())
        if peak > top:
            above = path > top
            path[above] = top + (path[above] - top) * ((h_f - top) / (peak - top))
        if trough < bottom:
            below = path < bottom
            path[below] = bottom - (bottom - path[below]) * ((bottom - l_f) / (bottom - trough))
        close = np.clip(self._grid.round(path[1:]), l_u, h_u)
        close[-1] = c_u
        open_ = np.concatenate([[o_u], close[:-1]])
        # wicks: a fraction of a minute's move beyond the bar's body
        wick = path[1:] * step * np.sqrt(w_norm)
        high = np.clip(self._grid.round(np.maximum(open_, close) / _UNITS + rng.exponential(0.4, m) * wick), None, h_u)
        low = np.clip(self._grid.round(np.minimum(open_, close) / _UNITS - rng.exponential(0.4, m) * wick), l_u, None)
        high = np.maximum(high, np.maximum(open_, close))
        low = np.minimum(low, np.minimum(open_, close))
        if high.max() < h_u:
            high[int(np.argmax(high))] = h_u
        if low.min() > l_u:
            low[int(np.argmin(low))] = l_u
        # volume: U-shaped, noisy, heavier on minutes that move; every minute trades at least one lot
        moved = np.abs(np.diff(np.log(path))) / (step * np.sqrt(w_norm))
        weight = w * rng.gamma(3.0, 1.0 / 3.0, m) * (1.0 + 0.5 * moved)
        minute_lots = 1 + rng.multinomial(lots - m, weight / weight.sum())
        volume = minute_lots.astype(np.int64) * lot
        return _Minutes(starts=starts, open=open_, high=high, low=low, close=close, volume=volume,
                        cum_volume=np.cumsum(volume), interval=interval, offset=offset)

    # ------------------------------------------------------------ MarketDataSource

    def quote(self, symbol: str, at: datetime) -> Quote:
        """Last completed minute's close as of `at`, one tick either side for bid/ask.

        Between sessions (lunch included) it is the last close before the break; `volume` is the cumulative
        volume of the session that price belongs to, and `timestamp` the end of the minute that set it.
        """
        t = to_ns(at)
        minute = t // _NS_MIN                    # minutes complete on minute boundaries: one answer per minute
        if minute != self._quote_minute:
            self._quote_minute, self._quotes = minute, {}
        hit = self._quotes.get(symbol)
        if hit is None:
            hit = self._quotes[symbol] = self._quote(symbol, at, t)
        return hit

    def _quote(self, symbol: str, at: datetime, t: int) -> Quote:
        row = self._index(symbol)
        j = self._session_of(t)
        table = self.calendar.table
        last = None
        if j >= 0 and t < table.closes[self._first + j]:
            mins = self._minute_path(row, j)
            k = int(np.searchsorted(mins.starts + _NS_MIN, t, "right"))
            if k > 0:
                last, vol, ts = int(mins.close[k - 1]), int(mins.cum_volume[k - 1]), int(mins.starts[k - 1]) + _NS_MIN
            else:
                j -= 1                      # opened less than a minute ago: still yesterday's close
        if last is None:
            if j < 0:
                raise ValueError(f"no simulated prices before the first session on or after {EPOCH} "
                                 f"(asked for {at.isoformat()})")
            daily = self._ensure(j)
            last = int(daily.close[row, j])
            vol = int(daily.lots[row, j]) * self._instruments[row].lot_size
            ts = int(table.closes[self._first + j])
        bid, price, ask = _touch(last, self._scheme)
        return Quote(symbol=symbol, bid=bid, ask=ask, last=price, volume=vol, timestamp=from_ns(ts))

    def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> list[Bar]:
        """Bars starting in [start, end) that completed at or before `end`, oldest first.

        Daily bars start at the session open (UTC); intraday bars are aligned to the start of each continuous
        interval (HKEX: 09:30 and 13:00 local), so the last bar before a break may be shorter.
        """
        row = self._index(symbol)
        if timeframe != "1d" and timeframe not in _TIMEFRAME_MINUTES:
            raise ValueError(f"unknown timeframe {timeframe!r}; expected 1m, 5m, 15m, 30m, 1h or 1d")
        t0, t1 = to_ns(start), to_ns(end)
        if t1 <= t0:
            return []
        table = self.calendar.table
        first_j = max(self._session_of(t0), 0)
        last_j = self._session_of(t1 - 1)
        if last_j < first_j:
            return []
        if timeframe == "1d":
            opens = table.opens[self._first + first_j:self._first + last_j + 1]
            closes = table.closes[self._first + first_j:self._first + last_j + 1]
            keep = np.flatnonzero((opens >= t0) & (closes <= t1))
            if len(keep) == 0:
                return []
            daily = self._ensure(first_j + int(keep[-1]))
            lot = self._instruments[row].lot_size
            js = first_j + keep
            starts = [self._session_start(self._first + j) for j in js.tolist()]
            o, h, lo, c = (a[row, js].tolist() for a in (daily.open, daily.high, daily.low, daily.close))
            lots = daily.lots[row, js].tolist()
            return [Bar(symbol, starts[n], _dec(o[n]), _dec(h[n]), _dec(lo[n]), _dec(c[n]), int(lots[n]) * lot)
                    for n in range(len(starts))]
        size = _TIMEFRAME_MINUTES[timeframe]
        out: list[Bar] = []
        for j in range(first_j, last_j + 1):
            if table.closes[self._first + j] <= t0:
                continue
            out.extend(self._aggregate(symbol, self._minute_path(row, j), size, t0, t1))
        return out

    def _session_start(self, k: int) -> datetime:
        hit = self._starts.get(k)
        if hit is None:
            hit = self._starts[k] = from_ns(int(self.calendar.table.opens[k]))
        return hit

    @staticmethod
    def _aggregate(symbol: str, mins: _Minutes, size: int, t0: int, t1: int) -> list[Bar]:
        key = mins.interval * 100_000 + mins.offset // size
        edges = np.flatnonzero(np.diff(key)) + 1
        first = np.concatenate([[0], edges])
        last = np.concatenate([edges - 1, [len(key) - 1]])
        bar_start = mins.starts[first]
        done = (bar_start >= t0) & (mins.starts[last] + _NS_MIN <= t1)
        if not done.any():
            return []
        high = np.maximum.reduceat(mins.high, first)
        low = np.minimum.reduceat(mins.low, first)
        vol = np.add.reduceat(mins.volume, first)
        return [Bar(symbol, from_ns(bar_start[b]), _dec(mins.open[first[b]]), _dec(high[b]), _dec(low[b]),
                    _dec(mins.close[last[b]]), int(vol[b])) for b in np.flatnonzero(done)]

    def daily_frame(self, symbols: Sequence[str], end: datetime, lookback_days: int) -> dict[str, "pd.DataFrame"]:
        """The last `lookback_days` completed sessions (close at or before `end`) as float frames,
        session date x symbol. Every simulated symbol trades every session, so there are no gaps."""
        import pandas as pd

        rows = [self._index(s) for s in symbols]
        table = self.calendar.table
        done = int(np.searchsorted(table.closes, to_ns(end), "right")) - self._first   # sessions completed
        lo = max(done - int(lookback_days), 0)
        if done <= 0 or lookback_days <= 0:
            empty = pd.DataFrame(index=pd.DatetimeIndex([], name="date"), columns=list(symbols), dtype=float)
            return {f: empty.copy() for f in DAILY_FIELDS}
        daily = self._ensure(done - 1)
        index = pd.DatetimeIndex(table.dates[self._first + lo:self._first + done], name="date")
        lots = np.array([self._instruments[r].lot_size for r in rows], dtype=np.float64)
        sel = (rows, slice(lo, done))
        values = {"open": daily.open[sel].T / _UNITS, "high": daily.high[sel].T / _UNITS,
                  "low": daily.low[sel].T / _UNITS, "close": daily.close[sel].T / _UNITS,
                  "volume": daily.lots[sel].T * lots}
        return {f: pd.DataFrame(values[f], index=index, columns=list(symbols)) for f in DAILY_FIELDS}
