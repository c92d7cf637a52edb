"""spendb as the exact budget behind the LiteLLM proxy.

`SpendbBudget` is a LiteLLM `CustomLogger`:

- `async_pre_call_hook` reserves the call against a scope built from the
  virtual key's metadata (`scope_template`), for the request's model, prompt
  (as text, counted by spendb) and max output. A denial answers HTTP 429
  with spendb's reason and `retry_after`; nothing is sent to the provider.
  With `loop_guard`, a request carrying a `litellm_trace_id` is first a STEP
  of that run (its signature: the model and the last message), and a loop
  is a 429 too. The trace id is also the hold's RUN (cost per run).
- `async_log_success_event` commits the usage LiteLLM reports for the call.
- `async_log_failure_event` and `async_post_call_failure_hook` release it.

A hold nobody settles (the proxy died mid-call) expires at its TTL.

Configure it in the proxy's config.yaml, from the environment:

    litellm_settings:
      callbacks: spendb.litellm.budget

(`SPENDB_URL`, `SPENDB_SCOPE_TEMPLATE`, `SPENDB_LOOP_GUARD=1`,
`SPENDB_HOLD_TTL_MS`, `SPENDB_FAIL_OPEN=1`), or make your own instance in a
`custom_callbacks.py` beside the config and name it there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from . import errors
from ._base import DEFAULT_URL
from ._wrapping import prompt_text
from .aio import AsyncClient
from .types import Denied, Grant
from .usage import Usage, usage_from

log = logging.getLogger("spendb.litellm")

#: `{field}` is a field of the virtual key (LiteLLM's UserAPIKeyAuth:
#: `org_id`, `team_id`, `team_alias`, `user_id`, `key_alias`, `key_name`,
#: `token` (the key's hash), `end_user_id`) or `end_user` (the request's
#: `user`) or `model`. A segment whose fields are all empty is left out, so
#: without virtual keys every call is under `litellm`.
DEFAULT_SCOPE_TEMPLATE = "litellm/org:{org_id}/team:{team_id}/user:{user_id}/key:{key_alias}"

#: The call types that run a model and have usage; others pass unbudgeted.
BUDGETED_CALLS = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "responses",
        "aresponses",
        "anthropic_messages",
    }
)

_FIELD = re.compile(r"\{(\w+)\}")


def render_scope(template: str, values: dict[str, Any]) -> str:
    """The scope for one request: each `/`-separated segment of the template
    with its fields filled in; a segment is dropped when every field in it is
    empty. Values lose `/` and whitespace (scope syntax)."""
    segments = []
    for segment in template.split("/"):
        names = _FIELD.findall(segment)
        filled = {n: re.sub(r"[\s/]+", "_", str(values.get(n) or "")) for n in names}
        if names and not any(filled.values()):
            continue
        for name, value in filled.items():
            segment = segment.replace("{" + name + "}", value or "-")
        segments.append(segment)
    return "/".join(segments) or "litellm"


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


class SpendbBudget(CustomLogger):
    """The hook. `url`: spendb's Redis port. `scope_template`: see
    `DEFAULT_SCOPE_TEMPLATE`. `model_map`: the spendb model for a LiteLLM
    model group, when its name is not one spendb prices. `loop_guard`: STEP
    per `litellm_trace_id`. `fail_open`: when spendb cannot be reached, let
    calls through unbudgeted (default: refuse them with 503)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        scope_template: str | None = None,
        model_map: dict[str, str] | None = None,
        loop_guard: bool | None = None,
        ttl_ms: int | None = None,
        fail_open: bool | None = None,
        client: AsyncClient | None = None,
    ) -> None:
        super().__init__()
        self.url = url or os.environ.get("SPENDB_URL", DEFAULT_URL)
        self.scope_template = scope_template or os.environ.get(
            "SPENDB_SCOPE_TEMPLATE", DEFAULT_SCOPE_TEMPLATE
        )
        self.model_map = model_map or {}
        self.loop_guard = (
            _truthy(os.environ.get("SPENDB_LOOP_GUARD")) if loop_guard is None else loop_guard
        )
        ttl = os.environ.get("SPENDB_HOLD_TTL_MS")
        self.ttl_ms = ttl_ms if ttl_ms is not None else (int(ttl) if ttl else None)
        self.fail_open = (
            _truthy(os.environ.get("SPENDB_FAIL_OPEN")) if fail_open is None else fail_open
        )
        self._client = client
        # litellm_call_id → (hold id, when reserved): the success and failure
        # events of a call come to the process that ran its pre-call hook.
        self._holds: dict[str, tuple[str, float]] = {}

    @property
    def client(self) -> AsyncClient:
        # Made on first use, inside the proxy's event loop (redis.asyncio
        # connections belong to the loop that opened them).
        if self._client is None:
            self._client = AsyncClient(self.url)
        return self._client

    def scope_for(self, key: Any, data: dict[str, Any]) -> str:
        values: dict[str, Any] = {}
        for name in (
            "org_id",
            "team_id",
            "team_alias",
            "user_id",
            "key_alias",
            "key_name",
            "token",
            "end_user_id",
        ):
            values[name] = getattr(key, name, None)
        values["end_user"] = data.get("user")
        values["model"] = data.get("model")
        return render_scope(self.scope_template, values)

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any] | None:
        if call_type not in BUDGETED_CALLS:
            return None
        scope = self.scope_for(user_api_key_dict, data)
        trace = data.get("litellm_trace_id")
        try:
            if self.loop_guard and trace:
                await self._step(str(trace), scope, data)
            reply = await self.client.try_reserve(
                scope,
                self.model_map.get(data["model"], data["model"]),
                text=prompt_text(
                    data.get("system"),
                    data.get("messages"),
                    data.get("input"),
                    data.get("prompt"),
                    data.get("tools"),
                ),
                max_output=data.get("max_completion_tokens")
                or data.get("max_tokens")
                or data.get("max_output_tokens"),
                ttl_ms=self.ttl_ms,
                run=str(trace)[:64] if trace else None,
            )
        except errors.Unavailable as e:
            if self.fail_open:
                log.warning("spendb unreachable, call let through unbudgeted: %s", e)
                return None
            raise HTTPException(status_code=503, detail={"error": f"spendb: {e}"}) from e
        except errors.SpendbError as e:
            raise HTTPException(status_code=500, detail={"error": f"spendb: {e}"}) from e
        if isinstance(reply, Denied):
            raise _denied(reply)
        assert isinstance(reply, Grant)
        self._remember(str(data["litellm_call_id"]), reply.hold)
        return data

    async def _step(self, trace: str, scope: str, data: dict[str, Any]) -> None:
        messages = data.get("messages") or data.get("input") or data.get("prompt") or []
        last = messages[-1] if isinstance(messages, list) and messages else messages
        signature = hashlib.sha256(
            json.dumps([data.get("model"), last], sort_keys=True, default=str).encode()
        ).hexdigest()
        step = await self.client.step(trace[:64], signature, scope=scope, raise_on_deny=False)
        if not step.allowed:
            raise HTTPException(
                status_code=429,
                detail={
                    "error": f"spendb loop guard: run {step.run} denied ({step.reason}) "
                    f"after {step.steps} steps",
                    "reason": step.reason,
                },
            )

    def _remember(self, call_id: str, hold: str) -> None:
        now = time.monotonic()
        self._holds[call_id] = (hold, now)
        if len(self._holds) % 1024 == 0:
            # Calls whose events never came: their holds expire on the server.
            horizon = now - (self.ttl_ms or 600_000) / 1000 - 60
            for k in [k for k, (_, at) in self._holds.items() if at < horizon]:
                del self._holds[k]

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pending = self._holds.pop(str(kwargs.get("litellm_call_id")), None)
        if pending is None:
            return
        try:
            usage = usage_from(response_obj)
        except ValueError:
            logged = kwargs.get("standard_logging_object") or {}
            usage = Usage(
                input=int(logged.get("prompt_tokens") or 0),
                output=int(logged.get("completion_tokens") or 0),
            )
        try:
            await self.client.commit(
                pending[0],
                usage.input,
                usage.output,
                cached=usage.cached,
                cachewrite=usage.cachewrite,
            )
        except errors.SpendbError as e:
            log.error("spendb: COMMIT of hold %s failed: %s", pending[0], e)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._release(str(kwargs.get("litellm_call_id")))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        await self._release(str(request_data.get("litellm_call_id")))

    async def _release(self, call_id: str) -> None:
        pending = self._holds.pop(call_id, None)
        if pending is None:
            return
        try:
            await self.client.release(pending[0])
        except errors.SpendbError as e:
            log.error("spendb: RELEASE of hold %s failed: %s", pending[0], e)


def _denied(d: Denied) -> HTTPException:
    retry = d.retry_after
    headers = {"retry-after": str(math.ceil(retry))} if retry is not None else None
    return HTTPException(
        status_code=429,
        detail={
            "error": f"spendb: budget exceeded: {d.scope} {d.limit} ({d.reason})",
            "scope": d.scope,
            "limit": d.limit,
            "reason": d.reason,
            "remaining": str(d.remaining),
            "retry_after_ms": d.retry_after_ms,
        },
        headers=headers,
    )


#: The instance `callbacks: spendb.litellm.budget` loads, set from the environment.
budget = SpendbBudget()
