"""How the simulated market makes its prices: per-symbol traits, the daily path and each session's minutes.

Pure functions of (seed, symbol, session) over numpy arrays; `simulated.SimulatedMarket` caches what they compute
and answers the market's questions from it. Prices are integer units of 0.0001 (`tick_grid.UNITS`).

1. Per symbol, static traits come from its own seeded stream: price level, volatility, beta, lot size,
   turnover, jump rate (`traits`).
2. A daily path runs over the calendar's trading days from EPOCH (2015-01-01). Each symbol draws its own
   random numbers in blocks of 256 sessions (one seeded generator per block), so a day's draws never depend on
   how far ahead anybody looked. The recursion is vectorised across symbols (`daily_rows`):
     * GARCH(1,1) variance (alpha 0.09, beta 0.88, capped at 3.5x the long-run level; Student-t(5) shocks
       during the day), a fifth of it overnight — which makes opening gaps;
     * a market factor (its own seeded stream, 20% annual vol) times each symbol's beta (`market_factor`);
     * trend regimes: a drift of +-(0.04..0.16) daily sigmas (or none) that switches about every 30 sessions;
     * jumps (1-3% of days, ~7% in size), 70% of them at the open as gaps, the rest intraday;
     * a slow pull (1/400 per day) back to the symbol's price level so twenty years stay in a sane range.
   High and low are drawn from the distribution of a Brownian bridge's extremes between open and close.
   Volume rises with volatility and with the size of the day's move.
3. Each (symbol, session) gets a minute path from its own seeded stream (`minute_path`): a Brownian bridge from
   the open to the close with U-shaped variance, warped so that its extremes are exactly the day's high and low.
   Minute bars therefore aggregate exactly to the daily bar (open, high, low, close, volume).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from brokers.paper.tick_grid import UNITS, TickGrid

EPOCH = date(2015, 1, 1)

BLOCK = 256                      # sessions per random block
NS_MIN = 60_000_000_000
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

_NAME_A = ("Harbour", "Jade", "Lotus", "Summit", "Pearl", "Crimson", "Golden", "Silver", "Azure", "Orchid",
           "Bamboo", "Phoenix", "Meridian", "Cobalt", "Evergreen", "Tidal", "Granite", "Willow", "Beacon",
           "Horizon", "Copper", "Ivory", "Maple", "Nimbus")
_NAME_B = ("Holdings", "Group", "Technology", "Properties", "Energy", "Biotech", "Logistics", "Foods", "Media",
           "Securities", "Retail", "Shipping", "Semiconductor", "Healthcare", "Resources", "Telecom")
_HK_LOTS = np.array([100, 200, 400, 500, 1000, 2000, 4000, 5000, 10000, 20000])


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


# ---------------------------------------------------------------- the universe

@dataclass(frozen=True, slots=True)
class Traits:
    level: float          # long-run price the path is pulled toward
    start: float          # price at the epoch
    sigma: float          # long-run daily volatility
    beta: float
    turnover: float       # typical daily turnover, in currency
    lot: int
    jump_p: float


def traits(seed: int, symbol: str, code: str) -> Traits:
    """A symbol's static traits, from its own seeded stream (`code`: the exchange, XHKG or XNYS)."""
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
    return Traits(level=level, start=level * math.exp(0.3 * z), sigma=annual / math.sqrt(252.0),
                  beta=0.5 + u[5], turnover=turnover, lot=lot, jump_p=0.01 + 0.02 * u[6])


def symbol_names(code: str, n: int) -> list[str]:
    """The first `n` simulated symbols of an exchange: S0001.. on HKEX, SIMA.. elsewhere."""
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


def display_name(i: int) -> str:
    """The i-th symbol's company name ("Sim Harbour Holdings")."""
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
        block = np.empty((_N_DRAWS, BLOCK))
        block[0] = rng.standard_normal(BLOCK)
        block[1] = rng.standard_t(_T_DF, BLOCK) * _T_SCALE       # fat tails during the day
        block[2:6] = rng.random((4, BLOCK))
        block[6:8] = rng.standard_normal((2, BLOCK))
        a = b * BLOCK
        n = min(BLOCK, t_len - a)
        for r in range(_N_DRAWS):
            out[r][row, a:a + n] = block[r, :n]


@dataclass(frozen=True, slots=True)
class Daily:
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


def market_factor(seed: int, n_blocks: int, t_len: int) -> tuple[np.ndarray, np.ndarray]:
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
class Minutes:
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



# ---------------------------------------------------------------- the computations the market caches

