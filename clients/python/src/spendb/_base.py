"""What the sync and asyncio clients share beyond the commands (`_commands`):
the parts of a hold, a reservation and a cache lookup that do no I/O, and the
small decisions both make the same way (how long to wait out a denial, what
a stream cut short costs, a decorated call's cache key)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from . import types as t
from ._commands import Call, Money, cache_key
from .usage import StreamUsage, Usage

DEFAULT_URL = "redis://127.0.0.1:7379"


def redis_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """RESP3, and redis-py's own retries off: the client retries only what
    may be sent twice (see `_commands`)."""
    kwargs.setdefault("protocol", 3)
    kwargs.setdefault("retry", Retry(NoBackoff(), 0))
    return kwargs


class ReservationBase:
    def __init__(self, call: Call[t.Grant | t.Denied], wait: bool, wait_max: float) -> None:
        self._call = call
        self._wait = wait
        self._wait_max = wait_max

    def _deadline(self) -> float:
        return time.monotonic() + self._wait_max

    def _pause(self, denied: t.Denied, deadline: float) -> float | None:
        """How long `wait=True` sleeps before asking again, or `None` to give
        up: the denial's retry_after (at least 10 ms), if that is before the
        deadline."""
        if not self._wait or denied.retry_after is None:
            return None
        pause = max(denied.retry_after, 0.01)
        return pause if time.monotonic() + pause <= deadline else None


class HoldBase:
    """A granted hold. `id`, `model` (call the provider with this one: a
    FALLBACK may have chosen it), `output` (the most output tokens it covers),
    the reply as `grant`, and `settled` once committed or released."""

    def __init__(self, grant: t.Grant) -> None:
        self.grant = grant
        self.settled: t.Committed | t.Released | None = None

    @property
    def id(self) -> str:
        return self.grant.hold

    @property
    def model(self) -> str:
        return self.grant.model

    @property
    def output(self) -> int:
        return self.grant.output


def stream_charge(seen: StreamUsage, grant: t.Grant) -> Usage:
    """What to commit for a stream: its final usage; for a stream that stopped
    before one (closed early, or failed midway), what it reported so far
    (Anthropic's counts arrive as it goes) with at least the hold's input, or
    else the whole hold: the provider charged something, and spendb would
    rather count too much than let a budget overspend."""
    usage = seen.usage
    if usage is not None and seen.complete:
        return usage
    held_input = grant.tokens - grant.output
    if usage is not None:
        return Usage(
            input=max(usage.input, held_input),
            output=usage.output,
            cached=usage.cached,
            cachewrite=usage.cachewrite,
        )
    return Usage(input=held_input, output=grant.output)


class CachedBase:
    """The settings of a `cached(...)` context or decorator."""

    def __init__(
        self,
        ns: str,
        key_parts: Any,
        ttl_ms: int | None,
        cost: Money | Callable[[Any], Money] | None,
        scope: str | None,
        ef: int | None = None,
    ) -> None:
        self.ns = ns
        self.ef = ef
        self.key_parts = key_parts
        self.ttl_ms = ttl_ms
        self.cost = cost
        self.scope = scope

    def key(self) -> str:
        return cache_key(self.key_parts)

    def call_key(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> str:
        """A decorated call's key: the function's qualified name, its
        arguments and the decorator's key_parts, as canonical JSON."""
        return cache_key([self.key_parts, f"{fn.__module__}.{fn.__qualname__}", list(args), kwargs])

    def cost_of(self, result: Any) -> Money | None:
        return self.cost(result) if callable(self.cost) else self.cost

    def entry_cost(self, given: Money | None) -> Money | None:
        """An entry's COST: the one given to `set`, else a fixed one."""
        if given is not None:
            return given
        return None if callable(self.cost) else self.cost


class CacheEntryBase:
    """One exact-cache lookup: `key`, `value` (bytes, or `None`), `hit`."""

    def __init__(self, key: str, value: bytes | None) -> None:
        self.key = key
        self.value = value

    @property
    def hit(self) -> bool:
        return self.value is not None

    def _stored(self, value: str | bytes) -> None:
        self.value = value.encode() if isinstance(value, str) else value


class SemanticBase:
    """The settings of a `semantic_cache(...)`: its namespace, the function
    that embeds a text (yours: spendb stores and searches vectors, it does
    not compute them), the threshold and the search's ef (the namespace's
    when `None`), and what each stored answer gets (TTL, COST) and books its
    hits to (scope)."""

    def __init__(
        self,
        ns: str,
        embed: Callable[[str], Any],
        threshold: float | None,
        ttl_ms: int | None,
        cost: Money | None,
        scope: str | None,
        ef: int | None = None,
    ) -> None:
        self.ns = ns
        self.ef = ef
        self.embed = embed
        self.threshold = threshold
        self.ttl_ms = ttl_ms
        self.cost = cost
        self.scope = scope
