"""The universe scan: filter and rank every symbol in one vectorised pass; record `scan_results`.

Filters (config `scan`): last close within [min_price, max_price]; average daily turnover (close x volume over
20 days) at least min_turnover; at least min_history_bars bars; RSI(14) at most rsi_max; one board lot affordable
within trading.max_position_value.
Score (each term shown in `reasons`):
  momentum   2 x the 20-day return, capped at +/-0.5
  trend      +0.2 when the close is above SMA(20), +0.1 more when SMA(20) is above SMA(50)
  macd       +0.15 when MACD's histogram is positive
  volume     +0.1 x min(volume ratio - 1, 3) when the last volume exceeds its 20-day average
  gap        +0.1 for an opening gap up of at least 1%, -0.1 for a gap down of at least 1%
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services import Services

log = logging.getLogger("catalyst.scan")


@dataclass(frozen=True)
class Candidate:
    symbol: str
    rank: int
    score: float
    price: float
    reasons: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "rank": self.rank, "score": round(self.score, 3), "price": self.price,
                "reasons": list(self.reasons), **{k: round(v, 4) for k, v in self.metrics.items()}}


def rank_universe(frames: dict, cfg, *, lot_sizes=None, max_lot_value: float | None = None) -> list[Candidate]:
    """Pure: daily OHLCV frames (dates x symbols) -> ranked candidates.

    With `lot_sizes` (a Series by symbol) and `max_lot_value`, a symbol whose one board lot at the last close costs
    more than `max_lot_value` is not a candidate: the safety gate could never size an entry in it."""
    import numpy as np

    from data.technicals import universe_indicators

    close, high, low, volume, open_ = frames["close"], frames["high"], frames["low"], frames["volume"], frames["open"]
    ind = universe_indicators(close, high, low, volume)
    last = close.ffill().iloc[-1]
    bars = close.notna().sum()
    turnover = (close * volume).rolling(20, min_periods=5).mean().iloc[-1]
    ret20 = last / close.ffill().shift(20).iloc[-1] - 1
    prev_close = close.ffill().shift(1).iloc[-1]
    gap = open_.iloc[-1] / prev_close - 1
    rsi = ind["rsi14"].iloc[-1]
    sma20, sma50 = ind["sma20"].iloc[-1], ind["sma50"].iloc[-1]
    hist = ind["macd_hist"].iloc[-1]
    vr = ind["volume_ratio20"].iloc[-1]

    ok = ((last >= float(cfg.min_price)) & (last <= float(cfg.max_price)) & (turnover >= float(cfg.min_turnover))
          & (bars >= cfg.min_history_bars) & (rsi <= float(cfg.rsi_max)) & rsi.notna())
    if lot_sizes is not None and max_lot_value is not None:
        ok &= (last * lot_sizes.reindex(last.index)) <= float(max_lot_value)
    momentum = (2 * ret20).clip(-0.5, 0.5).fillna(0)
    trend = 0.2 * (last > sma20) + 0.1 * (sma20 > sma50)
    macd = 0.15 * (hist > 0)
    vol = (0.1 * (vr - 1).clip(0, 3)).fillna(0)
    gap_term = 0.1 * (gap >= 0.01) - 0.1 * (gap <= -0.01)
    score = (momentum + trend + macd + vol + gap_term).where(ok)
    ranked = score.dropna().sort_values(ascending=False, kind="stable").head(cfg.top_n)
    out = []
    for rank, (symbol, s) in enumerate(ranked.items(), 1):
        reasons = [f"20-day return {ret20[symbol]:+.1%}"]
        if last[symbol] > sma20[symbol]:
            reasons.append("close above SMA(20)" + (" and SMA(20) above SMA(50)" if sma20[symbol] > sma50[symbol] else ""))
        if hist[symbol] > 0:
            reasons.append("MACD histogram positive")
        if np.isfinite(vr[symbol]) and vr[symbol] > 1:
            reasons.append(f"volume {vr[symbol]:.1f}x its 20-day average")
        if abs(gap[symbol]) >= 0.01:
            reasons.append(f"opening gap {gap[symbol]:+.1%}")
        reasons.append(f"RSI(14) {rsi[symbol]:.0f}")
        out.append(Candidate(symbol=symbol, rank=rank, score=float(s), price=float(last[symbol]),
                             reasons=tuple(reasons),
                             metrics={"rsi14": float(rsi[symbol]), "ret20": float(ret20[symbol]),
                                      "turnover20": float(turnover[symbol]),
                                      "volume_ratio": float(vr[symbol]) if np.isfinite(vr[symbol]) else 0.0}))
    return out


async def run_scan(services: "Services", *, cycle_id: uuid.UUID | None) -> list[Candidate]:
    cfg = services.settings.config.scan
    now = services.clock.now()
    source = services.market.source
    symbols = [i.symbol for i in source.instruments()]
    frames = await asyncio.to_thread(source.daily_frame, symbols, now, cfg.lookback_days)
    import pandas as pd
    lots = pd.Series({i.symbol: i.lot_size for i in source.instruments()}, dtype=float)
    candidates = await asyncio.to_thread(rank_universe, frames, cfg, lot_sizes=lots,
                                         max_lot_value=float(services.settings.config.trading.max_position_value))
    await services.pool.executemany(
        """INSERT INTO scan_results (agent_id, cycle_id, scanned_at, symbol, rank, score, price, reasons, metrics)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [(services.agent_id, cycle_id, now, c.symbol, c.rank, Decimal(str(round(c.score, 6))),
          Decimal(str(c.price)), list(c.reasons), c.metrics) for c in candidates])
    log.info("scan of %d symbols: %d candidates; top %s", len(symbols), len(candidates),
             ", ".join(c.symbol for c in candidates[:5]))
    return candidates


async def latest_or_run_scan(services: "Services", *, cycle_id: uuid.UUID | None) -> list[Candidate]:
    """Today's most recent scan (this session's daily bars have not changed since), or a fresh one."""
    from portfolio import trading_day_start
    day_start = trading_day_start(services, services.clock.now())
    rows = await services.pool.fetch(
        """SELECT symbol, rank, score, price, reasons, metrics FROM scan_results
           WHERE agent_id = $1 AND scanned_at = (SELECT max(scanned_at) FROM scan_results
                                                  WHERE agent_id = $1 AND scanned_at >= $2 AND scanned_at <= $3)
           ORDER BY rank""", services.agent_id, day_start, services.clock.now())
    if rows:
        return [Candidate(r["symbol"], r["rank"], float(r["score"]), float(r["price"]), tuple(r["reasons"]),
                          r["metrics"]) for r in rows]
    return await run_scan(services, cycle_id=cycle_id)
