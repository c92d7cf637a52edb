"""spendb.openai.wrap with the real openai SDK against a local fake of the
API (tests/fake_llm.py): the call is reserved, made with the granted model,
and committed at the response's usage; errors release; denials send nothing."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from fake_llm import CHAT_CACHED, CHAT_COMPLETION, CHAT_PROMPT, RESPONSES_USAGE, FakeLLM

import spendb
import spendb.openai
from spendb import Limit
from spendb.aio import AsyncClient

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Say hello to the budget."}]},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM()
    yield f
    f.stop()


def sdk(fake: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake.base_url}/v1", api_key="sk-test", max_retries=0)


def chat_cost() -> Decimal:
    # gpt-4o: $2.5/M input, $1.25/M cached input, $10/M output.
    fresh = CHAT_PROMPT - CHAT_CACHED
    return (fresh * Decimal("2.5") + CHAT_CACHED * Decimal("1.25") + CHAT_COMPLETION * 10) / 10**6


def test_chat_completion_is_reserved_and_committed(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    client.set_budget(scope, [Limit("TOKENS", 100_000, "PER DAY")])
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    resp = llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert isinstance(resp, openai.types.chat.ChatCompletion)
    assert resp.choices[0].message.content == "Hello!"
    sent = fake.requests[-1]
    assert (sent["model"], sent["max_tokens"]) == ("gpt-4o", 500)
    assert "spendb_scope" not in sent
    bal = client.balance(scope)
    assert (bal.spent.input, bal.spent.output, bal.spent.requests, bal.open_holds) == (
        1200,
        300,
        1,
        0,
    )
    assert bal.spent.cost == chat_cost()
    # Everything else is the SDK's own client.
    assert llm.base_url == sdk(fake).base_url


def test_chat_stream_asks_for_usage_and_commits_it(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    stream = llm.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_completion_tokens=400, stream=True
    )
    assert client.balance(scope).open_holds == 1
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello!"
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    bal = client.balance(scope)
    assert (bal.spent.tokens, bal.open_holds) == (1500, 0)
    assert stream.hold.settled is not None


def test_a_stream_closed_early_is_charged_the_hold(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    with llm.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=100, stream=True
    ) as stream:
        next(iter(stream))
    bal = client.balance(scope)
    assert bal.open_holds == 0
    held = stream.hold.grant
    assert bal.spent.tokens == held.tokens  # no usage came: the hold is what it cost


def test_responses_api(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    resp = llm.responses.create(
        model="gpt-4o", instructions="Be brief.", input="Hello", max_output_tokens=300
    )
    assert resp.output_text == "Hello!"
    assert fake.requests[-1]["max_output_tokens"] == 300
    stream = llm.responses.create(model="gpt-4o", input="Hello", stream=True)
    kinds = [e.type for e in stream]
    assert kinds == ["response.created", "response.output_text.delta", "response.completed"]
    bal = client.balance(scope)
    assert (bal.spent.input, bal.spent.output, bal.spent.requests, bal.open_holds) == (
        2 * RESPONSES_USAGE["input_tokens"],  # type: ignore[operator]
        2 * RESPONSES_USAGE["output_tokens"],  # type: ignore[operator]
        2,
        0,
    )


def test_an_api_error_releases_the_hold(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    with pytest.raises(openai.BadRequestError):
        llm.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            max_tokens=10,
            extra_headers={"x-fake-fail": "1"},
        )
    bal = client.balance(scope)
    assert (bal.open_holds, bal.spent.requests, bal.held.tokens) == (0, 0, 0)


def test_a_denial_sends_nothing(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    client.set_budget(scope, [Limit("TOKENS", 100, "PER DAY")])
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    before = len(fake.requests)
    with pytest.raises(spendb.BudgetExceeded) as denied:
        llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert denied.value.denied.limit == "TOKENS PER DAY"
    assert len(fake.requests) == before


def test_fallback_and_auto_max_output(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    # $0.002 fits 500 output tokens of gpt-4o-mini ($0.6/M) but not of gpt-4o ($10/M).
    client.set_budget(scope, [Limit("COST", "0.002", "PER DAY")])
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope, fallback=["gpt-4o-mini"])
    llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
    assert fake.requests[-1]["model"] == "gpt-4o-mini"

    other = f"{scope}x"
    client.set_budget(other, [Limit("TOKENS", 2000, "PER DAY")])
    auto = spendb.openai.wrap(sdk(fake), client, scope=other, auto_max_output=True)
    auto.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    given = fake.requests[-1]["max_completion_tokens"]
    prompt = client.count("gpt-4o", spendb.openai.chat_request({"messages": MESSAGES}).text)
    assert given == 2000 - prompt.tokens  # what fits the budget after the prompt


def test_per_call_overrides(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    llm = spendb.openai.wrap(sdk(fake), client, scope=scope)
    llm.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_tokens=5,
        spendb_scope=f"{scope}/agent:b",
        spendb_hold_id=f"call-{scope}",
    )
    assert client.get_hold(f"call-{scope}").scope == f"{scope}/agent:b"
    assert all(not k.startswith("spendb_") for k in fake.requests[-1])


async def test_async_openai(aclient: AsyncClient, scope: str, fake: FakeLLM) -> None:
    llm = spendb.openai.wrap(
        openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="k", max_retries=0),
        aclient,
        scope=scope,
    )
    resp = await llm.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)
    assert resp.usage is not None and resp.usage.total_tokens == 1500
    stream = await llm.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=50, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    with pytest.raises(openai.BadRequestError):
        await llm.responses.create(model="gpt-4o", input="x", extra_headers={"x-fake-fail": "1"})
    bal = await aclient.balance(scope)
    assert (bal.spent.tokens, bal.spent.requests, bal.open_holds) == (3000, 2, 0)


def test_a_sync_sdk_needs_a_sync_spendb(aclient: AsyncClient, scope: str, fake: FakeLLM) -> None:
    with pytest.raises(TypeError, match=r"OpenAI needs a spendb\.Client"):
        spendb.openai.wrap(sdk(fake), aclient, scope=scope)
    with pytest.raises(TypeError, match=r"AsyncOpenAI needs a spendb\.AsyncClient"):
        spendb.openai.wrap(openai.AsyncOpenAI(api_key="k"), spendb.Client(), scope=scope)
