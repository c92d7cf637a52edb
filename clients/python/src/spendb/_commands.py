"""Every command the clients send: its arguments, how its reply is read, and
whether it may be sent again after a lost connection.

Shared by the sync and asyncio clients, which only differ in how they wait
(`Client._run` and `AsyncClient._run`). A command is *retryable* when sending
it twice has the effect of sending it once: RESERVE, COMMIT and RELEASE carry
the hold's id, SPEND carries an id, BUDGET.SET and PRICE.SET replace, and
reads change nothing. STEP, RUN.END, CACHE.GET with SCOPE (books savings) and
the deletes (the second answer differs) are not retried.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from . import types as t
from .usage import Usage

if sys.version_info >= (3, 14):
    from uuid import uuid7
else:
    from uuid6 import uuid7

T = TypeVar("T")
Arg = str | bytes | int
Money = Decimal | str | int | float


@dataclass(frozen=True)
class Call(Generic[T]):
    args: list[Arg]
    parse: Callable[[Any], T]
    retryable: bool


def new_id() -> str:
    """A fresh hold or spend id: a UUIDv7 (time-ordered, so the server's
    ledger and your logs sort the same way)."""
    return str(uuid7())


def _money(v: Money) -> str:
    if isinstance(v, float):
        # A float's repr can carry more than the 9 decimals spendb takes.
        return format(Decimal(repr(v)).quantize(Decimal("1e-9")).normalize(), "f")
    return str(v)


def _ok(reply: Any) -> None:
    if reply not in (b"OK", "OK", True):
        raise ValueError(f"expected OK, got {reply!r}")


def _bool(reply: Any) -> bool:
    return int(reply) == 1


def _texts(reply: Any) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]


def ping() -> Call[bool]:
    return Call(["PING"], lambda r: r in (b"PONG", "PONG", True), True)


def set_budget(scope: str, limits: Sequence[t.Limit]) -> Call[None]:
    if not limits:
        raise ValueError("set_budget needs at least one Limit (use delete_budget to remove them)")
    args: list[Arg] = ["BUDGET.SET", scope]
    for limit in limits:
        args += limit.args()
    return Call(args, _ok, True)


def get_budget(scope: str) -> Call[t.Budget]:
    return Call(["BUDGET.GET", scope], t.Budget.from_reply, True)


def delete_budget(scope: str) -> Call[bool]:
    return Call(["BUDGET.DEL", scope], _bool, False)


def list_budgets(prefix: str | None) -> Call[list[str]]:
    args: list[Arg] = ["BUDGET.LIST"]
    return Call(args + ([prefix] if prefix else []), _texts, True)


OutputSpec = int | Literal["auto"] | None


def reserve(
    hold: str,
    scope: str,
    model: str,
    *,
    input: int | None,
    text: str | None,
    max_output: OutputSpec,
    fallback: Iterable[str],
    ttl_ms: int | None,
    run: str | None,
) -> Call[t.Grant | t.Denied]:
    if (input is None) == (text is None):
        raise ValueError("reserve takes input= (a token count) or text= (the prompt), not both")
    args: list[Arg] = ["RESERVE", hold, scope, model]
    fallback = list(fallback)
    if fallback:
        args += ["FALLBACK", ",".join(fallback)]
    args += ["INPUT", input] if input is not None else ["TEXT", text or ""]
    if max_output == "auto":
        args += ["OUTPUT", "AUTO"]
    elif max_output is not None:
        args += ["OUTPUT", max_output]
    if ttl_ms is not None:
        args += ["TTL", ttl_ms]
    if run is not None:
        args += ["RUN", run]
    return Call(args, t.reservation, True)


def _usage_args(u: Usage) -> list[Arg]:
    args: list[Arg] = ["INPUT", u.input, "OUTPUT", u.output]
    if u.cached:
        args += ["CACHED", u.cached]
    if u.cachewrite:
        args += ["CACHEWRITE", u.cachewrite]
    return args


def commit(hold: str, usage: Usage) -> Call[t.Committed]:
    return Call(["COMMIT", hold, *_usage_args(usage)], t.Committed.from_reply, True)


def release(hold: str) -> Call[t.Released]:
    return Call(["RELEASE", hold], t.Released.from_reply, True)


def get_hold(hold: str) -> Call[t.HoldInfo]:
    return Call(["HOLD.GET", hold], t.HoldInfo.from_reply, True)


def spend(
    scope: str, model: str, usage: Usage, *, id: str | None, run: str | None
) -> Call[t.Spent]:
    args: list[Arg] = ["SPEND", scope, model, *_usage_args(usage), "ID", id or new_id()]
    if run is not None:
        args += ["RUN", run]
    return Call(args, t.Spent.from_reply, True)


def step(
    run: str,
    signature: str | bytes,
    *,
    scope: str | None,
    max_steps: int | None,
    repeats: int | None,
    window: int | None,
) -> Call[t.Step]:
    args: list[Arg] = ["STEP", run, signature]
    for name, value in (("SCOPE", scope), ("MAX", max_steps), ("REPEATS", repeats)):
        if value is not None:
            args += [name, value]
    if window is not None:
        args += ["WINDOW", window]
    return Call(args, t.Step.from_reply, False)


def end_run(run: str, outcome: Literal["success", "failure"] | None) -> Call[t.RunEnded]:
    args: list[Arg] = ["RUN.END", run]
    if outcome is not None:
        args += ["OUTCOME", outcome]
    return Call(args, t.RunEnded.from_reply, False)


def cache_key(key_parts: Any) -> str:
    """The cache key for any JSON-able parts (`["gpt-4o", prompt]`): a canonical
    JSON text; the server stores its SHA-256."""
    if isinstance(key_parts, str):
        return key_parts
    return json.dumps(key_parts, sort_keys=True, separators=(",", ":"), default=str)


def cache_set(
    ns: str, key: str | bytes, value: str | bytes, *, ttl_ms: int | None, cost: Money | None
) -> Call[None]:
    args: list[Arg] = ["CACHE.SET", ns, key, value]
    if ttl_ms is not None:
        args += ["TTL", ttl_ms]
    if cost is not None:
        args += ["COST", _money(cost)]
    return Call(args, _ok, True)


def cache_get(ns: str, key: str | bytes, *, scope: str | None) -> Call[bytes | None]:
    args: list[Arg] = ["CACHE.GET", ns, key]
    if scope is not None:
        args += ["SCOPE", scope]

    def value(reply: Any) -> bytes | None:
        return None if reply is None else bytes(reply)

    return Call(args, value, scope is None)


def cache_delete(ns: str, key: str | bytes) -> Call[bool]:
    return Call(["CACHE.DEL", ns, key], _bool, False)


def cache_stats(ns: str | None) -> Call[t.CacheStats]:
    args: list[Arg] = ["CACHE.STATS"]
    return Call(args + ([ns] if ns else []), t.CacheStats.from_reply, True)


Vector = Sequence[float]


def fp32(vector: Vector) -> bytes:
    """A vector as CACHE.V*'s FP32 blob: little-endian float32s."""
    return struct.pack(f"<{len(vector)}f", *vector)


