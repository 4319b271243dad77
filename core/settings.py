"""Configuration: `config/trading_config.yaml` (typed, unknown keys refused) plus environment / `.env`.

Errors name the file, the key path and the rule, e.g.
``config/trading_config.yaml: trading.position_stop_loss_pct must be > 0 and < 1 (got 1.5)``.

Environment variables that override YAML (documented in config/.env.example):
  AGENT_ID -> agent.id, LOG_LEVEL -> logging.level, CATALYST_BROKER -> broker.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.paths import PROJECT_ROOT

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "trading_config.yaml"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message says where and how."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class AgentConfig(_Model):
    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""


class SessionHours(_Model):
    open: str = Field(pattern=_HHMM)
    close: str = Field(pattern=_HHMM)

    @model_validator(mode="after")
    def _open_before_close(self) -> "SessionHours":
        if self.open >= self.close:
            raise ValueError(f"open ({self.open}) must be before close ({self.close})")
        return self


class MarketConfig(_Model):
    exchange: Literal["HKEX", "NYSE", "NASDAQ"]
    timezone: str
    currency: Literal["HKD", "USD"]
    sessions: dict[Literal["morning", "afternoon", "regular"], SessionHours]
    default_lot_size: int = Field(gt=0, le=100_000)

    @model_validator(mode="after")
    def _valid_timezone(self) -> "MarketConfig":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone (e.g. Asia/Hong_Kong)")
        return self


class TradingConfig(_Model):
    max_positions: int = Field(gt=0, le=500)
    max_position_value: Decimal = Field(gt=0)
    min_position_value: Decimal = Field(ge=0)
    daily_loss_limit: Decimal = Field(gt=0)
    position_stop_loss_pct: Decimal = Field(gt=0, lt=1)
    trailing_stop_pct: Decimal = Field(gt=0, lt=1)
    default_order_type: Literal["limit", "market"]
    price_collar_pct: Decimal = Field(default=Decimal("0.05"), gt=0, lt=1)
    max_orders_per_cycle: int = Field(default=5, gt=0, le=100)
    allow_reentry_same_day: bool = False
    allow_margin: bool = False           # false: entries are sized on cash, whatever buying power a margin account shows
    max_stop_distance_pct: Decimal = Field(default=Decimal("0.10"), gt=0, lt=1)
    intraday_only: bool = False
    max_quote_age_seconds: int = Field(default=300, gt=0, le=86400)

    @model_validator(mode="after")
    def _min_below_max(self) -> "TradingConfig":
        if self.min_position_value > self.max_position_value:
            raise ValueError("min_position_value must not exceed max_position_value")
        return self


class ModelPrice(_Model):
    """USD per million tokens."""
    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write: Decimal = Field(ge=0)
    cache_read: Decimal = Field(ge=0)


class AIConfig(_Model):
    model: str = Field(min_length=1)
    daily_budget_usd: Decimal = Field(ge=0, le=10_000)
    max_turns: int = Field(default=12, ge=1, le=100)
    max_tokens: int = Field(default=1024, ge=64, le=32_000)
    monitor_model: str = Field(default="claude-haiku-4-5", min_length=1)
    monitor_daily_budget_usd: Decimal = Field(default=Decimal("0.05"), ge=0, le=1_000)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _priced(self) -> "AIConfig":
        for name in (self.model, self.monitor_model):
            if name not in self.prices:
                raise ValueError(f"prices has no entry for model {name!r}: the budget needs its price per "
                                 f"million tokens (input, output, cache_write, cache_read)")
        return self


class SignalsConfig(_Model):
    stop_loss_strong: Decimal = Field(lt=0, gt=-1)
    stop_loss_moderate: Decimal = Field(lt=0, gt=-1)
    take_profit_strong: Decimal = Field(gt=0, lt=10)
    take_profit_moderate: Decimal = Field(gt=0, lt=10)
    rsi_overbought: Decimal = Field(gt=50, le=100)
    rsi_oversold: Decimal = Field(ge=0, lt=50)

    @model_validator(mode="after")
    def _ordered(self) -> "SignalsConfig":
        if self.stop_loss_strong > self.stop_loss_moderate:
            raise ValueError("stop_loss_strong must be at or below stop_loss_moderate (it is the bigger loss)")
        if self.take_profit_strong < self.take_profit_moderate:
            raise ValueError("take_profit_strong must be at or above take_profit_moderate")
        return self


class MonitorConfig(_Model):
    """The position monitor daemon (position_monitor_service.py)."""
    poll_interval_seconds: int = Field(default=30, ge=1, le=3600)
    heartbeat_seconds: int = Field(default=60, ge=5, le=3600)
    max_backoff_seconds: int = Field(default=60, ge=1, le=3600)
    advice_hold_minutes: int = Field(default=15, ge=0, le=390)
    # Nobody trades unwatched: with the daemon required, new entries stop (exits still run) when its last
    # service_health beat is older than three times max(poll_interval_seconds, heartbeat_seconds).
    # live: required on the real clock (a simulated day or replay runs its monitor in-process); always; never.
    require_daemon: Literal["live", "always", "never"] = "live"

    @property
    def beat_limit_seconds(self) -> int:
        return 3 * max(self.poll_interval_seconds, self.heartbeat_seconds)


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file_retention_days: int = Field(default=7, gt=0, le=365)
    db_retention_days: int = Field(default=30, gt=0, le=3650)


class FeeSchedule(_Model):
    """Per-trade charges. Rates are fractions of the trade value; `*_min`/`*_max` in account currency."""
    commission_rate: Decimal = Field(ge=0, lt=Decimal("0.05"))
    commission_min: Decimal = Field(ge=0)
    stamp_duty_rate: Decimal = Field(ge=0, lt=Decimal("0.05"))
    stamp_duty_round_up: bool = True
    trading_fee_rate: Decimal = Field(ge=0, lt=Decimal("0.01"))
    sfc_levy_rate: Decimal = Field(ge=0, lt=Decimal("0.01"))
    afrc_levy_rate: Decimal = Field(default=Decimal(0), ge=0, lt=Decimal("0.01"))
    settlement_fee_rate: Decimal = Field(ge=0, lt=Decimal("0.01"))
    settlement_fee_min: Decimal = Field(ge=0)
    settlement_fee_max: Decimal = Field(ge=0)
    sell_only_rate: Decimal = Field(default=Decimal(0), ge=0, lt=Decimal("0.01"))


class PaperConfig(_Model):
    initial_cash: Decimal = Field(gt=0)
    slippage_bps: Decimal = Field(ge=0, le=500)
    max_volume_participation: Decimal = Field(gt=0, le=1)
    fees: FeeSchedule


class AlpacaConfig(_Model):
    """brokers/alpaca.py. Keys in .env (ALPACA_API_KEY, ALPACA_SECRET_KEY; ALPACA_BASE_URL overrides the endpoint)."""
    paper: bool = True                                   # false = the live endpoint: real money (needs real_money)
    data_feed: Literal["iex", "sip"] = "iex"             # market data feed (sip needs a paid subscription)
    timeout_seconds: float = Field(default=15, gt=0, le=120)


class MoomooConfig(_Model):
    """brokers/moomoo.py through the OpenD gateway. Trade password in .env (MOOMOO_TRADE_PASSWORD)."""
    host: str = "127.0.0.1"
    port: int = Field(default=11111, gt=0, lt=65536)
    trade_env: Literal["simulate", "real"] = "simulate"  # real = real money (needs real_money)
    security_firm: Literal["FUTUSECURITIES", "FUTUINC", "FUTUSG", "FUTUAU"] = "FUTUSECURITIES"
    connect_timeout_seconds: float = Field(default=10, gt=0, le=120)
    request_timeout_seconds: float = Field(default=15, gt=0, le=120)


class UniverseConfig(_Model):
    """Which instruments `./run.sh data sync` keeps in the bar store (core/feeds.py UniverseSpec)."""
    kind: Literal["board", "index", "list"] = "board"
    index: str | None = None                      # kind index: the venue's code (moomoo e.g. HK.800000)
    symbols: list[str] = Field(default_factory=list, max_length=5000)   # kind list
    min_turnover: Decimal = Field(default=Decimal(0), ge=0, le=Decimal(10) ** 12)   # kind board, last session
    max_symbols: int = Field(default=3000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _complete(self) -> "UniverseConfig":
        if self.kind == "index" and not self.index:
            raise ValueError("kind 'index' needs index: the venue's index code (e.g. HK.800000)")
        if self.kind == "list" and not self.symbols:
            raise ValueError("kind 'list' needs symbols: the tickers to keep")
        return self


class MarketDataConfig(_Model):
    """Where history comes from. simulated / files: the paper broker's price path, synced into the bar store;
    broker: the live broker's data API synced into the bar store (needed with broker alpaca or moomoo)."""
    source: Literal["simulated", "files", "broker"] = "simulated"
    seed: int = Field(default=7, ge=0)
    universe_size: int = Field(default=240, ge=10, le=5000)
    directory: str | None = None
    universe: UniverseConfig = UniverseConfig()
    history_days: int = Field(default=400, ge=30, le=20 * 366)   # calendar days a new symbol's history reaches back

    @model_validator(mode="after")
    def _files_need_directory(self) -> "MarketDataConfig":
        if self.source == "files" and not self.directory:
            raise ValueError("source 'files' needs directory: the folder of per-symbol bar files")
        return self


