"""The rules engine against backtesting.py on the same real daily bars: identical trades, and how much slower.

The rules engine's entry and exit rules are written as a backtesting.py `Strategy` (`RulesStrategy`) and both run
in this process over the same daily bar file: our replay through the production path (scan, trade and close
cycles, the position monitor, the safety gate, the paper broker, PostgreSQL) and backtesting.py's `Backtest.run`.

How the replay trades daily files (data/bar_files.py, replay/runner.py) is how the strategy sees them: each day
is two prints, the day's open and its close, so the strategy runs on a frame of two rows a day (O = H = L = C =
the print). At the open the replay decides on yesterday's bars with yesterday's close as the price (the monitor,
then the trade cycle: exits, then an entry); a market exit fills at the opening print; an entry is a limit day
order at the venue's ask at the open (its quote off the bar file) plus `rules.limit_offset_pct`, that fills at the
first print at or below it and otherwise expires at the close. In the session's last minute the price is the
day's open: the monitor judges the positions the agent knew of at the open (with RSI and patterns), the close
cycle one filled at today's opening print (on price alone: the agent learns of that fill only then); an exit
fills at the closing print. Trades are compared on the venue's own fills (paper_fills).
The indicators are this project's own (data/technicals.py, data/patterns.py) over the window the tools read
(data/market.py LOOKBACK: 400 days), computed for every day in the strategy's `init` — part of backtesting.py's
timed run, as any backtesting.py user pays for indicators; the exit policy is `signals.evaluate`, the one the
monitor and the rules use. Sizing is the safety gate's: the limit rounded down to the tick, `rules.entry_value`
worth in whole lots, capped by `trading.max_position_value`; the stop `trading.position_stop_loss_pct` below it.

For the parity run the paper venue has no slippage and no fees, the broker holds no protective stop
(`monitor.broker_stops: false`: the stop is the monitor's, judged at each decision point) and the scan's filters
admit the one symbol (backtesting.py has no universe): backtesting.py cannot express a per-fill slippage that
stays inside the bar, nor a stop order that the monitor raises. Everything else is the default configuration.

Targets: identical trades (day, side, price, quantity) and the replay within 10x backtesting.py's time.
Run: ./run.sh bench replay_vs_backtesting [--symbol GOOG|MSFT] [--start YYYY-MM-DD] [--end YYYY-MM-DD]
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import signals  # noqa: E402
from core.config_model import FeeSchedule, MarketConfig, PaperConfig  # noqa: E402
from core.ticks import round_to_tick  # noqa: E402

TARGET_RATIO = 10.0
US_MARKET = MarketConfig(exchange="NYSE", timezone="America/New_York", currency="USD",
                         sessions={"regular": {"open": "09:30", "close": "16:00"}}, default_lot_size=1)
NO_FEES = FeeSchedule(commission_rate=0, commission_min=0, stamp_duty_rate=0, stamp_duty_round_up=False,
                      trading_fee_rate=0, sfc_levy_rate=0, settlement_fee_rate=0, settlement_fee_min=0,
                      settlement_fee_max=0, sell_only_rate=0)
LOOKBACK = timedelta(days=400)          # data/market.py LOOKBACK["1d"]: the window get_technicals reads


@dataclass(frozen=True)
class Trade:
    """One fill: the session's date, buy or sell, price and shares."""
    day: date
    side: str
    price: Decimal
    quantity: int

    def __str__(self) -> str:
        return f"{self.day} {self.side:<4} {self.quantity:>5} @ {self.price}"