def daily_rows(seed: int, symbols: list[str], tr: list[Traits], n_blocks: int, t_len: int,
               market: tuple[np.ndarray, np.ndarray], grid: TickGrid) -> Daily:
    """Daily bars of `symbols` (with their traits `tr`) for the first `t_len` sessions, the market factor given.
    Elementwise per symbol: which symbols are computed together changes no number."""
    draws = [np.empty((len(tr), t_len)) for _ in range(_N_DRAWS)]
    for i, symbol in enumerate(symbols):
        _daily_draws(seed, symbol, n_blocks, draws, i)
    vec = lambda f: np.array([getattr(x, f) for x in tr], dtype=np.float64)  # noqa: E731
    level, sigma, start = vec("level"), vec("sigma"), vec("start")
    floor, ceiling = (math.log(0.02), math.log(9000.0)) if grid.scheme == "hkex" else (math.log(0.5),
                                                                                      math.log(5000.0))
    bounds = (np.maximum(np.log(level) - 2.5, floor), np.minimum(np.log(level) + 2.5, ceiling))
    lo, lc, sig = _simulate(draws, level, start, sigma, vec("beta"), vec("jump_p"), 0.07, market, bounds)
    u_high, u_low, noise = draws[4], draws[5], draws[7]
    del draws
    sigma = sigma[:, None]
    # extremes of a Brownian bridge from open to close, drawn from their exact distribution
    c = lc - lo
    s_in = sig * _A_IN
    var2 = 2.0 * s_in * s_in
    g = grid
    o, cl = g.round(np.exp(lo)).astype(np.int32), g.round(np.exp(lc)).astype(np.int32)
    hi = np.maximum(g.round(np.exp(lo + 0.5 * (c + np.sqrt(c * c - var2 * np.log(u_high))))), np.maximum(o, cl))
    low = np.minimum(g.round(np.exp(lo + 0.5 * (c - np.sqrt(c * c - var2 * np.log(u_low))))), np.minimum(o, cl))
    del var2, c, lo, u_high, u_low
    # volume: more when volatility is high and when the day moves a lot
    move = np.abs(np.diff(lc, axis=1, prepend=np.log(start)[:, None])) / sigma
    shares = (vec("turnover")[:, None] / np.exp(lc) * np.exp(0.45 * noise - 0.1)
              * (0.5 + 0.5 * sig / sigma) * (0.4 + 0.6 * move))
    lots = np.maximum(np.rint(shares / vec("lot")[:, None]), _MIN_DAY_LOTS).astype(np.int64)
    return Daily(open=o.astype(np.int32), high=hi.astype(np.int32), low=low.astype(np.int32),
                 close=cl.astype(np.int32), lots=lots, sigma_in=s_in.astype(np.float32))


def minute_path(seed: int, symbol: str, lot: int, table: Any, ti: int, daily: Daily, row: int, j: int,
                grid: TickGrid) -> Minutes:
    """The minute bars of `symbol` (row `row` of `daily`) in simulated session `j`, calendar row `ti` of `table`."""
    intervals = table.intervals_ns(ti)
    starts = table.minute_starts_ns(ti)
    m = len(starts)
    interval = np.zeros(m, dtype=np.int64)
    pm_start = None
    if len(intervals) > 1:
        pm_start = int((intervals[0][1] - intervals[0][0]) // NS_MIN)
        interval[pm_start:] = 1
    offset = (starts - np.array([a for a, _ in intervals])[interval]) // NS_MIN

    o_u, h_u, l_u, c_u = (int(a[row, j]) for a in (daily.open, daily.high, daily.low, daily.close))
    lots, s_in = int(daily.lots[row, j]), float(daily.sigma_in[row, j])
    day = table.dates[ti].astype(date)
    rng = np.random.default_rng(np.random.SeedSequence(
        [seed, _stable_hash(symbol), _STREAM_MINUTES, day.toordinal()]))

    # a bridge from open to close with U-shaped variance, in log price
    w = _u_curve(m, pm_start)
    w_norm = w / w.mean()
    dw = rng.standard_normal(m) * np.sqrt(w_norm)
    walk = np.concatenate([[0.0], np.cumsum(dw)])
    tau = np.concatenate([[0.0], np.cumsum(w)]) / w.sum()
    step = s_in / math.sqrt(m)
    o_f, c_f, h_f, l_f = o_u / UNITS, c_u / UNITS, h_u / UNITS, l_u / UNITS
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
    close = np.clip(grid.round(path[1:]), l_u, h_u)
    close[-1] = c_u
    open_ = np.concatenate([[o_u], close[:-1]])
    # wicks: a fraction of a minute's move beyond the bar's body
    wick = path[1:] * step * np.sqrt(w_norm)
    high = np.clip(grid.round(np.maximum(open_, close) / UNITS + rng.exponential(0.4, m) * wick), None, h_u)
    low = np.clip(grid.round(np.minimum(open_, close) / UNITS - rng.exponential(0.4, m) * wick), l_u, None)
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
    return Minutes(starts=starts, open=open_, high=high, low=low, close=close, volume=volume,
                   cum_volume=np.cumsum(volume), interval=interval, offset=offset)