class NewsConfig(_Model):
    """Where get_news reads from (data/news.py documents the file format)."""
    directory: str | None = None


class ScanConfig(_Model):
    """The universe scan (data/scan.py documents the score)."""
    min_price: Decimal = Field(default=Decimal(1), ge=0)
    max_price: Decimal = Field(default=Decimal(500), gt=0)
    min_turnover: Decimal = Field(default=Decimal(2_000_000), ge=0)
    min_history_bars: int = Field(default=60, ge=20, le=2000)
    rsi_max: Decimal = Field(default=Decimal(80), gt=0, le=100)
    lookback_days: int = Field(default=120, ge=60, le=2000)
    top_n: int = Field(default=30, ge=1, le=500)

    @model_validator(mode="after")
    def _price_band(self) -> "ScanConfig":
        if self.min_price >= self.max_price:
            raise ValueError("min_price must be below max_price")
        return self


class RulesConfig(_Model):
    """The offline rules engine (rules_engine.py documents how each key is used)."""
    watchlist_size: int = Field(default=10, ge=1, le=50)
    candidates_per_cycle: int = Field(default=8, ge=1, le=50)
    max_new_entries_per_cycle: int = Field(default=2, ge=0, le=20)
    entry_value: Decimal = Field(default=Decimal(9000), gt=0)
    limit_offset_pct: Decimal = Field(default=Decimal("0.002"), ge=0, lt=Decimal("0.05"))
    rsi_min: Decimal = Field(default=Decimal(45), ge=0, le=100)
    rsi_max: Decimal = Field(default=Decimal(70), ge=0, le=100)
    require_above_sma20: bool = True

    @model_validator(mode="after")
    def _rsi_band(self) -> "RulesConfig":
        if self.rsi_min >= self.rsi_max:
            raise ValueError("rsi_min must be below rsi_max")
        return self


