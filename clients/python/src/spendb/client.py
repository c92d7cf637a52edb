"""The synchronous client: `spendb.connect(url)` → `Client`.

A `Client` wraps a redis-py connection pool (RESP3) and turns each command
into a typed reply (`spendb.types`) or a typed exception (`spendb.errors`).
The core loop is one idiom:

    with client.reserve("org:acme/agent:coder", "gpt-4o", text=prompt, max_output=800) as hold:
        resp = openai_client.chat.completions.create(model=hold.model, ...)
        hold.commit_usage(resp)
    # no commit → the hold is released on the way out, exception or not

redis-py's own retries are turned off: this client retries a command after a
lost connection only when sending it twice is the same as sending it once
(see `_commands`), which every RESERVE is, because it keeps its hold id.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

import redis
from redis.exceptions import AuthenticationError, ResponseError

from . import _commands as cmd
from . import errors
from . import types as t
from ._base import (
    DEFAULT_URL,
    CachedBase,
    CacheEntryBase,
    HoldBase,
    ReservationBase,
    SemanticBase,
    redis_options,
    stream_charge,
)
from ._commands import Call, Money, OutputSpec, new_id
from .usage import StreamUsage, Usage, usage_from

T = TypeVar("T")
E = TypeVar("E")
P = ParamSpec("P")
R = TypeVar("R")


class Client:
    """A connection pool to one spendb server. Thread-safe (redis-py's pool).

    `retries`: how often a retryable command is sent again after a lost
    connection or a timeout (with `retry_backoff` seconds, doubling, between).
    `wait_max`: the longest `reserve(..., wait=True)` sleeps in all.
    Other keyword arguments go to `redis.Redis.from_url` (`socket_timeout`,
    `max_connections`, `username`/`password`, …)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        retries: int = 3,
        retry_backoff: float = 0.05,
        wait_max: float = 60.0,
        redis_client: redis.Redis | None = None,
        **redis_kwargs: Any,
    ) -> None:
        if redis_client is None:
            redis_client = redis.Redis.from_url(url, **redis_options(redis_kwargs))
        self.redis = redis_client
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.wait_max = wait_max

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                reply = self.redis.execute_command(*call.args)  # type: ignore[no-untyped-call]
            except AuthenticationError as e:
                raise errors.Unauthorized(str(e)) from None
            except ResponseError as e:
                raise errors.from_reply(str(e), getattr(e, "status_code", None)) from None
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if call.retryable and attempt < self.retries:
                    time.sleep(self.retry_backoff * 2**attempt)
                    attempt += 1
                    continue
                raise errors.Unavailable(f"{call.args[0]!s}: {e}") from e
            return call.parse(reply)

    # -- budgets ---------------------------------------------------------

    def ping(self) -> bool:
        return self._run(cmd.ping())

    def set_budget(self, scope: str, limits: Iterable[t.Limit]) -> None:
        """BUDGET.SET: replaces all of the scope's limits."""
        self._run(cmd.set_budget(scope, list(limits)))

    def get_budget(self, scope: str) -> t.Budget:
        return self._run(cmd.get_budget(scope))

    def delete_budget(self, scope: str) -> bool:
        return self._run(cmd.delete_budget(scope))

    def list_budgets(self, prefix: str | None = None) -> list[str]:
        return self._run(cmd.list_budgets(prefix))

    def balance(self, scope: str) -> t.Balance:
        return self._run(cmd.balance(scope))

    # -- holds -----------------------------------------------------------

    def try_reserve(
        self,
        scope: str,
        model: str,
        *,
        text: str | None = None,
        input: int | None = None,
        max_output: OutputSpec = None,
        fallback: Iterable[str] = (),
        ttl_ms: int | None = None,
        run: str | None = None,
        hold_id: str | None = None,
    ) -> t.Grant | t.Denied:
        """RESERVE once: a `Grant` or a `Denied` (never raises for a denial).
        `text` (the prompt; the server counts its tokens) or `input` (tokens).
        `max_output`: the call's max_tokens, `"auto"` (what fits), or `None`
        (the model's maximum). The id is a new UUIDv7 unless given."""
        return self._run(
            cmd.reserve(
                hold_id or new_id(),
                scope,
                model,
                input=input,
                text=text,
                max_output=max_output,
                fallback=fallback,
                ttl_ms=ttl_ms,
                run=run,
            )
        )

    def reserve(
        self,
        scope: str,
        model: str,
        *,
        text: str | None = None,
        input: int | None = None,
        max_output: OutputSpec = None,
        fallback: Iterable[str] = (),
        ttl_ms: int | None = None,
        run: str | None = None,
        hold_id: str | None = None,
        wait: bool = False,
        wait_max: float | None = None,
    ) -> Reservation:
        """A hold as a context manager (see the module's example). Entering
        sends the RESERVE; a denial raises `BudgetExceeded`, or with
        `wait=True` sleeps the denial's `retry_after` and asks again, for at
        most `wait_max` seconds in all (the client's `wait_max` by default)."""
        call = cmd.reserve(
            hold_id or new_id(),
            scope,
            model,
            input=input,
            text=text,
            max_output=max_output,
            fallback=fallback,
            ttl_ms=ttl_ms,
            run=run,
        )
        return Reservation(self, call, wait, self.wait_max if wait_max is None else wait_max)

    def commit(
        self,
        hold_id: str,
        input: int,
        output: int,
        *,
        cached: int = 0,
        cachewrite: int = 0,
    ) -> t.Committed:
        return self._run(cmd.commit(hold_id, Usage(input, output, cached, cachewrite)))

    def commit_usage(self, hold_id: str, response: Any) -> t.Committed:
        """COMMIT the usage read from a provider's response (`spendb.usage`)."""
        return self._run(cmd.commit(hold_id, usage_from(response)))

    def release(self, hold_id: str) -> t.Released:
        return self._run(cmd.release(hold_id))

    def get_hold(self, hold_id: str) -> t.HoldInfo:
        return self._run(cmd.get_hold(hold_id))

    def spend(
        self,
        scope: str,
        model: str,
        usage: Usage | Any,
        *,
        id: str | None = None,
        run: str | None = None,
    ) -> t.Spent:
        """SPEND: book usage that had no hold (a `Usage` or a response). Sent
        with an id (a new UUIDv7 unless given), so a retry books it once."""
        return self._run(cmd.spend(scope, model, usage_from(usage), id=id, run=run))

    # -- the loop guard and runs -------------------------------------------

    def step(
        self,
        run: str,
        signature: str | bytes,
        *,
        scope: str | None = None,
        max_steps: int | None = None,
        repeats: int | None = None,
        window: int | None = None,
        raise_on_deny: bool = True,
    ) -> t.Step:
        """STEP: raises `LoopDetected` when the loop guard denies the step
        (or returns the denied `Step` with `raise_on_deny=False`)."""
        s = self._run(
            cmd.step(
                run, signature, scope=scope, max_steps=max_steps, repeats=repeats, window=window
            )
        )
        if not s.allowed and raise_on_deny:
            raise errors.LoopDetected(s)
        return s

    def end_run(self, run: str, outcome: Literal["success", "failure"] | None = None) -> t.RunEnded:
        return self._run(cmd.end_run(run, outcome))

    # -- the exact cache -------------------------------------------------

    def cache_set(
        self,
        ns: str,
        key: str | bytes,
        value: str | bytes,
        *,
        ttl_ms: int | None = None,
        cost: Money | None = None,
    ) -> None:
        self._run(cmd.cache_set(ns, key, value, ttl_ms=ttl_ms, cost=cost))

    def cache_get(self, ns: str, key: str | bytes, *, scope: str | None = None) -> bytes | None:
        """The value, or `None`. With `scope`, a hit books the entry's COST as saved."""
        return self._run(cmd.cache_get(ns, key, scope=scope))

    def cache_delete(self, ns: str, key: str | bytes) -> bool:
        return self._run(cmd.cache_delete(ns, key))

    def cache_stats(self, ns: str | None = None) -> t.CacheStats:
        return self._run(cmd.cache_stats(ns))

    def cached(
        self,
        ns: str,
        key_parts: Any = None,
        *,
        ttl_ms: int | None = None,
        cost: Money | Callable[[Any], Money] | None = None,
        scope: str | None = None,
    ) -> Cached:
        """The exact cache as a context manager or a decorator.

        Context: `with client.cached("answers", ["gpt-4o", prompt], cost="0.002",
        scope=s) as entry:` — `entry.hit`, `entry.value` (bytes), and on a
        miss `entry.set(value)` stores it with the TTL and COST given.

        Decorator: `@client.cached("answers", ttl_ms=3_600_000, scope=s)` caches
        the function's JSON-able result under its name and arguments (plus
        `key_parts`); `cost` may be a function of the result. A hit with
        `scope` books the entry's cost as saved for that scope."""
        return Cached(self, ns, key_parts, ttl_ms, cost, scope)

    def vset(
        self,
        ns: str,
        vector: Sequence[float],
        value: str | bytes,
        *,
        ttl_ms: int | None = None,
        cost: Money | None = None,
        key: str | bytes | None = None,
    ) -> int:
        """CACHE.VSET: stores `value` under an embedding; returns its id. An
        entry stored with a `key` replaces the namespace's entry with that key."""
        return self._run(cmd.vset(ns, vector, value, ttl_ms=ttl_ms, cost=cost, key=key))

    def vget(
        self,
        ns: str,
        vector: Sequence[float],
        *,
        threshold: float | None = None,
        scope: str | None = None,
        ef: int | None = None,
    ) -> t.SemanticHit | None:
        """CACHE.VGET: the nearest live entry at or above the threshold, or
        `None`. With `scope`, a hit books the entry's COST as saved; `ef`
        overrides the namespace's for this search."""
        return self._run(cmd.vget(ns, vector, threshold=threshold, scope=scope, ef=ef))

    def vdel(self, ns: str, entry_id: int) -> bool:
        return self._run(cmd.vdel(ns, entry_id))

    def semantic_config(self, ns: str) -> t.SemanticConfig:
        return self._run(cmd.semantic_config(ns))

    def set_semantic_threshold(self, ns: str, threshold: float) -> None:
        self._run(cmd.configure_semantic(ns, threshold=threshold, ef=None))

    def configure_semantic(
        self, ns: str, *, threshold: float | None = None, ef: int | None = None
    ) -> None:
        """CACHE.VCONFIG: the namespace's default threshold, the ef of its
        approximate searches (1 to 4096; more is better recall, slower), or
        both."""
        self._run(cmd.configure_semantic(ns, threshold=threshold, ef=ef))

    def semantic_cache(
        self,
        ns: str,
        embed: Callable[[str], Any],
        *,
        threshold: float | None = None,
        ttl_ms: int | None = None,
        cost: Money | None = None,
        scope: str | None = None,
        ef: int | None = None,
    ) -> SemanticCache:
        """The semantic cache for texts: `embed(text)` gives a text's vector
        (any callable returning a sequence of floats).
        `.get(prompt)` → `SemanticHit | None`, `.set(prompt, answer)` (the
        prompt is the entry's KEY), or as a decorator of a function of one
        text argument returning text."""
        return SemanticCache(self, ns, embed, threshold, ttl_ms, cost, scope, ef)

    # -- tokens and prices -------------------------------------------------

    def count(self, model: str, text: str) -> t.Count:
        return self._run(cmd.count(model, text))

    def truncate(self, model: str, text: str, max_tokens: int) -> t.Truncated:
        return self._run(cmd.truncate(model, text, max_tokens))

    def set_price(
        self,
        model: str,
        *,
        input: Money,
        output: Money,
        cached: Money | None = None,
        cachewrite: Money | None = None,
        max_output: int | None = None,
    ) -> None:
        """PRICE.SET, in USD per million tokens."""
        self._run(
            cmd.set_price(
                model,
                input=input,
                output=output,
                cached=cached,
                cachewrite=cachewrite,
                max_output=max_output,
            )
        )

    def get_price(self, model: str) -> t.Price:
        return self._run(cmd.get_price(model))

    def list_prices(self) -> list[t.Price]:
        return self._run(cmd.list_prices())


