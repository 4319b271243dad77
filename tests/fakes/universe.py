"""A venue's listings for the fakes: real-looking codes trading at a SimulatedMarket's deterministic prices.

`Universe("HKEX")` lists well-known HKEX codes first (0700 Tencent, 0005 HSBC, 0388 HKEX, 9988 Alibaba ...), then
codes drawn deterministically from the seed: main-board stocks, GEM stocks (8xxx), ETFs (2800, 2828, 3033) and
warrants (five-digit codes). `Universe("US")` lists AAPL, MSFT, BRK.B, SPY ... then generated tickers on NASDAQ,
NYSE, ARCA, AMEX, BATS and OTC. Each security trades at one simulated symbol's prices (board lots of 100 to 20,000
shares, prices on the HKEX or US tick grid); a few are suspended (no trading since `halted`) or delisted.

It is a price feed (`instrument`, `quote`, `bars`, `instruments`) that accepts any spelling of a code the venue
accepts ("00700", "HK.00700", "0700" -> 0700), so a fake can hand the venue's own codes to it, and it names its
listings (`securities()`), HKEX plates (`plates`) and nothing else. `securities_of(market)` gives the listings of
any price feed (a plain SimulatedMarket: every instrument a listed stock).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Sequence

import numpy as np

from brokers.paper.simulated import SimulatedMarket
from core.calendar import MarketCalendar
from core.errors import UnknownSymbol
from core.instruments import Bar, Instrument, Quote, Timeframe
from core.symbols import InvalidSymbol, canonical_symbol

HK_KNOWN = (
    ("0700", "TENCENT"), ("0005", "HSBC HOLDINGS"), ("0388", "HKEX"), ("9988", "BABA-W"), ("0941", "CHINA MOBILE"),
    ("1299", "AIA"), ("0939", "CCB"), ("1398", "ICBC"), ("3690", "MEITUAN-W"), ("0883", "CNOOC"),
    ("2318", "PING AN"), ("0001", "CKH HOLDINGS"), ("0002", "CLP HOLDINGS"), ("0003", "HK & CHINA GAS"),
    ("0011", "HANG SENG BANK"), ("0016", "SHK PPT"), ("0027", "GALAXY ENT"), ("0066", "MTR CORPORATION"),
    ("0175", "GEELY AUTO"), ("0267", "CITIC"), ("0386", "SINOPEC CORP"), ("0669", "TECHTRONIC IND"),
    ("0688", "CHINA OVERSEAS"), ("0762", "CHINA UNICOM"), ("0823", "LINK REIT"), ("0857", "PETROCHINA"),
    ("0868", "XINYI GLASS"), ("0981", "SMIC"), ("1038", "CKI HOLDINGS"), ("1044", "HENGAN INT'L"),
    ("1093", "CSPC PHARMA"), ("1109", "CHINA RES LAND"), ("1113", "CK ASSET"), ("1177", "SINO BIOPHARM"),
    ("1211", "BYD COMPANY"), ("1810", "XIAOMI-W"), ("1876", "BUD APAC"), ("1928", "SANDS CHINA LTD"),
    ("1997", "WHARF REIC"), ("2020", "ANTA SPORTS"), ("2269", "WUXI BIO"), ("2313", "SHENZHOU INTL"),
    ("2319", "MENGNIU DAIRY"), ("2331", "LI NING"), ("2382", "SUNNY OPTICAL"), ("2388", "BOC HONG KONG"),
    ("2628", "CHINA LIFE"), ("2688", "ENN ENERGY"), ("3328", "BANKCOMM"), ("3968", "CM BANK"),
    ("3988", "BANK OF CHINA"), ("6098", "CG SERVICES"), ("6862", "HAIDILAO"), ("9618", "JD-SW"),
    ("9633", "NONGFU SPRING"), ("9999", "NTES-S"),
    ("0006", "POWER ASSETS"), ("0012", "HENDERSON LAND"), ("0101", "HANG LUNG PPT"), ("0288", "WH GROUP"),
)
HK_ETFS = (("2800", "TRACKER FUND"), ("2828", "HANG SENG CHINA ENT ETF"), ("3033", "CSOP HS TECH"))
US_KNOWN = (
    ("AAPL", "Apple Inc.", "NASDAQ"), ("MSFT", "Microsoft Corporation", "NASDAQ"), ("NVDA", "NVIDIA Corporation",
    "NASDAQ"), ("AMZN", "Amazon.com, Inc.", "NASDAQ"), ("GOOGL", "Alphabet Inc. Class A", "NASDAQ"),
    ("META", "Meta Platforms, Inc.", "NASDAQ"), ("TSLA", "Tesla, Inc.", "NASDAQ"), ("AVGO", "Broadcom Inc.", "NASDAQ"),
    ("COST", "Costco Wholesale Corporation", "NASDAQ"), ("NFLX", "Netflix, Inc.", "NASDAQ"),
    ("AMD", "Advanced Micro Devices, Inc.", "NASDAQ"), ("INTC", "Intel Corporation", "NASDAQ"),
    ("CSCO", "Cisco Systems, Inc.", "NASDAQ"), ("ADBE", "Adobe Inc.", "NASDAQ"), ("PEP", "PepsiCo, Inc.", "NASDAQ"),
    ("QCOM", "QUALCOMM Incorporated", "NASDAQ"), ("TXN", "Texas Instruments Incorporated", "NASDAQ"),
    ("BRK.B", "Berkshire Hathaway Inc. Class B", "NYSE"), ("JPM", "JPMorgan Chase & Co.", "NYSE"),
    ("V", "Visa Inc.", "NYSE"), ("UNH", "UnitedHealth Group Incorporated", "NYSE"),
    ("XOM", "Exxon Mobil Corporation", "NYSE"), ("JNJ", "Johnson & Johnson", "NYSE"), ("WMT", "Walmart Inc.", "NYSE"),
    ("MA", "Mastercard Incorporated", "NYSE"), ("PG", "The Procter & Gamble Company", "NYSE"),
    ("HD", "The Home Depot, Inc.", "NYSE"), ("CVX", "Chevron Corporation", "NYSE"),
    ("LLY", "Eli Lilly and Company", "NYSE"), ("ABBV", "AbbVie Inc.", "NYSE"), ("MRK", "Merck & Co., Inc.", "NYSE"),
    ("KO", "The Coca-Cola Company", "NYSE"), ("CRM", "Salesforce, Inc.", "NYSE"), ("ORCL", "Oracle Corporation",
    "NYSE"), ("MCD", "McDonald's Corporation", "NYSE"), ("NKE", "NIKE, Inc.", "NYSE"),
    ("DIS", "The Walt Disney Company", "NYSE"), ("WFC", "Wells Fargo & Company", "NYSE"),
    ("BAC", "Bank of America Corporation", "NYSE"), ("C", "Citigroup Inc.", "NYSE"),
    ("GS", "The Goldman Sachs Group, Inc.", "NYSE"), ("IBM", "International Business Machines", "NYSE"),
    ("CAT", "Caterpillar Inc.", "NYSE"), ("BA", "The Boeing Company", "NYSE"), ("GE", "GE Aerospace", "NYSE"),
    ("T", "AT&T Inc.", "NYSE"), ("VZ", "Verizon Communications Inc.", "NYSE"), ("PFE", "Pfizer Inc.", "NYSE"),
    ("SPY", "SPDR S&P 500 ETF Trust", "ARCA"), ("IWM", "iShares Russell 2000 ETF", "ARCA"),
    ("DIA", "SPDR Dow Jones Industrial Average ETF", "ARCA"), ("QQQ", "Invesco QQQ Trust", "NASDAQ"),
)
SUSPENDED_SINCE = date(2026, 9, 1)
DELISTED_SINCE = date(2025, 6, 2)


@dataclass(frozen=True)
class Security:
    symbol: str            # canonical (core.symbols): "0700", "BRK.B"
    name: str
    kind: str              # "stock" | "etf" | "warrant"
    board: str             # HKEX: "main" | "gem"; US: the listing exchange (NASDAQ, NYSE, ARCA, AMEX, BATS, OTC)
    status: str            # "listed" | "suspended" | "delisted"
    listed: date
    halted: date | None = None    # suspended or delisted: the first session without trading


class Universe:
    """A venue's listings over a SimulatedMarket (`n` securities; the i-th trades at simulated symbol i's prices)."""

    def __init__(self, market: str = "HKEX", n: int = 700, seed: int = 7,
                 calendar: MarketCalendar | None = None) -> None:
        self.exchange = "HKEX" if market == "HKEX" else "US"
        self.calendar = calendar or MarketCalendar("HKEX" if market == "HKEX" else "NYSE")
        self.sim = SimulatedMarket(seed=seed, exchange="HKEX" if market == "HKEX" else "NYSE", n_symbols=n,
                                   calendar=self.calendar)
        rng = np.random.default_rng(seed)
        made = _hk(rng, n) if self.exchange == "HKEX" else _us(rng, n)
        sims = self.sim.instruments()
        self._rows: dict[str, tuple[Security, Instrument]] = {}
        for sec, sim in zip(made, sims):
            inst = Instrument(symbol=sec.symbol, exchange="HKEX" if self.exchange == "HKEX" else sec.board,
                              currency=sim.currency, lot_size=sim.lot_size, name=sec.name,
                              tick_scheme=sim.tick_scheme)
            self._rows[sec.symbol] = (sec, inst)
        self._sim_of = {sec.symbol: sim.symbol for sec, sim in zip(made, sims)}
        self.plates = _plates(made) if self.exchange == "HKEX" else {}

    # ------------------------------------------------------------ listings
    def securities(self) -> list[Security]:
        return [sec for sec, _ in self._rows.values()]

    def security(self, symbol: str) -> Security:
        return self._row(symbol)[0]

    # ------------------------------------------------------------ a price feed
    def instruments(self) -> list[Instrument]:
        return [inst for _, inst in self._rows.values()]

    def instrument(self, symbol: str) -> Instrument:
        return self._row(symbol)[1]

    def quote(self, symbol: str, at: datetime) -> Quote:
        sec, inst = self._row(symbol)
        halted = self._halted_at(sec)
        if halted is None or at < halted:
            q = self.sim.quote(self._sim_of[sec.symbol], at)
            return Quote(inst.symbol, q.bid, q.ask, q.last, q.volume, q.timestamp)
        last = self.bars(sec.symbol, "1d", halted - timedelta(days=15), halted)[-1]
        return Quote(inst.symbol, last.close, last.close, last.close, 0, halted)

    def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime) -> list[Bar]:
        sec, inst = self._row(symbol)
        halted = self._halted_at(sec)
        if halted is not None:
            end = min(end, halted)
        return [Bar(inst.symbol, b.start, b.open, b.high, b.low, b.close, b.volume)
                for b in self.sim.bars(self._sim_of[sec.symbol], timeframe, start, end)]

    def _row(self, symbol: str) -> tuple[Security, Instrument]:
        try:
            return self._rows[canonical_symbol(str(symbol), "HKEX" if self.exchange == "HKEX" else "US")]
        except (KeyError, InvalidSymbol):
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the fake {self.exchange} universe has "
                                f"{len(self._rows)} securities") from None

    @functools.cache
    def _halted_at(self, sec: Security) -> datetime | None:
        if sec.halted is None:
            return None
        day = sec.halted if self.calendar.is_trading_day(sec.halted) else self.calendar.next_trading_day(sec.halted)
        return self.calendar.session_bounds(day)[0][0]


def securities_of(market: Any) -> list[Security]:
    """The listings of any price feed: a Universe's own; anything else lists each instrument as a listed stock."""
    if isinstance(market, Universe):
        return market.securities()
    us = {"NYSE", "NASDAQ", "US"}
    return [Security(i.symbol, i.name, "stock", i.exchange if i.exchange in us else "main", "listed",
                     date(2015, 1, 2)) for i in market.instruments()]


