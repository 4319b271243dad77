"""The package layers point down: every import of every module (function-level and TYPE_CHECKING ones included)
goes to a lower layer or stays inside its own package; `brokers` and `data` are peers that never import each other.

    entry points   unified_agent, startup_monitor, position_monitor_service
    runtime        wiring (the only place that builds objects), bootstrap, cycle runner, database, lock, heartbeat
    replay         the cycle on a simulated clock (given its session by the wiring); statistics; plots
    engines        Claude, rules, budget, advisor, the Anthropic client
    tool_executor  the tools' fence (validation, allow-lists, timeouts) in front of the Trader
    execution      trader, order path, reconciliation, portfolio, monitor, store (SQL)
    brokers | data the broker port and venues | the agent's view of the market
    safety, signals, tools, db_logger   pure rules, the tools' schema, logging to PostgreSQL
    logpipe        the log pipeline's parts (file, rows, spool, handler) db_logger puts together
    core           values, errors, settings, clock, calendar, ticks — imports nothing of ours but core
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RANK = {"core": 0, "logpipe": 0.5, "safety": 1, "signals": 1, "tools": 1, "db_logger": 1, "brokers": 2, "data": 2,
        "execution": 3, "tool_executor": 4, "engines": 5, "replay": 6, "runtime": 7,
        "unified_agent": 8, "startup_monitor": 8, "position_monitor_service": 8}
PEERS_THAT_MUST_NOT_MEET = {frozenset({"brokers", "data"})}
TOP_LEVEL_ALLOWED = {"unified_agent.py", "tool_executor.py", "tools.py", "safety.py", "signals.py", "db_logger.py",
                     "position_monitor_service.py", "startup_monitor.py"}


def our_modules() -> list[Path]:
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", "bench", ".venv", "docs"} or rel.parts[0].startswith("."):
            continue
        out.append(rel)
    return sorted(out)


def group_of(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in RANK else None


def imports_of(rel: Path) -> list[tuple[int, str]]:
    tree = ast.parse((ROOT / rel).read_text(), filename=str(rel))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if group_of(node.module) is None:
                continue
            # `from runtime import database` names a module too
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()]
    return found


def test_every_module_belongs_to_a_layer():
    strays = [str(rel) for rel in our_modules() if group_of(".".join(rel.with_suffix("").parts)) is None]
    assert not strays, f"modules outside every layer (add them to a package or to RANK): {strays}"


def test_at_most_ten_top_level_modules_and_only_the_users_names():
    top = {p.name for p in ROOT.glob("*.py")}
    assert len(top) <= 10 and top <= TOP_LEVEL_ALLOWED, sorted(top - TOP_LEVEL_ALLOWED)


@pytest.mark.parametrize("rel", our_modules(), ids=str)
def test_imports_point_down(rel: Path):
    me = group_of(".".join(rel.with_suffix("").parts))
    wrong = []
    for line, target in imports_of(rel):
        other = group_of(target)
        if other is None or other == me:
            continue
        if frozenset({me, other}) in PEERS_THAT_MUST_NOT_MEET:
            wrong.append(f"{rel}:{line} {me} imports its peer {target}")
        elif RANK[other] >= RANK[me]:
            wrong.append(f"{rel}:{line} {me} (layer {RANK[me]}) imports {target} (layer {RANK[other]})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule itself can fail: an upward import is caught."""
    bad = ROOT / "core" / "_layer_probe_tmp.py"
    bad.write_text("from runtime.wiring import build_services\n")
    try:
        rel = bad.relative_to(ROOT)
        me = group_of(".".join(rel.with_suffix("").parts))
        ups = [t for _, t in imports_of(rel) if group_of(t) and RANK[group_of(t)] > RANK[me]]
        assert ups == ["runtime.wiring"]
    finally:
        bad.unlink()
