"""Audit rows (decisions, patterns, position_monitor_status) are held and written together (execution/store.py):
with a cycle's end row, on its error path too; at once outside a cycle; and, for a process that alone writes its
agent's rows (replay, day), the monitor's status rows wait for the next cycle while every read sees their effect."""
from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from core.clock import SimulatedClock
from engines.base import EngineResult
from execution.store import Store
from runtime.wiring import build_services
from tests.agent_fixtures import OPEN_AT, agent_settings, enter_position


async def decisions(pool, agent_id) -> list:
    return await pool.fetch("SELECT decision_id, cycle_id, action, engine, details FROM decisions "
                            "WHERE agent_id = $1 ORDER BY decision_id", agent_id)


async def test_a_decision_outside_a_cycle_is_written_at_once_with_the_id_it_returned(pool, agent_id):
    store = Store(pool, SimulatedClock(OPEN_AT), agent_id)
    first = await store.record_decision(cycle_id=None, engine="monitor", symbol="S0001", action="hold",
                                        reasoning="why", details={"price": Decimal("1.50")})
    second = await store.record_decision(cycle_id=None, engine="monitor", symbol="S0002", action="hold",
                                         reasoning="why not")
    rows = await decisions(pool, agent_id)
    assert [r["decision_id"] for r in rows] == [first, second] and first < second
    assert rows[0]["details"] == {"price": "1.50"} and store.pending == 0


class _Engine:
    """Records two decisions through the tools, then does what it is told."""
    name = "rules"

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.during: int | None = None

    async def run(self, mode, ex):
        await ex.execute("log_decision", {"action": "watch", "symbol": "S0001", "reasoning": "first"})
        await ex.execute("log_decision", {"action": "watch", "symbol": "S0002", "reasoning": "second"})
        self.during = await ex.trader.store.pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1",
                                                          ex.trader.store.agent_id)
        if self.fail:
            raise RuntimeError("the engine broke")
        return EngineResult(engine="rules", status="completed")


@pytest.mark.parametrize("fail", [False, True])
async def test_a_cycles_decisions_are_written_with_its_end_row_even_when_it_fails(services, fail):
    engine = _Engine(fail)
    if fail:
        with pytest.raises(RuntimeError):
            await services.run_cycle("scan", engine=engine)
    else:
        await services.run_cycle("scan", engine=engine)
    assert engine.during == 0                        # held while the cycle ran
    rows = await decisions(services.pool, services.agent_id)
    cycle = await services.pool.fetchrow("SELECT cycle_id, status FROM trading_cycles WHERE agent_id = $1",
                                         services.agent_id)
    assert [r["action"] for r in rows] == ["watch", "watch"]
    assert {r["cycle_id"] for r in rows} == {cycle["cycle_id"]}
    assert cycle["status"] == ("failed" if fail else "completed")
    assert services.store.pending == 0


