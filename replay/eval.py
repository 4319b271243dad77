"""`./run.sh eval`: engines against baselines over the same history, through the production path, with their cost.

    ./run.sh eval --start D --end D [--data DIR] --engines rules,claude[:MODEL] [--baselines buy_and_hold,cash]
                  [--reuse-answers] [--max-usd X]

Every engine runs as its own replay (replay/runner.py: the cycle runner, the tools, the safety gate, the order
path, the paper broker) under the agent id `<agent>-replay-<eval id>-<engine>`, on the same universe, history and
starting cash. The baselines are computed from the same bar store:
  cash          the starting cash, untouched.
  buy_and_hold  the universe in equal parts, bought at the first session's opening price in whole lots (as many
                symbols as can each buy a lot with an equal part, the cheapest lots first), held to the end; no fees.
Metrics come from empyrical (returns from the day-end equity curve): total return, CAGR, max drawdown, Sharpe,
Sortino (daily, annualised over 252 sessions); with the replay's own count of trades, win rate and exposure, the
orders the safety gate refused (by rule), and the AI's calls, tokens and USD (cost per decision = USD / the
engine's decision rows). One table, one PNG with every equity curve and its drawdown.

Claude's answers are recorded by request (engines/answers.py); `--reuse-answers` answers from the record, so a
re-run costs nothing and places the same orders; a changed prompt or tool result asks the model again. The daily
AI budget applies to each run; `--max-usd` caps the whole eval.
"""
from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.settings import Settings
from replay.plot import plot_curves
from replay.runner import Build, ReplayRefused, prepare_history, replay_settings, run_replay
from replay.stats import EquityPoint

BASELINES = ("buy_and_hold", "cash")


@dataclass(frozen=True)
class EngineSpec:
    name: str                     # rules | claude
    model: str | None = None      # claude:MODEL

    @property
    def label(self) -> str:
        return self.name + (f":{self.model}" if self.model else "")

    @classmethod
    def parse(cls, text: str) -> "EngineSpec":
        name, _, model = text.strip().partition(":")
        if name not in ("rules", "claude") or (model and name != "claude"):
            raise ReplayRefused(f"unknown engine {text!r}: use rules, claude or claude:MODEL")
        return cls(name, model or None)


@dataclass
class Run:
    label: str
    curve: list[EquityPoint]
    agent_id: str | None = None
    trades: int = 0
    wins: int = 0
    refused: Counter = field(default_factory=Counter)
    ai_calls: int = 0
    reused: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    decisions: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    eval_id: str
    runs: list[Run]
    table: str
    png: Path


def performance(curve: list[EquityPoint]) -> dict[str, Any]:
    """Total return, CAGR, max drawdown, Sharpe, Sortino and exposure of a day-end equity curve (empyrical)."""
    import empyrical
    import pandas as pd
    equity = pd.Series([float(p.equity) for p in curve], index=pd.DatetimeIndex([p.day for p in curve]))
    returns = equity.pct_change().dropna()
    out: dict[str, Any] = {"total_return": float(empyrical.cum_returns_final(returns)) if len(returns) else 0.0,
                           "cagr": float(empyrical.annual_return(returns)) if len(returns) else 0.0,
                           "max_drawdown": float(empyrical.max_drawdown(returns)) if len(returns) else 0.0}
    for key, fn in (("sharpe", empyrical.sharpe_ratio), ("sortino", empyrical.sortino_ratio)):
        value = float(fn(returns)) if len(returns) > 1 else float("nan")
        out[key] = value if np.isfinite(value) else None
    invested = [float(p.invested / p.equity) if p.equity else 0.0 for p in curve[1:]]
    out["exposure"] = float(np.mean(invested)) if invested else 0.0
    return out


