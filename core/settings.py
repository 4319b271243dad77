"""Configuration: `config/trading_config.yaml` (typed, unknown keys refused) plus environment / `.env`.

Errors name the file, the key path and the rule, e.g.
``config/trading_config.yaml: trading.position_stop_loss_pct must be > 0 and < 1 (got 1.5)``.

Environment variables that override YAML (documented in config/.env.example):
  AGENT_ID -> agent.id, LOG_LEVEL -> logging.level, CATALYST_BROKER -> broker.
"""
from __future__ import annotations

import os
import stat
import types
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.paths import PROJECT_ROOT

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "trading_config.yaml"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message says where and how."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _strict_scalars(cls, data: Any) -> Any:
        """A switch is true or false, never 'yes'; a number is written as a number, never as text: a typo in a
        safety limit must not be read as something else."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            info = cls.model_fields.get(name)
            if info is None or value is None:
                continue
            kinds = _scalar_kinds(info.annotation)
            if kinds == {"bool"} and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false (got {value!r})")
            if kinds and kinds <= {"int", "number"} and (isinstance(value, bool) or not isinstance(value, (int, float,
                                                                                                     Decimal))):
                raise ValueError(f"{name} must be a number written without quotes (got {value!r})")
        return data


def _scalar_kinds(annotation: Any) -> set[str]:
    """{'bool'}, {'int'}, {'number'} (or a mix) when the field is such a scalar (optionally None); else empty."""
    import typing
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    kinds = set()
    for arg in args:
        if arg is type(None):
            continue
        if arg is bool:
            kinds.add("bool")
        elif arg is int:
            kinds.add("int")
        elif arg in (float, Decimal):
            kinds.add("number")
        else:
            return set()
    return kinds


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
    max_position_value: Decimal = Field(gt=0, le=Decimal(10) ** 9)
    min_position_value: Decimal = Field(ge=0, le=Decimal(10) ** 9)
    daily_loss_limit: Decimal = Field(gt=0, le=Decimal(10) ** 9)
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


def _price(i: str, o: str, w: str, r: str) -> "ModelPrice":
    return ModelPrice(input=Decimal(i), output=Decimal(o), cache_write=Decimal(w), cache_read=Decimal(r))


# Published list prices (USD per million tokens); `ai.prices` in the config adds to or overrides them.
KNOWN_MODEL_PRICES = {
    "claude-sonnet-4-6": _price("3", "15", "3.75", "0.30"),
    "claude-sonnet-4-5": _price("3", "15", "3.75", "0.30"),
    "claude-haiku-4-5": _price("1", "5", "1.25", "0.10"),
    "claude-opus-4-5": _price("5", "25", "6.25", "0.50"),
    "claude-opus-4-1": _price("15", "75", "18.75", "1.50"),
}
# Models Anthropic no longer serves -> what to use instead (the seed's example names the first).
RETIRED_MODELS = {
    "claude-sonnet-4-20250514": "claude-sonnet-4-6",
    "claude-3-7-sonnet-20250219": "claude-sonnet-4-6",
    "claude-3-5-sonnet-20241022": "claude-sonnet-4-6",
    "claude-3-5-sonnet-20240620": "claude-sonnet-4-6",
    "claude-3-5-haiku-20241022": "claude-haiku-4-5",
    "claude-3-haiku-20240307": "claude-haiku-4-5",
    "claude-3-opus-20240229": "claude-opus-4-5",
    "claude-opus-4-20250514": "claude-opus-4-5",
}


class AIConfig(_Model):
    model: str = Field(min_length=1)
    daily_budget_usd: Decimal = Field(ge=0, le=10_000)
    max_turns: int = Field(default=12, ge=1, le=100)
    max_tokens: int = Field(default=1024, ge=64, le=32_000)
    monitor_model: str = Field(default="claude-haiku-4-5", min_length=1)
    monitor_daily_budget_usd: Decimal = Field(default=Decimal("0.05"), ge=0, le=1_000)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # Set by `./run.sh eval` (not usually in the file): answer from recorded model answers when the request is
    # the same, and a USD cap over every run of one eval (agent ids starting with total_budget_scope).
    reuse_answers: bool = False
    prompt_caching: bool = True          # cache breakpoints on the tools, system prompt and newest tool results
    total_budget_usd: Decimal | None = Field(default=None, ge=0, le=100_000)
    total_budget_scope: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_models(cls, data: Any) -> Any:
        """Built-in prices for the published models; a retired model is replaced by its successor (load_settings
        warns, naming both); an unknown one without a price is refused, naming what to write."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        prices = {**KNOWN_MODEL_PRICES, **(data.get("prices") or {})}
        for key in ("model", "monitor_model"):
            name = data.get(key)
            if isinstance(name, str) and name in RETIRED_MODELS and name not in (data.get("prices") or {}):
                data[key] = RETIRED_MODELS[name]
        for key in ("model", "monitor_model"):
            name = data.get(key, "claude-haiku-4-5" if key == "monitor_model" else None)
            if isinstance(name, str) and name not in prices:
                raise ValueError(f"{key} {name!r} is not a model we know the price of (known: "
                                 f"{', '.join(sorted(KNOWN_MODEL_PRICES))}); use one of those, or add its price per "
                                 f"million tokens under ai.prices.{name} (input, output, cache_write, cache_read)")
        data["prices"] = prices
        return data


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
    replay_retention_days: int = Field(default=7, gt=0, le=3650)


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


