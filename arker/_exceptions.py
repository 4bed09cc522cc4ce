"""Every exception the SDK raises. `ArkerError` is the root: one ``except`` catches all.

The tree::

    ArkerError                       code, message, status always set
    ├── ConfigurationError           bad client arguments (also a ValueError)
    ├── APIConnectionError           no usable HTTP response (refused, reset, DNS…)
    │   ├── APITimeoutError          connect or read timeout
    │   └── OutcomeUnknownError      the request may have been carried out; see its key
    ├── ResponseValidationError      the server answered something off-protocol
    ├── RunError                     a run waited for ended without completing
    │   ├── RunFailedError           state failed: the service could not run it
    │   └── RunCancelledError        state cancelled
    └── APIStatusError               the server answered with an error envelope
        ├── BadRequestError              400 bad_request (status 0: refused before sending)
        │   └── UnsupportedError         400 unsupported_*
        ├── AuthenticationError          401 unauthorized
        ├── PaymentRequiredError         402 payment_required
        ├── PermissionDeniedError        403 forbidden
        ├── NotFoundError                404 not_found
        │   └── CommandNotFoundError     404 command_not_found
        ├── ConflictError                409 conflict
        │   └── VmBusyError              409 vm_busy
        ├── PayloadTooLargeError         413 payload_too_large
        ├── RateLimitError               429 rate_limited
        │   └── QuotaExceededError       429 quota_exceeded (e.g. concurrent runs)
        ├── InternalServerError          500 internal
        ├── NotImplementedByServerError  501 not_implemented
        └── ServiceUnavailableError      502/503/504 unavailable

An error code the SDK does not know still raises `APIStatusError` carrying that code.
The status of each code comes from the shared table in `arker._error_codes`. Arguments
the SDK can check itself (a bad sync path, a ``limit`` out of range, a file over the size
limit…) are refused before anything is sent: the error is the class the server would
have answered with, so one ``except BadRequestError`` covers both, but its ``status`` is
``0``, as for every error without an HTTP response (see `refused_before_sending`).
"""

from __future__ import annotations

from typing import ClassVar

from ._error_codes import UNSUPPORTED_PREFIX

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "ArkerError",
    "AuthenticationError",
    "BadRequestError",
    "CommandNotFoundError",
    "ConfigurationError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "NotImplementedByServerError",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ResponseValidationError",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "ServiceUnavailableError",
    "UnsupportedError",
    "VmBusyError",
    "error_for",
    "refused_before_sending",
]


class ArkerError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: Stable machine-readable code (``"not_found"``, ``"vm_busy"``…).
        message: Human-readable text from the server or the SDK.
        status: HTTP status of the response, or ``0`` when there was none (no
            connection, or an argument refused before anything was sent).
    """

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code!r}, message={self.message!r}, status={self.status})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep errors picklable (multiprocessing, Celery): rebuild from the same fields.
        return (_rebuild, (type(self), self.code, self.message, self.status))


def _rebuild(cls: type[ArkerError], code: str, message: str, status: int) -> ArkerError:
    err = ArkerError.__new__(cls)
    ArkerError.__init__(err, code, message, status)
    return err


class ConfigurationError(ArkerError, ValueError):
    """The client was constructed with missing or invalid settings (e.g. no API key).

    Also a `ValueError`, which is what 0.1.0 raised for a missing key.
    """

    def __init__(self, message: str) -> None:
        super().__init__("configuration", message, 0)


class APIConnectionError(ArkerError):
    """No usable HTTP response: connection refused or reset, DNS failure, TLS error."""

    #: Set by the SDK's transport: False only when the request provably never left
    #: (connection refused, connect timeout). Internal; drives `OutcomeUnknownError`.
    _possibly_sent: bool = True

    def __init__(self, message: str, code: str = "connection_error") -> None:
        super().__init__(code, message, 0)


class APITimeoutError(APIConnectionError):
    """The connect or read timeout passed before the server answered."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="timeout")


class OutcomeUnknownError(APIConnectionError):
    """A request that acts (fork, run, write, delete…) may or may not have happened.

    Raised when the retry budget ran out and at least one attempt failed *after* the
    request was (possibly) delivered — a read timeout, a connection reset after
    sending, an answer cut short — so the server may have done the work and only the
    answer was lost. A failure to connect (refused, connect timeout) never raises
    this: such a request was not sent. Reads never raise it: they change nothing.

    A fork or run carries its key: call again with the same ``idempotency_key`` to learn
    the outcome; the server replays the first result for that key instead of forking or
    running again. A request idempotent by construction (a sync write, a delete) has no
    key: repeating it is harmless, or look at its effect (read the file back, list the
    VMs).

    Attributes:
        idempotency_key: The ``Idempotency-Key`` every attempt carried, or `None` for a
            request idempotent by construction.
    """

    def __init__(self, message: str, idempotency_key: str | None) -> None:
        if idempotency_key is not None:
            advice = (
                f"Retry with idempotency_key={idempotency_key!r} to learn its outcome "
                "without repeating it"
            )
        else:
            advice = "Repeating it is harmless, or check its effect"
        super().__init__(
            f"{message}; the request may have been carried out. {advice}",
            code="outcome_unknown",
        )
        self.idempotency_key = idempotency_key

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_outcome_unknown, (self.message, self.idempotency_key))


