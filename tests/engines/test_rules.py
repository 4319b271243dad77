"""rules_engine.py: the offline engine decides through the real tools (paper broker, PostgreSQL), records every
skip with its reason, respects its entry limits, and exits what its rules say."""
from __future__ import annotations

import uuid
from decimal import Decimal

from engines.rules import RulesEngine
from runtime.wiring import build_services
from core.clock import SimulatedClock
from tests.agent_fixtures import OPEN_AT, agent_settings, cheap_symbol
from tool_executor import ToolExecutor


class SpyExecutor:
    """The real executor, remembering which tools were called in order."""

    def __init__(self, inner: ToolExecutor) -> None:
        self.inner = inner
        self.names: list[str] = []

    async def execute(self, name, raw_input):
        self.names.append(name)
        return await self.inner.execute(name, raw_input)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def cycle(services, mode: str) -> SpyExecutor:
    cycle_id = uuid.uuid4()
    await services.pool.execute("INSERT INTO trading_cycles (cycle_id, agent_id, mode) VALUES ($1, $2, $3)",
                                cycle_id, services.agent_id, mode)
    ex = SpyExecutor(services.executor(mode=mode, cycle_id=cycle_id, engine="rules"))
    ex.result = await RulesEngine(services.settings).run(mode, ex)
    return ex


async def make(pool, agent_id, **changes):
    return await build_services(agent_settings(agent_id, market_data={"universe_size": 100}, **changes), pool,
                                SimulatedClock(OPEN_AT))


async def test_scan_watches_the_top_candidates(pool, agent_id):
    s = await make(pool, agent_id, rules={"watchlist_size": 4})
    ex = await cycle(s, "scan")
    assert ex.names == ["scan_market"] + ["log_decision"] * 4
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND action = 'watch'",
                               agent_id) == 4


async def test_a_trade_cycle_enters_within_its_limits_and_says_why_it_skipped(pool, agent_id):
    s = await make(pool, agent_id, rules={"max_new_entries_per_cycle": 1, "rsi_min": Decimal(1),
                                          "rsi_max": Decimal(99), "require_above_sma20": False})
    ex = await cycle(s, "trade")
    summary = ex.result.summary
    assert len(summary["entries"]) == 1, summary
    assert ex.names.count("execute_trade") >= 1 and ex.names.count("get_portfolio") == 1   # nothing was closed
    order = await pool.fetchrow("SELECT * FROM orders WHERE agent_id = $1 AND intent = 'entry'", agent_id)
    assert order["symbol"] == summary["entries"][0] and order["stop_loss"] is not None
    assert order["order_type"] == "limit" and order["take_profit"] > order["limit_price"]
    skips = await pool.fetch("SELECT symbol, reasoning FROM decisions WHERE agent_id = $1 AND action = 'skip'",
                             agent_id)
    assert {r["symbol"] for r in skips} == set(summary["skipped"]) - set(summary["entries"])
    assert all(len(r["reasoning"]) > 10 for r in skips)


async def test_at_the_bell_no_entry_is_sent_on_the_last_sessions_close(pool, agent_id):
    # 09:30:00 Hong Kong: the first minute has not completed, so every quote is yesterday's close (hours old); the
    # gate would refuse each entry ("the last quote is ...s old"): the engine does not send them, and says so once
    from datetime import datetime, timezone
    bell = datetime(2026, 11, 24, 1, 30, tzinfo=timezone.utc)
    s = await build_services(agent_settings(agent_id, market_data={"universe_size": 100},
                                            rules={"rsi_min": Decimal(1), "rsi_max": Decimal(99),
                                                   "require_above_sma20": False}), pool, SimulatedClock(bell))
    ex = await cycle(s, "trade")
    summary = ex.result.summary
    assert summary["entries"] == [] and "execute_trade" not in ex.names, summary
    stale = {sym: why for sym, why in summary["skipped"].items() if "s old (limit 300s)" in why}
    assert stale and summary["stale_quotes"] == list(stale), summary
    rows = await pool.fetch("SELECT action, reasoning FROM decisions WHERE agent_id = $1 AND action IN "
                            "('refused', 'no_trade')", agent_id)
    assert [r["action"] for r in rows] == ["no_trade"]
    assert all(sym in rows[0]["reasoning"] for sym in stale) and "stale price" in rows[0]["reasoning"]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1", agent_id) == 0


async def test_a_strict_band_skips_every_candidate_with_its_reason(pool, agent_id):
    s = await make(pool, agent_id, rules={"rsi_min": Decimal(98), "rsi_max": Decimal(99)})
    ex = await cycle(s, "trade")
    assert ex.result.summary["entries"] == [] and "execute_trade" not in ex.names
    reasons = [r["reasoning"] for r in await pool.fetch(
        "SELECT reasoning FROM decisions WHERE agent_id = $1 AND action = 'skip'", agent_id)]
    assert reasons and all("outside [98, 99]" in r or "bearish" in r or "history" in r for r in reasons), reasons


