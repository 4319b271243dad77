"""News and sentiment behind one small provider interface.

Providers:
- `AlpacaNewsProvider` — Alpaca's news API (alpaca-py `NewsClient`), for US symbols, when ALPACA keys exist.
- `FileNewsProvider`  — a folder of JSON-lines files, `SYMBOL.jsonl` or `all.jsonl`, one item per line:
  `{"timestamp": "2026-11-24T01:02:03Z", "headline": "...", "summary": "...", "source": "...", "url": "...",
  "symbols": ["0700"]}` — for any market, fed by whatever the user has (an RSS job, a vendor export).
- `NoNewsProvider`    — says plainly that no news source is configured. Headlines are never invented.

Sentiment is transparent: a small finance word list (below) is matched against each headline and summary;
score = (positive hits - negative hits) / (positive hits + negative hits), in [-1, 1], 0 when nothing matched.
The result says so, and lists the words that counted, so a reader (or the model) can judge it.
Only items published at or before the clock's now are returned (replay never sees the future).
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

POSITIVE = frozenset("""beat beats record surge surges soar soars jump jumps rally rallies upgrade upgraded upgrades
outperform profit profits growth gain gains raises raised buyback dividend strong bullish approval approved wins
win expands expansion exceeds tops rebound recovers""".split())
NEGATIVE = frozenset("""miss misses missed plunge plunges drop drops fall falls slump slumps downgrade downgraded
downgrades underperform loss losses lawsuit probe investigation fraud weak bearish recall halt halted suspends
suspended warning warns cut cuts decline declines default bankruptcy delay delays layoffs fine fined""".split())
_WORD = re.compile(r"[a-z]+")

SENTIMENT_METHOD = ("lexicon: (positive - negative) / (positive + negative) word hits in headline and summary; "
                    f"{len(POSITIVE)} positive and {len(NEGATIVE)} negative finance words; 0 when none matched")


@dataclass(frozen=True)
class NewsItem:
    timestamp: datetime
    headline: str
    summary: str = ""
    source: str = ""
    url: str = ""


@dataclass(frozen=True)
class Sentiment:
    score: float
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def score_text(text: str) -> Sentiment:
    words = _WORD.findall(text.lower())
    pos = tuple(w for w in words if w in POSITIVE)
    neg = tuple(w for w in words if w in NEGATIVE)
    total = len(pos) + len(neg)
    return Sentiment(score=0.0 if total == 0 else round((len(pos) - len(neg)) / total, 3), positive=pos, negative=neg)


class NewsProvider(Protocol):
    name: str

    async def fetch(self, symbol: str, *, limit: int, until: datetime) -> list[NewsItem]: ...


class NoNewsProvider:
    name = "none"


class FileNewsProvider:
    name = "files"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    async def fetch(self, symbol: str, *, limit: int, until: datetime) -> list[NewsItem]:
        return await asyncio.to_thread(self._read, symbol, limit, until)

    def _read(self, symbol: str, limit: int, until: datetime) -> list[NewsItem]:
        items: list[NewsItem] = []
        for path in (self.directory / f"{symbol}.jsonl", self.directory / "all.jsonl"):
            if not path.exists():
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    when = datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))
                    if when.tzinfo is None:
                        raise ValueError("timestamp needs a UTC offset")
                    if path.name == "all.jsonl" and symbol not in raw.get("symbols", []):
                        continue
                    item = NewsItem(when, str(raw["headline"]), str(raw.get("summary", "")),
                                    str(raw.get("source", "")), str(raw.get("url", "")))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{path}:{n}: bad news item: {exc}") from None
                if item.timestamp <= until:
                    items.append(item)
        items.sort(key=lambda i: i.timestamp, reverse=True)
        return items[:limit]


class AlpacaNewsProvider:
    name = "alpaca"

    def __init__(self, api_key: str, secret_key: str, *, url_override: str | None = None) -> None:
        from alpaca.data.historical.news import NewsClient
        self._client = NewsClient(api_key=api_key, secret_key=secret_key, url_override=url_override)

    async def fetch(self, symbol: str, *, limit: int, until: datetime) -> list[NewsItem]:
        from alpaca.data.requests import NewsRequest
        request = NewsRequest(symbols=symbol, end=until, start=until - timedelta(days=7), limit=limit,
                              sort="desc")
        result = await asyncio.to_thread(self._client.get_news, request)
        items = []
        for n in getattr(result, "data", {}).get("news", []):
            items.append(NewsItem(n.created_at, n.headline, n.summary or "", n.source or "", n.url or ""))
        return items[:limit]


async def get_news(provider: NewsProvider, symbol: str, *, limit: int, now: datetime) -> dict:
    """The `get_news` tool's answer: headlines with per-item and overall sentiment, or a plain 'none'."""
    if isinstance(provider, NoNewsProvider):
        return {"symbol": symbol, "provider": "none", "items": [],
                "note": "No news source is configured (set ALPACA keys for US symbols, or news.directory for "
                        "a folder of JSON-lines files). No headlines are available; do not assume any."}
    items = await provider.fetch(symbol, limit=limit, until=now)
    scored = []
    total_pos = total_neg = 0
    for item in items:
        s = score_text(f"{item.headline} {item.summary}")
        total_pos += len(s.positive)
        total_neg += len(s.negative)
        d = asdict(item)
        d["timestamp"] = item.timestamp.isoformat()
        d["summary"] = item.summary[:300]
        d["sentiment"] = s.score
        scored.append(d)
    hits = total_pos + total_neg
    overall = 0.0 if hits == 0 else round((total_pos - total_neg) / hits, 3)
    return {"symbol": symbol, "provider": provider.name, "items": scored, "sentiment": overall,
            "sentiment_method": SENTIMENT_METHOD,
            **({"note": f"No news for {symbol} up to {now.isoformat()}."} if not items else {})}