# ---------------------------------------------------------------- generating listings

def _hk(rng: np.random.Generator, n: int) -> list[Security]:
    out = [Security(code, name, "stock", "main", "listed", date(2004, 6, 16)) for code, name in HK_KNOWN]
    out += [Security(code, name, "etf", "main", "listed", date(2004, 6, 16)) for code, name in HK_ETFS]
    taken = {s.symbol for s in out}
    words = ("HARBOUR", "JADE", "LOTUS", "SUMMIT", "PEARL", "GOLDEN", "AZURE", "PHOENIX", "MERIDIAN", "COBALT",
             "EVERGREEN", "GRANITE", "BEACON", "HORIZON", "MAPLE", "ORCHID")
    kinds = ("HLDGS", "GROUP", "TECH", "PPT", "ENERGY", "BIO", "LOGISTICS", "FOODS", "INTL", "SEC")
    while len(out) < n:
        i = len(out)
        roll = rng.random()
        if roll < 0.03:
            code, kind, board = f"{rng.integers(10000, 29999)}", "warrant", "main"
        elif roll < 0.07:
            code, kind, board = f"{rng.integers(8001, 8999)}", "stock", "gem"
        else:
            code, kind, board = f"{rng.choice([rng.integers(1, 3999), rng.integers(6000, 6999)]):04d}", "stock", "main"
        if code in taken:
            continue
        taken.add(code)
        status, halted = "listed", None
        if kind == "stock" and i % 41 == 7:
            status, halted = "suspended", SUSPENDED_SINCE
        elif kind == "stock" and i % 53 == 11:
            status, halted = "delisted", DELISTED_SINCE
        name = f"{words[i % len(words)]} {kinds[(i // len(words)) % len(kinds)]}" + ("-W" if kind == "warrant" else "")
        out.append(Security(code, name, kind, board, status, date(2010 + i % 12, 1 + i % 12, 3), halted))
    return out[:n]


