"""One canonical symbol per instrument: every alias maps to one form, at the tools, the gate and the bar files."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from core.calendar import MarketCalendar
from core.clock import SimulatedClock
from core.symbols import InvalidSymbol, canonical_symbol
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings

HK_ALIASES = ["0700", "00700", "700", "0700.HK", "HK.00700", "hk.700", " 0700 ", "0700.hk"]


@pytest.mark.parametrize("raw", HK_ALIASES)
def test_every_hkex_alias_is_one_symbol(raw):
    assert canonical_symbol(raw, "HKEX") == "0700"


@pytest.mark.parametrize("raw,want", [("aapl", "AAPL"), ("US.AAPL", "AAPL"), ("AAPL.US", "AAPL"),
                                      ("brk-b", "BRK.B"), ("BRK/B", "BRK.B"), (" msft ", "MSFT")])
def test_every_us_alias_is_one_symbol(raw, want):
    assert canonical_symbol(raw, "NYSE") == want


@pytest.mark.parametrize("raw,exchange,why", [
    ("", "HKEX", "empty"), ("00000", "HKEX", "not all zero"), ("123456", "HKEX", "1 to 5 digits"),
    ("AAPL.US", "HKEX", "US ticker"), ("0700.HK", "NYSE", "HKEX code"), ("0700\x00", "HKEX", "characters"),
    ("TOOLONGTICKER", "NYSE", "not a US ticker"), (7, "HKEX", "text")])
def test_a_malformed_symbol_is_refused_with_the_reason(raw, exchange, why):
    with pytest.raises(InvalidSymbol, match=why):
        canonical_symbol(raw, exchange)


@pytest.fixture
def tencent_bars(tmp_path):
    """Minute bars of 0700 (file named 00700.csv) and 0005 around OPEN_AT, so the market is open with fresh quotes."""
    cal = MarketCalendar("HKEX")
    day = cal.local_date(OPEN_AT)
    rows = ["timestamp,open,high,low,close,volume"]
    for prev in (cal.previous_trading_day(day), day):
        for start, end in cal.session_bounds(prev):
            t = start
            while t < end and t < OPEN_AT + timedelta(hours=2):
                rows.append(f"{t.isoformat()},38.00,38.05,37.95,38.00,20000")
                t += timedelta(minutes=1)
    (tmp_path / "00700.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "0005.csv").write_text("\n".join(r.replace("38.", "62.") for r in rows) + "\n")
    (tmp_path / "instruments.csv").write_text("symbol,name,lot_size,currency\nHK.00700,Tencent,100,HKD\n"
                                              "5,HSBC,400,HKD\n")
    return tmp_path


async def test_aliases_through_the_tools_and_the_gate_find_one_position(pool, agent_id, tencent_bars):
    settings = agent_settings(agent_id, market_data={"source": "files", "directory": str(tencent_bars)})
    s = await build_services(settings, pool, SimulatedClock(OPEN_AT + timedelta(minutes=30)))
    assert {i.symbol: i.lot_size for i in s.universe.instruments()} == {"0005": 400, "0700": 100}
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    first = await ex.execute("execute_trade", {"symbol": "0700.HK", "value": 9000, "order_type": "market",
                                               "reasoning": "the first entry, written one way"})
    assert first.data["status"] == "filled", first.data.get("failed")
    assert first.data["order"]["symbol"] == "0700"
    for alias in HK_ALIASES:
        risk = await ex.execute("check_risk", {"symbol": alias, "value": 9000, "order_type": "market"})
        assert not risk.is_error, (alias, risk.data)
        assert "already_held" in [f["rule"] for f in risk.data["failed"]], (alias, risk.data)
        again = await ex.execute("execute_trade", {"symbol": alias, "value": 9000, "order_type": "market",
                                                   "reasoning": "the same stock, written another way"})
        assert again.data["status"] == "refused", (alias, again.data)
    assert [p.symbol for p in await s.broker.get_positions()] == ["0700"]
    rows = await pool.fetch("SELECT symbol, quantity FROM positions WHERE agent_id = $1", agent_id)
    assert [(r["symbol"], r["quantity"]) for r in rows] == [("0700", 200)]
    assert await pool.fetchval("SELECT count(DISTINCT symbol) FROM orders WHERE agent_id = $1", agent_id) == 1
    portfolio = await ex.execute("get_portfolio", {})
    assert [p["symbol"] for p in portfolio.data["positions"]] == ["0700"]
    closed = await ex.execute("close_position", {"symbol": "HK.00700", "reason": "closing by another alias"})
    assert closed.data["status"] == "filled", closed.data


async def test_an_unknown_or_foreign_symbol_is_a_clear_tool_error(pool, agent_id, tencent_bars):
    settings = agent_settings(agent_id, market_data={"source": "files", "directory": str(tencent_bars)})
    s = await build_services(settings, pool, SimulatedClock(OPEN_AT + timedelta(minutes=30)))
    ex = s.executor(mode="trade", cycle_id=None, engine="rules")
    unknown = await ex.execute("get_quote", {"symbol": "0388"})
    assert unknown.is_error and "unknown symbol '0388'" in unknown.data["error"]
    foreign = await ex.execute("get_quote", {"symbol": "AAPL.US"})
    assert foreign.is_error and foreign.data["error"].startswith("symbol: ") and "US ticker" in foreign.data["error"]
    assert Decimal(0) == await pool.fetchval("SELECT count(*) FROM orders WHERE agent_id = $1", agent_id)
