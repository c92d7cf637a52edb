"""The sync client against a real spendb: every typed reply, the reserve
idiom, denials and waiting, exactly-once after a lost reply, errors by code,
the cache helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import LossyProxy, Server, start_server

import spendb
import spendb.aio
from spendb import Limit


def test_every_reply_is_typed(client: spendb.Client, scope: str) -> None:
    assert client.ping() is True
    client.set_budget(
        scope,
        [Limit("TOKENS", 10_000, "PER DAY"), Limit("REQUESTS", 5, "ROLLING 1m")],
    )
    budget = client.get_budget(scope)
    assert budget.scope == scope
    assert [(x.dim, x.window, x.limit, x.used) for x in budget.limits] == [
        ("TOKENS", "PER DAY", 10_000, 0),
        ("REQUESTS", "ROLLING 1m", 5, 0),
    ]
    assert budget.limits[0].resets_at is not None
    assert scope in client.list_budgets(scope)

    grant = client.try_reserve(f"{scope}/agent:a", "gpt-4o", input=100, max_output=50)
    assert isinstance(grant, spendb.Grant)
    assert (grant.tokens, grant.output, grant.output_from, grant.model) == (
        150,
        50,
        "given",
        "gpt-4o",
    )
    assert grant.cost == Decimal("0.00075")  # 100 × $2.5/M + 50 × $10/M
    info = client.get_hold(grant.hold)
    assert (info.status, info.scope, info.input, info.output, info.ended_at) == (
        "open",
        f"{scope}/agent:a",
        100,
        50,
        None,
    )
    done = client.commit(grant.hold, 80, 20, cached=40)
    assert isinstance(done, spendb.Committed)
    assert (done.tokens, done.released_tokens, done.overrun_tokens, done.late) == (
        100,
        50,
        0,
        False,
    )
    assert done.cost == Decimal("0.00035")  # 40 × 2.5 + 40 × 1.25 + 20 × 10, per M
    info = client.get_hold(grant.hold)
    assert (info.status, info.actual_tokens, info.actual_cost, info.late) == (
        "committed",
        100,
        Decimal("0.00035"),
        False,
    )

    denied = client.try_reserve(scope, "gpt-4o", input=20_000, max_output=1)
    assert isinstance(denied, spendb.Denied)
    assert (denied.scope, denied.limit, denied.reason, denied.remaining) == (
        scope,
        "TOKENS PER DAY",
        "limit",
        9_900,
    )
    assert denied.retry_after is None

    second = client.try_reserve(scope, "gpt-4o", input=10, max_output=10)
    assert isinstance(second, spendb.Grant)
    released = client.release(second.hold)
    assert (released.status, released.released_tokens) == ("released", 20)

    spent = client.spend(scope, "gpt-4o", spendb.Usage(input=10, output=5), id="s-1")
    assert (spent.id, spent.tokens) == ("s-1", 15)

    bal = client.balance(f"{scope}/agent:a")
    assert (bal.spent.tokens, bal.spent.requests, bal.open_holds, bal.held.tokens) == (
        100,
        1,
        0,
        0,
    )
    assert [limit.scope for limit in bal.limits] == [scope, scope]
    assert bal.saved == Decimal(0)

    step = client.step(f"run-{scope}", "tool:search", scope=scope)
    assert (step.allowed, step.steps, step.remaining, step.repeats) == (True, 1, 99, 1)
    ended = client.end_run(f"run-{scope}", "success")
    assert (ended.steps, ended.outcome) == (1, "success")

    count = client.count("gpt-4o", "hello world")
    assert (count.tokens, count.encoding, count.estimate) == (2, "o200k_base", False)
    assert client.count("claude-sonnet-4", "hello").estimate is True
    cut = client.truncate("gpt-4o", "hello world", 1)
    assert (cut.text, cut.tokens, cut.truncated) == ("hello", 1, True)

    client.set_price(f"m-{scope}", input="1.5", output=6, max_output=1000)
    price = client.get_price(f"m-{scope}")
    assert (price.input, price.output, price.cached, price.max_output) == (
        Decimal("1.5"),
        Decimal(6),
        Decimal("1.5"),
        1000,
    )
    assert f"m-{scope}" in [p.model for p in client.list_prices()]

    assert client.delete_budget(scope) is True
    assert client.delete_budget(scope) is False


def test_expired_holds(client: spendb.Client, scope: str) -> None:
    a = client.try_reserve(scope, "gpt-4o", input=10, max_output=10, ttl_ms=50)
    b = client.try_reserve(scope, "gpt-4o", input=10, max_output=10, ttl_ms=50)
    assert isinstance(a, spendb.Grant) and isinstance(b, spendb.Grant)
    deadline = time.monotonic() + 10
    while client.get_hold(a.hold).status != "expired" and time.monotonic() < deadline:
        time.sleep(0.05)
    released = client.release(a.hold)
    assert (released.status, released.released_tokens) == ("expired", 0)
    late = client.commit(b.hold, 10, 3)
    assert (late.late, late.tokens, late.released_tokens) == (True, 13, 0)
    info = client.get_hold(b.hold)
    assert (info.status, info.late, info.ended_at is not None) == ("committed", True, True)


def test_resp2_gives_the_same_types(server: Server, scope: str) -> None:
    with spendb.connect(server.url, protocol=2) as c2:
        c2.set_budget(scope, [Limit("COST", "1.50", "PER MONTH TZ Europe/Berlin")])
        limit = c2.get_budget(scope).limits[0]
        assert (limit.dim, limit.window, limit.limit) == (
            "COST",
            "PER MONTH TZ Europe/Berlin",
            Decimal("1.5"),
        )
        with c2.reserve(scope, "gpt-4o", input=1000, max_output=100) as hold:
            hold.commit(1000, 10)
        bal = c2.balance(scope)
        assert bal.spent.cost == Decimal("0.0026")
        assert bal.limits[0].used == Decimal("0.0026")


def test_a_unix_socket_url_reaches_the_same_server(tmp_path: Path) -> None:
    """spendb --unixsocket, reached with a unix:// URL, sync and async."""
    sock = tmp_path / "spendb.sock"
    s = start_server("--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        with spendb.connect(f"unix://{sock}") as c:
            c.set_budget("org:unix", [Limit("TOKENS", 1000, "PER DAY")])
            with c.reserve("org:unix", "gpt-4o", input=300, max_output=100) as hold:
                hold.commit(300, 50)

        async def over_async() -> int:
            a = spendb.aio.connect(f"unix://{sock}")
            try:
                return (await a.balance("org:unix")).spent.tokens
            finally:
                await a.aclose()

        assert asyncio.run(over_async()) == 350
        # The TCP port sees the same engine.
        with spendb.connect(s.url) as tcp:
            assert tcp.balance("org:unix").spent.tokens == 350
    finally:
        s.stop()


def test_reserve_commits_usage_from_a_response(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("TOKENS", 100_000, "PER DAY")])
    response = {  # an OpenAI chat completion's JSON body
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }
    with client.reserve(scope, "gpt-4o", text="Say hi " * 20, max_output=800) as hold:
        assert len(hold.id) == 36 and hold.id[14] == "7"  # a UUIDv7
        assert hold.grant.tokens > 800
        done = hold.commit_usage(response)
    assert done.tokens == 150
    assert client.get_hold(hold.id).status == "committed"
    assert client.balance(scope).spent.tokens == 150


