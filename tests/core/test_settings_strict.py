"""Strict configuration (issue "Hostile input"): duplicate keys, quoted numbers and 'yes' switches, malformed
DATABASE_URLs, a non-UTF-8 .env and TLS that cannot be talked around are configuration errors naming the culprit;
the seed's own example YAML (§5.2) works as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.errors import ConfigError
from core.environment import Environment, check_database_url, load_environment
from core.settings import load_settings
from runtime.bootstrap import EXIT_CONFIG
from tests.conftest import PYTHON, ROOT, subprocess_env

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "catalyst-trading-system-architecture.md"
ENV = Environment(values={})


def seed_example() -> str:
    text = SEED.read_text()
    section = text[text.index("### 5.2"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trading_config.yaml"
    path.write_text(text)
    return path


def test_the_seeds_example_yaml_works_verbatim(tmp_path):
    settings = load_settings(write(tmp_path, seed_example()), env=ENV)
    cfg = settings.config
    assert (cfg.agent.id, cfg.market.exchange, cfg.trading.max_positions) == ("intl_claude", "HKEX", 15)
    assert cfg.ai.model == "claude-sonnet-4-6"               # the seed's dated model is retired: its successor
    assert any("claude-sonnet-4-20250514" in w and "claude-sonnet-4-6" in w for w in settings.warnings)
    assert cfg.paper.initial_cash > 0 and cfg.paper.fees.stamp_duty_rate > 0     # a default paper section (HKEX)


def test_an_unknown_model_is_refused_naming_what_to_use(tmp_path):
    text = seed_example().replace("claude-sonnet-4-20250514", "claude-nonesuch-9")
    with pytest.raises(ConfigError, match=r"claude-nonesuch-9.*known: .*claude-sonnet-4-6.*ai\.prices"):
        load_settings(write(tmp_path, text), env=ENV)


def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path):
    text = seed_example().replace("  max_positions: 15\n", "  max_positions: 15\n  max_positions: 500\n")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env=ENV)
    lines = text.splitlines()
    first = lines.index("  max_positions: 15") + 1
    assert f"'max_positions' appears twice" in str(err.value)
    assert f"line {first} and line {first + 1}" in str(err.value)


@pytest.mark.parametrize("key,value,why", [
    ("max_positions", "'15'", "number written without quotes"),
    ("daily_loss_limit", '"16000"', "number written without quotes"),
    ("max_positions", "true", "number written without quotes"),
    ("allow_reentry_same_day", "'yes'", "true or false"),
    ("allow_reentry_same_day", "1", "true or false"),
    ("daily_loss_limit", "1000000000001", "<="),
    ("max_position_value", "99999999999", "<="),
])
def test_safety_keys_are_strict(tmp_path, key, value, why):
    text = seed_example().replace("  default_order_type: limit\n", f"  default_order_type: limit\n")
    text = re.sub(rf"  {key}: .*\n", "", text) + ""
    text = text.replace("trading:\n", f"trading:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=re.escape(why)):
        load_settings(write(tmp_path, text), env=ENV)


@pytest.mark.parametrize("url,why", [
    ("postgresql://u:p@db.example.com:abc/catalyst", "malformed"),
    ("postgresql://u:p@db.example.com:99999/catalyst", "malformed|out of range"),
    ("postgresql://[::1", "malformed"),
    ("postgresql://u:p@db.example.com/c?sslmode=require&sslmode=disable", "sslmode more than once"),
    ("postgresql://u:p@localhost/c?host=db.example.com", "remote host 'db.example.com' without TLS"),
    ("postgresql://u:p@db1.example.com:5432,localhost/c", "remote host 'db1.example.com' without TLS"),
    ("postgresql://u:p@db.example.com/c?sslmode=prefer", "without TLS"),
])
def test_database_urls_are_read_as_the_driver_reads_them(url, why):
    with pytest.raises(ConfigError, match=why):
        check_database_url(url, allow_insecure=False)


def test_safe_database_urls_pass():
    check_database_url("postgresql://u:p@db.example.com/c?sslmode=verify-full", allow_insecure=False)
    check_database_url("postgresql://u:p@localhost:5432/c", allow_insecure=False)
    check_database_url("postgresql:///c?host=/var/run/postgresql", allow_insecure=False)


def test_a_malformed_database_url_is_exit_2_naming_the_variable(tmp_path):
    import subprocess
    env = subprocess_env(tmp_path, DATABASE_URL="postgresql://u:p@db:abc/x")
    out = subprocess.run([PYTHON, str(ROOT / "unified_agent.py"), "--mode", "heartbeat"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert "DATABASE_URL" in out.stderr and "Traceback" not in out.stderr


def test_a_non_utf8_env_file_names_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"ANTHROPIC_API_KEY=sk-\xff\xfe\n")
    env_file.chmod(0o600)
    with pytest.raises(ConfigError, match=r"\.env: not UTF-8"):
        load_environment(env_file, environ={})


def test_the_shipped_config_has_no_duplicate_keys_and_loads():
    yaml.safe_load((ROOT / "config" / "trading_config.yaml").read_text())
    assert load_settings(env=ENV).warnings == ()
