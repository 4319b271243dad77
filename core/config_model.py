"""The typed configuration: one pydantic model per section of `config/trading_config.yaml`, unknown keys refused,
switches and numbers strict, money bounded, models priced (core/settings.py loads and reports errors)."""
from __future__ import annotations

import types
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    # Pushed quotes for the open positions where the venue can push (paper, OpenD, Alpaca's stream): a stop is
    # judged on the price that crossed it, not on the next poll. No message of any kind for stream_stall_seconds
    # in a session = stalled: the monitor polls (and checks the gap), then re-opens the stream with backoff.
    stream: bool = True
    stream_stall_seconds: float = Field(default=20, ge=0.1, le=600)
    # A protective sell STOP at the broker for each open position (where the venue holds one), moved up with the
    # trailing stop and cancelled before any other exit: it protects the position while this machine is down.
    broker_stops: bool = True
    # replay, day and eval run the monitor in-process every few minutes and are never down, which is what a stop at
    # the broker protects against: they place none unless this is true (then ~2.3x the orders, ~1.5x the time)
    broker_stops_in_replay: bool = False

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
    # symbols on the real-time quote stream: 30 on the free Basic (IEX) plan; null on Algo Trader Plus (no limit)
    stream_symbol_limit: int | None = Field(default=30, ge=1, le=10_000)


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