def _rebuild_outcome_unknown(message: str, idempotency_key: str | None) -> OutcomeUnknownError:
    err = OutcomeUnknownError.__new__(OutcomeUnknownError)
    APIConnectionError.__init__(err, message, code="outcome_unknown")
    err.idempotency_key = idempotency_key
    return err


class ResponseValidationError(ArkerError):
    """The server's answer does not match the protocol (bad JSON, missing field…)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__("invalid_response", message, status)


class RunError(ArkerError):
    """A run ended without completing: ``RunHandle.wait`` (and ``runs.create`` with
    callbacks) raise it. Its code is ``run_<state>``; it has no HTTP status.

    Attributes:
        run_id: The run's id.
        state: Its final state (``failed``, ``cancelled``, or one a newer server added).
        fail_reason: The service's explanation, for a failed run.
        stdout: Standard output the run produced before it ended.
        stderr: Standard error the run produced before it ended.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        state: str,
        fail_reason: str | None = None,
        stdout: bytes = b"",
        stderr: bytes = b"",
    ) -> None:
        super().__init__(f"run_{state}", message)
        self.run_id = run_id
        self.state = state
        self.fail_reason = fail_reason
        self.stdout = stdout
        self.stderr = stderr

    def __reduce__(self) -> tuple[object, ...]:
        fields = (self.message, self.run_id, self.state, self.fail_reason, self.stdout, self.stderr)
        return (_rebuild_run_error, (type(self), *fields))


def _rebuild_run_error(
    cls: type[RunError],
    message: str,
    run_id: str,
    state: str,
    fail_reason: str | None,
    stdout: bytes,
    stderr: bytes,
) -> RunError:
    return cls(
        message,
        run_id=run_id,
        state=state,
        fail_reason=fail_reason,
        stdout=stdout,
        stderr=stderr,
    )


class RunFailedError(RunError):
    """The service could not start or finish the run (``state == "failed"``): see
    ``fail_reason``. A command that exits non-zero is not this: it ``completed``."""


class RunCancelledError(RunError):
    """The run was cancelled (``DELETE`` of the run, from any client) before it ended."""


class APIStatusError(ArkerError):
    """The server answered with an error envelope (or an error status)."""

    #: The code a server sends for this class; `None` on the generic class.
    wire_code: ClassVar[str | None] = None

    def __init__(
        self, code: str, message: str, status: int, *, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message, status)
        #: Seconds the server asked us to wait (``Retry-After``), when it said.
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    wire_code = "bad_request"


class UnsupportedError(BadRequestError):
    """``unsupported_*`` codes, e.g. ``unsupported_region``."""


class AuthenticationError(APIStatusError):
    wire_code = "unauthorized"


class PaymentRequiredError(APIStatusError):
    wire_code = "payment_required"


class PermissionDeniedError(APIStatusError):
    wire_code = "forbidden"


class NotFoundError(APIStatusError):
    wire_code = "not_found"


class CommandNotFoundError(NotFoundError):
    wire_code = "command_not_found"


class ConflictError(APIStatusError):
    wire_code = "conflict"


class VmBusyError(ConflictError):
    """A run is already in progress on that session (or the VM is locked)."""

    wire_code = "vm_busy"


class PayloadTooLargeError(APIStatusError):
    wire_code = "payload_too_large"


class RateLimitError(APIStatusError):
    wire_code = "rate_limited"


class QuotaExceededError(RateLimitError):
    """A scoped limit is full (``quota_exceeded``), e.g. the concurrent runs of an
    organisation or of one VM: retried after the answer's ``Retry-After``."""

    wire_code = "quota_exceeded"


class InternalServerError(APIStatusError):
    wire_code = "internal"


class NotImplementedByServerError(APIStatusError):
    wire_code = "not_implemented"


class ServiceUnavailableError(APIStatusError):
    """HTTP 502/503/504: a gateway or the service is temporarily unavailable."""

    wire_code = "unavailable"


_STATUS_CLASSES: tuple[type[APIStatusError], ...] = (
    BadRequestError,
    AuthenticationError,
    PaymentRequiredError,
    PermissionDeniedError,
    NotFoundError,
    CommandNotFoundError,
    ConflictError,
    VmBusyError,
    PayloadTooLargeError,
    RateLimitError,
    QuotaExceededError,
    InternalServerError,
    NotImplementedByServerError,
    ServiceUnavailableError,
)
_CLASS_BY_CODE: dict[str, type[APIStatusError]] = {
    cls.wire_code: cls for cls in _STATUS_CLASSES if cls.wire_code
}


def error_for(
    code: str, message: str, status: int, *, retry_after: float | None = None
) -> APIStatusError:
    """Build the most specific `APIStatusError` subclass for a server error."""
    cls: type[APIStatusError]
    if code.startswith(UNSUPPORTED_PREFIX):
        cls = UnsupportedError
    else:
        cls = _CLASS_BY_CODE.get(code, APIStatusError)
    return cls(code, message, status, retry_after=retry_after)


def refused_before_sending(
    message: str, cls: type[APIStatusError] = BadRequestError
) -> APIStatusError:
    """An argument the SDK refuses itself, before any request: ``status`` is ``0``.

    The class (and so the code) is the one the server would answer with, so callers
    catch both alike; the status tells that no server saw the request.
    """
    if cls.wire_code is None:
        raise TypeError(f"{cls.__name__} names no wire code")
    return cls(cls.wire_code, message, 0)