async def test_a_position_past_its_stop_is_closed_and_the_portfolio_read_again(pool, agent_id):
    s = await make(pool, agent_id, rules={"max_new_entries_per_cycle": 0})
    symbol = cheap_symbol(s)
    entry = s.executor(mode="trade", cycle_id=None, engine="rules")
    r = await entry.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "market",
                                              "reasoning": "set up a position for the rules to close"})
    assert r.data["status"] == "filled", r.data.get("failed")
    last = (await s.broker.get_quote(symbol)).last
    await pool.execute("UPDATE positions SET stop_loss = $2 WHERE agent_id = $1 AND status = 'open'", agent_id,
                       last + Decimal("0.05"))
    ex = await cycle(s, "trade")
    assert ex.result.summary["exits"] == [symbol]
    assert ex.names[:1] == ["get_portfolio"] and "close_position" in ex.names
    assert ex.names.count("get_portfolio") == 2                  # something closed: look again before entries
    sell = await pool.fetchrow("SELECT * FROM orders WHERE agent_id = $1 AND side = 'sell'", agent_id)
    assert sell["symbol"] == symbol and sell["status"] in ("filled", "partially_filled", "submitted")


async def test_close_exits_everything_when_intraday_only(pool, agent_id):
    s = await make(pool, agent_id, trading={"intraday_only": True})
    ex = await cycle(s, "trade")
    assert ex.result.summary["entries"], "the setup needs an entry to close"
    ex = await cycle(s, "close")
    assert sorted(ex.result.summary["exits"]) == sorted(
        {r["symbol"] for r in await pool.fetch("SELECT symbol FROM orders WHERE agent_id = $1 AND intent = 'entry' "
                                               "AND filled_quantity > 0", agent_id)})
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1 AND action IN ('hold', "
                               "'no_trade')", agent_id) == 1


async def _held_position(s, agent_id) -> tuple[str, Decimal]:
    symbol = cheap_symbol(s)
    entry = s.executor(mode="trade", cycle_id=None, engine="rules")
    r = await entry.execute("execute_trade", {"symbol": symbol, "value": 8000, "order_type": "market",
                                              "reasoning": "set up a position for the rules to judge"})
    assert r.data["status"] == "filled", r.data.get("failed")
    return symbol, (await s.broker.get_quote(symbol)).last


async def test_the_rules_exit_on_a_trailing_stop_as_the_monitor_does(pool, agent_id):
    """One exit policy: a price 5% under a high-water mark that is above the entry fires the trailing stop (3%)."""
    s = await make(pool, agent_id, rules={"max_new_entries_per_cycle": 0})
    symbol, last = await _held_position(s, agent_id)
    entry = last / Decimal("1.01")             # in profit 1%: no P&L rule fires
    await pool.execute("UPDATE positions SET avg_entry_price = $2, high_water_mark = $3, stop_loss = $4 "
                       "WHERE agent_id = $1 AND status = 'open'", agent_id, entry, last * Decimal("1.05"),
                       entry * Decimal("0.5"))
    ex = await cycle(s, "trade")
    assert ex.result.summary["exits"] == [symbol]
    reason = await pool.fetchval("SELECT reasoning FROM decisions WHERE agent_id = $1 AND action = 'close'", agent_id)
    assert "trailing" in reason, reason


async def test_the_rules_exit_at_the_recorded_take_profit(pool, agent_id):
    s = await make(pool, agent_id, rules={"max_new_entries_per_cycle": 0})
    symbol, last = await _held_position(s, agent_id)
    await pool.execute("UPDATE positions SET take_profit = $2, stop_loss = $3 WHERE agent_id = $1 "
                       "AND status = 'open'", agent_id, last - Decimal("0.01"), last * Decimal("0.5"))
    ex = await cycle(s, "trade")
    assert ex.result.summary["exits"] == [symbol]


async def test_the_rules_hold_where_the_monitors_policy_holds(pool, agent_id):
    """A position with nothing strong against it stays open under the rules as under signals.evaluate."""
    s = await make(pool, agent_id, rules={"max_new_entries_per_cycle": 0},
                   signals={"rsi_overbought": Decimal(99)})
    symbol, last = await _held_position(s, agent_id)
    await pool.execute("UPDATE positions SET stop_loss = $2 WHERE agent_id = $1 AND status = 'open'", agent_id,
                       last * Decimal("0.5"))
    ex = await cycle(s, "trade")
    assert ex.result.summary["exits"] == []
    assert "close_position" not in ex.names
