"""spendb.litellm.SpendbBudget in a real LiteLLM proxy process (started here,
on 127.0.0.1, offline: its models answer with `mock_response`, its cost map
is the local copy). The hook is loaded from the package by the proxy's own
`callbacks:` setting."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from conftest import Server

import spendb
from spendb import Limit
from spendb.litellm import render_scope

CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-fake
      mock_response: "Hello from the mock model, well within budget."
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: sk-fake
      mock_response: litellm.ContextWindowExceededError
litellm_settings:
  callbacks: spendb.litellm.budget
  num_retries: 0
"""


@dataclass
class Proxy:
    url: str
    org: str  # every call's scope (the template's only segment)
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(server: Server) -> Iterator[Proxy]:
    litellm_cli = Path(sys.executable).parent / "litellm"
    if not litellm_cli.exists():
        pytest.fail(f"{litellm_cli} is missing: install litellm[proxy]<1.100 (scripts/test does)")
    work = Path(tempfile.mkdtemp(prefix="spendb-litellm-"))
    (work / "config.yaml").write_text(CONFIG)
    org = f"org:llm{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "SPENDB_URL": server.url,
        "SPENDB_SCOPE_TEMPLATE": f"{org}/user:{{end_user}}",
        "SPENDB_LOOP_GUARD": "1",
        "NO_PROXY": "*",
    }
    log = work / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(litellm_cli),
                "--config",
                str(work / "config.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the LiteLLM proxy did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        yield Proxy(url, org, log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def settled(client: spendb.Client, scope: str) -> spendb.Balance:
    """BALANCE once no hold is open (LiteLLM logs success after it answers)."""
    deadline = time.monotonic() + 30
    while True:
        bal = client.balance(scope)
        if bal.open_holds == 0 or time.monotonic() > deadline:
            return bal
        time.sleep(0.1)


def test_fifty_concurrent_calls_against_a_budget_of_twenty(
    proxy: Proxy, client: spendb.Client
) -> None:
    scope = f"{proxy.org}/user:crowd"  # the template's scope for requests with user "crowd"
    client.set_budget(scope, [Limit("REQUESTS", 20, "PER DAY")])

    async def call(http: httpx.AsyncClient, i: int) -> httpx.Response:
        return await http.post(
            f"{proxy.url}/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": f"Request {i}: say hello."}],
                "max_tokens": 50,
                "user": "crowd",
            },
        )

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(call(http, i) for i in range(50)))

    replies = asyncio.run(all_at_once())
    ok = [r for r in replies if r.status_code == 200]
    denied = [r for r in replies if r.status_code == 429]
    assert (len(ok), len(denied)) == (20, 30), [r.status_code for r in replies]
    assert "spendb: budget exceeded" in denied[0].text and "REQUESTS PER DAY" in denied[0].text
    body = denied[0].json()["error"]
    assert body["code"] == "429"
    # Denied while other holds were open (`held`, until the first expires)
    # or once 20 were committed (`used`, until the UTC day ends).
    assert body["provider_specific_fields"]["reason"] in ("held", "used")
    retry_after_ms = body["provider_specific_fields"]["retry_after_ms"]
    assert 0 < retry_after_ms <= 86_400_000
    assert int(denied[0].headers["retry-after"]) == -(-retry_after_ms // 1000)

    bal = settled(client, scope)
    assert bal.open_holds == 0
    assert bal.held.tokens == 0
    usage = [r.json()["usage"] for r in ok]
    assert bal.spent.requests == 20
    assert bal.spent.input == sum(u["prompt_tokens"] for u in usage)
    assert bal.spent.output == sum(u["completion_tokens"] for u in usage)
    assert bal.spent.tokens == sum(u["total_tokens"] for u in usage)
    # LiteLLM's own cost for each call (its local cost map) against spendb's price table.
    litellm_cost = sum(Decimal(r.headers["x-litellm-response-cost"]) for r in ok)
    assert abs(bal.spent.cost - litellm_cost) < Decimal("0.000001"), (bal.spent.cost, litellm_cost)


def test_a_failed_call_releases_its_hold(proxy: Proxy, client: spendb.Client) -> None:
    scope = f"{proxy.org}/user:failing"
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "user": "failing",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
        },
        timeout=60,
    )
    assert r.status_code >= 400 and r.status_code != 429, r.text
    bal = settled(client, scope)
    assert (bal.open_holds, bal.spent.requests, bal.held.requests) == (0, 0, 0)


def test_the_loop_guard_per_trace_id(proxy: Proxy, client: spendb.Client) -> None:
    trace = f"trace-{uuid.uuid4().hex[:8]}"
    body = {
        "model": "gpt-4o",
        "user": "looper",
        "max_tokens": 10,
        "litellm_trace_id": trace,
        "messages": [{"role": "user", "content": "call the same tool again"}],
    }
    codes = [
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=60).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    last = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=60)
    assert "loop guard" in last.text and "repeated" in last.text
    bal = settled(client, f"{proxy.org}/user:looper")
    assert (bal.spent.requests, bal.loop_denials) == (2, 2)


def test_scope_template() -> None:
    template = "litellm/org:{org_id}/team:{team_id}/user:{user_id}/key:{key_alias}"
    assert render_scope(template, {}) == "litellm"
    assert render_scope(template, {"team_id": "search", "key_alias": "ci bot"}) == (
        "litellm/team:search/key:ci_bot"
    )
    assert render_scope("org:{org_id}", {"org_id": "a/b"}) == "org:a_b"