def real_series() -> dict[str, pd.DataFrame]:
    """Real daily OHLCV that ships with installed packages (columns open, high, low, close, volume; a date index):
    GOOG 2004-2013 (backtesting.py) and MSFT June-September 2003 (matplotlib's sample data). (The other OHLC files
    there are not daily: backtesting.py's EURUSD is hourly, its BTCUSD monthly; matplotlib's goog.npz is the same
    GOOG series again.)"""
    from backtesting.test import GOOG
    goog = GOOG.rename(columns=str.lower)[["open", "high", "low", "close", "volume"]]
    goog.index = pd.DatetimeIndex(goog.index).normalize()
    out = {"GOOG": goog}
    try:
        import matplotlib.cbook as cbook
        with cbook.get_sample_data("msft.csv") as f:
            msft = pd.read_csv(f)
    except (ImportError, OSError, ValueError):
        return out
    msft.index = pd.DatetimeIndex(pd.to_datetime(msft.pop("Date"), format="%d-%b-%y"))
    msft = msft.rename(columns=str.lower)[["open", "high", "low", "close", "volume"]].sort_index()
    out["MSFT"] = msft
    return out


# The windows the bench replays: each series' own, history before the start feeding the indicators.
WINDOWS = {"GOOG": (date(2006, 1, 3), date(2013, 2, 28)), "MSFT": (date(2003, 7, 28), date(2003, 9, 19))}


def write_bar_file(directory: Path, symbol: str, frame: pd.DataFrame) -> Path:
    out = frame.copy()
    out.index = out.index.strftime("%Y-%m-%d")
    out.index.name = "timestamp"
    path = directory / f"{symbol}.csv"
    out.to_csv(path)
    return path


def parity_settings(agent_id: str, initial_cash: Decimal = Decimal(100_000)):
    """The default configuration on a US market, with what backtesting.py cannot express turned off (see above)."""
    from tests.agent_fixtures import agent_settings
    settings = agent_settings(agent_id, scan={"min_price": Decimal(0), "max_price": Decimal(10) ** 6,
                                              "min_turnover": Decimal(0), "rsi_max": Decimal(100),
                                              "min_history_bars": 20},
                              monitor={"broker_stops": False})
    config = settings.config.model_copy(update={
        "market": US_MARKET,
        "paper": PaperConfig(initial_cash=initial_cash, slippage_bps=Decimal(0), fees=NO_FEES,
                             max_volume_participation=Decimal(1))})
    return replace(settings, config=config)


# ---------------------------------------------------------------- our replay

async def replay_trades(pool, settings, directory: Path, start: date, end: date, out_dir: Path
                        ) -> tuple[list[Trade], float]:
    """Replay [start, end] on the bar files in `directory`: its fills as trades, and its wall time."""
    from core.calendar import MarketCalendar
    from replay.runner import run_replay
    from runtime.wiring import builder
    t0 = time.perf_counter()
    result = await run_replay(settings, pool, build=builder(pool), start=start, end=end, data=directory,
                              progress=False, out_dir=out_dir)
    seconds = time.perf_counter() - t0
    if result.failed:
        raise RuntimeError(result.failed)
    nyse = MarketCalendar(settings.config.market.exchange)
    # the venue's own fills (the paper broker's book): a fill at the last closing print is there, while the agent
    # would record it only at its next cycle
    rows = await pool.fetch("SELECT side, price, quantity, filled_at FROM paper_fills WHERE agent_id = $1 "
                            "ORDER BY filled_at, fill_id", result.agent_id)
    return [Trade(nyse.local_date(r["filled_at"]), r["side"], r["price"], r["quantity"]) for r in rows], seconds


# ---------------------------------------------------------------- backtesting.py

def prints(daily: pd.DataFrame) -> pd.DataFrame:
    """Two rows a day, as our bar files trade a daily bar: the opening print, then the closing print."""
    n = len(daily)
    idx = np.empty(2 * n, dtype="datetime64[ns]")
    idx[0::2] = (daily.index + pd.Timedelta(hours=9, minutes=30)).values
    idx[1::2] = (daily.index + pd.Timedelta(hours=15, minutes=59)).values
    price = np.empty(2 * n)
    price[0::2], price[1::2] = daily["open"].to_numpy(), daily["close"].to_numpy()
    volume = np.repeat(daily["volume"].to_numpy() / 2, 2)
    return pd.DataFrame({"Open": price, "High": price, "Low": price, "Close": price, "Volume": volume},
                        index=pd.DatetimeIndex(idx))


