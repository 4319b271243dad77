"""`./run.sh eval`: engines and baselines over the same history; recorded answers make a Claude re-run free and
identical; metrics agree with a hand computation."""
from __future__ import annotations

import math
from datetime import date, timedelta
from decimal import Decimal

import pytest

from replay.eval import EngineSpec, performance, run_eval
from replay.runner import ReplayRefused
from replay.stats import EquityPoint
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.claude_policy import policy

D = Decimal


def test_metrics_match_a_hand_computation():
    equity = [100.0, 110.0, 99.0, 108.9, 120.0]
    curve = [EquityPoint(day=date(2026, 1, 1) + timedelta(days=i), equity=D(str(e)), cash=D(str(e)),
                         invested=D(0)) for i, e in enumerate(equity)]
    m = performance(curve)
    returns = [equity[i] / equity[i - 1] - 1 for i in range(1, len(equity))]
    mean = sum(returns) / len(returns)
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in returns) / len(returns))
    assert m["total_return"] == pytest.approx(0.20)
    assert m["max_drawdown"] == pytest.approx(99 / 110 - 1)
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(252))
    assert m["sortino"] == pytest.approx(mean / downside * math.sqrt(252))
    assert m["cagr"] == pytest.approx(1.2 ** (252 / 4) - 1)


async def test_engines_against_baselines_and_a_free_identical_rerun(pool, agent_id, tmp_path):
    with FakeAnthropic(default=policy) as fake:
        settings = agent_settings(agent_id, env={"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.base_url},
                                  market_data={"universe_size": 60}, ai={"daily_budget_usd": D(5)})
        kw = dict(build=builder(pool), start=date(2026, 11, 16), end=date(2026, 11, 20),
                  engines=[EngineSpec.parse("rules"), EngineSpec.parse("claude")],
                  baseline_names=["buy_and_hold", "cash"], out_dir=tmp_path, progress=False)
        first = await run_eval(settings, pool, **kw)
        calls_first = len(fake.message_requests)
        second = await run_eval(settings, pool, reuse_answers=True, **kw)
        calls_second = len(fake.message_requests) - calls_first
    labels = [r.label for r in first.runs]
    assert labels == ["rules", "claude", "buy_and_hold", "cash"]
    assert first.png.exists() and first.png.stat().st_size > 10_000
    for name in ("total return", "CAGR", "max drawdown", "Sharpe", "Sortino", "win rate", "trades", "exposure",
                 "refused by the gate", "AI calls", "tokens", "cost USD", "cost per decision"):
        assert name in first.table
    rules, claude, hold, cash = first.runs
    assert claude.ai_calls > 0 and claude.cost > 0 and claude.decisions > 0
    assert rules.ai_calls == 0 and rules.cost == 0
    assert cash.metrics["total_return"] == 0 and cash.metrics["max_drawdown"] == 0
    assert hold.metrics["exposure"] > 0.5
    again = second.runs[1]
    extra = [(r.body.get("model"), str(r.body.get("messages"))[-400:]) for r in fake.message_requests[calls_first:]]
    assert calls_second == 0, extra[:2]
    assert again.cost == 0 and again.ai_calls == 0 and again.reused > 0
    orders = []
    for run in (claude, again):
        orders.append([tuple(r) for r in await pool.fetch(
            "SELECT symbol, side, quantity, intent, created_at FROM orders WHERE agent_id = $1 ORDER BY order_id",
            run.agent_id)])
    assert orders[0] and orders[0] == orders[1]
    assert [p.equity for p in claude.curve] == [p.equity for p in again.curve]


async def test_a_bad_engine_or_baseline_is_refused(pool, agent_id):
    with pytest.raises(ReplayRefused, match="unknown engine"):
        EngineSpec.parse("gpt")
    with pytest.raises(ReplayRefused, match="unknown baseline"):
        await run_eval(agent_settings(agent_id), pool, build=builder(pool), start=date(2026, 11, 16),
                       end=date(2026, 11, 16), engines=[], baseline_names=["index"])
