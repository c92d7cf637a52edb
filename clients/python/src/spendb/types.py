"""Typed replies: one dataclass per reply shape of docs/PROTOCOL.md.

A reply with several fields is a RESP3 map or a RESP2 flat `field value …`
array; `fields()` turns either into a dict, and each class's `from_reply`
reads the fields it documents. Money is `Decimal` (spendb sends exact decimal
strings), times are ms since the Unix epoch (server time), counts are `int`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

Fields = dict[str, Any]


def fields(reply: Any) -> Fields:
    """A multi-field reply as a dict with `str` keys (values untouched)."""
    if isinstance(reply, Mapping):
        return {_text(k): v for k, v in reply.items()}
    if isinstance(reply, Sequence) and not isinstance(reply, (bytes, str)):
        if len(reply) % 2:
            raise ValueError(f"a field/value reply has an odd length: {reply!r}")
        return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
    raise ValueError(f"expected a map or a field/value array, got {reply!r}")


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _opt_text(v: Any) -> str | None:
    return None if v is None else _text(v)


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    return int(_text(v))


def _opt_int(v: Any) -> int | None:
    return None if v is None else _int(v)


def _money(v: Any) -> Decimal:
    return Decimal(_text(v))


def _amount(v: Any) -> int | Decimal:
    """A limit's figure: tokens and requests are integers, COST is money."""
    return v if isinstance(v, int) else Decimal(_text(v))


@dataclass(frozen=True)
class Grant:
    """RESERVE granted: the hold now takes `tokens` and `cost` from every
    limit on the scope and its ancestors until it is committed, released or
    expires. Call the provider with `model` (a FALLBACK may have chosen it)
    and at most `output` output tokens."""

    hold: str
    model: str
    tokens: int
    output: int
    output_from: str
    cost: Decimal
    expires_at: int

    @classmethod
    def from_reply(cls, f: Fields) -> Grant:
        return cls(
            hold=_text(f["hold"]),
            model=_text(f["model"]),
            tokens=_int(f["tokens"]),
            output=_int(f["output"]),
            output_from=_text(f["output_from"]),
            cost=_money(f["cost"]),
            expires_at=_int(f["expires_at"]),
        )


@dataclass(frozen=True)
class Denied:
    """RESERVE denied (nothing was held). `limit` is the most binding limit
    (`"TOKENS PER DAY"`) on `scope`; `reason` is `used`, `held`, `limit`, or in
    cluster mode `grant`, `unreported`, `store_unreachable`."""

    hold: str
    model: str
    scope: str
    limit: str
    remaining: int | Decimal
    held: int | Decimal
    reason: str
    retry_after_ms: int
    tokens: int
    cost: Decimal

    @property
    def retry_after(self) -> float | None:
        """Seconds until the request would fit if nothing else happened;
        `None` when only a larger limit lets it through (`reason` `limit`)."""
        return None if self.retry_after_ms < 0 else self.retry_after_ms / 1000

    @classmethod
    def from_reply(cls, f: Fields) -> Denied:
        return cls(
            hold=_text(f["hold"]),
            model=_text(f["model"]),
            scope=_text(f["scope"]),
            limit=_text(f["limit"]),
            remaining=_amount(f["remaining"]),
            held=_amount(f["held"]),
            reason=_text(f["reason"]),
            retry_after_ms=_int(f["retry_after_ms"]),
            tokens=_int(f["tokens"]),
            cost=_money(f["cost"]),
        )


def reservation(reply: Any) -> Grant | Denied:
    f = fields(reply)
    return Grant.from_reply(f) if _text(f["status"]) == "granted" else Denied.from_reply(f)


@dataclass(frozen=True)
class Committed:
    """COMMIT: what the call cost, what of the hold came back (`released`),
    and what went beyond it (`overrun`). `late`: the hold had expired."""

    hold: str
    tokens: int
    cost: Decimal
    released: Decimal
    released_tokens: int
    overrun: Decimal
    overrun_tokens: int
    late: bool

    @classmethod
    def from_reply(cls, reply: Any) -> Committed:
        f = fields(reply)
        return cls(
            hold=_text(f["hold"]),
            tokens=_int(f["tokens"]),
            cost=_money(f["cost"]),
            released=_money(f["released"]),
            released_tokens=_int(f["released_tokens"]),
            overrun=_money(f["overrun"]),
            overrun_tokens=_int(f["overrun_tokens"]),
            late=_int(f["late"]) == 1,
        )