def day_views(daily: pd.DataFrame, *, rsi_overbought: float, rsi_oversold: float, first: int = 0
              ) -> list[dict | None]:
    """For each day i from `first` on: what the tools answer that day (bars up to day i-1 within LOOKBACK):
    technicals, patterns, the monitor's RSI. None before."""
    from data.patterns import detect_patterns
    from data.technicals import compute_technicals, last_rsi14
    from core.calendar import MarketCalendar, from_ns, to_ns
    calendar = MarketCalendar(US_MARKET.exchange)
    table = calendar.table
    sessions = np.searchsorted(table.dates, daily.index.values.astype("datetime64[D]"))
    opens = table.opens[sessions]                       # a daily bar starts at its session's open (UTC ns)
    frame = daily.astype(float)
    frame.index = pd.DatetimeIndex(pd.to_datetime(opens, utc=True), name="timestamp")
    views: list[dict | None] = [None] * max(first, 1)
    for i in range(max(first, 1), len(frame)):
        # the window starts LOOKBACK before the exchange's day (data/market.py daily_bars), kept for the session
        start = to_ns(calendar.day_start(from_ns(int(opens[i]))) - LOOKBACK)
        lo = int(np.searchsorted(opens, start, "left"))
        window = frame.iloc[lo:i]
        tech = compute_technicals(window, rsi_overbought=rsi_overbought, rsi_oversold=rsi_oversold)
        tech["close"] = float(window["close"].iloc[-1])
        found = [p.to_dict() for p in detect_patterns(window)] if len(window) >= 5 else []
        views.append({"tech": tech, "patterns": found, "rsi": last_rsi14(window["close"].to_numpy())})
    return views