HKEX_FEES = {"commission_rate": Decimal("0.0003"), "commission_min": Decimal(3), "stamp_duty_rate": Decimal("0.001"),
             "stamp_duty_round_up": True, "trading_fee_rate": Decimal("0.0000565"),
             "sfc_levy_rate": Decimal("0.000027"), "afrc_levy_rate": Decimal("0.0000015"),
             "settlement_fee_rate": Decimal("0.00002"), "settlement_fee_min": Decimal(2),
             "settlement_fee_max": Decimal(100), "sell_only_rate": Decimal(0)}
US_FEES = {"commission_rate": Decimal(0), "commission_min": Decimal(0), "stamp_duty_rate": Decimal(0),
           "stamp_duty_round_up": False, "trading_fee_rate": Decimal(0), "sfc_levy_rate": Decimal(0),
           "settlement_fee_rate": Decimal(0), "settlement_fee_min": Decimal(0), "settlement_fee_max": Decimal(0),
           "sell_only_rate": Decimal("0.0000278")}


class PaperConfig(_Model):
    """The paper broker. Every key has a default (the exchange's retail fees), so a config without `paper:` works."""
    initial_cash: Decimal = Field(default=Decimal(200_000), gt=0, le=Decimal(10) ** 10)
    slippage_bps: Decimal = Field(default=Decimal(5), ge=0, le=500)
    max_volume_participation: Decimal = Field(default=Decimal("0.1"), gt=0, le=1)
    fees: FeeSchedule = FeeSchedule(**HKEX_FEES)


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
    entry_value: Decimal = Field(default=Decimal(9000), gt=0, le=Decimal(10) ** 9)
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
    paper: PaperConfig = PaperConfig()
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
            try:
                password = urlsplit(url).password
            except ValueError:                  # malformed: check_database_url says so; keep the whole URL secret
                password = url
            if password:
                found.append(password)
                found.append(unquote(password))
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
        try:
            values = {k: v for k, v in dotenv_values(env_file, encoding="utf-8").items() if v is not None}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{env_file}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                              f"save it as UTF-8") from None
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


# ---------------------------------------------------------------- database URL policy

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}
SECURE_SSLMODES = {"require", "verify-ca", "verify-full"}


def check_database_url(url: str, allow_insecure: bool) -> None:
    """Refuse a malformed DATABASE_URL, and a remote database without TLS unless explicitly allowed
    (CATALYST_ALLOW_INSECURE_DB=1). The URL is read as the driver reads it: a parameter given twice is refused
    (asyncpg takes the last one, a naive check the first), and every host counts — the URL's and any `host=`."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is malformed: {exc}") from None
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ConfigError(f"DATABASE_URL must start with postgresql:// (got scheme {parts.scheme!r})")
    for item in parts.netloc.rpartition("@")[2].split(","):
        port = item.rpartition("]")[2] if item.startswith("[") else item
        port = port.partition(":")[2] if ":" in port else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"DATABASE_URL is malformed: port {port!r} is not a number from 1 to 65535")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:
        raise ConfigError(f"DATABASE_URL gives {', '.join(twice)} more than once; give each parameter once")
    query = dict(pairs)
    hosts = [h for h in _netloc_hosts(parts.netloc) if h] + [h for h in query.get("host", "").split(",") if h]
    remote = [h for h in hosts if not (h.startswith("/") or h.strip("[]") in LOCAL_HOSTS)]
    if not remote:
        return
    sslmode = query.get("sslmode", "")
    if sslmode not in SECURE_SSLMODES and not allow_insecure:
        raise ConfigError(
            f"DATABASE_URL points at remote host {remote[0]!r} without TLS: add ?sslmode=require (or verify-full), "
            f"or set CATALYST_ALLOW_INSECURE_DB=1 to accept an unencrypted connection")


def _netloc_hosts(netloc: str) -> list[str]:
    """Hosts of a netloc, multi-host lists included ('u:p@h1:5432,h2' -> ['h1', 'h2'])."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):
            hosts.append(item[1:item.find("]")] if "]" in item else item[1:])
        else:
            hosts.append(item.partition(":")[0])
    return [unquote(h) for h in hosts]