async def engine_run(pool, agent_id: str, label: str, curve: list[EquityPoint]) -> Run:
    from replay.stats import load_trades
    run = Run(label, curve, agent_id)
    trades = await load_trades(pool, agent_id)
    run.trades, run.wins = len(trades), sum(1 for t in trades if t.pnl > 0)
    for row in await pool.fetch("SELECT verdict FROM decisions WHERE agent_id = $1 AND action = 'refused'", agent_id):
        for failure in (row["verdict"] or {}).get("failed", []):
            run.refused[failure["rule"]] += 1
    ai = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(cost_usd), 0) AS usd, coalesce(sum(input_tokens + output_tokens + "
        "cache_write_tokens + cache_read_tokens), 0) AS tokens FROM ai_usage WHERE agent_id = $1 "
        "AND status = 'settled'", agent_id)
    run.ai_calls, run.cost, run.tokens = ai["n"], ai["usd"], int(ai["tokens"])
    run.reused = await pool.fetchval("SELECT coalesce(sum((summary->>'reused_answers')::int), 0) FROM "
                                     "trading_cycles WHERE agent_id = $1", agent_id)
    run.decisions = await pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND engine = 'claude' "
                                        "AND action <> 'model_turn'", agent_id)
    run.metrics = performance(curve)
    return run


async def baselines(names: list[str], session, calendar: MarketCalendar, days: list[date],
                    cash: Decimal) -> list[Run]:
    runs = []
    end = calendar.session_bounds(days[-1])[-1][1]
    opening = [EquityPoint(day=days[0] - timedelta(days=1), equity=cash, cash=cash, invested=Decimal(0))]
    if "cash" in names:
        curve = opening + [EquityPoint(day=d, equity=cash, cash=cash, invested=Decimal(0)) for d in days]
        runs.append(Run("cash", curve, metrics=performance(curve)))
    if "buy_and_hold" in names:
        instruments = await session.bar_store.instruments()
        symbols = [i.symbol for i in instruments]
        lots = {i.symbol: i.lot_size for i in instruments}
        frames = await session.bar_store.daily_frame(symbols, end, len(days) + 5)
        opens, closes = frames["open"], frames["close"]
        first = np.datetime64(days[0])
        rows = [i for i, d in enumerate(opens.index.values.astype("datetime64[D]")) if d >= first]
        if not rows:
            raise ReplayRefused(f"no bars in the store from {days[0]}: the baseline has nothing to buy")
        prices = {}
        for s in symbols:
            price = opens[s].iloc[rows[0]]
            if np.isfinite(price) and price > 0:
                prices[s] = Decimal(str(price))
        # equal parts over as many symbols as can each buy at least one lot with their part
        by_lot = sorted(prices, key=lambda s: prices[s] * lots[s])
        k = len(by_lot)
        while k and prices[by_lot[k - 1]] * lots[by_lot[k - 1]] > cash / k:
            k -= 1
        chosen = sorted(by_lot[:k])
        part = cash / max(k, 1)
        shares: dict[str, int] = {}
        spent = Decimal(0)
        for s in chosen:
            n = int((part / (prices[s] * lots[s])).to_integral_value(ROUND_FLOOR)) * lots[s]
            if n > 0:
                shares[s], spent = n, spent + n * prices[s]
        curve = list(opening)
        held = closes[list(shares)].iloc[rows[0]:].ffill()
        for i, day in enumerate(held.index):
            value = Decimal(str(round(float(np.nansum(held.iloc[i].to_numpy() * np.array(list(shares.values())))),
                                      2)))
            curve.append(EquityPoint(day=day.date(), equity=cash - spent + value, cash=cash - spent, invested=value))
        runs.append(Run("buy_and_hold", curve, metrics=performance(curve)))
    return runs


