"""The Anthropic SDK, budgeted: `spendb.anthropic.wrap(Anthropic(), spendb_client, scope=…)`.

The wrapped client's `messages.create` reserves before the call (the system
prompt, messages and tools as text, `max_tokens`, your FALLBACK models),
calls with the granted model, and commits the response's usage (cache reads
and writes included); an error releases the hold; a denial raises
`spendb.BudgetExceeded`. `create(stream=True)` is passed through and
committed from its `message_start` and `message_delta` events when it ends.
`messages.stream()` and everything else is the SDK's own, unbudgeted: commit
those with `hold.commit_usage(stream.get_final_message())`.

`AsyncAnthropic` takes a `spendb.aio` client; per-call overrides as in
`spendb.openai`.
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
) -> Any:
    """A budgeted `Anthropic` / `AsyncAnthropic` (arguments as `spendb.openai.wrap`)."""
    b = w.Budgeting(spendb, scope, run, tuple(fallback), ttl_ms, wait)
    return _Client(client, b, w.is_async_pair(client, spendb))


def messages_request(kw: dict[str, Any]) -> w.Request:
    return w.Request(
        text=w.prompt_text(kw.get("system"), kw.get("messages"), kw.get("tools")),
        max_output=kw.get("max_tokens"),
        max_output_key="max_tokens",
    )


class _Client(w.Delegate):
    def __init__(self, inner: Any, b: w.Budgeting, is_async: bool) -> None:
        self._inner = inner
        self.messages = w.BudgetedCreate(inner.messages, b, is_async, messages_request)
