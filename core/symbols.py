"""One canonical symbol per instrument: every way a person, a file, a broker or the model writes a ticker is mapped
to one form for the configured market before any check or write.

    market   written as                                   canonical
    HKEX     0700, 00700, 700, 0700.HK, HK.00700, hk.700  0700     (numeric codes: leading zeros dropped, then at
                                                                    least 4 digits; at most 5 digits in all)
    HKEX     S0142, s0142 (the simulated market)          S0142
    US       aapl, AAPL, US.AAPL, AAPL.US, " aapl "       AAPL     (class shares: BRK.B, BRK-B, BRK/B -> BRK.B)

Spaces anywhere are dropped and letters upper-cased. Anything else is an `InvalidSymbol` saying what was wrong.
"""
from __future__ import annotations

import re

from core.errors import InvalidRequest

US_EXCHANGES = frozenset({"NYSE", "NASDAQ", "US"})
_HK_CODE = re.compile(r"^[A-Z0-9]{1,8}$")
_US_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(\.[A-Z]{1,2})?$")


class InvalidSymbol(InvalidRequest, ValueError):
    """A ticker that cannot be an instrument of the market (malformed, or of another market)."""


def canonical_symbol(raw: object, exchange: str) -> str:
    """The one form of `raw` on `exchange` ('HKEX', 'NYSE', 'NASDAQ'); InvalidSymbol when it cannot be one."""
    if not isinstance(raw, str):
        raise InvalidSymbol(f"a symbol is text, got {type(raw).__name__}")
    s = "".join(raw.split()).upper()
    if not s:
        raise InvalidSymbol("empty symbol")
    if not s.isascii() or not s.isprintable():
        raise InvalidSymbol(f"{raw!r} holds characters no ticker has")
    if exchange == "HKEX":
        return _hkex(s, raw)
    if exchange in US_EXCHANGES:
        return _us(s, raw)
    raise InvalidSymbol(f"unknown market {exchange!r}")


def _hkex(s: str, raw: str) -> str:
    if s.startswith("HK."):
        s = s[3:]
    elif s.endswith(".HK"):
        s = s[:-3]
    if s.startswith("US.") or s.endswith(".US"):
        raise InvalidSymbol(f"{raw!r} is a US ticker; this agent trades HKEX (e.g. 0700, 00700, 0700.HK, HK.00700)")
    if not _HK_CODE.match(s):
        raise InvalidSymbol(f"{raw!r} is not an HKEX code (e.g. 0700, 00700, 0700.HK or HK.00700)")
    if s.isdigit():
        digits = s.lstrip("0")
        if not digits or len(digits) > 5:
            raise InvalidSymbol(f"{raw!r} is not an HKEX stock code (1 to 5 digits, not all zero)")
        return digits.zfill(4)
    return s


def _us(s: str, raw: str) -> str:
    if s.startswith("US."):
        s = s[3:]
    elif s.endswith(".US"):
        s = s[:-3]
    if s.startswith("HK.") or s.endswith(".HK") or s.isdigit():
        raise InvalidSymbol(f"{raw!r} is an HKEX code; this agent trades US stocks (e.g. AAPL, BRK.B)")
    s = s.replace("/", ".").replace("-", ".")
    if not _US_TICKER.match(s):
        raise InvalidSymbol(f"{raw!r} is not a US ticker (1-6 letters or digits, starting with a letter; a class "
                            f"suffix like BRK.B)")
    return s