def render(runs: list[Run], title: str) -> str:
    def pct(x): return "n/a" if x is None else f"{x * 100:+.2f}%"
    def num(x): return "n/a" if x is None else f"{x:.2f}"
    rows = [
        ("total return", [pct(r.metrics["total_return"]) for r in runs]),
        ("CAGR", [pct(r.metrics["cagr"]) for r in runs]),
        ("max drawdown", [pct(r.metrics["max_drawdown"]) for r in runs]),
        ("Sharpe", [num(r.metrics["sharpe"]) for r in runs]),
        ("Sortino", [num(r.metrics["sortino"]) for r in runs]),
        ("win rate", [pct(r.wins / r.trades) if r.trades else "n/a" for r in runs]),
        ("trades", [str(r.trades) for r in runs]),
        ("exposure", [pct(r.metrics["exposure"]) for r in runs]),
        ("refused by the gate", [", ".join(f"{k} {v}" for k, v in r.refused.most_common()) or "0" for r in runs]),
        ("AI calls (reused)", [f"{r.ai_calls} ({r.reused})" for r in runs]),
        ("tokens", [f"{r.tokens:,}" for r in runs]),
        ("cost USD", [f"{r.cost:.2f}" for r in runs]),
        ("cost per decision", [f"{r.cost / r.decisions:.4f}" if r.decisions else "n/a" for r in runs]),
    ]
    width = max(len(k) for k, _ in rows)
    cols = [max(len(r.label), *(len(v[i]) for _, v in rows)) for i, r in enumerate(runs)]
    head = f"| {'':<{width}} | " + " | ".join(f"{r.label:>{c}}" for r, c in zip(runs, cols)) + " |"
    line = "+" + "-" * (width + 2) + "+" + "+".join("-" * (c + 2) for c in cols) + "+"
    body = [f"| {k:<{width}} | " + " | ".join(f"{v:>{c}}" for v, c in zip(vals, cols)) + " |" for k, vals in rows]
    return "\n".join([title, line, head, line, *body, line])


async def run_eval(settings: Settings, pool, *, build: Build, start: date, end: date, engines: list[EngineSpec],
                   baseline_names: list[str], data: Path | None = None, reuse_answers: bool = False,
                   max_usd: Decimal | None = None, out_dir: Path | None = None,
                   progress: bool = True) -> EvalResult:
    unknown = [b for b in baseline_names if b not in BASELINES]
    if unknown:
        raise ReplayRefused(f"unknown baseline(s) {', '.join(unknown)}: use {', '.join(BASELINES)}")
    if not engines and not baseline_names:
        raise ReplayRefused("nothing to evaluate: give --engines and/or --baselines")
    eval_id = uuid.uuid4().hex[:6]
    scope = f"{settings.config.agent.id}-replay-{eval_id}"
    runs: list[Run] = []
    for spec in engines:
        ai = settings.config.ai.model_copy(update={
            "reuse_answers": reuse_answers, "total_budget_usd": max_usd, "total_budget_scope": scope,
            **({"model": spec.model} if spec.model else {})})
        if spec.model and spec.model not in ai.prices:
            raise ReplayRefused(f"claude:{spec.model}: no price known for this model (ai.prices)")
        engine_settings = replace(settings, config=settings.config.model_copy(update={"ai": ai}))
        result = await run_replay(engine_settings, pool, build=build, start=start, end=end, engine=spec.name,
                                  data=data, run_id=f"{eval_id}-{spec.name}", out_dir=out_dir, progress=progress)
        runs.append(await engine_run(pool, result.agent_id, spec.label, result.curve))
    if baseline_names:
        rs = replay_settings(settings, run_id=f"{eval_id}-base", engine="rules", data=data)
        calendar = MarketCalendar(rs.config.market.exchange)
        days = calendar.trading_days(start, end)
        await prepare_history(build, rs, calendar, days[0], days[-1])
        session = await build(rs, SimulatedClock(datetime.combine(days[-1], time(23, 59), tzinfo=calendar.tz)))
        try:
            built = await baselines(baseline_names, session, calendar, days, rs.config.paper.initial_cash)
            runs += sorted(built, key=lambda r: baseline_names.index(r.label))
        finally:
            await session.broker.disconnect()
    title = (f"Eval {start} .. {end}{f' on {data}' if data else ''} — {', '.join(r.label for r in runs)} "
             f"(eval id {eval_id}{', reusing recorded answers' if reuse_answers else ''})")
    out_dir = out_dir or settings.var_dir / "evals"
    png = plot_curves({r.label: r.curve for r in runs}, out_dir / f"eval-{eval_id}.png", title=title)
    return EvalResult(eval_id, runs, render(runs, title), png)
