"""A deterministic stand-in for the model's judgement, for the fake Anthropic API (tests and benches).

It answers each request from what the request holds, like a cautious trader following a script:
  scan:  scan_market(limit 3), then a one-line summary.
  trade: get_portfolio; scan_market(limit 3) when fewer than 3 positions are held; execute_trade (market,
         value 9000) on the first candidate not held, not entered today and not refused before; then a summary.
  close: get_portfolio, then a summary.
The same request always gets the same answer, so two runs over the same history place the same orders.
"""
from __future__ import annotations

import json
from typing import Any

from tests.fakes.anthropic_server import reply, tool_use


def _last_results(body: dict[str, Any]) -> dict[str, Any]:
    """{tool name: parsed result} of the newest user turn's tool results (matched to the assistant's calls)."""
    messages = body["messages"]
    if len(messages) < 2 or not isinstance(messages[-1]["content"], list):
        return {}
    calls = {b["id"]: b["name"] for b in messages[-2]["content"] if b.get("type") == "tool_use"}
    out = {}
    for block in messages[-1]["content"]:
        if block.get("type") == "tool_result":
            content = block["content"]
            text = content if isinstance(content, str) else "".join(c.get("text", "") for c in content)
            try:
                out[calls.get(block["tool_use_id"], "?")] = json.loads(text)
            except ValueError:
                out[calls.get(block["tool_use_id"], "?")] = {"error": text}
    return out


def _mode(body: dict[str, Any]) -> str:
    system = "".join(b.get("text", "") for b in body.get("system", []) if isinstance(b, dict))
    task = system[system.rfind("Task:"):]
    return "scan" if "Pre-market scan" in task else "close" if "End-of-day" in task else "trade"


def _asked(body: dict[str, Any]) -> list[str]:
    return [b["name"] for m in body["messages"] if m["role"] == "assistant" for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "tool_use"]


def policy(body: dict[str, Any]) -> dict[str, Any]:
    mode, asked, results = _mode(body), _asked(body), _last_results(body)
    if mode == "scan":
        return reply(tool_use("scan_market", {"limit": 3})) if not asked else reply("Scan reviewed.")
    if not asked:
        return reply(tool_use("get_portfolio", {}))
    if mode == "close":
        return reply("Day reviewed; positions held overnight within limits.")
    if "get_portfolio" in results:
        portfolio = results["get_portfolio"]
        if portfolio.get("trading_state") != "ACTIVE" or len(portfolio.get("positions", [])) >= 3:
            return reply("No new entries this cycle.")
        return reply(tool_use("scan_market", {"limit": 3}))
    if "scan_market" in results:
        portfolio = next((json.loads(b["content"]) for m in body["messages"] if m["role"] == "user"
                          and isinstance(m["content"], list) for b in m["content"]
                          if b.get("type") == "tool_result" and '"trading_state"' in str(b.get("content"))), {})
        held = {p["symbol"] for p in portfolio.get("positions", [])} | set(portfolio.get("entries_today", []))
        for c in results["scan_market"].get("candidates", []):
            if c["symbol"] not in held:
                return reply(tool_use("execute_trade", {"symbol": c["symbol"], "value": 9000, "order_type": "market",
                                                        "reasoning": f"scan rank {c['rank']}, score {c['score']}"}))
        return reply("Nothing new worth entering.")
    return reply("Cycle done.")
