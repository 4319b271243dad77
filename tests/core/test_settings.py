"""Configuration: typed, unknown keys refused, errors name file, key path and rule; .env hygiene."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from core.settings import DEFAULT_CONFIG_PATH, load_settings
from core.errors import ConfigError
from core.environment import Environment, check_database_url, load_environment


def write_config(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    mutate(data)
    path = tmp_path / "trading_config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_loads_with_every_seed_key():
    s = load_settings(env=Environment())
    c = s.config
    assert c.agent.id == "intl_claude" and c.market.exchange == "HKEX"
    assert c.market.sessions["morning"].open == "09:30" and c.market.sessions["afternoon"].close == "16:00"
    assert str(c.trading.position_stop_loss_pct) == "0.03" and c.trading.max_positions == 15
    assert c.signals.rsi_overbought == 75 and c.ai.daily_budget_usd == 5


def test_every_key_in_shipped_yaml_has_a_comment():
    for line in DEFAULT_CONFIG_PATH.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"key without a comment: {line!r}"


def test_out_of_range_value_names_file_key_and_rule(tmp_path):
    path = write_config(tmp_path, lambda d: d["trading"].__setitem__("position_stop_loss_pct", 1.5))
    with pytest.raises(ConfigError) as err:
        load_settings(path, env=Environment())
    msg = str(err.value)
    assert str(path) in msg
    assert "trading.position_stop_loss_pct must be > 0 and < 1" in msg
    assert "1.5" in msg


def test_unknown_key_is_refused_and_known_keys_listed(tmp_path):
    path = write_config(tmp_path, lambda d: d["trading"].__setitem__("max_postions", 3))
    with pytest.raises(ConfigError, match=r"trading\.max_postions is not a known key .*max_positions"):
        load_settings(path, env=Environment())


def test_missing_key_is_named(tmp_path):
    path = write_config(tmp_path, lambda d: d["ai"].pop("daily_budget_usd"))
    with pytest.raises(ConfigError, match=r"ai\.daily_budget_usd is required"):
        load_settings(path, env=Environment())


def test_cross_field_rule_is_explained(tmp_path):
    path = write_config(tmp_path, lambda d: d["trading"].__setitem__("min_position_value", 50000))
    with pytest.raises(ConfigError, match=r"trading: min_position_value must not exceed max_position_value"):
        load_settings(path, env=Environment())


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("agent:\n  id: x\n market: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+, column \d+: invalid YAML"):
        load_settings(path, env=Environment())


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.yaml", env=Environment())


def test_bad_timezone_is_named(tmp_path):
    path = write_config(tmp_path, lambda d: d["market"].__setitem__("timezone", "Mars/Olympus"))
    with pytest.raises(ConfigError, match=r"market: .*Mars/Olympus.* not an IANA time zone"):
        load_settings(path, env=Environment())


def test_environment_overrides_agent_id_and_log_level():
    s = load_settings(env=Environment(values={"AGENT_ID": "us_rules", "LOG_LEVEL": "debug"}))
    assert s.agent_id == "us_rules" and s.config.logging.level == "DEBUG"


def test_world_readable_env_file_is_refused_with_chmod_hint(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("ANTHROPIC_API_KEY=sk-ant-secret-value-123\n")
    os.chmod(env_file, 0o644)
    with pytest.raises(ConfigError, match=rf"chmod 600 {env_file}"):
        load_environment(env_file, environ={})


def test_private_env_file_is_loaded_and_process_env_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AGENT_ID=from_file\nALPACA_API_KEY=abc12345\n")
    os.chmod(env_file, 0o600)
    env = load_environment(env_file, environ={"AGENT_ID": "from_process"})
    assert env.get("AGENT_ID") == "from_process"
    assert env.get("ALPACA_API_KEY") == "abc12345"
    assert "abc12345" in env.secrets


def test_database_password_counts_as_secret():
    env = Environment(values={"DATABASE_URL": "postgresql://u:hunter2pw@db.example.com/x?sslmode=require"})
    assert "hunter2pw" in env.secrets


@pytest.mark.parametrize("url", ["postgresql://u:p@db.example.com:5432/catalyst",
                                 "postgresql://u:p@db.example.com/catalyst?sslmode=prefer"])
def test_remote_database_without_tls_is_refused(url):
    with pytest.raises(ConfigError, match="sslmode=require"):
        check_database_url(url, allow_insecure=False)
    check_database_url(url, allow_insecure=True)  # explicit opt-in


@pytest.mark.parametrize("url", ["postgresql://u:p@db.example.com/c?sslmode=require",
                                 "postgresql://u:p@localhost/c", "postgresql://postgres:@/c?host=/tmp/sock"])
def test_tls_or_local_database_is_accepted(url):
    check_database_url(url, allow_insecure=False)


def test_env_example_documents_exactly_the_variables_the_code_reads():
    import re

    from core.environment import ENV_KEYS
    from tests.conftest import ROOT
    text = (ROOT / "config" / ".env.example").read_text()
    documented = set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert documented == set(ENV_KEYS)
