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
import json
import logging
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from core.calendar import MarketCalendar
from core.clock import Clock
from data.store import read_quietly

if TYPE_CHECKING:
    import asyncpg

    from core.config_model import ScanConfig
    from data.store import BarStore
    from data.sync import Sync

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
        """The candidate for a tool's answer (a new dict each time; the rounding is worked out once)."""
        shown = self.__dict__.get("_shown")
        if shown is None:
            shown = {"symbol": self.symbol, "rank": self.rank, "score": round(self.score, 3), "price": self.price,
                     "reasons": None, **{k: round(v, 4) for k, v in self.metrics.items()}}
            object.__setattr__(self, "_shown", shown)      # (frozen: kept beside the fields, not one of them)
        return {**shown, "reasons": list(self.reasons)}


# The indicators the score reads (the rest of UNIVERSE_KEYS is not computed for a scan).
_SCAN_KEYS = ("rsi14", "sma20", "sma50", "macd_hist", "volume_ratio20")


def rank_universe(frames: dict, cfg, *, lot_sizes=None, max_lot_value: float | None = None) -> list[Candidate]:
    """Pure: daily OHLCV frames (dates x symbols) -> ranked candidates.

    With `lot_sizes` (a Series by symbol) and `max_lot_value`, a symbol whose one board lot at the last close costs
    more than `max_lot_value` is not a candidate: the safety gate could never size an entry in it."""
    import numpy as np

    from data.technicals import universe_indicators

    close, high, low, volume, open_ = frames["close"], frames["high"], frames["low"], frames["volume"], frames["open"]
    symbols = list(close.columns)
    ind = universe_indicators(close, high, low, volume, keys=_SCAN_KEYS)
    c = close.to_numpy(dtype=np.float64)
    n = len(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        filled = _ffill_rows(c, [n - 1, n - 2, n - 21])          # the last close at or before those rows
        last, prev_close, base20 = filled[n - 1], filled[n - 2], filled[n - 21]
        bars = (~np.isnan(c)).sum(axis=0)
        tv = (c * volume.to_numpy(dtype=np.float64))[-20:]        # turnover: mean of the last 20 rows' close x volume
        counts = (~np.isnan(tv)).sum(axis=0)
        turnover = np.where(counts >= 5, np.nansum(tv, axis=0) / np.maximum(counts, 1), np.nan)
        ret20 = last / base20 - 1
        gap = (open_.to_numpy(dtype=np.float64)[-1] if n else np.full(len(symbols), np.nan)) / prev_close - 1
        at = {k: ind[k].to_numpy()[-1] if n else np.full(len(symbols), np.nan)
              for k in ("rsi14", "sma20", "sma50", "macd_hist", "volume_ratio20")}
        rsi, sma20, sma50, hist, vr = (at[k] for k in ("rsi14", "sma20", "sma50", "macd_hist", "volume_ratio20"))
        ok = ((last >= float(cfg.min_price)) & (last <= float(cfg.max_price)) & (turnover >= float(cfg.min_turnover))
              & (bars >= cfg.min_history_bars) & (rsi <= float(cfg.rsi_max)) & ~np.isnan(rsi))
        if lot_sizes is not None and max_lot_value is not None:
            ok &= (last * lot_sizes.reindex(close.columns).to_numpy(dtype=np.float64)) <= float(max_lot_value)
        momentum = np.nan_to_num(np.clip(2 * ret20, -0.5, 0.5), nan=0.0)
        trend = 0.2 * (last > sma20) + 0.1 * (sma20 > sma50)
        macd = 0.15 * (hist > 0)
        vol = np.nan_to_num(0.1 * np.clip(vr - 1, 0, 3), nan=0.0)
        gap_term = 0.1 * (gap >= 0.01) - 0.1 * (gap <= -0.01)
        score = momentum + trend + macd + vol + gap_term
    picked = np.flatnonzero(ok & ~np.isnan(score))
    order = picked[np.argsort(-score[picked], kind="stable")][:cfg.top_n]   # best first; ties keep column order
    out = []
    for rank, j in enumerate(order.tolist(), 1):
        reasons = [f"20-day return {ret20[j]:+.1%}"]
        if last[j] > sma20[j]:
            reasons.append("close above SMA(20)" + (" and SMA(20) above SMA(50)" if sma20[j] > sma50[j] else ""))
        if hist[j] > 0:
            reasons.append("MACD histogram positive")
        if np.isfinite(vr[j]) and vr[j] > 1:
            reasons.append(f"volume {vr[j]:.1f}x its 20-day average")
        if abs(gap[j]) >= 0.01:
            reasons.append(f"opening gap {gap[j]:+.1%}")
        reasons.append(f"RSI(14) {rsi[j]:.0f}")
        out.append(Candidate(symbol=symbols[j], rank=rank, score=float(score[j]), price=float(last[j]),
                             reasons=tuple(reasons),
                             metrics={"rsi14": float(rsi[j]), "ret20": float(ret20[j]),
                                      "turnover20": float(turnover[j]),
                                      "volume_ratio": float(vr[j]) if np.isfinite(vr[j]) else 0.0}))
    return out


def _ffill_rows(values, rows: list[int]):
    """For each wanted row index: every column's last non-NaN value at or before it (NaN if none, or if the row
    is before the start). The forward fill the score reads, without filling the whole matrix."""
    import numpy as np
    n, m = values.shape
    valid = ~np.isnan(values)
    last_valid = np.where(valid, np.arange(n)[:, None], -1)
    np.maximum.accumulate(last_valid, axis=0, out=last_valid)
    out = {}
    for r in rows:
        if r < 0 or n == 0:
            out[r] = np.full(m, np.nan)
            continue
        idx = last_valid[r]
        out[r] = np.where(idx >= 0, values[np.maximum(idx, 0), np.arange(m)], np.nan)
    return out


async def rank_at(store: "BarStore", cfg: "ScanConfig", max_position_value: Decimal, now) -> list[Candidate]:
    """The scan's ranking of the store's listed symbols on the daily bars completed by `now` (rank_universe)."""
    import pandas as pd
    instruments = await store.instruments()
    frames = await store.daily_frame([i.symbol for i in instruments], now, cfg.lookback_days)
    lots = pd.Series({i.symbol: i.lot_size for i in instruments}, dtype=float)
    return await asyncio.to_thread(rank_universe, frames, cfg, lot_sizes=lots, max_lot_value=float(max_position_value))


class ScanUnavailable(Exception):
    """The bar store cannot serve a scan now; the message says what to run."""


class Scanner:
    """The whole-universe scan: ranks every listed symbol of the bar store on its daily bars, records the
    candidates in `scan_results`, and serves today's latest scan until the daily bars change.

    A stale store (missing the last completed session) is brought up to date first with `refresh` (the sync);
    for a live broker an empty store is not filled here (a first sync of a whole market takes a while and spends
    the venue's quota): the scan says to run `./run.sh data sync`."""

    def __init__(self, *, pool: "asyncpg.Pool", store: "BarStore", clock: Clock, calendar: MarketCalendar,
                 scan: "ScanConfig", max_position_value: Decimal, agent_id: str, refresh: "Sync | None" = None,
                 live: bool = False, before_write: "Callable[[], Awaitable[None]] | None" = None) -> None:
        self.pool = pool
        self.before_write = before_write      # awaited before rows that refer to the cycle (its start row held)
        self.store = store
        self.clock = clock
        self.calendar = calendar
        self.cfg = scan
        self.max_position_value = max_position_value
        self.agent_id = agent_id
        self.refresh = refresh
        self.live = live
        # today's latest scan as last read: (day start, read at (clock), read at (monotonic), candidates)
        self._latest: tuple | None = None
        # rankings worked out ahead by another process (replay/prefetch.py), under (None, "scan", *session key)
        self.prefetched = None

    async def ensure_fresh(self) -> None:
        if self.refresh is None or not await self.refresh.is_stale():
            return
        empty = await self.store.last_bar_end("1d") is None
        if empty and self.live:
            raise ScanUnavailable(f"the bar store ({self.store.dataset}) is empty: run ./run.sh data sync first "
                                  f"(cron runs it before the scan)")
        summary = await self.refresh.run()
        log.info(summary.render())
        if await self.refresh.is_stale():
            raise ScanUnavailable(f"the bar store ({self.store.dataset}) is missing the last session "
                                  f"({summary.status}; {len(summary.skipped)} skipped): run ./run.sh data sync and "
                                  f"./run.sh data status")

    async def run(self, *, cycle_id: uuid.UUID | None) -> list[Candidate]:
        self._latest = None
        await self.ensure_fresh()
        now = self.clock.now()
        key = (None, "scan", *self.calendar.session_key(now))
        candidates = self.prefetched.take(key, None) if self.prefetched is not None else None
        if candidates is None:
            candidates = await rank_at(self.store, self.cfg, self.max_position_value, now)
        if self.before_write is not None:
            await self.before_write()
        if candidates:                       # one statement for the whole scan (not one per candidate)
            # scan_results is read by no SoleReads query (runtime/lane_pool.py): not counted as a change
            await getattr(self.pool, "execute_apart", self.pool.execute)(
                """INSERT INTO scan_results (agent_id, cycle_id, scanned_at, symbol, rank, score, price, reasons,
                       metrics)
                   SELECT $1, $2, $3, u.symbol, u.rank, u.score, u.price, u.reasons::jsonb, u.metrics::jsonb
                   FROM unnest($4::text[], $5::integer[], $6::numeric[], $7::numeric[], $8::text[], $9::text[])
                        WITH ORDINALITY AS u(symbol, rank, score, price, reasons, metrics, n) ORDER BY u.n""",
                self.agent_id, cycle_id, now, [c.symbol for c in candidates], [c.rank for c in candidates],
                [Decimal(str(round(c.score, 6))) for c in candidates], [Decimal(str(c.price)) for c in candidates],
                [json.dumps(list(c.reasons)) for c in candidates], [json.dumps(c.metrics) for c in candidates])
        log.info("scan: %d candidates; top %s", len(candidates), ", ".join(c.symbol for c in candidates[:5]))
        return candidates

    async def latest_or_run(self, *, cycle_id: uuid.UUID | None, limit: int | None = None) -> list[Candidate]:
        """Today's most recent scan (this session's daily bars have not changed since), or a fresh one; its top
        `limit` candidates (all when None).

        The scan read last is served again, without asking the database, while the clock is still on that day and
        not before the read, this scanner has not scanned since, and it was read less than LATEST_SECONDS ago
        (real time: a scan another process recorded is seen after that)."""
        import time
        now = self.clock.now()
        day = self.calendar.day_start(now)
        latest = self._latest
        if (latest is not None and latest[0] == day and latest[1] <= now
                and time.monotonic() - latest[2] < self.LATEST_SECONDS):
            return latest[3][:limit]
        rows = await read_quietly(self.pool, "fetch",
            """SELECT symbol, rank, score, price, reasons, metrics FROM scan_results
               WHERE agent_id = $1 AND scanned_at = (SELECT max(scanned_at) FROM scan_results
                                                      WHERE agent_id = $1 AND scanned_at >= $2 AND scanned_at <= $3)
               ORDER BY rank""", self.agent_id, day, now)
        if rows:
            found = [Candidate(r["symbol"], r["rank"], float(r["score"]), float(r["price"]), tuple(r["reasons"]),
                               r["metrics"]) for r in rows]
            self._latest = (day, now, time.monotonic(), found)
            return found[:limit]
        return (await self.run(cycle_id=cycle_id))[:limit]

    # How long (real seconds) the scan read last is served again without asking the database.
    LATEST_SECONDS = 60.0