def test_leaving_without_commit_releases(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    with client.reserve(scope, "gpt-4o", input=100, max_output=100) as hold:
        assert client.balance(scope).held.tokens == 200
    assert client.get_hold(hold.id).status == "released"
    assert client.balance(scope).held.tokens == 0


def test_an_exception_releases_and_propagates(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    with (
        pytest.raises(RuntimeError, match="provider down"),
        client.reserve(scope, "gpt-4o", input=100, max_output=100) as hold,
    ):
        raise RuntimeError("provider down")
    assert client.get_hold(hold.id).status == "released"
    assert client.balance(scope).open_holds == 0


def test_denial_raises_budget_exceeded(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    with client.reserve(scope, "gpt-4o", input=600, max_output=100):
        with (
            pytest.raises(spendb.BudgetExceeded) as denied,
            client.reserve(scope, "gpt-4o", input=300, max_output=100),
        ):
            pytest.fail("the second hold does not fit")
        d = denied.value.denied
        assert (d.reason, d.limit, d.remaining, d.held) == ("held", "TOKENS PER DAY", 300, 700)
        assert d.retry_after is not None and d.retry_after > 500  # the first hold's TTL
    assert client.balance(scope).open_holds == 0


def test_wait_sleeps_retry_after_then_holds(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("REQUESTS", 1, "ROLLING 2s")])
    client.try_reserve(scope, "gpt-4o", input=1, max_output=1)
    started = time.monotonic()
    with client.reserve(scope, "gpt-4o", input=1, max_output=1, wait=True, wait_max=10) as hold:
        waited = time.monotonic() - started
        hold.commit(1, 1)
    # The first request leaves the 2 s window after 2 s (resolution 1/60).
    assert 1.8 <= waited < 10
    # Not waiting, or waiting less than retry_after: BudgetExceeded at once.
    with (
        pytest.raises(spendb.BudgetExceeded),
        client.reserve(scope, "gpt-4o", input=1, max_output=1),
    ):
        pass
    with (
        pytest.raises(spendb.BudgetExceeded),
        client.reserve(scope, "gpt-4o", input=1, max_output=1, wait=True, wait_max=0.5),
    ):
        pass


def test_wait_gives_up_at_once_when_only_a_larger_limit_helps(
    client: spendb.Client, scope: str
) -> None:
    client.set_budget(scope, [Limit("TOKENS", 100, "PER DAY")])
    started = time.monotonic()
    with (
        pytest.raises(spendb.BudgetExceeded) as denied,
        client.reserve(scope, "gpt-4o", input=500, max_output=1, wait=True, wait_max=30),
    ):
        pass
    assert denied.value.denied.reason == "limit"
    assert time.monotonic() - started < 5


def test_a_lost_reply_is_retried_with_the_same_id(
    server: Server, lossy_proxy: LossyProxy, scope: str
) -> None:
    port = lossy_proxy.listener.getsockname()[1]
    client = spendb.connect(f"redis://127.0.0.1:{port}", retry_backoff=0.01)
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    lossy_proxy.drop_replies_to = b"RESERVE"
    with client.reserve(scope, "gpt-4o", input=100, max_output=100) as hold:
        assert lossy_proxy.dropped == 1  # the server granted it; the client never heard
        bal = client.balance(scope)
        assert (bal.open_holds, bal.held.tokens, bal.held.requests) == (1, 200, 1)
        lossy_proxy.drop_replies_to = b"COMMIT"
        hold.commit(100, 50)
    assert lossy_proxy.dropped == 2
    bal = client.balance(scope)
    assert (bal.spent.tokens, bal.spent.requests, bal.open_holds) == (150, 1, 0)
    client.close()


def test_without_retries_a_lost_reply_is_unavailable(
    server: Server, lossy_proxy: LossyProxy, scope: str
) -> None:
    port = lossy_proxy.listener.getsockname()[1]
    client = spendb.connect(f"redis://127.0.0.1:{port}", retries=0)
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    lossy_proxy.drop_replies_to = b"RESERVE"
    with pytest.raises(spendb.Unavailable):
        client.try_reserve(scope, "gpt-4o", input=100, max_output=100, hold_id=f"lost-{scope}")
    # Sending the same id again is the exactly-once retry, by hand.
    again = client.try_reserve(scope, "gpt-4o", input=100, max_output=100, hold_id=f"lost-{scope}")
    assert isinstance(again, spendb.Grant)
    assert client.balance(scope).open_holds == 1
    client.release(again.hold)
    client.close()


def test_step_is_not_retried(server: Server, lossy_proxy: LossyProxy, scope: str) -> None:
    port = lossy_proxy.listener.getsockname()[1]
    client = spendb.connect(f"redis://127.0.0.1:{port}")
    lossy_proxy.drop_replies_to = b"STEP"
    with pytest.raises(spendb.Unavailable):
        client.step(f"r-{scope}", "sig")
    # The step happened once; a retry would have counted it twice.
    assert client.step(f"r-{scope}", "other").steps == 2
    client.close()


def test_errors_by_code(client: spendb.Client, scope: str) -> None:
    with pytest.raises(spendb.NotFound, match="hold nope"):
        client.commit("nope", 1, 1)
    with pytest.raises(spendb.NoPrice):
        client.try_reserve(scope, "no-such-model-xyz", input=1)
    with pytest.raises(spendb.InvalidRequest) as bad:
        client.try_reserve("bad scope", "gpt-4o", input=1)
    assert bad.value.code == "ERR"
    grant = client.try_reserve(scope, "gpt-4o", input=1, max_output=1, hold_id=f"h-{scope}")
    assert isinstance(grant, spendb.Grant)
    with pytest.raises(spendb.AlreadyExists):
        client.try_reserve(scope, "gpt-4o", input=2, max_output=1, hold_id=f"h-{scope}")
    client.release(grant.hold)
    with pytest.raises(spendb.HoldStateError, match="was released"):
        client.commit(grant.hold, 1, 1)
    client.step(f"loop-{scope}", "same tool call")
    client.step(f"loop-{scope}", "same tool call")
    with pytest.raises(spendb.LoopDetected) as loop:
        client.step(f"loop-{scope}", "same tool call")
    assert loop.value.step.reason == "repeated"
    assert isinstance(loop.value, spendb.SpendbError)


def test_auth_errors(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    users.write_text(
        '[users.ops]\npassword = "ops-secret"\ncommands = ["@admin"]\n\n'
        '[users.acme]\npassword = "acme-secret"\ncommands = ["@agent"]\nscopes = ["org:acme"]\n'
    )
    s = start_server("--users", str(users))
    try:
        with pytest.raises(spendb.Unauthorized):
            spendb.connect(s.url).balance("org:acme")
        with pytest.raises(spendb.Unauthorized):
            spendb.connect(s.url, username="acme", password="wrong").balance("org:acme")
        acme = spendb.connect(s.url, username="acme", password="acme-secret")
        assert acme.balance("org:acme").open_holds == 0
        with pytest.raises(spendb.Forbidden):
            acme.balance("org:other")
        with pytest.raises(spendb.Forbidden):
            acme.set_budget("org:acme", [Limit("TOKENS", 1, "PER DAY")])
        acme.close()
    finally:
        s.stop()


def test_stream_commits_the_final_usage(client: spendb.Client, scope: str) -> None:
    chunks: list[dict[str, Any]] = [
        {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}}]},
        {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "!"}}]},
        {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2},
        },
    ]
    with client.reserve(scope, "gpt-4o", input=12, max_output=100) as hold:
        text = "".join(
            c["choices"][0]["delta"]["content"] for c in hold.stream(chunks) if c["choices"]
        )
    assert text == "Hi!"
    assert isinstance(hold.settled, spendb.Committed) and hold.settled.tokens == 14


