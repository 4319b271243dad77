"""Secrets never leave .env: one redaction serves every sink (agent_logs, logs/agent.log, the console, table rows),
and it matches the stripped value and its quoted, JSON-escaped, repr-escaped and URL-encoded forms."""
from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from core.redaction import Redactor
from core.environment import Environment
from core.logcontext import log_context
from db_logger import setup_logging
from tests.agent_fixtures import OPEN_AT, agent_settings

# As python-dotenv reads KEY="value\n" from a .env file (a trailing newline is common there).
ENV = Environment(values={"ALPACA_SECRET_KEY": "alpaca-secret-XYZ123\n",
                          "MOOMOO_TRADE_PASSWORD": "pä$s/w:rd+\"q'é Zq9\n",
                          "ANTHROPIC_API_KEY": "  tok3n-with-spaces-77  "})
STRIPPED = tuple(s.strip() for s in ENV.values.values())


def forms(secret: str) -> set[str]:
    """Every way a secret shows up in text: as is, JSON-escaped, repr-escaped, URL-encoded, each quoted or not."""
    out = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
           ascii(secret)[1:-1], quote(secret, safe=""), quote_plus(secret), quote(secret)}
    return {f for f in out if len(f) >= 4}


def leaks(text: str) -> list[str]:
    return [f for s in STRIPPED for f in forms(s) if f in text]


def test_the_redactor_matches_every_form_of_a_stripped_secret():
    red = Redactor(ENV.secrets)
    for secret in ENV.values.values():
        for shown in (secret, secret.strip(), repr(secret), json.dumps(secret), json.dumps({"k": secret}),
                      quote(secret), quote_plus(secret), quote(secret.strip(), safe=""), repr(json.dumps(secret)),
                      json.dumps(repr(secret)), f"url=https://x/?key={quote_plus(secret)}&a=1"):
            out = red.text(f"before {shown} after")
            assert not leaks(out), (shown, out)
            assert out.startswith("before ") and out.endswith(" after") and "***" in out


async def test_a_secret_with_a_trailing_newline_never_reaches_table_file_or_console(pool, pg_url, agent_id,
                                                                                     tmp_path, capsys):
    pipeline = setup_logging(agent_id=agent_id, log_dir=tmp_path, secrets=ENV.secrets, dsn=pg_url,
                             console_level="INFO", level="DEBUG")
    logger = logging.getLogger(f"t.redact.{agent_id}")
    alpaca, moomoo, token = ENV.values.values()
    try:
        logger.info("raw %s and %s and %s", alpaca.strip(), moomoo.strip(), token.strip())
        logger.info("repr %r %r", alpaca, moomoo)
        logger.info("json %s", json.dumps({"alpaca": alpaca, "moomoo": moomoo}))
        logger.info("url https://api.example.com/v2?key=%s&pw=%s", quote_plus(alpaca), quote(moomoo, safe=""))
        with log_context(symbol="0700", secret=moomoo, nested={"list": [alpaca]}):
            logger.warning("context carries them")
        try:
            raise RuntimeError(f"auth failed with {alpaca!r} / {moomoo!r}")
        except RuntimeError:
            logger.exception("boom")
        assert pipeline.flush(10)
    finally:
        pipeline.close()
    rows = await pool.fetch("SELECT message, context::text AS c, coalesce(exception, '') AS e FROM agent_logs "
                            "WHERE agent_id = $1", agent_id)
    assert len(rows) == 6
    table = "\n".join(f"{r['message']} {r['c']} {r['e']}" for r in rows)
    files = "\n".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    console = capsys.readouterr().err
    assert "RuntimeError" in table and "RuntimeError" in console and "Traceback" in console
    assert not leaks(table), leaks(table)
    assert not leaks(files), leaks(files)
    assert not leaks(console), leaks(console)                         # the console traceback included


@pytest.fixture
def installed_redactor(tmp_path, agent_id):
    """setup_logging installs the process-wide redactor from the secrets it is given."""
    pipeline = setup_logging(agent_id=agent_id, log_dir=tmp_path / "logs", secrets=ENV.secrets, dsn=None,
                             console_level=None)
    yield
    pipeline.close(timeout=1)


async def test_service_health_of_the_heartbeat_is_redacted(pool, agent_id, installed_redactor):
    from runtime.database import DatabaseTarget
    from runtime.heartbeat import run_heartbeat

    async def broker_check() -> str:
        raise RuntimeError(f"401 Unauthorized for key {ENV.values['ALPACA_SECRET_KEY']!r}")

    target = DatabaseTarget(url="postgresql://x", embedded=False, description="test")
    await run_heartbeat(agent_settings(agent_id), database=(target, pool), database_error=None,
                        broker_check=broker_check)
    details = await pool.fetchval("SELECT details::text FROM service_health WHERE agent_id = $1", agent_id)
    assert "401 Unauthorized" in details and "***" in details
    assert not leaks(details), details


async def test_service_health_of_the_monitor_is_redacted(pool, pg_url, agent_id, installed_redactor):
    from position_monitor_service import MonitorService, Notifier, SimulatedTime
    service = MonitorService(agent_settings(agent_id), time_source=SimulatedTime(OPEN_AT, asyncio.Event()),
                             notifier=Notifier(address=""), database_url=pg_url)
    service.pool = pool
    await service._heartbeat("degraded", {"error": f"gateway said: bad password {ENV.values['MOOMOO_TRADE_PASSWORD']}"},
                             force=True)
    details = await pool.fetchval("SELECT details::text FROM service_health WHERE agent_id = $1", agent_id)
    assert "gateway said" in details and not leaks(details), details


async def test_the_error_of_a_failed_cycle_is_redacted(services, installed_redactor):
    class Failing:
        name = "rules"

        async def run(self, mode, executor):
            raise RuntimeError(f"upstream refused key {ENV.values['ANTHROPIC_API_KEY']!r})")

    with pytest.raises(RuntimeError):
        await services.run_cycle("trade", engine=Failing())
    error = await services.pool.fetchval("SELECT error FROM trading_cycles WHERE agent_id = $1", services.agent_id)
    assert error.startswith("RuntimeError: upstream refused key") and "***" in error
    assert not leaks(error), error


def test_redact_row_keeps_the_shape_and_makes_text_storable():
    from decimal import Decimal

    from core.redaction import install, installed, redact_row
    before = installed()
    install(Redactor(ENV.secrets))
    try:
        row = redact_row({"error": f"key {ENV.values['ALPACA_SECRET_KEY']!r}", "n": 3, "d": Decimal("1.5"),
                          "list": ["nul\x00", "half \ud800"], "none": None})
        assert row == {"error": "key '***'", "n": 3, "d": Decimal("1.5"), "list": ["nul\\x00", "half \ufffd"],
                       "none": None}
        assert redact_row(None) is None and redact_row(f"x {ENV.values['ANTHROPIC_API_KEY']}") == "x ***"
    finally:
        install(before)
