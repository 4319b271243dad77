"""News: no provider says so plainly; the file provider never returns the future; sentiment shows its working."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from data.news import FileNewsProvider, NoNewsProvider, get_news, score_text

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)


async def test_no_provider_says_so_and_invents_nothing():
    out = await get_news(NoNewsProvider(), "0700", limit=5, now=NOW)
    assert out["items"] == [] and out["provider"] == "none"
    assert "No news source is configured" in out["note"]


async def test_file_provider_returns_newest_first_and_never_the_future(tmp_path):
    lines = [
        {"timestamp": "2026-11-23T01:00:00Z", "headline": "Sim Harbour profit beats estimates, shares surge"},
        {"timestamp": "2026-11-24T02:00:00Z", "headline": "Sim Harbour faces probe over accounting", "summary": "warning"},
        {"timestamp": "2026-11-25T02:00:00Z", "headline": "FUTURE headline that must not be seen"},
    ]
    (tmp_path / "S0001.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    out = await get_news(FileNewsProvider(tmp_path), "S0001", limit=5, now=NOW)
    heads = [i["headline"] for i in out["items"]]
    assert heads == [lines[1]["headline"], lines[0]["headline"]]
    assert out["items"][0]["sentiment"] == -1.0 and out["items"][1]["sentiment"] == 1.0
    assert out["sentiment"] == 0.2 and "lexicon" in out["sentiment_method"]


async def test_shared_feed_file_is_filtered_by_symbol(tmp_path):
    (tmp_path / "all.jsonl").write_text(json.dumps(
        {"timestamp": "2026-11-24T00:00:00+00:00", "headline": "Upgrade for S0002", "symbols": ["S0002"]}))
    assert (await get_news(FileNewsProvider(tmp_path), "S0001", limit=5, now=NOW))["items"] == []
    assert len((await get_news(FileNewsProvider(tmp_path), "S0002", limit=5, now=NOW))["items"]) == 1


async def test_malformed_news_line_names_file_and_line(tmp_path):
    (tmp_path / "S0001.jsonl").write_text('{"timestamp": "2026-11-24T00:00:00Z", "headline": "ok"}\n{"headline": 1}\n')
    with pytest.raises(ValueError, match=r"S0001\.jsonl:2: bad news item"):
        await get_news(FileNewsProvider(tmp_path), "S0001", limit=5, now=NOW)


def test_sentiment_lists_the_words_that_counted():
    s = score_text("Profit jumps but lawsuit looms")
    assert s.positive == ("profit", "jumps") and s.negative == ("lawsuit",)
    assert s.score == pytest.approx(1 / 3, abs=1e-3)