def vset(
    ns: str,
    vector: Vector,
    value: str | bytes,
    *,
    ttl_ms: int | None,
    cost: Money | None,
    key: str | bytes | None,
) -> Call[int]:
    args: list[Arg] = ["CACHE.VSET", ns, "FP32", fp32(vector), value]
    if ttl_ms is not None:
        args += ["TTL", ttl_ms]
    if cost is not None:
        args += ["COST", _money(cost)]
    if key is not None:
        args += ["KEY", key]
    # Not retried: a second VSET without KEY would store a second entry.
    return Call(args, int, key is not None)


def vget(
    ns: str,
    vector: Vector,
    *,
    threshold: float | None,
    scope: str | None,
    ef: int | None = None,
) -> Call[t.SemanticHit | None]:
    args: list[Arg] = ["CACHE.VGET", ns, "FP32", fp32(vector)]
    if threshold is not None:
        args += ["THRESHOLD", repr(float(threshold))]
    if ef is not None:
        args += ["EF", int(ef)]
    if scope is not None:
        args += ["SCOPE", scope]
    return Call(args, t.SemanticHit.from_reply, scope is None)


def vdel(ns: str, entry_id: int) -> Call[bool]:
    return Call(["CACHE.VDEL", ns, entry_id], _bool, False)


def semantic_config(ns: str) -> Call[t.SemanticConfig]:
    return Call(["CACHE.VCONFIG", ns], t.SemanticConfig.from_reply, True)


def configure_semantic(ns: str, *, threshold: float | None, ef: int | None) -> Call[None]:
    args: list[Arg] = ["CACHE.VCONFIG", ns]
    if threshold is not None:
        args += ["THRESHOLD", repr(float(threshold))]
    if ef is not None:
        args += ["EF", int(ef)]
    if len(args) == 2:
        raise ValueError("configure_semantic needs a threshold, an ef, or both")
    return Call(args, _ok, True)


def count(model: str, text: str) -> Call[t.Count]:
    return Call(["COUNT", model, text], t.Count.from_reply, True)


def truncate(model: str, text: str, max_tokens: int) -> Call[t.Truncated]:
    return Call(["TRUNCATE", model, text, max_tokens], t.Truncated.from_reply, True)


def balance(scope: str) -> Call[t.Balance]:
    return Call(["BALANCE", scope], t.Balance.from_reply, True)


def set_price(
    model: str,
    *,
    input: Money,
    output: Money,
    cached: Money | None,
    cachewrite: Money | None,
    max_output: int | None,
) -> Call[None]:
    args: list[Arg] = ["PRICE.SET", model, "INPUT", _money(input), "OUTPUT", _money(output)]
    if cached is not None:
        args += ["CACHED", _money(cached)]
    if cachewrite is not None:
        args += ["CACHEWRITE", _money(cachewrite)]
    if max_output is not None:
        args += ["MAXOUTPUT", max_output]
    return Call(args, _ok, True)


def get_price(model: str) -> Call[t.Price]:
    return Call(["PRICE.GET", model], t.Price.from_reply, True)


def list_prices() -> Call[list[t.Price]]:
    return Call(["PRICE.LIST"], lambda r: [t.Price.from_reply(x) for x in r], True)