class TradingSystemConfig(_Model):
    agent: AgentConfig
    market: MarketConfig
    trading: TradingConfig
    ai: AIConfig
    signals: SignalsConfig
    broker: Literal["paper", "alpaca", "moomoo"] = "paper"
    real_money: bool = False
    alpaca: AlpacaConfig = AlpacaConfig()
    moomoo: MoomooConfig = MoomooConfig()
    paper: PaperConfig
    market_data: MarketDataConfig = MarketDataConfig()
    scan: ScanConfig = ScanConfig()
    news: NewsConfig = NewsConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _universe_symbols_are_tickers(self) -> "TradingSystemConfig":
        from core.symbols import InvalidSymbol, canonical_symbol
        for i, raw in enumerate(self.market_data.universe.symbols):
            try:
                canonical_symbol(raw, self.market.exchange)
            except InvalidSymbol as exc:
                raise ValueError(f"market_data.universe.symbols[{i}]: {exc}") from None
        return self

    @model_validator(mode="after")
    def _data_matches_the_broker(self) -> "TradingSystemConfig":
        if self.broker != "paper" and self.market_data.source != "broker":
            raise ValueError(f"broker {self.broker} trades real stocks, but market_data.source is "
                             f"{self.market_data.source!r}: set market_data.source: broker (the scan then reads the "
                             f"bar store that ./run.sh data sync fills from {self.broker})")
        if self.broker == "paper" and self.market_data.source == "broker":
            raise ValueError("market_data.source broker needs broker alpaca or moomoo; the paper broker trades "
                             "the simulated market or your bar files (source simulated or files)")
        return self

    @model_validator(mode="after")
    def _real_money_is_explicit(self) -> "TradingSystemConfig":
        live = ((self.broker == "alpaca" and not self.alpaca.paper)
                or (self.broker == "moomoo" and self.moomoo.trade_env == "real"))
        if live and not self.real_money:
            raise ValueError("this broker setting trades real money; set real_money: true to confirm "
                             "(it is never a default)")
        return self
    rules: RulesConfig = RulesConfig()
    logging: LoggingConfig = LoggingConfig()