async def test_rows_the_server_refuses_are_dropped_and_the_statement_they_rode_with_still_runs(pool, agent_id,
                                                                                               caplog):
    store = Store(pool, SimulatedClock(OPEN_AT), agent_id)
    store.buffering = True
    await store.record_decision(cycle_id=uuid.uuid4(), engine="rules", symbol=None, action="watch",
                                reasoning="refers to a cycle that does not exist")
    await store.flush("INSERT INTO agent_state (agent_id, state, reason, set_by, set_at) "
                      "VALUES ($1, 'ACTIVE', 'x', 'test', now())", agent_id)
    assert store.pending == 0
    assert await pool.fetchval("SELECT count(*) FROM agent_state WHERE agent_id = $1", agent_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE agent_id = $1", agent_id) == 0
    assert "could not be written and are dropped" in caplog.text


async def test_decisions_recorded_while_another_write_is_in_flight_are_each_written_once(pool, agent_id, caplog):
    """The daemon's exits run beside its pass: decisions are recorded (each written at once) while another write of
    held rows is still waiting for the server. Every row is written exactly once: none twice (the server would
    refuse the second, and the rows riding with it would be dropped), none lost."""
    import asyncio
    store = Store(pool, SimulatedClock(OPEN_AT), agent_id)
    ids = await asyncio.gather(*(store.record_decision(cycle_id=None, engine="monitor", symbol=f"S{n:04d}",
                                                       action="close", reasoning=f"exit {n}") for n in range(12)))
    rows = await decisions(pool, agent_id)
    assert sorted(r["decision_id"] for r in rows) == sorted(ids) and len(set(ids)) == 12
    assert store.pending == 0 and "could not be written" not in caplog.text


async def test_held_rows_stay_held_when_their_write_fails_and_rows_recorded_meanwhile_are_kept(pool, agent_id):
    """A write that fails on the connection (not a row the server refuses) keeps its rows for the next flush,
    and a row recorded while it was in flight is kept too."""
    import asyncio
    store = Store(pool, SimulatedClock(OPEN_AT), agent_id)
    store.buffering = True
    await store.record_decision(cycle_id=None, engine="monitor", symbol="S0001", action="hold", reasoning="first")
    entered, release = asyncio.Event(), asyncio.Event()
    real = store.pool

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        async def execute(self, *args):
            entered.set()
            await release.wait()
            raise ConnectionResetError("the connection dropped mid-write")

        execute_apart = execute

    store.pool = Failing()
    flush = asyncio.create_task(store.flush())
    await asyncio.wait_for(entered.wait(), 5)
    await store.record_decision(cycle_id=None, engine="monitor", symbol="S0002", action="hold", reasoning="second")
    release.set()
    with pytest.raises(ConnectionResetError):
        await flush
    store.pool = real
    assert store.pending == 2
    await store.flush()
    assert [r["action"] for r in await decisions(pool, agent_id)] == ["hold", "hold"] and store.pending == 0


async def sole_writer(pool, agent_id):
    """Services as replay and day wire them (runtime/wiring.builder)."""
    return await build_services(agent_settings(agent_id), pool, SimulatedClock(OPEN_AT), sole_writer=True)


async def test_held_status_rows_are_seen_by_every_read_and_written_with_the_next_cycle(pool, agent_id):
    s = await sole_writer(pool, agent_id)
    symbol, row = await enter_position(s)
    pid = row["position_id"]
    high = (row["high_water_mark"] * Decimal("1.2")).quantize(Decimal("0.01"))
    status = (pid, agent_id, symbol, high, Decimal(0), Decimal(0), high, None, None, "hold", "held", OPEN_AT)
    await s.store.write_monitor_statuses([status])
    # held: not in the database yet, but every reader of the high-water mark sees it
    assert await pool.fetchval("SELECT count(*) FROM position_monitor_status WHERE position_id = $1", pid) == 0
    assert (await s.store.positions_to_monitor())[0]["high_water_mark"] == high
    snap = await s.portfolio.snapshot()
    assert snap.positions[0].high_water_mark == high
    await s.run_cycle("scan")                     # (a scan exits nothing: the position stays open)
    await s.store.settle()                        # the cycle's flush was sent behind
    assert await pool.fetchval("SELECT high_water_mark FROM position_monitor_status WHERE position_id = $1",
                               pid) == high
    assert await pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1", pid) == high
    assert s.store.pending == 0


async def test_a_sole_writers_cycle_is_one_row_written_whole_and_its_orders_still_find_it(pool, agent_id):
    s = await sole_writer(pool, agent_id)
    outcome = await s.run_cycle("scan")
    await s.store.settle()                        # the end row was sent behind
    row = await pool.fetchrow("SELECT agent_id, mode, status, started_at, finished_at, engine FROM trading_cycles "
                              "WHERE cycle_id = $1", outcome.cycle_id)
    assert (row["agent_id"], row["mode"], row["status"], row["engine"]) == (agent_id, "scan", "completed", "rules")
    assert row["started_at"] == OPEN_AT and row["finished_at"] is not None
    # scan results refer to the cycle: its start row was written before them
    assert await pool.fetchval("SELECT count(*) FROM scan_results WHERE cycle_id = $1", outcome.cycle_id) > 0
    trade = await s.run_cycle("trade")
    assert trade.status == "completed"
    placed = await pool.fetchval("SELECT count(*) FROM orders WHERE cycle_id = $1", trade.cycle_id)
    assert placed == trade.orders_placed > 0     # orders refer to the cycle: its row was written before the first
    await s.store.settle()
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", trade.cycle_id) == "completed"


async def test_a_held_high_water_mark_is_raised_even_after_its_position_closed(pool, agent_id):
    """As the pass's own write would have (the position was open when the pass ended); a status written after
    the position closed raises nothing."""
    from tests.agent_fixtures import executor
    s = await sole_writer(pool, agent_id)
    symbol, row = await enter_position(s)
    pid, entry_high = row["position_id"], row["high_water_mark"]
    high = (entry_high * Decimal("1.2")).quantize(Decimal("0.01"))
    status = (pid, agent_id, symbol, high, Decimal(0), Decimal(0), high, None, None, "hold", "held", OPEN_AT)
    await s.store.write_monitor_statuses([status])
    ex = await executor(s)
    closed = await ex.execute("close_position", {"symbol": symbol, "reason": "the test closes it"})
    assert closed.data["status"] == "filled", closed.data
    higher = (high * Decimal("1.1")).quantize(Decimal("0.01"))
    await s.store.write_monitor_statuses([status[:6] + (higher,) + status[7:]])     # after the close
    await s.store.settle()
    assert await pool.fetchval("SELECT high_water_mark FROM positions WHERE position_id = $1", pid) == high
    assert await pool.fetchval("SELECT high_water_mark FROM position_monitor_status WHERE position_id = $1",
                               pid) == higher


class Behind:
    """The pool, its writes sent behind held until `release` is set (or failing once with `fail`)."""

    def __init__(self, real, *, fail: BaseException | None = None, times: int = 1) -> None:
        import asyncio
        self.real, self.fail, self.times = real, fail, times
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def execute_behind(self, *args):
        self.entered.set()
        await self.release.wait()
        if self.fail is not None and self.times > 0:
            self.times -= 1
            raise self.fail
        return await self.real.execute_behind(*args)


@pytest.fixture
def each_cycle_flushed(monkeypatch):
    """A sole writer's cycle end rows written behind one cycle at a time (CYCLE_ENDS_HELD 1), as the tests of
    writing behind need."""
    import execution.store
    monkeypatch.setattr(execution.store, "CYCLE_ENDS_HELD", 1)


async def test_a_sole_writers_cycle_end_is_written_behind_and_settle_waits_for_it(pool, agent_id,
                                                                                each_cycle_flushed):
    """The cycle returns while its end row and audit rows are still being written (PostgreSQL writes them while
    this process goes on); settle() waits for them."""
    import asyncio
    s = await sole_writer(pool, agent_id)
    s.store.pool = behind = Behind(s.store.pool)
    outcome = await s.run_cycle("scan")
    await asyncio.wait_for(behind.entered.wait(), 5)
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", outcome.cycle_id) == "running"
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE cycle_id = $1", outcome.cycle_id) == 0
    behind.release.set()
    await s.store.settle()
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1",
                               outcome.cycle_id) == "completed"
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE cycle_id = $1 AND action = 'watch'",
                               outcome.cycle_id) > 0


