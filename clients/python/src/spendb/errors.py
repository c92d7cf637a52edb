"""The exceptions the client raises: one class per spendb error code.

spendb answers a refused command with one line, code first (docs/PROTOCOL.md,
"Errors"). A *denial* is not an error on the wire (it is a reply with
`status denied`); the client raises `BudgetExceeded` for it only where an
idiom asks for a hold and cannot go on without one (`with client.reserve(...)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Denied, Step


class SpendbError(Exception):
    """Anything spendb refused, or could not be asked. `code` is the server's
    error code (`ERR`, `UNKNOWN`, …) or `None` for a client-side failure."""

    code: str | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.code else self.message


class InvalidRequest(SpendbError):
    """`ERR`: bad syntax or a value out of bounds (HTTP 422)."""

    code = "ERR"


class NotFound(SpendbError):
    """`UNKNOWN`: no such hold, run, budget or alert for this caller (404)."""

    code = "UNKNOWN"


class AlreadyExists(SpendbError):
    """`EXISTS`: an id reused with other arguments (409)."""

    code = "EXISTS"


class HoldStateError(SpendbError):
    """`STATE`: the hold's state forbids it, e.g. COMMIT of a released hold (409)."""

    code = "STATE"


class NoPrice(SpendbError):
    """`NOPRICE`: the model has no price (PRICE.SET it, or start the server with
    `--default-price`) (422)."""

    code = "NOPRICE"


class Forbidden(SpendbError):
    """`NOPERM`: a scope or command outside this user's rights (403)."""

    code = "NOPERM"


class Unauthorized(SpendbError):
    """`NOAUTH` / `WRONGPASS`: not authenticated, or a wrong user or password (401)."""

    code = "NOAUTH"


class ProtocolVersionError(SpendbError):
    """`NOPROTO`: the server refused the protocol version (HELLO)."""

    code = "NOPROTO"


class TooBig(SpendbError):
    """`TOOBIG`: over a size limit of the front end; the server closed the connection (413)."""

    code = "TOOBIG"


class StorageError(SpendbError):
    """`IOERR`: the disk refused the write; nothing was applied, so retrying
    (with the same id or a new one) is safe (503)."""

    code = "IOERR"


class ShuttingDown(SpendbError):
    """`SHUTDOWN`: the server is stopping (503)."""

    code = "SHUTDOWN"


class ClusterDown(SpendbError):
    """`CLUSTERDOWN`: cluster mode could not reach etcd for this command (503)."""

    code = "CLUSTERDOWN"


class Unavailable(SpendbError):
    """The server could not be reached (or the connection broke) after the
    client's retries. For a RESERVE, COMMIT or RELEASE the id was kept, so the
    call can be repeated as is: it is applied at most once."""


class BudgetExceeded(SpendbError):
    """A RESERVE was denied. `denied` is the full reply: which limit, how much
    is left, why, and `retry_after` (seconds, `None` when only a larger limit
    would let it through)."""

    code = None

    def __init__(self, denied: Denied) -> None:
        retry = (
            "never (the request is larger than the limit)"
            if denied.retry_after is None
            else f"{denied.retry_after:.3f} s"
        )
        super().__init__(
            f"budget exceeded: {denied.scope} {denied.limit} ({denied.reason}), "
            f"remaining {denied.remaining}, retry after {retry}"
        )
        self.denied = denied


class LoopDetected(SpendbError):
    """The loop guard denied a STEP (`reason` is `max_steps` or `repeated`)."""

    code = None

    def __init__(self, step: Step) -> None:
        super().__init__(
            f"loop guard: run {step.run} denied ({step.reason}) after {step.steps} steps, "
            f"{step.repeats} repeats"
        )
        self.step = step


_BY_CODE: dict[str, type[SpendbError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        NotFound,
        AlreadyExists,
        HoldStateError,
        NoPrice,
        Forbidden,
        Unauthorized,
        ProtocolVersionError,
        TooBig,
        StorageError,
        ShuttingDown,
        ClusterDown,
    )
    if cls.code is not None
}
_BY_CODE["WRONGPASS"] = Unauthorized


def from_reply(line: str, code: str | None = None) -> SpendbError:
    """The exception for one error line of the server (`"UNKNOWN hold h1"`).

    redis-py strips the code of the errors it knows (`ERR`, `NOPERM`,
    `NOAUTH`, …) and passes it separately; the others arrive whole."""
    if code is None:
        head, _, rest = line.partition(" ")
        if head.isupper() and head in _BY_CODE:
            code, line = head, rest
    cls = _BY_CODE.get(code or "", SpendbError)
    return cls(line, code)
