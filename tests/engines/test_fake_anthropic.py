"""The fake Anthropic server, proven against the real anthropic SDK (2.13.0) over a real socket."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import anthropic
import pytest
from anthropic import APIRequest, AsyncAnthropic
from anthropic.types import TextBlock, ToolUseBlock

from tests.fakes.anthropic_server import (
    FakeAnthropic,
    count_tokens,
    error,
    overloaded,
    rate_limited,
    reply,
    server_error,
    text,
    tool_use,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "claude-sonnet-4-6"
QUOTE_TOOL = {
    "name": "get_quote",
    "description": "Latest quote for one symbol.",
    "input_schema": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]},
}
TRADE_TOOL = {
    "name": "execute_trade",
    "description": "Place an order.",
    "input_schema": {"type": "object", "properties": {"symbol": {"type": "string"}, "qty": {"type": "integer"}},
                     "required": ["symbol", "qty"]},
}
FAST = 10  # retry-after-ms the fake sends so SDK retries wait 10 ms, not the 0.5-8 s backoff


@pytest.fixture
def fake():
    with FakeAnthropic() as server:
        yield server


def client_for(fake: FakeAnthropic, **kw) -> AsyncAnthropic:
    return AsyncAnthropic(api_key="test-key", base_url=fake.base_url, **kw)


def ask(content: str = "Scan the market.") -> list[dict]:
    return [{"role": "user", "content": content}]


def big_system(words: int = 1200) -> list[dict]:
    """A system prompt well above the 1024-token minimum cacheable prefix, with a breakpoint on it."""
    return [{"type": "text", "text": " ".join(f"rule{i}" for i in range(words)),
             "cache_control": {"type": "ephemeral"}}]


def cached_tools() -> list[dict]:
    return [QUOTE_TOOL, {**TRADE_TOOL, "cache_control": {"type": "ephemeral"}}]


async def test_tool_use_turn_round_trips_into_sdk_objects(fake):
    fake.add_turns(reply(text("Checking AAPL."), tool_use("get_quote", {"symbol": "AAPL"}, id="toolu_01")))
    async with client_for(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=512, messages=ask(), tools=[QUOTE_TOOL])

    assert message.stop_reason == "tool_use"
    assert message.model == MODEL
    assert isinstance(message.content[0], TextBlock)
    block = message.content[1]
    assert isinstance(block, ToolUseBlock)
    assert (block.id, block.name, block.input) == ("toolu_01", "get_quote", {"symbol": "AAPL"})
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    [seen] = fake.message_requests
    # SDK 2.13 sends an api_key as a bearer token, not as x-api-key
    assert seen.headers["authorization"] == "Bearer test-key"
    assert seen.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert seen.retry_count == 0
    assert seen.body["tools"] == [QUOTE_TOOL]
    assert seen.status == 200


async def test_malformed_tool_input_is_delivered_verbatim(fake):
    fake.add_turns(reply(tool_use("execute_trade", {"symbol": 7, "qty": "lots"})))
    async with client_for(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=512, messages=ask(), tools=[TRADE_TOOL])
    assert message.content[0].input == {"symbol": 7, "qty": "lots"}
    assert message.content[0].id.startswith("toolu_")


async def test_429_with_retry_after_is_retried_after_that_wait(fake):
    fake.add_turns(rate_limited(retry_after=1), reply(text("ok")))
    async with client_for(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=ask())

    assert message.content[0].text == "ok"
    first, second = fake.message_requests
    assert (first.status, second.status) == (429, 200)
    assert (first.retry_count, second.retry_count) == (0, 1)
    assert second.at - first.at >= 0.9  # the SDK honoured retry-after: 1


async def test_529_overloaded_is_retried_until_success(fake):
    fake.add_turns(overloaded(retry_after_ms=FAST), overloaded(retry_after_ms=FAST), reply(text("ok")))
    async with client_for(fake, max_retries=2) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=ask())

    assert message.content[0].text == "ok"
    assert [r.status for r in fake.message_requests] == [529, 529, 200]
    assert [r.retry_count for r in fake.message_requests] == [0, 1, 2]


async def test_exhausted_retries_raise_the_typed_error(fake):
    fake.add_turns(*[rate_limited(retry_after_ms=FAST)] * 2)
    async with client_for(fake, max_retries=1) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert caught.value.status_code == 429 and caught.value.type == "rate_limit_error"
    assert len(fake.message_requests) == 2

    fake.add_turns(*[overloaded(retry_after_ms=FAST)] * 2)
    async with client_for(fake, max_retries=1) as client:
        with pytest.raises(anthropic.OverloadedError) as overload:
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert isinstance(overload.value, anthropic.InternalServerError)  # OverloadedError subclasses it in 2.13
    assert overload.value.type == "overloaded_error"

    fake.add_turns(server_error(retry_after_ms=FAST))
    async with client_for(fake, max_retries=0) as client:
        with pytest.raises(anthropic.InternalServerError) as internal:
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert not isinstance(internal.value, anthropic.OverloadedError)
    assert len(fake.message_requests) == 5


async def test_error_code_in_details_selects_the_finer_error_class(fake):
    fake.add_turns(error(429, "spend limit reached", details={"error_code": "enforced_spend_limit_reached"},
                         should_retry=False))
    async with client_for(fake) as client:
        with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert isinstance(caught.value, anthropic.RateLimitError)
    assert caught.value.error_code == "enforced_spend_limit_reached"
    assert len(fake.message_requests) == 1  # x-should-retry: false beats the 429 retry rule


async def test_cached_tools_and_system_are_written_then_read(fake):
    async with client_for(fake) as client:
        fake.add_turns(reply(text("first")), reply(text("second")))
        first = await client.messages.create(model=MODEL, max_tokens=64, tools=cached_tools(), system=big_system(),
                                             messages=ask("Scan."))
        second = await client.messages.create(model=MODEL, max_tokens=64, tools=cached_tools(),
                                              system=big_system(), messages=ask("Scan again, please."))

    assert first.usage.cache_creation_input_tokens > 1024
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    # only the new user message is plain input; the totals are the whole prompt either way
    assert second.usage.input_tokens == count_tokens({"role": "user", "block": text("Scan again, please.")})
    assert first.usage.input_tokens == count_tokens({"role": "user", "block": text("Scan.")})


async def test_prefix_below_the_minimum_is_not_cached(fake):
    fake.add_turns("a", "b")
    async with client_for(fake) as client:
        for _ in range(2):
            message = await client.messages.create(model=MODEL, max_tokens=64, tools=cached_tools(),
                                                   system=big_system(words=20), messages=ask())
            assert message.usage.cache_creation_input_tokens == 0
            assert message.usage.cache_read_input_tokens == 0


async def test_growing_conversation_reads_the_previous_breakpoint_and_writes_the_new_one(fake):
    """A moving breakpoint on the newest message: the API's lookback finds the last turn's entry."""
    system = big_system()
    turn1 = [{"role": "user", "content": [{"type": "text", "text": "Scan.", "cache_control": {"type": "ephemeral"}}]}]
    turn2 = [{"role": "user", "content": [{"type": "text", "text": "Scan."}]},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_a", "name": "get_quote",
                                                "input": {"symbol": "AAPL"}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "187.20",
                                           "cache_control": {"type": "ephemeral"}}]}]
    fake.add_turns("a", "b")
    async with client_for(fake) as client:
        one = await client.messages.create(model=MODEL, max_tokens=64, tools=[QUOTE_TOOL], system=system,
                                           messages=turn1)
        two = await client.messages.create(model=MODEL, max_tokens=64, tools=[QUOTE_TOOL], system=system,
                                           messages=turn2)
    prompt1 = one.usage.input_tokens + one.usage.cache_creation_input_tokens
    assert one.usage.input_tokens == 0 and one.usage.cache_read_input_tokens == 0
    assert two.usage.cache_read_input_tokens == prompt1
    assert two.usage.cache_creation_input_tokens > 0 and two.usage.input_tokens == 0


def test_cache_entries_expire_after_their_ttl():
    now = [0.0]
    body = {"model": MODEL, "max_tokens": 64, "system": big_system(), "messages": ask()}
    with FakeAnthropic(default="ok", clock=lambda: now[0]) as fake:
        with anthropic.Anthropic(api_key="k", base_url=fake.base_url) as client:  # the sync client works too
            usage = [client.messages.create(**body).usage]
            now[0] += 299
            usage.append(client.messages.create(**body).usage)  # a hit refreshes the 5-minute TTL
            now[0] += 299
            usage.append(client.messages.create(**body).usage)
            now[0] += 301
            usage.append(client.messages.create(**body).usage)
    assert [u.cache_read_input_tokens > 0 for u in usage] == [False, True, True, False]
    assert [u.cache_creation_input_tokens > 0 for u in usage] == [True, False, False, True]


@pytest.mark.parametrize("messages, fragment", [
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}]}],
     "unexpected `tool_use_id`"),
    ([{"role": "user", "content": "hi"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_y", "name": "get_quote", "input": {}}]},
      {"role": "user", "content": "no result"}],
     "without `tool_result` blocks"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
    ([{"role": "assistant", "content": "a"}], "first message"),
    ([], "at least one message"),
])
async def test_invalid_conversation_is_a_400_bad_request(fake, messages, fragment):
    fake.add_turns("never sent")
    async with client_for(fake) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=messages, tools=[QUOTE_TOOL])
    assert fragment in caught.value.message
    assert caught.value.type == "invalid_request_error"
    assert len(fake.message_requests) == 1  # a 400 is not retried
    assert fake.remaining == 1  # and an invalid request consumes no scripted turn


async def test_request_limits_are_checked():
    with FakeAnthropic(models=[MODEL]) as fake:
        async with client_for(fake) as client:
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.create(model="claude-nope", max_tokens=64, messages=ask())
            with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
                await client.messages.create(model=MODEL, max_tokens=0, messages=ask())
            too_many = [{**big_system(10)[0]} for _ in range(5)]
            with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
                await client.messages.create(model=MODEL, max_tokens=64, system=too_many, messages=ask())


async def test_script_exhaustion_is_a_loud_unretried_500(fake):
    async with client_for(fake) as client:
        with pytest.raises(anthropic.InternalServerError, match="no turn left"):
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert len(fake.message_requests) == 1


async def test_callable_turn_adapts_to_the_request(fake):
    def answer(request: dict) -> dict:
        result = request["messages"][-1]["content"][0]
        if result.get("is_error"):
            return error(500, "should not happen")
        return reply(text(f"quote was {result['content']}"))

    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_q", "name": "get_quote",
                                                  "input": {"symbol": "AAPL"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_q", "content": "187.20"}]}]
    fake.add_turns(answer)
    async with client_for(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=history, tools=[QUOTE_TOOL])
    assert message.content[0].text == "quote was 187.20"


async def test_middleware_sees_every_attempt_and_the_usage(fake):
    attempts: list[tuple[int, int]] = []
    usages = []

    async def meter(request: APIRequest, call_next):
        response = await call_next(request)  # one HTTP attempt; error statuses come back too, not raised
        attempts.append((request.retries_taken, response.status_code))
        if response.status_code == 200 and request.url == "/v1/messages":
            usages.append((await response.parse()).usage)  # parse() is cached; the caller gets the same object
        return response

    fake.add_turns(overloaded(retry_after_ms=FAST), rate_limited(retry_after_ms=FAST), reply(text("ok")))
    async with client_for(fake, middleware=[meter]) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=ask())

    assert attempts == [(0, 529), (1, 429), (2, 200)]
    assert usages == [message.usage]


async def test_middleware_can_refuse_a_call_before_it_is_sent(fake):
    class BudgetExhausted(Exception):
        pass

    async def budget_guard(request: APIRequest, call_next):
        raise BudgetExhausted(f"no budget for {request.json['model']}")

    fake.add_turns("never")
    async with client_for(fake, middleware=[budget_guard]) as client:
        with pytest.raises(BudgetExhausted):  # propagates as-is, and is not retried
            await client.messages.create(model=MODEL, max_tokens=64, messages=ask())
    assert fake.message_requests == []


async def test_streaming_reply_assembles_into_the_same_message(fake):
    fake.add_turns(reply(text("Buying."), tool_use("execute_trade", {"symbol": "AAPL", "qty": 10})))
    async with client_for(fake) as client:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=ask(), tools=[TRADE_TOOL]) as stream:
            message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert message.content[0].text == "Buying."
    assert message.content[1].input == {"symbol": "AAPL", "qty": 10}
    assert message.usage.output_tokens > 1


async def test_beta_tool_runner_falls_back_unthreaded_and_reports_bad_input_as_tool_error(fake):
    calls = []

    @anthropic.beta_async_tool
    async def get_quote(symbol: str) -> str:
        """Latest quote for one symbol."""
        calls.append(symbol)
        return "187.20"

    fake.add_turns(reply(tool_use("get_quote", {"symbol": 5})), reply(tool_use("get_quote", {"symbol": "AAPL"})),
                   reply(text("done")))
    async with client_for(fake) as client:
        runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=64, messages=ask(), tools=[get_quote])
        final = await runner.until_done()

    assert final.content[0].text == "done"
    assert calls == ["AAPL"]
    statuses = [r.status for r in fake.message_requests]
    assert statuses == [400, 200, 200, 200]  # the threaded first try is refused, then full history each turn
    bad_result = fake.message_requests[2].body["messages"][2]["content"][0]
    assert bad_result["is_error"] is True
    assert "Invalid arguments" in bad_result["content"]  # the pydantic detail is not passed to the model


def test_runs_in_a_separate_process(tmp_path):
    script = tmp_path / "turns.json"
    script.write_text(json.dumps([{"error": {"status": 529, "type": "overloaded_error", "retry_after_ms": 10}},
                                  reply(tool_use("get_quote", {"symbol": "0700.HK"}))]))
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.anthropic_server", "--port", "0",
                             "--script", str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("FAKE_ANTHROPIC_URL="), line
        base_url = line.split("=", 1)[1]
        with anthropic.Anthropic(api_key="k", base_url=base_url) as client:
            message = client.messages.create(model=MODEL, max_tokens=64, messages=ask(), tools=[QUOTE_TOOL])
        assert message.content[0].input == {"symbol": "0700.HK"}
        with urllib.request.urlopen(f"{base_url}/_fake/requests", timeout=5) as response:
            seen = json.load(response)
        assert [r["status"] for r in seen] == [529, 200]
    finally:
        proc.terminate()
        exit_code = proc.wait(timeout=5)
        proc.stdout.close()
    assert exit_code == 0  # SIGTERM is a clean shutdown