async def test_a_write_sent_behind_that_fails_is_sent_again_and_loses_nothing(pool, agent_id, caplog,
                                                                               each_cycle_flushed):
    s = await sole_writer(pool, agent_id)
    s.store.pool = behind = Behind(s.store.pool, fail=ConnectionResetError("the connection dropped mid-write"))
    behind.release.set()
    outcome = await s.run_cycle("scan")
    await s.store.settle()                        # the failed write's rows and end row, written again
    assert "sent behind were not written (ConnectionResetError" in caplog.text
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1",
                               outcome.cycle_id) == "completed"
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE cycle_id = $1 AND action = 'watch'",
                               outcome.cycle_id) > 0
    assert s.store.pending == 0


async def test_a_statement_sent_behind_that_the_server_refuses_is_dropped_not_sent_forever(pool, agent_id, caplog,
                                                                                       each_cycle_flushed):
    """Refused rows are dropped and the end rows are written alone (as a flush in line does); end rows refused
    again are dropped too (the server would refuse them again), and the flushes after them go on."""
    import asyncpg
    from datetime import timedelta
    s = await sole_writer(pool, agent_id)
    real = s.store.pool
    s.store.pool = behind = Behind(real, fail=asyncpg.exceptions.CheckViolationError("refused"))
    behind.release.set()
    scan = await s.run_cycle("scan")              # its watch decisions ride with the end row
    await s.store.settle()
    assert "audit rows of" in caplog.text and "could not be written and are dropped: CheckViolationError" in caplog.text
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", scan.cycle_id) == "completed"
    s.clock.set(OPEN_AT + timedelta(days=4))      # Saturday: a trade cycle records market_closed, its end row alone
    s.store.pool = Behind(real, fail=asyncpg.exceptions.CheckViolationError("refused"), times=2)
    s.store.pool.release.set()
    closed = await s.run_cycle("trade")
    await s.store.settle()
    assert "was refused and is dropped: CheckViolationError" in caplog.text
    s.store.pool = real
    again = await s.run_cycle("trade")
    await s.store.settle()                        # nothing refused is sent again
    assert await pool.fetchval("SELECT status FROM trading_cycles WHERE cycle_id = $1", again.cycle_id) == \
        "market_closed"
    assert closed.cycle_id != again.cycle_id
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE cycle_id = $1", closed.cycle_id) == 0