def test_a_stream_cut_short_is_charged_the_hold(client: spendb.Client, scope: str) -> None:
    chunks = [{"object": "chat.completion.chunk", "choices": [{"delta": {"content": "x"}}]}] * 5
    with client.reserve(scope, "gpt-4o", input=12, max_output=100) as hold:
        for _ in hold.stream(chunks):
            break  # the reader stops early: no usage ever arrives
    assert isinstance(hold.settled, spendb.Committed)
    assert hold.settled.tokens == 112  # input and output as held


def test_cached_context_books_savings(client: spendb.Client, scope: str) -> None:
    ns = f"ns-{scope[6:]}"
    with client.cached(ns, ["gpt-4o", "What is 2+2?"], cost="0.002", scope=scope) as entry:
        assert not entry.hit
        entry.set("4")
    with client.cached(ns, ["gpt-4o", "What is 2+2?"], cost="0.002", scope=scope) as entry:
        assert entry.hit and entry.value == b"4"
    assert client.balance(scope).saved == Decimal("0.002")
    stats = client.cache_stats(ns)
    assert (stats.hits, stats.misses, stats.entries, stats.saved) == (1, 1, 1, Decimal("0.002"))
    assert stats.hit_rate == 0.5


def test_cached_decorator(client: spendb.Client, scope: str) -> None:
    ns = f"dec-{scope[6:]}"
    calls: list[str] = []

    @client.cached(ns, ttl_ms=60_000, cost=lambda r: "0.01", scope=scope)
    def answer(question: str) -> dict[str, str]:
        calls.append(question)
        return {"answer": question.upper()}

    assert answer("a") == {"answer": "A"}
    assert answer("a") == {"answer": "A"}
    assert answer("b") == {"answer": "B"}
    assert calls == ["a", "b"]
    assert client.balance(scope).saved == Decimal("0.01")
    assert client.cache_delete(ns, "missing") is False


