"""What the SDK wrappers (`spendb.openai`, `spendb.anthropic`) share: how a
create call is budgeted, sync and async, and how a prompt's text is read out
of a request for the server to count.

A budgeted create: RESERVE (the prompt's text, the call's max output, the
fallbacks), call the SDK with the granted model, then COMMIT the response's
usage; an exception from the SDK releases the hold. A stream is passed
through and committed when it ends (`Hold.stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .aio import AsyncClient, AsyncHold
from .client import Client, Hold

# Keys whose values are not text the model reads as tokens of the prompt
# (images and files are sent as data or links; they are not counted here).
_NOT_TEXT = frozenset(
    {"role", "type", "id", "image_url", "source", "data", "file_data", "url", "cache_control"}
)


def prompt_text(*parts: Any) -> str:
    """Every string in the request parts given (messages, system, tools, …),
    one per line: what RESERVE TEXT counts. An estimate for budgeting (the
    provider adds a few tokens per message; images are not counted); the
    COMMIT puts the real usage in its place."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                if k not in _NOT_TEXT:
                    walk(x)
        elif isinstance(v, Iterable) and not isinstance(v, (bytes, bytearray)):
            for x in v:
                walk(x)
        elif hasattr(v, "model_dump"):  # a pydantic object of the SDK
            walk(v.model_dump(exclude_none=True))

    for p in parts:
        walk(p)
    return "\n".join(out)


def is_async_pair(sdk_client: Any, spendb: Client | AsyncClient) -> bool:
    """Whether an SDK client and a spendb client are both asyncio (True) or
    both sync (False); a mixed pair is refused when wrapping, not at the first
    call. The SDKs name their asyncio clients Async* (AsyncOpenAI,
    AsyncAzureOpenAI, AsyncAnthropic, …)."""
    sdk_async = type(sdk_client).__name__.startswith("Async")
    if sdk_async and not isinstance(spendb, AsyncClient):
        raise TypeError(
            f"{type(sdk_client).__name__} needs a spendb.AsyncClient (spendb.aio.connect)"
        )
    if not sdk_async and not isinstance(spendb, Client):
        raise TypeError(f"{type(sdk_client).__name__} needs a spendb.Client (spendb.connect)")
    return sdk_async


@dataclass
class Budgeting:
    """A wrapper's settings. Per call, `spendb_scope=`, `spendb_run=`,
    `spendb_fallback=` and `spendb_hold_id=` override them (and are not sent
    to the provider)."""

    client: Client | AsyncClient
    scope: str
    run: str | None = None
    fallback: tuple[str, ...] = ()
    ttl_ms: int | None = None
    wait: bool = False
    auto_max_output: bool = False

    def reserve_args(self, kw: dict[str, Any], max_output: int | None) -> dict[str, Any]:
        fallback = kw.pop("spendb_fallback", None)
        args: dict[str, Any] = {
            "scope": kw.pop("spendb_scope", None) or self.scope,
            "model": kw["model"],
            "run": kw.pop("spendb_run", None) or self.run,
            "hold_id": kw.pop("spendb_hold_id", None),
            "fallback": self.fallback if fallback is None else tuple(fallback),
            "ttl_ms": self.ttl_ms,
            "wait": self.wait,
        }
        args["max_output"] = (
            max_output if max_output is not None else ("auto" if self.auto_max_output else None)
        )
        return args


@dataclass(frozen=True)
class Request:
    """How one SDK method is budgeted: the prompt's text, the max output the
    request asks for, and the request key that carries it (for AUTO)."""

    text: str
    max_output: int | None
    max_output_key: str
    stream_usage_option: bool = False  # OpenAI chat: ask for usage in the stream


def _prepare(kw: dict[str, Any], hold_model: str, output: int, req: Request, auto: bool) -> None:
    kw["model"] = hold_model
    if auto and req.max_output is None:
        kw[req.max_output_key] = output
    if kw.get("stream") and req.stream_usage_option:
        options = dict(kw.get("stream_options") or {})
        options["include_usage"] = True
        kw["stream_options"] = options


def call(b: Budgeting, create: Callable[..., Any], kw: dict[str, Any], req: Request) -> Any:
    assert isinstance(b.client, Client)  # is_async_pair checked it
    args = b.reserve_args(kw, req.max_output)
    hold = b.client.reserve(text=req.text, **args).__enter__()
    _prepare(kw, hold.model, hold.output, req, args["max_output"] == "auto")
    try:
        response = create(**kw)
    except BaseException:
        hold.release()
        raise
    if kw.get("stream"):
        return BudgetedStream(response, hold)
    hold.commit_usage(response)
    return response


async def acall(b: Budgeting, create: Callable[..., Any], kw: dict[str, Any], req: Request) -> Any:
    assert isinstance(b.client, AsyncClient)
    args = b.reserve_args(kw, req.max_output)
    hold = await b.client.reserve(text=req.text, **args).__aenter__()
    _prepare(kw, hold.model, hold.output, req, args["max_output"] == "auto")
    try:
        response = await create(**kw)
    except BaseException:
        await hold.release()
        raise
    if kw.get("stream"):
        return AsyncBudgetedStream(response, hold)
    await hold.commit_usage(response)
    return response


class Delegate:
    """Everything not budgeted is the wrapped object's own."""

    _inner: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BudgetedCreate(Delegate):
    """An SDK resource whose `create` is budgeted; `request` reads a call's
    keyword arguments into a `Request`."""

    def __init__(
        self,
        inner: Any,
        b: Budgeting,
        is_async: bool,
        request: Callable[[dict[str, Any]], Request],
    ) -> None:
        self._inner, self._b, self._async, self._request = inner, b, is_async, request

    def create(self, **kw: Any) -> Any:
        req = self._request(kw)
        if self._async:
            return acall(self._b, self._inner.create, kw, req)
        return call(self._b, self._inner.create, kw, req)


class BudgetedStream:
    """The SDK's stream, passed through; its hold is committed when the stream
    ends or is closed (read it to the end, or close it, or use `with`)."""

    def __init__(self, stream: Any, hold: Hold) -> None:
        self._stream = stream
        self.hold = hold
        self._events = hold.stream(stream)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._events)

    def close(self) -> None:
        self.hold.close_streams()  # commits what the stream reported so far
        if hasattr(self._stream, "close"):
            self._stream.close()

    def __enter__(self) -> BudgetedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncBudgetedStream:
    """`BudgetedStream` for the async SDK clients."""

    def __init__(self, stream: Any, hold: AsyncHold) -> None:
        self._stream = stream
        self.hold = hold
        self._events = hold.stream(stream)

    def __aiter__(self) -> AsyncBudgetedStream:
        return self

    async def __anext__(self) -> Any:
        return await self._events.__anext__()

    async def close(self) -> None:
        await self.hold.close_streams()
        if hasattr(self._stream, "close"):
            await self._stream.close()

    async def __aenter__(self) -> AsyncBudgetedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
