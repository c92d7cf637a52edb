"""spendb.anthropic.wrap with the real anthropic SDK against a local fake of
the Messages API: cache reads and writes are committed as CACHED and
CACHEWRITE, streams are committed from their events, errors release."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import pytest
from fake_llm import ANTHROPIC_OUTPUT, ANTHROPIC_START_USAGE, FakeLLM

import spendb
import spendb.anthropic
from spendb import Limit
from spendb.aio import AsyncClient

MODEL = "claude-sonnet-4-5"
SYSTEM = [
    {"type": "text", "text": "A long cached system prompt.", "cache_control": {"type": "ephemeral"}}
]
MESSAGES = [{"role": "user", "content": "Say hello."}]
READ = int(str(ANTHROPIC_START_USAGE["cache_read_input_tokens"]))
WRITE = int(str(ANTHROPIC_START_USAGE["cache_creation_input_tokens"]))
FRESH = int(str(ANTHROPIC_START_USAGE["input_tokens"]))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM()
    yield f
    f.stop()


def sdk(fake: FakeLLM) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)


def expected_cost(price: spendb.Price) -> Decimal:
    return (
        FRESH * price.input
        + READ * price.cached
        + WRITE * price.cachewrite
        + ANTHROPIC_OUTPUT * price.output
    ) / 10**6


def test_message_with_cache_tokens(client: spendb.Client, scope: str, fake: FakeLLM) -> None:
    client.set_budget(scope, [Limit("TOKENS", 100_000, "PER DAY")])
    llm = spendb.anthropic.wrap(sdk(fake), client, scope=scope)
    msg = llm.messages.create(model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=1024)
    assert isinstance(msg, anthropic.types.Message)
    assert msg.usage.cache_read_input_tokens == READ
    sent = fake.requests[-1]
    assert (sent["path"], sent["model"], sent["max_tokens"]) == ("/v1/messages", MODEL, 1024)
    bal = client.balance(scope)
    # Anthropic's input_tokens leaves out the cache reads and writes; spendb's INPUT has them.
    assert (bal.spent.input, bal.spent.output, bal.open_holds) == (
        FRESH + READ + WRITE,
        ANTHROPIC_OUTPUT,
        0,
    )
    assert bal.spent.cost == expected_cost(client.get_price(MODEL))


def test_stream_is_committed_from_its_events(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    llm = spendb.anthropic.wrap(sdk(fake), client, scope=scope)
    stream = llm.messages.create(
        model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=1024, stream=True
    )
    kinds = [e.type for e in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    bal = client.balance(scope)
    assert (bal.spent.input, bal.spent.output, bal.open_holds) == (
        FRESH + READ + WRITE,
        ANTHROPIC_OUTPUT,
        0,
    )


def test_a_stream_cut_short_commits_what_it_reported(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    llm = spendb.anthropic.wrap(sdk(fake), client, scope=scope)
    with llm.messages.create(
        model=MODEL, messages=MESSAGES, max_tokens=1024, stream=True
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    bal = client.balance(scope)
    # message_start reported the input and one output token; the hold's
    # input (the prompt as counted) is smaller, so the report stands.
    assert (bal.spent.input, bal.spent.output, bal.open_holds) == (FRESH + READ + WRITE, 1, 0)


def test_errors_release_and_denials_send_nothing(
    client: spendb.Client, scope: str, fake: FakeLLM
) -> None:
    llm = spendb.anthropic.wrap(sdk(fake), client, scope=scope)
    with pytest.raises(anthropic.BadRequestError):
        llm.messages.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, extra_headers={"x-fake-fail": "1"}
        )
    assert client.balance(scope).open_holds == 0
    client.set_budget(scope, [Limit("OUTPUT", 100, "PER DAY")])
    before = len(fake.requests)
    with pytest.raises(spendb.BudgetExceeded):
        llm.messages.create(model=MODEL, messages=MESSAGES, max_tokens=1024)
    assert len(fake.requests) == before


async def test_async_anthropic(aclient: AsyncClient, scope: str, fake: FakeLLM) -> None:
    llm = spendb.anthropic.wrap(
        anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="k", max_retries=0),
        aclient,
        scope=scope,
        fallback=["claude-haiku-4-5"],
    )
    msg = await llm.messages.create(model=MODEL, messages=MESSAGES, max_tokens=64)
    assert msg.usage.output_tokens == ANTHROPIC_OUTPUT
    stream = await llm.messages.create(model=MODEL, messages=MESSAGES, max_tokens=64, stream=True)
    assert [e.type async for e in stream][-1] == "message_stop"
    bal = await aclient.balance(scope)
    assert (bal.spent.requests, bal.spent.output, bal.open_holds) == (2, 2 * ANTHROPIC_OUTPUT, 0)
