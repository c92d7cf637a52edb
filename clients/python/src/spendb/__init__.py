"""spendb: the spend database for LLM agents — Python client.

    import spendb
    client = spendb.connect("redis://127.0.0.1:7379")
    with client.reserve("org:acme/agent:coder", "gpt-4o", text=prompt, max_output=800) as hold:
        resp = openai_client.chat.completions.create(model=hold.model, ...)
        hold.commit_usage(resp)

`spendb.aio` is the asyncio client; `spendb.openai`, `spendb.anthropic` wrap
those SDKs; `spendb.litellm` is a budget hook for the LiteLLM proxy.
"""

from . import errors, types, usage
from ._base import DEFAULT_URL
from ._commands import new_id
from .aio import AsyncClient
from .client import Client, Hold, Reservation, connect
from .errors import (
    AlreadyExists,
    BudgetExceeded,
    ClusterDown,
    Forbidden,
    HoldStateError,
    InvalidRequest,
    LoopDetected,
    NoPrice,
    NotFound,
    ProtocolVersionError,
    ShuttingDown,
    SpendbError,
    StorageError,
    TooBig,
    Unauthorized,
    Unavailable,
)
from .types import (
    Balance,
    Budget,
    CacheStats,
    Committed,
    Count,
    Denied,
    Grant,
    HoldInfo,
    Limit,
    LimitState,
    Price,
    Released,
    RunEnded,
    SemanticConfig,
    SemanticHit,
    Spent,
    Step,
    Totals,
    Truncated,
)
from .usage import StreamUsage, Usage, usage_from

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AlreadyExists",
    "AsyncClient",
    "Balance",
    "Budget",
    "BudgetExceeded",
    "CacheStats",
    "Client",
    "ClusterDown",
    "Committed",
    "Count",
    "Denied",
    "Forbidden",
    "Grant",
    "Hold",
    "HoldInfo",
    "HoldStateError",
    "InvalidRequest",
    "Limit",
    "LimitState",
    "LoopDetected",
    "NoPrice",
    "NotFound",
    "Price",
    "ProtocolVersionError",
    "Released",
    "Reservation",
    "RunEnded",
    "SemanticConfig",
    "SemanticHit",
    "ShuttingDown",
    "SpendbError",
    "Spent",
    "Step",
    "StorageError",
    "StreamUsage",
    "TooBig",
    "Totals",
    "Truncated",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "connect",
    "errors",
    "new_id",
    "types",
    "usage",
    "usage_from",
]
