"""Replay: cron-driven simulated days through the production path; deterministic; blind to bars after its clock."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from replay.schedule import day_schedule, parse_cron
from replay.runner import run_replay
from runtime.wiring import builder
from tests.agent_fixtures import agent_settings
from tests.conftest import ROOT


def test_the_schedule_is_the_cron_files():
    entries = parse_cron((ROOT / "config" / "cron.d").read_text())
    tuesday = day_schedule(entries, date(2026, 11, 24))
    assert [m for _, m in tuesday] == ["scan"] + ["trade"] * 11 + ["close"]
    assert tuesday[0][0] == datetime(2026, 11, 24, 1, 0, tzinfo=timezone.utc)
    assert tuesday[-1][0] == datetime(2026, 11, 24, 7, 55, tzinfo=timezone.utc)
    assert day_schedule(entries, date(2026, 11, 28)) == []                   # Saturday
    assert [m for _, m in day_schedule(parse_cron("*/30 1-2 * * 0,7 u cd x && ./run.sh trade"),
                                       date(2026, 11, 29))] == ["trade"] * 4   # Sunday as 0 and 7
    with pytest.raises(ValueError):
        parse_cron("0 1 1 * * u ./run.sh scan")
    with pytest.raises(ValueError):
        parse_cron("# nothing here")


def fingerprint(result):
    return ([(p.day, p.equity, p.cash) for p in result.curve],
            {k: v for k, v in result.metrics.__dict__.items()})


@pytest.mark.slow
async def test_the_same_inputs_give_identical_results(pool, agent_id, tmp_path):
    settings = agent_settings(agent_id)
    kw = dict(start=date(2026, 11, 23), end=date(2026, 11, 24), progress=False, out_dir=tmp_path,
              monitor_every=timedelta(minutes=10))
    a = await run_replay(settings, pool, build=builder(pool), run_id="a1", **kw)
    b = await run_replay(settings, pool, build=builder(pool), run_id="b2", **kw)
    assert a.agent_id != b.agent_id and a.agent_id.endswith("-replay-a1")
    assert fingerprint(a) == fingerprint(b)
    trades = {}
    for r in (a, b):
        trades[r.run_id] = [tuple(x) for x in await pool.fetch(
            "SELECT o.symbol, o.side, o.intent, o.quantity, o.status, o.filled_quantity, o.avg_fill_price, o.created_at "
            "FROM orders o WHERE agent_id = $1 ORDER BY o.created_at, o.symbol, o.side", r.agent_id)]
    assert trades["a1"] == trades["b2"] and trades["a1"], "a replay that trades nothing proves little"
    assert a.png.exists() and a.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # replay rows never carry the live agent's id
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1", agent_id) == 0


@pytest.mark.slow
async def test_a_bar_after_the_clock_is_never_seen(pool, agent_id, tmp_path):
    """Bar files from the simulated market, plus one planted bar the day after the replay ends with an absurd
    price: nothing the replay recorded (scan, quotes, fills, monitor, decisions) ever shows that price."""
    from core.calendar import MarketCalendar
    from brokers.paper.simulated import SimulatedMarket

    cal = MarketCalendar("HKEX")
    market = SimulatedMarket(seed=7, exchange="HKEX", n_symbols=240, calendar=cal)
    days = cal.trading_days(date(2026, 10, 12), date(2026, 11, 24))
    data = tmp_path / "bars"
    data.mkdir()
    symbols = [i.symbol for i in market.instruments()[:12]]
    lines = ["symbol,name,lot_size,currency"] + [f"{i.symbol},{i.name},{i.lot_size},HKD"
                                                 for i in market.instruments()[:12]]
    (data / "instruments.csv").write_text("\n".join(lines) + "\n")
    spike = Decimal("8888")
    planted = datetime(2026, 11, 25, 2, 0, tzinfo=timezone.utc)              # the day after the replay's end
    for s in symbols:
        rows = ["timestamp,open,high,low,close,volume"]
        for d in days:
            for start, end in cal.session_bounds(d):
                for b in market.bars(s, "1m", start, end):
                    rows.append(f"{b.start.isoformat()},{b.open},{b.high},{b.low},{b.close},{b.volume}")
        rows.append(f"{planted.isoformat()},{spike},{spike},{spike},{spike},1000000")
        (data / f"{s}.csv").write_text("\n".join(rows) + "\n")
    settings = agent_settings(agent_id, scan={"min_history_bars": 20, "min_turnover": Decimal(0)})
    result = await run_replay(settings, pool, build=builder(pool), start=date(2026, 11, 23), end=date(2026, 11, 24), data=data,
                              progress=False, out_dir=tmp_path, monitor_every=timedelta(minutes=15))
    agent = result.agent_id
    assert await pool.fetchval("SELECT count(*) FROM scan_results WHERE agent_id = $1", agent) > 0
    checks = {
        "scan_results": "SELECT max(price) FROM scan_results WHERE agent_id = $1",
        "fills": "SELECT max(price) FROM fills WHERE agent_id = $1",
        "monitor": "SELECT max(last_price) FROM position_monitor_status WHERE agent_id = $1",
        "orders": "SELECT max(coalesce(limit_price, avg_fill_price)) FROM orders WHERE agent_id = $1",
    }
    for name, sql in checks.items():
        value = await pool.fetchval(sql, agent)
        assert value is None or value < spike / 10, (name, value)
    texts = await pool.fetch("SELECT reasoning, details::text AS d, verdict::text AS v FROM decisions "
                             "WHERE agent_id = $1", agent)
    assert not [t for t in texts if "8888" in (t["reasoning"] + (t["d"] or "") + (t["v"] or ""))]
    assert max(p.equity for p in result.curve) < Decimal(10**6)


@pytest.mark.slow
async def test_daily_bars_run_at_the_open_and_close_and_fill_at_those_prints(pool, agent_id, tmp_path):
    """Bar files with daily bars only: cycles at each bar's open and in its last minute; every fill is at that
    day's opening or closing print (slippage aside), stamped when the print completes; a planted future bar is
    never seen."""
    from core.calendar import MarketCalendar
    from brokers.paper.simulated import SimulatedMarket
    from core.ticks import tick_size

    cal = MarketCalendar("HKEX")
    market = SimulatedMarket(seed=11, exchange="HKEX", n_symbols=40, calendar=cal)
    end_day = date(2026, 11, 24)
    data = tmp_path / "daily"
    data.mkdir()
    insts = market.instruments()[:15]
    (data / "instruments.csv").write_text("symbol,name,lot_size,currency\n" + "".join(
        f"{i.symbol},{i.name},{i.lot_size},HKD\n" for i in insts))
    frames = market.daily_frame([i.symbol for i in insts], datetime(2026, 11, 25, tzinfo=timezone.utc), 150)
    spike = 8888
    opens_closes: dict[tuple[str, date], tuple[float, float]] = {}
    for i in insts:
        rows = ["timestamp,open,high,low,close,volume"]
        for d in frames["close"].index:
            o, h, lo, c, v = (frames[f].loc[d, i.symbol] for f in ("open", "high", "low", "close", "volume"))
            rows.append(f"{d.date()},{o},{h},{lo},{c},{int(v)}")
            opens_closes[(i.symbol, d.date())] = (o, c)
        rows.append(f"2026-11-25,{spike},{spike},{spike},{spike},1000000")          # after the replay's end
        (data / f"{i.symbol}.csv").write_text("\n".join(rows) + "\n")
    settings = agent_settings(agent_id, scan={"min_history_bars": 20, "min_turnover": Decimal(0)})
    start = date(2026, 11, 17)
    result = await run_replay(settings, pool, build=builder(pool), start=start, end=end_day, data=data, progress=False,
                              out_dir=tmp_path)
    agent = result.agent_id
    days = cal.trading_days(start, end_day)
    assert result.cycles == 3 * len(days) and result.monitor_passes == 2 * len(days)
    assert "daily bars" in result.table
    cycles = await pool.fetch("SELECT mode, started_at FROM trading_cycles WHERE agent_id = $1 ORDER BY started_at",
                              agent)
    for d in days:
        (o, _), (_, c) = cal.session_bounds(d)[0], cal.session_bounds(d)[-1]
        assert sorted((r["started_at"], r["mode"]) for r in cycles if cal.local_date(r["started_at"]) == d) == [
            (o, "scan"), (o, "trade"), (c - timedelta(minutes=1), "close")]
    fills = await pool.fetch("SELECT symbol, side, price, filled_at FROM fills WHERE agent_id = $1", agent)
    assert fills, "a daily replay that never trades proves nothing"
    for f in fills:
        d = cal.local_date(f["filled_at"])
        (o, _), (_, c) = cal.session_bounds(d)[0], cal.session_bounds(d)[-1]
        day_open, day_close = opens_closes[(f["symbol"], d)]
        assert f["filled_at"] in (o + timedelta(minutes=1), c), f
        reference = day_open if f["filled_at"] == o + timedelta(minutes=1) else day_close
        slack = reference * 0.002 + float(tick_size(Decimal(str(reference)), "hkex"))   # slippage + one tick
        assert abs(float(f["price"]) - reference) <= slack, (f, reference)
    assert await pool.fetchval("SELECT max(price) FROM fills WHERE agent_id = $1", agent) < spike / 10
    assert await pool.fetchval("SELECT max(price) FROM scan_results WHERE agent_id = $1", agent) < spike / 10


@pytest.mark.slow
async def test_the_replay_command_keeps_its_rows_and_logs_apart(pool, pg_url, tmp_path):
    """`unified_agent.py --mode replay` as a process: the table and PNG are printed, and trading rows and
    agent_logs lines carry the replay's agent id, none the live one."""
    import re
    import subprocess

    from tests.conftest import PYTHON, subprocess_env
    env = subprocess_env(tmp_path, DATABASE_URL=pg_url, AGENT_ID="replaycli")
    out = subprocess.run([PYTHON, "unified_agent.py", "--mode", "replay", "--start", "2026-11-23", "--end",
                          "2026-11-24", "--monitor-every", "15"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "net P&L (after fees)" in out.stdout and "2/2 days" in out.stderr
    agent = re.search(r"under agent id (\S+) ", out.stdout).group(1)
    assert agent.startswith("replaycli-replay-")
    for table in ("trading_cycles", "decisions", "agent_logs"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE agent_id = $1", agent) > 0, table
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE agent_id = 'replaycli'") == 0, table


@pytest.mark.slow
async def test_a_candidate_is_judged_once_a_session_on_the_same_daily_bars(pool, agent_id, tmp_path):
    """Daily bars change only at the close, so the rules engine judges a candidate once per session: each skip is
    recorded once a day (not once per trade cycle), and the next day's cycles judge afresh."""
    from core.calendar import MarketCalendar
    settings = agent_settings(agent_id, rules={"rsi_min": Decimal(98), "rsi_max": Decimal(99)})   # skip them all
    result = await run_replay(settings, pool, build=builder(pool), start=date(2026, 11, 23), end=date(2026, 11, 24),
                              progress=False, out_dir=tmp_path, monitor_every=timedelta(minutes=30))
    hkex = MarketCalendar("HKEX")
    skips = await pool.fetch("SELECT symbol, created_at FROM decisions WHERE agent_id = $1 AND action = 'skip'",
                             result.agent_id)
    per_day: dict[tuple, int] = {}
    for r in skips:
        key = (r["symbol"], hkex.local_date(r["created_at"]))
        per_day[key] = per_day.get(key, 0) + 1
    assert per_day and set(per_day.values()) == {1}, per_day
    assert len({day for _, day in per_day}) == 2                        # judged again on the second day
    trades = await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE agent_id = $1 AND mode = 'trade'",
                                 result.agent_id)
    assert trades == 22


def test_a_replayed_agent_places_broker_stops_only_when_asked():
    from replay.runner import replay_settings
    from tests.agent_fixtures import agent_settings
    plain = replay_settings(agent_settings("t_rs"), run_id="x", engine="rules", data=None)
    assert plain.config.monitor.broker_stops is False            # never down in replay: the monitor protects
    asked = replay_settings(agent_settings("t_rs", monitor={"broker_stops_in_replay": True}), run_id="x",
                            engine="rules", data=None)
    assert asked.config.monitor.broker_stops is True
    off = replay_settings(agent_settings("t_rs", monitor={"broker_stops": False, "broker_stops_in_replay": True}),
                          run_id="x", engine="rules", data=None)
    assert off.config.monitor.broker_stops is False