def connect(url: str = DEFAULT_URL, **kwargs: Any) -> Client:
    """A `Client` for the spendb at `url` (`redis://host:port`, `rediss://`,
    `unix:///path`), with `Client`'s keyword arguments."""
    return Client(url, **kwargs)


class Reservation(ReservationBase):
    """What `Client.reserve` returns: enter it to hold, leave it to settle."""

    def __init__(
        self, client: Client, call: Call[t.Grant | t.Denied], wait: bool, wait_max: float
    ) -> None:
        super().__init__(call, wait, wait_max)
        self._client = client
        self.hold: Hold | None = None

    def __enter__(self) -> Hold:
        deadline = self._deadline()
        while True:
            reply = self._client._run(self._call)
            if isinstance(reply, t.Grant):
                self.hold = Hold(self._client, reply)
                return self.hold
            pause = self._pause(reply, deadline)
            if pause is None:
                raise errors.BudgetExceeded(reply)
            time.sleep(pause)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.hold is None:
            return
        self.hold.close_streams()
        if self.hold.settled is None:
            try:
                self.hold.release()
            except errors.SpendbError:
                if exc is None:
                    raise
                # The block's own exception matters more; the hold expires
                # at its TTL if the release did not reach the server.


class Hold(HoldBase):
    """A granted hold (`HoldBase`). Settle it once: `commit`, `commit_usage`,
    `release`, or `stream`."""

    def __init__(self, client: Client, grant: t.Grant) -> None:
        super().__init__(grant)
        self._client = client
        self._streams: list[Generator[Any, None, None]] = []

    def commit(
        self, input: int, output: int, *, cached: int = 0, cachewrite: int = 0
    ) -> t.Committed:
        return self.commit_usage(Usage(input, output, cached, cachewrite))

    def commit_usage(self, response: Any) -> t.Committed:
        """COMMIT the usage read from a provider's response, its `usage`, a
        `Usage`, or a dict of either (see `spendb.usage`)."""
        done = self._client._run(cmd.commit(self.id, usage_from(response)))
        self.settled = done
        return done

    def release(self) -> t.Released:
        done = self._client._run(cmd.release(self.id))
        self.settled = done
        return done

    def stream(self, events: Iterable[E]) -> Iterator[E]:
        """Pass a provider's stream through, gathering its usage, and commit
        when it ends (`stream_charge` says what a stream cut short costs).
        Leaving the `with` block closes a stream not read to its end."""

        def gen() -> Generator[E, None, None]:
            seen = StreamUsage()
            try:
                for event in events:
                    seen.feed(event)
                    yield event
            finally:
                if self.settled is None:
                    self.commit_usage(stream_charge(seen, self.grant))

        g = gen()
        self._streams.append(g)
        return g

    def close_streams(self) -> None:
        for g in self._streams:
            g.close()


