"""The asyncio client against a real spendb: the same idioms, awaited."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from conftest import LossyProxy, Server

import spendb
from spendb import Limit
from spendb.aio import AsyncClient


async def test_typed_replies(aclient: AsyncClient, scope: str) -> None:
    assert await aclient.ping() is True
    await aclient.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    assert (await aclient.get_budget(scope)).limits[0].limit == 1000
    grant = await aclient.try_reserve(scope, "gpt-4o", input=10, max_output=10)
    assert isinstance(grant, spendb.Grant)
    assert (await aclient.get_hold(grant.hold)).status == "open"
    assert (await aclient.commit(grant.hold, 10, 5)).tokens == 15
    denied = await aclient.try_reserve(scope, "gpt-4o", input=5000, max_output=1)
    assert isinstance(denied, spendb.Denied) and denied.reason == "limit"
    spent = await aclient.spend(scope, "gpt-4o", {"prompt_tokens": 3, "completion_tokens": 2})
    assert spent.tokens == 5 and spent.id is not None
    bal = await aclient.balance(scope)
    assert (bal.spent.tokens, bal.spent.requests) == (20, 2)
    assert (await aclient.count("gpt-4o", "hello world")).tokens == 2
    assert (await aclient.truncate("gpt-4o", "hello world", 1)).text == "hello"
    assert (await aclient.get_price("gpt-4o")).max_output == 16384
    assert (await aclient.step(f"r-{scope}", "s")).steps == 1
    assert (await aclient.end_run(f"r-{scope}")).outcome is None
    assert await aclient.list_budgets(scope) == [scope]
    assert await aclient.delete_budget(scope) is True


async def test_async_with_commits_and_releases(aclient: AsyncClient, scope: str) -> None:
    await aclient.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    async with aclient.reserve(scope, "gpt-4o", text="hello there", max_output=100) as hold:
        await hold.commit_usage({"usage": {"input_tokens": 2, "output_tokens": 40}})
    assert (await aclient.get_hold(hold.id)).status == "committed"
    async with aclient.reserve(scope, "gpt-4o", input=10, max_output=100) as kept:
        pass
    assert (await aclient.get_hold(kept.id)).status == "released"
    with pytest.raises(ValueError, match="boom"):
        async with aclient.reserve(scope, "gpt-4o", input=10, max_output=100) as failed:
            raise ValueError("boom")
    assert (await aclient.get_hold(failed.id)).status == "released"
    assert (await aclient.balance(scope)).spent.tokens == 42


async def test_denial_and_wait(aclient: AsyncClient, scope: str) -> None:
    await aclient.set_budget(scope, [Limit("REQUESTS", 1, "ROLLING 2s")])
    await aclient.try_reserve(scope, "gpt-4o", input=1, max_output=1)
    with pytest.raises(spendb.BudgetExceeded) as denied:
        async with aclient.reserve(scope, "gpt-4o", input=1, max_output=1):
            pass
    assert denied.value.denied.reason == "used"
    started = time.monotonic()
    async with aclient.reserve(scope, "gpt-4o", input=1, max_output=1, wait=True) as hold:
        await hold.release()
    assert time.monotonic() - started >= 1.5


async def test_a_lost_reply_is_retried_with_the_same_id(
    server: Server, lossy_proxy: LossyProxy, scope: str
) -> None:
    port = lossy_proxy.listener.getsockname()[1]
    c = spendb.aio.connect(f"redis://127.0.0.1:{port}", retry_backoff=0.01)
    await c.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    lossy_proxy.drop_replies_to = b"RESERVE"
    async with c.reserve(scope, "gpt-4o", input=100, max_output=100) as hold:
        assert lossy_proxy.dropped == 1
        assert (await c.balance(scope)).held.requests == 1
        await hold.commit(100, 1)
    bal = await c.balance(scope)
    assert (bal.spent.tokens, bal.spent.requests, bal.open_holds) == (101, 1, 0)
    await c.aclose()


async def test_concurrent_tasks_never_overspend(aclient: AsyncClient, scope: str) -> None:
    await aclient.set_budget(scope, [Limit("COST", "0.01", "PER DAY")])
    # Each hold: 1000 × $2.5/M + 100 × $10/M = $0.0035: two fit in $0.01.

    async def agent() -> str:
        try:
            async with aclient.reserve(scope, "gpt-4o", input=1000, max_output=100) as hold:
                await asyncio.sleep(0.05)
                await hold.commit(1000, 100)
                return "ok"
        except spendb.BudgetExceeded:
            return "denied"

    outcomes = await asyncio.gather(*(agent() for _ in range(20)))
    assert outcomes.count("ok") == 2
    assert (await aclient.balance(scope)).spent.cost == Decimal("0.007")


async def test_async_stream_and_cache(aclient: AsyncClient, scope: str) -> None:
    async def events() -> Any:
        yield {
            "type": "message_start",
            "message": {"usage": {"input_tokens": 9, "output_tokens": 1}},
        }
        yield {"type": "content_block_delta", "delta": {"text": "ok"}}
        yield {"type": "message_delta", "usage": {"output_tokens": 7}}

    async with aclient.reserve(scope, "claude-sonnet-4", input=9, max_output=50) as hold:
        seen = [e["type"] async for e in hold.stream(events())]
    assert seen == ["message_start", "content_block_delta", "message_delta"]
    assert isinstance(hold.settled, spendb.Committed) and hold.settled.tokens == 16

    ns = f"a-{scope[6:]}"
    calls = 0

    @aclient.cached(ns, cost="0.5", scope=scope)
    async def answer(q: str) -> str:
        nonlocal calls
        calls += 1
        return q * 2

    assert await answer("x") == "xx"
    assert await answer("x") == "xx"
    assert calls == 1
    async with aclient.cached(ns, "k") as entry:
        assert not entry.hit
        await entry.set(b"v")
    async with aclient.cached(ns, "k") as entry:
        assert entry.value == b"v"
    assert (await aclient.balance(scope)).saved == Decimal("0.5")
    assert (await aclient.cache_stats(ns)).entries == 2


async def test_async_semantic_cache(aclient: AsyncClient, scope: str) -> None:
    async def embed(text: str) -> list[float]:
        return [float(text.count(c)) for c in "aeiou"] + [1.0]

    cache = aclient.semantic_cache(f"as-{scope[6:]}", embed=embed, threshold=0.99)
    await cache.set("banana", "fruit")
    hit = await cache.get("bananas")
    assert hit is not None and hit.value == b"fruit" and hit.key == "banana"
    assert await cache.get("kiwi") is None
    assert (await aclient.cache_stats(f"as-{scope[6:]}")).semantic_misses == 1
    await aclient.configure_semantic(f"as-{scope[6:]}", ef=8)
    assert (await aclient.semantic_config(f"as-{scope[6:]}")).ef == 8
    hit = await aclient.vget(f"as-{scope[6:]}", await embed("banana"), ef=4096)
    assert hit is not None and hit.value == b"fruit"
