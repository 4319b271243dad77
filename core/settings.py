"""Configuration: `config/trading_config.yaml` (typed, unknown keys refused) plus environment / `.env`.

Errors name the file, the key path and the rule, e.g.
``config/trading_config.yaml: trading.position_stop_loss_pct must be > 0 and < 1 (got 1.5)``.

Environment variables that override YAML (documented in config/.env.example):
  AGENT_ID -> agent.id, LOG_LEVEL -> logging.level, CATALYST_BROKER -> broker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.config_model import RETIRED_MODELS, US_FEES, TradingSystemConfig
from core.environment import Environment, load_environment
from core.errors import ConfigError
from core.paths import PROJECT_ROOT

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "trading_config.yaml"



@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know, validated."""
    config: TradingSystemConfig
    env: Environment
    config_path: Path
    warnings: tuple[str, ...] = ()       # accepted, but a person should know (logged by every process at start)

    @property
    def agent_id(self) -> str:
        return self.config.agent.id

    @property
    def var_dir(self) -> Path:
        return Path(self.env.get("CATALYST_VAR_DIR") or PROJECT_ROOT / "var")

    @property
    def log_dir(self) -> Path:
        return Path(self.env.get("CATALYST_LOG_DIR") or PROJECT_ROOT / "logs")


def load_settings(config_path: Path | str | None = None, env: Environment | None = None) -> Settings:
    env = env if env is not None else load_environment()
    path = Path(config_path or env.get("CATALYST_CONFIG") or DEFAULT_CONFIG_PATH)
    raw = _read_yaml(path)
    overrides = {("agent", "id"): env.get("AGENT_ID"), ("logging", "level"): env.get("LOG_LEVEL")}
    if env.get("CATALYST_BROKER"):
        raw["broker"] = env.get("CATALYST_BROKER")
    for (section, key), value in overrides.items():
        if value is not None:
            if not isinstance(raw.get(section, {}), dict):
                continue  # the validator reports the malformed section
            raw.setdefault(section, {})[key] = value.upper() if key == "level" else value
    if isinstance(raw.get("market"), dict) and "paper" not in raw and raw["market"].get("exchange") in ("NYSE", "NASDAQ"):
        raw["paper"] = {"fees": US_FEES}                      # the paper broker's defaults follow the market
    try:
        config = TradingSystemConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, TradingSystemConfig)) from None
    return Settings(config=config, env=env, config_path=path, warnings=tuple(_warnings(raw, config, path)))


def _warnings(raw: dict[str, Any], config: TradingSystemConfig, path: Path) -> list[str]:
    out = []
    ai = raw.get("ai") if isinstance(raw.get("ai"), dict) else {}
    for key in ("model", "monitor_model"):
        asked = ai.get(key)
        if isinstance(asked, str) and asked in RETIRED_MODELS and getattr(config.ai, key) != asked:
            out.append(f"{path}: ai.{key} {asked!r} is retired; using its replacement {getattr(config.ai, key)!r} "
                       f"(set ai.{key} to it to silence this)")
    regular = {"HKEX": {"morning": ("09:30", "12:00"), "afternoon": ("13:00", "16:00")},
               "NYSE": {"regular": ("09:30", "16:00")}, "NASDAQ": {"regular": ("09:30", "16:00")}}
    given = {k: (v.open, v.close) for k, v in config.market.sessions.items()}
    if given and given != regular[config.market.exchange]:
        out.append(f"{path}: market.sessions {given} differ from {config.market.exchange}'s regular hours; trading "
                   f"hours come from the exchange calendar (holidays and half days included), not from this key")
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (copy config/trading_config.yaml from the repository)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where} invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (agent, market, trading, ...)")
    return data


class DuplicateKey(yaml.YAMLError):
    """A mapping that names a key twice (YAML would silently keep the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(f"key {key!r} appears twice in one section, on line {seen[key]} and line {line} "
                                   f"(YAML would silently keep the second); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def format_validation_error(exc: ValidationError, path: Path, root: type[BaseModel]) -> str:
    """One line per problem: file: key.path rule (got value)."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        got = err.get("input")
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            known = ", ".join(parent.model_fields) if parent else ""
            lines.append(f"{path}: {key} is not a known key" + (f" (known keys here: {known})" if known else ""))
            continue
        if kind == "missing":
            lines.append(f"{path}: {key} is required")
            continue
        rule = _bounds_rule(root, loc) if kind in {"greater_than", "greater_than_equal", "less_than",
                                                   "less_than_equal"} else None
        if rule is None:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if kind == "value_error" and isinstance(got, dict):  # a rule across keys of one section
                lines.append(f"{path}: {key}: {msg}")
                continue
            rule = msg[:1].lower() + msg[1:]
            rule = rule if rule.startswith("must") else f"is invalid: {rule}"
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {key} {rule}{shown}")
    return "\n".join(lines)


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _bounds_rule(root: type[BaseModel], loc: list[str]) -> str | None:
    parent = _model_at(root, loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return None
    parts = []
    for meta in parent.model_fields[loc[-1]].metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{op} {value}")
    return "must be " + " and ".join(parts) if parts else None


