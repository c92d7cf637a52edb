"""Usage read from the providers' own response objects, for COMMIT.

spendb's COMMIT takes `INPUT` (every prompt token, cached ones included),
`OUTPUT` (every generated token, reasoning included), `CACHED` (the part of
INPUT read from a prompt cache) and `CACHEWRITE` (the part written to one).
The providers count differently; the field names below are the SDKs' own
(openai.types.CompletionUsage, openai.types.responses.ResponseUsage,
anthropic.types.Usage / MessageDeltaUsage):

- OpenAI Chat Completions `usage`: INPUT `prompt_tokens`, OUTPUT
  `completion_tokens`, CACHED `prompt_tokens_details.cached_tokens`,
  CACHEWRITE `prompt_tokens_details.cache_write_tokens`;
- OpenAI Responses `usage`: INPUT `input_tokens`, OUTPUT `output_tokens`,
  CACHED `input_tokens_details.cached_tokens`, CACHEWRITE
  `input_tokens_details.cache_write_tokens`;
- Anthropic Messages `usage`: INPUT `input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens`, OUTPUT `output_tokens`, CACHED
  `cache_read_input_tokens`, CACHEWRITE `cache_creation_input_tokens`.

OpenAI's `completion_tokens` / `output_tokens` already include the reasoning
tokens (`…_details.reasoning_tokens`, kept in `Usage.reasoning` for reports);
Anthropic's `input_tokens` does not include the cache reads and writes, so
they are added. LiteLLM's `ModelResponse.usage` has the Chat Completions
names (and, for Anthropic models, `cache_creation_input_tokens`).

Objects and plain dicts (a JSON body) are read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    """What a call used, in spendb's terms (see the module's list)."""

    input: int
    output: int
    cached: int = 0
    cachewrite: int = 0
    reasoning: int = 0

    @property
    def tokens(self) -> int:
        return self.input + self.output


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _n(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _usage_of(obj: Any) -> Any:
    """The `usage` part of a response, or the object itself if it is one."""
    u = _get(obj, "usage")
    if u is not None:
        return u
    # A Responses API stream's `response.completed` event carries the response.
    response = _get(obj, "response")
    if response is not None and _get(response, "usage") is not None:
        return _get(response, "usage")
    return obj


def usage_from(obj: Any) -> Usage:
    """The usage of a response (or of its `usage` object): OpenAI Chat
    Completions or Responses, Anthropic Messages, LiteLLM, or their dicts.

    Raises `ValueError` when there is no usage in it (a streamed chat
    completion without `stream_options={"include_usage": True}`, say)."""
    if isinstance(obj, Usage):
        return obj
    u = _usage_of(obj)
    if _get(u, "prompt_tokens") is not None or _get(u, "completion_tokens") is not None:
        # Chat Completions (and LiteLLM, whose Anthropic usage names the
        # cache write as Anthropic does).
        details = _get(u, "prompt_tokens_details")
        return Usage(
            input=_n(_get(u, "prompt_tokens")),
            output=_n(_get(u, "completion_tokens")),
            cached=_n(_get(details, "cached_tokens")),
            cachewrite=_n(_get(details, "cache_write_tokens"))
            or _n(_get(u, "cache_creation_input_tokens")),
            reasoning=_n(_get(_get(u, "completion_tokens_details"), "reasoning_tokens")),
        )
    if _get(u, "input_tokens") is not None or _get(u, "output_tokens") is not None:
        details = _get(u, "input_tokens_details")
        if details is not None:
            # OpenAI Responses (the field is required there, and Anthropic has
            # none): input_tokens already counts the cached part.
            return Usage(
                input=_n(_get(u, "input_tokens")),
                output=_n(_get(u, "output_tokens")),
                cached=_n(_get(details, "cached_tokens")),
                cachewrite=_n(_get(details, "cache_write_tokens")),
                reasoning=_n(_get(_get(u, "output_tokens_details"), "reasoning_tokens")),
            )
        # Anthropic Messages: input_tokens is what was neither read from nor
        # written to the cache.
        read = _n(_get(u, "cache_read_input_tokens"))
        write = _n(_get(u, "cache_creation_input_tokens"))
        return Usage(
            input=_n(_get(u, "input_tokens")) + read + write,
            output=_n(_get(u, "output_tokens")),
            cached=read,
            cachewrite=write,
        )
    raise ValueError(
        f"no usage in {type(obj).__name__}: for an OpenAI chat stream pass "
        "stream_options={'include_usage': True}"
    )


class StreamUsage:
    """Usage gathered from the events of a stream, as they go by.

    - OpenAI Chat Completions: the last chunk's `usage` (sent when the request
      has `stream_options={"include_usage": True}`);
    - OpenAI Responses: the `response.completed` (or `.incomplete`/`.failed`)
      event's `response.usage`;
    - Anthropic Messages: `message_start`'s `message.usage` (input and cache
      tokens), then each `message_delta`'s cumulative `usage.output_tokens`
      (newer APIs also restate the input there).

    `usage` is `None` until something was seen; `complete` says whether a
    final figure arrived (an Anthropic stream cut short has a partial one).
    """

    def __init__(self) -> None:
        self._input: int | None = None
        self._output = 0
        self._cached = 0
        self._cachewrite = 0
        self._reasoning = 0
        self._seen = False
        self.complete = False

    def feed(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "message_start":
            self._anthropic(_get(_get(event, "message"), "usage"))
        elif kind == "message_delta":
            self._anthropic(_get(event, "usage"))
            self.complete = True
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = _get(_get(event, "response"), "usage")
            if usage is not None:
                self._set(usage_from(usage))
                self.complete = True
        elif _get(event, "usage") is not None and _get(event, "object") == "chat.completion.chunk":
            self._set(usage_from(event))
            self.complete = True

    def _set(self, u: Usage) -> None:
        self._seen = True
        self._input, self._output = u.input, u.output
        self._cached, self._cachewrite, self._reasoning = u.cached, u.cachewrite, u.reasoning

    def _anthropic(self, u: Any) -> None:
        if u is None:
            return
        self._seen = True
        if _get(u, "input_tokens") is not None:
            self._cached = _n(_get(u, "cache_read_input_tokens")) or self._cached
            self._cachewrite = _n(_get(u, "cache_creation_input_tokens")) or self._cachewrite
            self._input = _n(_get(u, "input_tokens")) + self._cached + self._cachewrite
        self._output = max(self._output, _n(_get(u, "output_tokens")))

    @property
    def usage(self) -> Usage | None:
        if not self._seen:
            return None
        return Usage(
            input=self._input or 0,
            output=self._output,
            cached=self._cached,
            cachewrite=self._cachewrite,
            reasoning=self._reasoning,
        )