def test_concurrent_threads_never_overspend(client: spendb.Client, scope: str) -> None:
    client.set_budget(scope, [Limit("TOKENS", 1000, "PER DAY")])
    outcomes: list[str] = []

    def agent() -> None:
        try:
            with client.reserve(scope, "gpt-4o", input=50, max_output=50) as hold:
                time.sleep(0.05)
                hold.commit(50, 50)
                outcomes.append("ok")
        except spendb.BudgetExceeded:
            outcomes.append("denied")

    threads = [threading.Thread(target=agent) for _ in range(30)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert outcomes.count("ok") == 10 and outcomes.count("denied") == 20
    assert client.balance(scope).spent.tokens == 1000


def letters(text: str) -> list[float]:
    """A toy embedding: letter counts (near-duplicates of a text are near)."""
    v = [0.0] * 26
    for ch in text.lower():
        if "a" <= ch <= "z":
            v[ord(ch) - 97] += 1
    return v


def test_semantic_cache(client: spendb.Client, scope: str) -> None:
    ns = f"sem-{scope[6:]}"
    answers = client.semantic_cache(ns, embed=letters, threshold=0.95, cost="0.003", scope=scope)
    assert answers.get("What is the capital of France?") is None
    entry = answers.set("What is the capital of France?", "Paris")
    hit = answers.get("what is the capital of france")  # same letters, other case
    assert hit is not None
    assert (hit.value, hit.key, hit.id) == (b"Paris", "What is the capital of France?", entry)
    assert hit.score == pytest.approx(1.0)
    assert answers.get("Who wrote Hamlet?") is None
    assert client.balance(scope).saved == Decimal("0.003")
    assert client.semantic_config(ns) == spendb.SemanticConfig(threshold=0.9, dimension=26, ef=96)
    client.set_semantic_threshold(ns, 0.5)
    assert client.semantic_config(ns).threshold == 0.5
    client.configure_semantic(ns, ef=48)
    assert client.semantic_config(ns) == spendb.SemanticConfig(threshold=0.5, dimension=26, ef=48)
    with pytest.raises(spendb.InvalidRequest, match="EF must be from 1 to 4096"):
        client.configure_semantic(ns, threshold=0.6, ef=0)
    with pytest.raises(ValueError, match="a threshold, an ef, or both"):
        client.configure_semantic(ns)
    assert client.semantic_config(ns).threshold == 0.5
    near = client.vget(ns, letters("What is the capital of Spain?"), threshold=0.8)
    assert near is not None and 0.8 <= near.score < 1.0
    with pytest.raises(spendb.InvalidRequest, match="EF must be"):
        client.vget(ns, letters("Spain"), ef=5000)
    wide = client.semantic_cache(ns, embed=letters, ef=4096)
    assert wide.ef == 4096
    hit = wide.get("What is the capital of France?")
    assert hit is not None and hit.id == entry
    stats = client.cache_stats(ns)
    assert (stats.semantic_entries, stats.semantic_dimension, stats.semantic_hits) == (1, 26, 3)
    assert stats.semantic_saved == Decimal("0.009")  # every hit, booked to a scope or not
    with pytest.raises(spendb.InvalidRequest, match="dimensions"):
        client.vset(ns, [1.0, 2.0], "x")
    assert client.vdel(ns, entry) is True

    calls: list[str] = []

    @client.semantic_cache(f"{ns}-dec", embed=letters)
    def answer(question: str) -> str:
        calls.append(question)
        return question.upper()

    assert answer("Is it raining?") == "IS IT RAINING?"
    assert answer("is it raining") == "IS IT RAINING?"  # a near duplicate: cached
    assert calls == ["Is it raining?"]
