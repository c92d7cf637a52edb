"""The asyncio client: `spendb.aio.connect(url)` → `AsyncClient`.

The same commands, replies and idioms as `spendb.Client` (see its module),
awaited, on `redis.asyncio`:

    async with client.reserve("org:acme/agent:coder", "gpt-4o", text=prompt) as hold:
        resp = await openai_client.chat.completions.create(model=hold.model, ...)
        await hold.commit_usage(resp)

Commands are built and read by `_commands`, shared with the sync client.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

import redis.asyncio as aredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


class AsyncClient:
    """A connection pool to one spendb server, for asyncio. Arguments as
    `spendb.Client`'s."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        retries: int = 3,
        retry_backoff: float = 0.05,
        wait_max: float = 60.0,
        redis_client: aredis.Redis | None = None,
        **redis_kwargs: Any,
    ) -> None:
        if redis_client is None:
            redis_client = aredis.Redis.from_url(url, **redis_options(redis_kwargs))
        self.redis = redis_client
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.wait_max = wait_max

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                reply = await self.redis.execute_command(*call.args)  # type: ignore[no-untyped-call]
            except AuthenticationError as e:
                raise errors.Unauthorized(str(e)) from None
            except ResponseError as e:
                raise errors.from_reply(str(e), getattr(e, "status_code", None)) from None
            except (RedisConnectionError, RedisTimeoutError) as e:
                if call.retryable and attempt < self.retries:
                    await asyncio.sleep(self.retry_backoff * 2**attempt)
                    attempt += 1
                    continue
                raise errors.Unavailable(f"{call.args[0]!s}: {e}") from e
            return call.parse(reply)

    async def ping(self) -> bool:
        return await self._run(cmd.ping())

    async def set_budget(self, scope: str, limits: Iterable[t.Limit]) -> None:
        await self._run(cmd.set_budget(scope, list(limits)))

    async def get_budget(self, scope: str) -> t.Budget:
        return await self._run(cmd.get_budget(scope))

    async def delete_budget(self, scope: str) -> bool:
        return await self._run(cmd.delete_budget(scope))

    async def list_budgets(self, prefix: str | None = None) -> list[str]:
        return await self._run(cmd.list_budgets(prefix))

    async def balance(self, scope: str) -> t.Balance:
        return await self._run(cmd.balance(scope))

    async def try_reserve(
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
        return await self._run(
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
    ) -> AsyncReservation:
        """`async with client.reserve(...) as hold:` (see `Client.reserve`)."""
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
        return AsyncReservation(self, call, wait, self.wait_max if wait_max is None else wait_max)

    async def commit(
        self, hold_id: str, input: int, output: int, *, cached: int = 0, cachewrite: int = 0
    ) -> t.Committed:
        return await self._run(cmd.commit(hold_id, Usage(input, output, cached, cachewrite)))

    async def commit_usage(self, hold_id: str, response: Any) -> t.Committed:
        return await self._run(cmd.commit(hold_id, usage_from(response)))

    async def release(self, hold_id: str) -> t.Released:
        return await self._run(cmd.release(hold_id))

    async def get_hold(self, hold_id: str) -> t.HoldInfo:
        return await self._run(cmd.get_hold(hold_id))

    async def spend(
        self,
        scope: str,
        model: str,
        usage: Usage | Any,
        *,
        id: str | None = None,
        run: str | None = None,
    ) -> t.Spent:
        return await self._run(cmd.spend(scope, model, usage_from(usage), id=id, run=run))

    async def step(
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
        s = await self._run(
            cmd.step(
                run, signature, scope=scope, max_steps=max_steps, repeats=repeats, window=window
            )
        )
        if not s.allowed and raise_on_deny:
            raise errors.LoopDetected(s)
        return s

    async def end_run(
        self, run: str, outcome: Literal["success", "failure"] | None = None
    ) -> t.RunEnded:
        return await self._run(cmd.end_run(run, outcome))

    async def cache_set(
        self,
        ns: str,
        key: str | bytes,
        value: str | bytes,
        *,
        ttl_ms: int | None = None,
        cost: Money | None = None,
    ) -> None:
        await self._run(cmd.cache_set(ns, key, value, ttl_ms=ttl_ms, cost=cost))

    async def cache_get(
        self, ns: str, key: str | bytes, *, scope: str | None = None
    ) -> bytes | None:
        return await self._run(cmd.cache_get(ns, key, scope=scope))

    async def cache_delete(self, ns: str, key: str | bytes) -> bool:
        return await self._run(cmd.cache_delete(ns, key))

    async def cache_stats(self, ns: str | None = None) -> t.CacheStats:
        return await self._run(cmd.cache_stats(ns))

    def cached(
        self,
        ns: str,
        key_parts: Any = None,
        *,
        ttl_ms: int | None = None,
        cost: Money | Callable[[Any], Money] | None = None,
        scope: str | None = None,
    ) -> AsyncCached:
        """`async with client.cached(...) as entry:` or `@client.cached(...)` on
        an `async def` (see `Client.cached`)."""
        return AsyncCached(self, ns, key_parts, ttl_ms, cost, scope)

    async def vset(
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
        return await self._run(cmd.vset(ns, vector, value, ttl_ms=ttl_ms, cost=cost, key=key))

    async def vget(
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
        return await self._run(cmd.vget(ns, vector, threshold=threshold, scope=scope, ef=ef))

    async def vdel(self, ns: str, entry_id: int) -> bool:
        return await self._run(cmd.vdel(ns, entry_id))

    async def semantic_config(self, ns: str) -> t.SemanticConfig:
        return await self._run(cmd.semantic_config(ns))

    async def set_semantic_threshold(self, ns: str, threshold: float) -> None:
        await self._run(cmd.configure_semantic(ns, threshold=threshold, ef=None))

    async def configure_semantic(
        self, ns: str, *, threshold: float | None = None, ef: int | None = None
    ) -> None:
        """CACHE.VCONFIG: the namespace's default threshold, the ef of its
        approximate searches (1 to 4096; more is better recall, slower), or
        both."""
        await self._run(cmd.configure_semantic(ns, threshold=threshold, ef=ef))

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
    ) -> AsyncSemanticCache:
        """The semantic cache for texts: `embed(text)` gives a text's vector
        (any callable, or coroutine function, returning a sequence of floats).
        `.get(prompt)` → `SemanticHit | None`, `.set(prompt, answer)` (the
        prompt is the entry's KEY), or as a decorator of a function of one
        text argument returning text."""
        return AsyncSemanticCache(self, ns, embed, threshold, ttl_ms, cost, scope, ef)

    async def count(self, model: str, text: str) -> t.Count:
        return await self._run(cmd.count(model, text))

    async def truncate(self, model: str, text: str, max_tokens: int) -> t.Truncated:
        return await self._run(cmd.truncate(model, text, max_tokens))

    async def set_price(
        self,
        model: str,
        *,
        input: Money,
        output: Money,
        cached: Money | None = None,
        cachewrite: Money | None = None,
        max_output: int | None = None,
    ) -> None:
        await self._run(
            cmd.set_price(
                model,
                input=input,
                output=output,
                cached=cached,
                cachewrite=cachewrite,
                max_output=max_output,
            )
        )

    async def get_price(self, model: str) -> t.Price:
        return await self._run(cmd.get_price(model))

    async def list_prices(self) -> list[t.Price]:
        return await self._run(cmd.list_prices())


def connect(url: str = DEFAULT_URL, **kwargs: Any) -> AsyncClient:
    return AsyncClient(url, **kwargs)


class AsyncReservation(ReservationBase):
    """What `AsyncClient.reserve` returns: `async with` it to hold."""

    def __init__(
        self,
        client: AsyncClient,
        call: Call[t.Grant | t.Denied],
        wait: bool,
        wait_max: float,
    ) -> None:
        super().__init__(call, wait, wait_max)
        self._client = client
        self.hold: AsyncHold | None = None

    async def __aenter__(self) -> AsyncHold:
        deadline = self._deadline()
        while True:
            reply = await self._client._run(self._call)
            if isinstance(reply, t.Grant):
                self.hold = AsyncHold(self._client, reply)
                return self.hold
            pause = self._pause(reply, deadline)
            if pause is None:
                raise errors.BudgetExceeded(reply)
            await asyncio.sleep(pause)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.hold is None:
            return
        await self.hold.close_streams()
        if self.hold.settled is None:
            try:
                await self.hold.release()
            except errors.SpendbError:
                if exc is None:
                    raise


class AsyncHold(HoldBase):
    """A granted hold (`HoldBase`), settled with awaits."""

    def __init__(self, client: AsyncClient, grant: t.Grant) -> None:
        super().__init__(grant)
        self._client = client
        self._streams: list[AsyncGenerator[Any, None]] = []

    async def commit(
        self, input: int, output: int, *, cached: int = 0, cachewrite: int = 0
    ) -> t.Committed:
        return await self.commit_usage(Usage(input, output, cached, cachewrite))

    async def commit_usage(self, response: Any) -> t.Committed:
        done = await self._client._run(cmd.commit(self.id, usage_from(response)))
        self.settled = done
        return done

    async def release(self) -> t.Released:
        done = await self._client._run(cmd.release(self.id))
        self.settled = done
        return done

    def stream(self, events: AsyncIterable[E]) -> AsyncIterator[E]:
        """Pass an async stream through, gathering its usage, and commit when
        it ends (see `stream_charge`)."""

        async def gen() -> AsyncGenerator[E, None]:
            seen = StreamUsage()
            try:
                async for event in events:
                    seen.feed(event)
                    yield event
            finally:
                if self.settled is None:
                    await self.commit_usage(stream_charge(seen, self.grant))

        g = gen()
        self._streams.append(g)
        return g

    async def close_streams(self) -> None:
        for g in self._streams:
            await g.aclose()


class AsyncCacheEntry(CacheEntryBase):
    def __init__(self, cached: AsyncCached, key: str, value: bytes | None) -> None:
        super().__init__(key, value)
        self._cached = cached

    async def set(self, value: str | bytes, *, cost: Money | None = None) -> None:
        c = self._cached
        await c.client.cache_set(c.ns, self.key, value, ttl_ms=c.ttl_ms, cost=c.entry_cost(cost))
        self._stored(value)


class AsyncCached(CachedBase):
    def __init__(
        self,
        client: AsyncClient,
        ns: str,
        key_parts: Any,
        ttl_ms: int | None,
        cost: Money | Callable[[Any], Money] | None,
        scope: str | None,
    ) -> None:
        super().__init__(ns, key_parts, ttl_ms, cost, scope)
        self.client = client

    async def __aenter__(self) -> AsyncCacheEntry:
        key = self.key()
        value = await self.client.cache_get(self.ns, key, scope=self.scope)
        return AsyncCacheEntry(self, key, value)

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def cached_call(*args: P.args, **kwargs: P.kwargs) -> R:
            key = self.call_key(fn, args, kwargs)
            hit = await self.client.cache_get(self.ns, key, scope=self.scope)
            if hit is not None:
                result: R = json.loads(hit)
                return result
            result = await fn(*args, **kwargs)
            await self.client.cache_set(
                self.ns, key, json.dumps(result), ttl_ms=self.ttl_ms, cost=self.cost_of(result)
            )
            return result

        return cached_call


class AsyncSemanticCache(SemanticBase):
    """What `AsyncClient.semantic_cache` returns (`embed` may be a coroutine
    function)."""

    def __init__(
        self,
        client: AsyncClient,
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

    async def _vector(self, text: str) -> Sequence[float]:
        v = self.embed(text)
        if inspect.isawaitable(v):
            v = await v
        vector: Sequence[float] = v
        return vector

    async def get(self, text: str) -> t.SemanticHit | None:
        return await self.client.vget(
            self.ns,
            await self._vector(text),
            threshold=self.threshold,
            scope=self.scope,
            ef=self.ef,
        )

    async def set(self, text: str, value: str | bytes, *, cost: Money | None = None) -> int:
        return await self.client.vset(
            self.ns,
            await self._vector(text),
            value,
            ttl_ms=self.ttl_ms,
            cost=self.cost if cost is None else cost,
            key=text,
        )

    def __call__(self, fn: Callable[[str], Awaitable[str]]) -> Callable[[str], Awaitable[str]]:
        @functools.wraps(fn)
        async def answer(text: str) -> str:
            hit = await self.get(text)
            if hit is not None:
                return hit.value.decode()
            value = await fn(text)
            await self.set(text, value)
            return value

        return answer
