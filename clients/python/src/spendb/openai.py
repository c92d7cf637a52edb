"""The OpenAI SDK, budgeted: `spendb.openai.wrap(OpenAI(), spendb_client, scope=…)`.

The wrapped client's `chat.completions.create` and `responses.create`
reserve before the call (the prompt's text, `max_completion_tokens` /
`max_tokens` / `max_output_tokens`, your FALLBACK models), call with the
granted model, and commit the response's usage; an error releases the hold;
a denial raises `spendb.BudgetExceeded` before anything is sent. Streams are
passed through and committed when they end (chat streams are asked for
their usage with `stream_options={"include_usage": True}`). Everything else
is the SDK's own client, unbudgeted.

    from openai import OpenAI
    import spendb, spendb.openai
    llm = spendb.openai.wrap(OpenAI(), spendb.connect(), scope="org:acme/agent:coder")
    llm.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=500)

`AsyncOpenAI` takes a `spendb.aio` client. Per call, `spendb_scope=`,
`spendb_run=`, `spendb_fallback=[...]`, `spendb_hold_id=` override the
wrapper's settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _wrapping as w
from .aio import AsyncClient
from .client import Client


def wrap(
    client: Any,
    spendb: Client | AsyncClient,
    *,
    scope: str,
    run: str | None = None,
    fallback: Iterable[str] = (),
    ttl_ms: int | None = None,
    wait: bool = False,
    auto_max_output: bool = False,
) -> Any:
    """A budgeted `OpenAI` / `AsyncOpenAI`. `wait`: sleep out a denial's
    retry_after instead of raising. `auto_max_output`: a request without a
    max output gets `OUTPUT AUTO`'s answer (what fits the budgets) as its
    `max_completion_tokens` / `max_output_tokens`."""
    b = w.Budgeting(spendb, scope, run, tuple(fallback), ttl_ms, wait, auto_max_output)
    return _Client(client, b, w.is_async_pair(client, spendb))


def chat_request(kw: dict[str, Any]) -> w.Request:
    key = "max_tokens" if "max_tokens" in kw else "max_completion_tokens"
    return w.Request(
        text=w.prompt_text(kw.get("messages"), kw.get("tools"), kw.get("functions")),
        max_output=kw.get("max_completion_tokens") or kw.get("max_tokens"),
        max_output_key=key,
        stream_usage_option=True,
    )


def responses_request(kw: dict[str, Any]) -> w.Request:
    return w.Request(
        text=w.prompt_text(kw.get("instructions"), kw.get("input"), kw.get("tools")),
        max_output=kw.get("max_output_tokens"),
        max_output_key="max_output_tokens",
    )


class _Chat(w.Delegate):
    def __init__(self, inner: Any, b: w.Budgeting, is_async: bool) -> None:
        self._inner = inner
        self.completions = w.BudgetedCreate(inner.completions, b, is_async, chat_request)


class _Client(w.Delegate):
    def __init__(self, inner: Any, b: w.Budgeting, is_async: bool) -> None:
        self._inner = inner
        self.chat = _Chat(inner.chat, b, is_async)
        self.responses = w.BudgetedCreate(inner.responses, b, is_async, responses_request)