def _us(rng: np.random.Generator, n: int) -> list[Security]:
    out = [Security(s, name, "etf" if ex == "ARCA" or s == "QQQ" else "stock", ex, "listed", date(1990, 1, 2))
           for s, name, ex in US_KNOWN]
    taken = {s.symbol for s in out}
    exchanges = ("NASDAQ", "NASDAQ", "NYSE", "NYSE", "NASDAQ", "AMEX", "ARCA", "BATS", "OTC")
    while len(out) < n:
        i = len(out)
        ticker = "".join(chr(65 + int(x)) for x in rng.integers(0, 26, int(rng.integers(3, 5))))
        if ticker in taken:
            continue
        taken.add(ticker)
        exchange = exchanges[i % len(exchanges)]
        status, halted = "listed", None
        if i % 47 == 5:
            status, halted = "suspended", SUSPENDED_SINCE
        elif i % 59 == 9:
            status, halted = "delisted", DELISTED_SINCE
        out.append(Security(ticker, f"{ticker.title()} Holdings Inc.", "stock", exchange, status,
                            date(2000 + i % 20, 1 + i % 12, 3), halted))
    return out[:n]


def _plates(securities: Sequence[Security]) -> dict[str, list[str]]:
    """HKEX plates as OpenD names them (the code after "HK."), each a list of canonical codes."""
    live = [s for s in securities if s.status != "delisted"]
    main = [s.symbol for s in live if s.board == "main" and s.kind == "stock"]
    hsi = main[:82]
    return {"HSI Constituent Stocks": hsi, "800000": hsi, "HSCEI Stock": main[10:60], "800100": main[10:60],
            "Motherboard": main, "GEM": [s.symbol for s in live if s.board == "gem"],
            "LIST1910": [s.symbol for s in live]}