async def test_a_sole_writers_cycles_are_held_and_written_together_with_their_decisions(pool, agent_id, monkeypatch):
    """CYCLE_ENDS_HELD ended cycles (whole rows) wait and go in one statement with the audit rows held meanwhile
    (their cycle ids refer to them); settle writes what is still held. Nothing of a held cycle is in the database
    before that, every cycle and decision is after it."""
    import execution.store
    from datetime import timedelta
    monkeypatch.setattr(execution.store, "CYCLE_ENDS_HELD", 3)
    s = await sole_writer(pool, agent_id)
    s.store.pool = behind = Behind(s.store.pool)
    behind.release.set()
    sent = []
    real_behind = behind.execute_behind

    async def counting(query, *args):
        sent.append(query)
        return await real_behind(query, *args)
    behind.execute_behind = counting
    cycles = [await s.run_cycle("scan")]
    for _ in range(3):
        s.clock.advance(timedelta(minutes=30))
        cycles.append(await s.run_cycle("trade"))
    await asyncio.sleep(0.2)
    ids = [c.cycle_id for c in cycles]
    written = await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE cycle_id = ANY($1::uuid[]) "
                                  "AND status <> 'running'", ids)
    assert written == 3 and len([q for q in sent if "INSERT INTO trading_cycles" in q]) == 1   # one statement
    assert await pool.fetchval("SELECT count(*) FROM trading_cycles WHERE cycle_id = $1", ids[3]) in (0, 1)
    await s.store.settle()
    rows = await pool.fetch("SELECT cycle_id, status, finished_at FROM trading_cycles WHERE agent_id = $1", agent_id)
    assert {r["cycle_id"] for r in rows} == set(ids) and all(r["finished_at"] and r["status"] != "running" for r in rows)
    assert await pool.fetchval("SELECT count(*) FROM decisions WHERE cycle_id = $1 AND action = 'watch'", ids[0]) > 0
    assert s.store.pending == 0


async def test_a_mark_raised_after_the_positions_were_read_shows_in_the_next_answer(pool, agent_id):
    """positions_to_monitor answers again from its last answer while the read is served from memory and no mark
    has moved; a mark raised since (the same rows read) is in the next answer, and the answers never alias."""
    s = await sole_writer(pool, agent_id)
    symbol, row = await enter_position(s)
    pid = row["position_id"]
    marks = [(row["high_water_mark"] * Decimal(f)).quantize(Decimal("0.01")) for f in ("1.1", "1.2")]

    async def raise_to(high):
        await s.store.write_monitor_statuses(
            [(pid, agent_id, symbol, high, Decimal(0), Decimal(0), high, None, None, "hold", "held", OPEN_AT)])

    await raise_to(marks[0])
    first = await s.store.positions_to_monitor()
    again = await s.store.positions_to_monitor()
    assert first == again and first is not again and first[0]["high_water_mark"] == marks[0]
    again.clear()                                 # a caller's change to its answer is its own
    assert (await s.store.positions_to_monitor())[0]["high_water_mark"] == marks[0]
    await raise_to(marks[1])
    assert (await s.store.positions_to_monitor())[0]["high_water_mark"] == marks[1]
    await raise_to(marks[0])                      # lower: not a raise, the answer stands
    assert (await s.store.positions_to_monitor())[0]["high_water_mark"] == marks[1]