@dataclass(frozen=True)
class Released:
    """RELEASE: `status` is `released`, or `expired` if the hold had already
    expired (then nothing more comes back)."""

    hold: str
    status: Literal["released", "expired"]
    released: Decimal
    released_tokens: int

    @classmethod
    def from_reply(cls, reply: Any) -> Released:
        f = fields(reply)
        status = _text(f["status"])
        if status not in ("released", "expired"):
            raise ValueError(f"RELEASE answered status {status!r}")
        return cls(
            hold=_text(f["hold"]),
            status="released" if status == "released" else "expired",
            released=_money(f["released"]),
            released_tokens=_int(f["released_tokens"]),
        )


@dataclass(frozen=True)
class HoldInfo:
    """HOLD.GET. `status`: `open`, `committed`, `released`, `expired`; the
    `actual_*` fields and `late` only once committed."""

    hold: str
    status: str
    scope: str
    model: str
    input: int
    output: int
    tokens: int
    cost: Decimal
    created_at: int
    expires_at: int
    ended_at: int | None
    actual_tokens: int | None = None
    actual_cost: Decimal | None = None
    late: bool | None = None

    @classmethod
    def from_reply(cls, reply: Any) -> HoldInfo:
        f = fields(reply)
        return cls(
            hold=_text(f["hold"]),
            status=_text(f["status"]),
            scope=_text(f["scope"]),
            model=_text(f["model"]),
            input=_int(f["input"]),
            output=_int(f["output"]),
            tokens=_int(f["tokens"]),
            cost=_money(f["cost"]),
            created_at=_int(f["created_at"]),
            expires_at=_int(f["expires_at"]),
            ended_at=_opt_int(f.get("ended_at")),
            actual_tokens=_opt_int(f.get("actual_tokens")),
            actual_cost=None if f.get("actual_cost") is None else _money(f["actual_cost"]),
            late=None if f.get("late") is None else _int(f["late"]) == 1,
        )


@dataclass(frozen=True)
class LimitState:
    """One limit and its figures (BUDGET.GET, BALANCE). `window` reads
    `PER DAY`, `PER MONTH TZ Europe/Berlin`, `ROLLING 1m`, …; COST figures are
    `Decimal`, the others `int`. `scope` is set in BALANCE (the limit may be an
    ancestor's). `resets_at` is `None` for TOTAL."""

    dim: str
    window: str
    limit: int | Decimal
    used: int | Decimal
    held: int | Decimal
    remaining: int | Decimal
    resets_at: int | None
    scope: str | None = None

    @classmethod
    def from_reply(cls, reply: Any) -> LimitState:
        f = fields(reply)
        return cls(
            dim=_text(f["dim"]),
            window=_text(f["window"]),
            limit=_amount(f["limit"]),
            used=_amount(f["used"]),
            held=_amount(f["held"]),
            remaining=_amount(f["remaining"]),
            resets_at=_opt_int(f.get("resets_at")),
            scope=_opt_text(f.get("scope")),
        )


@dataclass(frozen=True)
class Budget:
    """BUDGET.GET: a scope's own limits."""

    scope: str
    limits: list[LimitState]

    @classmethod
    def from_reply(cls, reply: Any) -> Budget:
        f = fields(reply)
        return cls(scope=_text(f["scope"]), limits=[LimitState.from_reply(x) for x in f["limits"]])


@dataclass(frozen=True)
class Totals:
    """Usage figures of a scope and everything below it."""

    tokens: int
    input: int
    output: int
    requests: int
    cost: Decimal

    @classmethod
    def from_reply(cls, reply: Any) -> Totals:
        f = fields(reply)
        return cls(
            tokens=_int(f["tokens"]),
            input=_int(f["input"]),
            output=_int(f["output"]),
            requests=_int(f["requests"]),
            cost=_money(f["cost"]),
        )