# ---------------------------------------------------------------- environment

@dataclass(frozen=True)
class Environment:
    """Values from the process environment and `.env` (process environment wins)."""
    values: dict[str, str] = field(default_factory=dict)
    env_file: Path | None = None

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.values.get(key)
        return default if value in (None, "") else value

    def flag(self, key: str) -> bool:
        return (self.get(key) or "").strip().lower() in {"1", "true", "yes", "on"}

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value this environment carries, for redaction."""
        found: list[str] = []
        for key, value in self.values.items():
            if value and any(word in key.upper() for word in SECRET_KEY_WORDS):
                found.append(value)
        url = self.get("DATABASE_URL")
        if url:
            password = urlsplit(url).password
            if password:
                found.append(password)
        return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


SECRET_KEY_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "PWD")

ENV_KEYS = (
    "DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
    "MOOMOO_HOST", "MOOMOO_PORT", "MOOMOO_TRADE_PASSWORD",
    "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_BASE_URL", "ALPACA_DATA_URL",
    "AGENT_ID", "LOG_LEVEL", "CATALYST_BROKER", "CATALYST_ALLOW_INSECURE_DB", "CATALYST_CONFIG",
    "CATALYST_VAR_DIR", "CATALYST_LOG_DIR",
)


def load_environment(env_file: Path | None = None, environ: dict[str, str] | None = None) -> Environment:
    """Read `.env` (refusing one readable by group or others) and overlay the process environment."""
    environ = dict(os.environ if environ is None else environ)
    if env_file is None:
        named = environ.get("CATALYST_ENV_FILE")
        env_file = Path(named) if named else PROJECT_ROOT / ".env"
    values: dict[str, str] = {}
    if env_file.exists():
        mode = env_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{env_file}: refusing to read a secrets file that group or others can access "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {env_file}")
        from dotenv import dotenv_values
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    else:
        env_file = None
    for key, value in environ.items():
        if key in ENV_KEYS or key.startswith(("CATALYST_", "ALPACA_", "MOOMOO_", "ANTHROPIC_")):
            values[key] = value
    return Environment(values=values, env_file=env_file)


# ---------------------------------------------------------------- loading

@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know, validated."""
    config: TradingSystemConfig
    env: Environment
    config_path: Path

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
    try:
        config = TradingSystemConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, TradingSystemConfig)) from None
    return Settings(config=config, env=env, config_path=path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found (copy config/trading_config.yaml from the repository)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
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


# ---------------------------------------------------------------- database URL policy

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
SECURE_SSLMODES = {"require", "verify-ca", "verify-full"}


def check_database_url(url: str, allow_insecure: bool) -> None:
    """Refuse a remote database without TLS unless explicitly allowed (CATALYST_ALLOW_INSECURE_DB=1)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ConfigError(f"DATABASE_URL must start with postgresql:// (got scheme {parts.scheme!r})")
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host", [""])[0])
    if host.startswith("/") or host in LOCAL_HOSTS:
        return
    sslmode = query.get("sslmode", [""])[0]
    if sslmode not in SECURE_SSLMODES and not allow_insecure:
        raise ConfigError(
            f"DATABASE_URL points at remote host {host!r} without TLS: add ?sslmode=require (or verify-full), "
            f"or set CATALYST_ALLOW_INSECURE_DB=1 to accept an unencrypted connection")