class CacheEntry(CacheEntryBase):
    """One exact-cache lookup: `hit`, `value`, and `set` for a miss."""

    def __init__(self, cached: Cached, key: str, value: bytes | None) -> None:
        super().__init__(key, value)
        self._cached = cached

    def set(self, value: str | bytes, *, cost: Money | None = None) -> None:
        c = self._cached
        c.client.cache_set(c.ns, self.key, value, ttl_ms=c.ttl_ms, cost=c.entry_cost(cost))
        self._stored(value)


class Cached(CachedBase):
    """What `Client.cached` returns: a context manager and a decorator."""

    def __init__(
        self,
        client: Client,
        ns: str,
        key_parts: Any,
        ttl_ms: int | None,
        cost: Money | Callable[[Any], Money] | None,
        scope: str | None,
    ) -> None:
        super().__init__(ns, key_parts, ttl_ms, cost, scope)
        self.client = client

    def __enter__(self) -> CacheEntry:
        key = self.key()
        return CacheEntry(self, key, self.client.cache_get(self.ns, key, scope=self.scope))

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def cached_call(*args: P.args, **kwargs: P.kwargs) -> R:
            key = self.call_key(fn, args, kwargs)
            hit = self.client.cache_get(self.ns, key, scope=self.scope)
            if hit is not None:
                result: R = json.loads(hit)
                return result
            result = fn(*args, **kwargs)
            self.client.cache_set(
                self.ns, key, json.dumps(result), ttl_ms=self.ttl_ms, cost=self.cost_of(result)
            )
            return result

        return cached_call


class SemanticCache(SemanticBase):
    """What `Client.semantic_cache` returns."""

    def __init__(
        self,
        client: Client,
        ns: str,
        embed: Callable[[str], Any],
        threshold: float | None,
        ttl_ms: int | None,
        cost: Money | None,
        scope: str | None,
        ef: int | None = None,
    ) -> None:
        super().__init__(ns, embed, threshold, ttl_ms, cost, scope, ef)
        self.client = client

    def get(self, text: str) -> t.SemanticHit | None:
        return self.client.vget(
            self.ns, self.embed(text), threshold=self.threshold, scope=self.scope, ef=self.ef
        )

    def set(self, text: str, value: str | bytes, *, cost: Money | None = None) -> int:
        return self.client.vset(
            self.ns,
            self.embed(text),
            value,
            ttl_ms=self.ttl_ms,
            cost=self.cost if cost is None else cost,
            key=text,
        )

    def __call__(self, fn: Callable[[str], str]) -> Callable[[str], str]:
        @functools.wraps(fn)
        def answer(text: str) -> str:
            hit = self.get(text)
            if hit is not None:
                return hit.value.decode()
            value = fn(text)
            self.set(text, value)
            return value

        return answer