@dataclass(frozen=True)
class Balance:
    """BALANCE: what the scope (and everything below it) spent and holds,
    what cache hits saved, and every limit on it and its ancestors."""

    scope: str
    spent: Totals
    held: Totals
    open_holds: int
    loop_denials: int
    saved: Decimal
    limits: list[LimitState] = field(default_factory=list)

    @classmethod
    def from_reply(cls, reply: Any) -> Balance:
        f = fields(reply)
        return cls(
            scope=_text(f["scope"]),
            spent=Totals.from_reply(f["spent"]),
            held=Totals.from_reply(f["held"]),
            open_holds=_int(f["open_holds"]),
            loop_denials=_int(f["loop_denials"]),
            saved=_money(f["saved"]),
            limits=[LimitState.from_reply(x) for x in f["limits"]],
        )


@dataclass(frozen=True)
class Step:
    """STEP (the loop guard). `allowed` is False when denied; `reason` is then
    `max_steps` or `repeated`. `remaining` is set only when allowed."""

    run: str
    allowed: bool
    steps: int
    repeats: int
    remaining: int | None = None
    reason: str | None = None

    @classmethod
    def from_reply(cls, reply: Any) -> Step:
        f = fields(reply)
        return cls(
            run=_text(f["run"]),
            allowed=_text(f["status"]) == "ok",
            steps=_int(f["steps"]),
            repeats=_int(f["repeats"]),
            remaining=_opt_int(f.get("remaining")),
            reason=_opt_text(f.get("reason")),
        )


@dataclass(frozen=True)
class RunEnded:
    """RUN.END: the run's steps, and the outcome as given."""

    run: str
    steps: int
    outcome: str | None

    @classmethod
    def from_reply(cls, reply: Any) -> RunEnded:
        f = fields(reply)
        return cls(run=_text(f["run"]), steps=_int(f["steps"]), outcome=_opt_text(f.get("outcome")))


@dataclass(frozen=True)
class CacheStats:
    """CACHE.STATS, for one namespace or all: the exact cache's figures, then
    the semantic cache's (`semantic_*`; `semantic_dimension` is 0 over several
    namespaces). Counters start at each server start."""

    hits: int
    misses: int
    hit_rate: float
    entries: int
    bytes: int
    evictions: int
    expired: int
    saved: Decimal
    semantic_entries: int = 0
    semantic_dimension: int = 0
    semantic_hits: int = 0
    semantic_misses: int = 0
    semantic_hit_rate: float = 0.0
    semantic_saved: Decimal = Decimal(0)
    semantic_bytes: int = 0
    semantic_evictions: int = 0
    semantic_expired: int = 0
    semantic_index_bytes: int = 0
    semantic_approximate: int = 0
    semantic_building: int = 0

    @classmethod
    def from_reply(cls, reply: Any) -> CacheStats:
        f = fields(reply)
        return cls(
            hits=_int(f["hits"]),
            misses=_int(f["misses"]),
            hit_rate=float(_text(f["hit_rate"])),
            entries=_int(f["entries"]),
            bytes=_int(f["bytes"]),
            evictions=_int(f["evictions"]),
            expired=_int(f["expired"]),
            saved=_money(f["saved"]),
            semantic_entries=_int(f.get("semantic_entries", 0)),
            semantic_dimension=_int(f.get("semantic_dimension", 0)),
            semantic_hits=_int(f.get("semantic_hits", 0)),
            semantic_misses=_int(f.get("semantic_misses", 0)),
            semantic_hit_rate=float(_text(f.get("semantic_hit_rate", "0"))),
            semantic_saved=_money(f.get("semantic_saved", "0")),
            semantic_bytes=_int(f.get("semantic_bytes", 0)),
            semantic_evictions=_int(f.get("semantic_evictions", 0)),
            semantic_expired=_int(f.get("semantic_expired", 0)),
            semantic_index_bytes=_int(f.get("semantic_index_bytes", 0)),
            semantic_approximate=_int(f.get("semantic_approximate", 0)),
            semantic_building=_int(f.get("semantic_building", 0)),
        )