def make_strategy(settings, daily: pd.DataFrame, first_day: date, symbol: str, directory: Path):
    """The rules engine (engines/rules.py) as a backtesting.py Strategy over `prints(daily)`; trading from
    `first_day` on. The ask an entry is priced from is the venue's quote (data/bar_files.py on the same file) at
    the session's open."""
    from backtesting import Strategy

    from core.calendar import MarketCalendar, from_ns
    from data.bar_files import BarFileSource
    feed = BarFileSource(directory, US_MARKET.exchange)
    table = MarketCalendar(US_MARKET.exchange).table
    opens = table.opens[np.searchsorted(table.dates, daily.index.values.astype("datetime64[D]"))]

    cfg = settings.config
    rules, trading = cfg.rules, cfg.trading
    thresholds = signals.SignalThresholds.from_config(cfg.signals, trading.trailing_stop_pct)
    days = [d.date() for d in daily.index]
    start = days.index(first_day) if first_day in days else int(np.searchsorted(np.array(days), first_day))

    class RulesStrategy(Strategy):
        def init(self) -> None:
            self.views = day_views(daily, rsi_overbought=float(cfg.signals.rsi_overbought),
                                   rsi_oversold=float(cfg.signals.rsi_oversold), first=start)
            self.held: dict | None = None          # what the agent knows of its position
            self.exiting = False

        # the exit policy of the monitor and the rules: signals.evaluate
        def _exit(self, price: float, view: dict | None, *, indicators: bool) -> bool:
            h = self.held
            p = Decimal(str(price))
            h["high_water"] = max(h["high_water"], p)
            pv = signals.PositionView(symbol="X", quantity=h["quantity"], entry_price=h["entry"], price=p,
                                      high_water=h["high_water"], stop_loss=h["stop"], take_profit=h["take_profit"])
            report = signals.evaluate(pv, thresholds)
            if report.action != "exit" and indicators and view is not None:
                rsi, patterns = view["rsi"], tuple(view["patterns"])
                if signals.indicators_matter(thresholds, rsi=rsi, patterns=patterns):
                    report = signals.evaluate(pv, thresholds, rsi=rsi, patterns=patterns)
            return report.action == "exit"

        def _learn_fills(self) -> None:
            """What the agent knows of its position after the broker filled: the entry price is the fill's."""
            if self.position.size > 0 and self.held is not None and not self.held.get("known"):
                trade = self.trades[-1]
                self.held.update(known=True, entry=Decimal(str(round(trade.entry_price, 10))).normalize(),
                                 high_water=Decimal(str(round(trade.entry_price, 10))).normalize())
            if self.position.size == 0 and self.held is not None and self.held.get("known"):
                self.held, self.exiting = None, False

        def next(self) -> None:
            k = len(self.data) - 1                 # this row: day k // 2, opening print if even
            day, at_open_print = k // 2, k % 2 == 0
            self._learn_fills()
            if not at_open_print:                  # entries are day orders: gone after the closing print
                for order in list(self.orders):
                    if order.size > 0:
                        order.cancel()
                if self.held is not None and not self.held.get("known"):
                    self.held = None
            if at_open_print:
                # the session's last minute of `day`: the price is the day's open; an exit fills at the close
                if day < start or self.held is None or not self.held.get("known") or self.exiting:
                    return
                # a position filled at today's opening print is known only from the close cycle's reconciliation
                # (after the monitor's pass): the close cycle judges it on price alone
                fresh = self.held.get("opened") == day
                if self._exit(self.data.Close[-1], self.views[day], indicators=not fresh):
                    self.position.close()
                    self.exiting = True
                return
            # the next session's open: decisions on the bars up to `day`, the price its close
            nxt = day + 1
            if nxt < start or nxt >= len(self.views):
                return
            view = self.views[nxt]
            price = self.data.Close[-1]
            if self.held is not None and self.held.get("known") and not self.exiting:
                if self._exit(price, view, indicators=True):
                    self.position.close()
                    self.exiting = True
                    return
            if self.held is not None or view is None:
                return
            why_not = entry_refusal(view, rules)
            if why_not:
                return
            ask = feed.quote(symbol, from_ns(int(opens[nxt]))).ask
            limit = round_to_tick(round(ask * (1 + rules.limit_offset_pct), 4), "us", "down")
            take_profit = round(ask * (1 + cfg.signals.take_profit_strong), 4)
            value = min(Decimal(rules.entry_value), trading.max_position_value)
            qty = int((value / limit).to_integral_value(ROUND_FLOOR))
            cash = Decimal(str(self.equity))
            qty = min(qty, int((cash / limit).to_integral_value(ROUND_FLOOR)))
            if qty <= 0 or limit * qty < trading.min_position_value:
                return
            stop = round_to_tick(limit * (1 - trading.position_stop_loss_pct), "us", "down")
            self.buy(size=qty, limit=float(limit))
            self.held = {"quantity": qty, "stop": stop, "take_profit": take_profit, "opened": nxt, "known": False}

    return RulesStrategy


def entry_refusal(view: dict, rules) -> str | None:
    """engines/rules.py `_entry_check` on the tools' answers."""
    tech = view["tech"]
    rsi, close, sma20, hist = tech.get("rsi14"), tech.get("close"), tech.get("sma20"), tech.get("macd_hist")
    if rsi is None or close is None:
        return "history"
    if not (float(rules.rsi_min) <= rsi <= float(rules.rsi_max)):
        return "rsi"
    if rules.require_above_sma20 and (sma20 is None or close <= sma20):
        return "sma20"
    bearish = [p for p in view["patterns"] if p["direction"] == "bearish"]
    bullish = [p for p in view["patterns"] if p["direction"] == "bullish"]
    if bearish:
        return "bearish"
    if not bullish and (hist is None or hist <= 0):
        return "macd"
    return None