@dataclass(frozen=True)
class Count:
    """COUNT: tokens of a text in the model's tiktoken encoding. `estimate`:
    the model's own tokenizer is not tiktoken (Claude, Gemini, …)."""

    tokens: int
    encoding: str
    estimate: bool

    @classmethod
    def from_reply(cls, reply: Any) -> Count:
        f = fields(reply)
        return cls(
            tokens=_int(f["tokens"]),
            encoding=_text(f["encoding"]),
            estimate=_int(f["estimate"]) == 1,
        )


@dataclass(frozen=True)
class Truncated:
    """TRUNCATE: the longest prefix of whole tokens that fits."""

    text: str
    tokens: int
    truncated: bool
    encoding: str
    estimate: bool

    @classmethod
    def from_reply(cls, reply: Any) -> Truncated:
        f = fields(reply)
        return cls(
            text=_text(f["text"]),
            tokens=_int(f["tokens"]),
            truncated=_int(f["truncated"]) == 1,
            encoding=_text(f["encoding"]),
            estimate=_int(f["estimate"]) == 1,
        )


@dataclass(frozen=True)
class Spent:
    """SPEND: usage booked without a hold."""

    id: str | None
    tokens: int
    cost: Decimal

    @classmethod
    def from_reply(cls, reply: Any) -> Spent:
        f = fields(reply)
        return cls(id=_opt_text(f.get("id")), tokens=_int(f["tokens"]), cost=_money(f["cost"]))


@dataclass(frozen=True)
class Price:
    """PRICE.GET: USD per million tokens; `matched` is the table entry used
    (family fallback) or `default`; `max_output` in tokens, `None` if unknown."""

    model: str
    matched: str
    input: Decimal
    output: Decimal
    cached: Decimal
    cachewrite: Decimal
    max_output: int | None

    @classmethod
    def from_reply(cls, reply: Any) -> Price:
        f = fields(reply)
        return cls(
            model=_text(f["model"]),
            matched=_text(f["matched"]),
            input=_money(f["input"]),
            output=_money(f["output"]),
            cached=_money(f["cached"]),
            cachewrite=_money(f["cachewrite"]),
            max_output=_opt_int(f.get("max_output")),
        )


@dataclass(frozen=True)
class SemanticHit:
    """CACHE.VGET's hit: the value stored under the nearest embedding, its
    cosine similarity to the query (`score`), the KEY it was stored with (if
    any) and its id (for `vdel`)."""

    value: bytes
    score: float
    key: str | None
    id: int

    @classmethod
    def from_reply(cls, reply: Any) -> SemanticHit | None:
        if reply is None:
            return None
        f = fields(reply)
        value = f["value"]
        return cls(
            value=value if isinstance(value, bytes) else _text(value).encode(),
            score=float(_text(f["score"])),
            key=_opt_text(f.get("key")),
            id=_int(f["id"]),
        )


@dataclass(frozen=True)
class SemanticConfig:
    """CACHE.VCONFIG: the namespace's default threshold, its dimension (0
    until the first vector is stored), and the candidates its approximate
    searches keep (ef: more is better recall and slower)."""

    threshold: float
    dimension: int
    ef: int

    @classmethod
    def from_reply(cls, reply: Any) -> SemanticConfig:
        f = fields(reply)
        return cls(
            threshold=float(_text(f["threshold"])),
            dimension=_int(f["dimension"]),
            ef=_int(f["ef"]),
        )


@dataclass(frozen=True)
class Limit:
    """One limit to set with `set_budget`: `Limit("TOKENS", 1_000_000, "PER DAY")`,
    `Limit("REQUESTS", 60, "ROLLING 1m")`, `Limit("COST", "25.00", "PER MONTH TZ
    Europe/Berlin")`. `dim`: TOKENS, INPUT, OUTPUT, REQUESTS, COST."""

    dim: str
    amount: int | Decimal | str
    window: str

    def args(self) -> list[str]:
        return [self.dim, str(self.amount), *self.window.split()]