def backtest_trades(settings, daily: pd.DataFrame, start: date, end: date, symbol: str, directory: Path
                    ) -> tuple[list[Trade], float]:
    """backtesting.py over the same bars (history before `start` only feeds the indicators): trades, wall time."""
    from backtesting import Backtest
    daily = daily[daily.index.date <= end]
    t0 = time.perf_counter()
    bt = Backtest(prints(daily), make_strategy(settings, daily, start, symbol, directory),
                  cash=float(settings.config.paper.initial_cash), commission=0.0, trade_on_close=False,
                  exclusive_orders=False, finalize_trades=False)
    import os
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):   # its progress bar
        stats = bt.run()
    seconds = time.perf_counter() - t0
    out: list[Trade] = []
    for t in stats["_trades"].itertuples():
        out.append(Trade(t.EntryTime.date(), "buy", _price(t.EntryPrice), int(t.Size)))
        out.append(Trade(t.ExitTime.date(), "sell", _price(t.ExitPrice), int(t.Size)))
    for t in stats["_strategy"].trades:            # still open at the end (finalize_trades=False keeps them open)
        out.append(Trade(pd.Timestamp(t.entry_time).date(), "buy", _price(t.entry_price), int(t.size)))
    return sorted(out, key=lambda t: (t.day, t.side != "sell")), seconds


def _price(x: float) -> Decimal:
    return Decimal(str(round(float(x), 4))).normalize()


def normalise(trades: list[Trade]) -> list[tuple]:
    return sorted((t.day, t.side, Decimal(t.price).normalize(), t.quantity) for t in trades)


# ---------------------------------------------------------------- the bench

async def compare(symbol: str, daily: pd.DataFrame, start: date, end: date, pool, tmp: Path) -> bool:
    from core.calendar import MarketCalendar
    MarketCalendar(US_MARKET.exchange).table      # both sides use the exchange calendar: loaded before either runs
    directory = tmp / symbol
    directory.mkdir()
    write_bar_file(directory, symbol, daily[daily.index.date <= end])
    settings = parity_settings(f"bench_bt_{symbol.lower()}")
    ours, ours_s = await replay_trades(pool, settings, directory, start, end, tmp)
    theirs, theirs_s = backtest_trades(settings, daily, start, end, symbol, directory)
    same = normalise(ours) == normalise(theirs)
    ratio = ours_s / theirs_s
    print(f"{symbol} {start}..{end}: replay {len(ours)} fills in {ours_s:.2f} s, backtesting.py {len(theirs)} fills "
          f"in {theirs_s:.2f} s; trades {'identical' if same else 'DIFFER'}; replay / backtesting.py = {ratio:.1f}x "
          f"(target <= {TARGET_RATIO:.0f}x)")
    if not same:
        a, b = set(normalise(ours)), set(normalise(theirs))
        for t in sorted(a - b)[:10]:
            print(f"  only in the replay:      {t}")
        for t in sorted(b - a)[:10]:
            print(f"  only in backtesting.py:  {t}")
    ok = same and ratio <= TARGET_RATIO
    print(f"{symbol}: {'PASS' if ok else 'FAIL'}")
    return ok


async def main() -> int:
    from runtime import database
    args = sys.argv
    only = args[args.index("--symbol") + 1] if "--symbol" in args else None
    tmp = Path(tempfile.mkdtemp(prefix="catalyst-bench-bt-"))
    ok = True
    try:
        url = database.start_embedded(tmp / "pgdata")
        pool = await database.create_pool(url, max_size=4, durable=False)
        await database.ensure_schema(pool)
        for symbol, daily in real_series().items():
            if only and symbol != only:
                continue
            start, end = WINDOWS[symbol]
            start = date.fromisoformat(args[args.index("--start") + 1]) if "--start" in args else start
            end = date.fromisoformat(args[args.index("--end") + 1]) if "--end" in args else end
            ok &= await compare(symbol, daily, start, end, pool, tmp)
        await pool.close()
    finally:
        database.stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    from runtime.bootstrap import run
    sys.exit(run(main()))
