"""Every exception the SDK raises. `ArkerError` is the root: one ``except`` catches all.

The tree::

    ArkerError                       code, message, status always set
    ├── ConfigurationError           bad client arguments (also a ValueError)
    ├── APIConnectionError           no usable HTTP response (refused, reset, DNS…)
    │   ├── APITimeoutError          connect or read timeout
    │   └── OutcomeUnknownError      fork/run may have happened; retry with its key
    ├── ResponseValidationError      the server answered something off-protocol
    └── APIStatusError               the server answered with an error envelope
        ├── BadRequestError              400 bad_request
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
        ├── InternalServerError          500 internal
        ├── NotImplementedByServerError  501 not_implemented
        └── ServiceUnavailableError      502/503/504 unavailable

An error code the SDK does not know still raises `APIStatusError` carrying that code.
"""

from __future__ import annotations

from typing import ClassVar, Literal

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
    "RateLimitError",
    "ResponseValidationError",
    "ServiceUnavailableError",
    "UnsupportedError",
    "VmBusyError",
    "error_for",
    "status_for_code",
]


class ArkerError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: Stable machine-readable code (``"not_found"``, ``"vm_busy"``…).
        message: Human-readable text from the server or the SDK.
        status: HTTP status of the response, or ``0`` when there was none.
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
    """A fork or run may or may not have happened: the SDK cannot tell.

    Raised when the retry budget ran out and at least one attempt failed *after* the
    request was (possibly) delivered — a read timeout, a connection reset after
    sending, a truncated response — so the server may have done the work and only the
    answer was lost. A failure to connect (refused, connect timeout) never raises
    this: such a request was not sent.

    Call again with the same ``idempotency_key`` to learn the outcome: the server
    replays the first result for that key instead of forking or running again.

    Attributes:
        idempotency_key: The ``Idempotency-Key`` every attempt carried.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(
            f"{message}; the request may have been carried out. Retry with "
            f"idempotency_key={idempotency_key!r} to learn its outcome without repeating it",
            code="outcome_unknown",
        )
        self.idempotency_key = idempotency_key

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_outcome_unknown, (self.message, self.idempotency_key))


def _rebuild_outcome_unknown(message: str, idempotency_key: str) -> OutcomeUnknownError:
    err = OutcomeUnknownError.__new__(OutcomeUnknownError)
    APIConnectionError.__init__(err, message, code="outcome_unknown")
    err.idempotency_key = idempotency_key
    return err


class ResponseValidationError(ArkerError):
    """The server's answer does not match the protocol (bad JSON, missing field…)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__("invalid_response", message, status)


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
    status: Literal[400]


class UnsupportedError(BadRequestError):
    """``unsupported_*`` codes, e.g. ``unsupported_region``."""

    status: Literal[400]


class AuthenticationError(APIStatusError):
    wire_code = "unauthorized"
    status: Literal[401]


class PaymentRequiredError(APIStatusError):
    wire_code = "payment_required"
    status: Literal[402]


class PermissionDeniedError(APIStatusError):
    wire_code = "forbidden"
    status: Literal[403]


class NotFoundError(APIStatusError):
    wire_code = "not_found"
    status: Literal[404]


class CommandNotFoundError(NotFoundError):
    wire_code = "command_not_found"
    status: Literal[404]


class ConflictError(APIStatusError):
    wire_code = "conflict"
    status: Literal[409]


class VmBusyError(ConflictError):
    """A run is already in progress on that session (or the VM is locked)."""

    wire_code = "vm_busy"
    status: Literal[409]


class PayloadTooLargeError(APIStatusError):
    wire_code = "payload_too_large"
    status: Literal[413]


class RateLimitError(APIStatusError):
    wire_code = "rate_limited"
    status: Literal[429]


class InternalServerError(APIStatusError):
    wire_code = "internal"
    status: Literal[500]


class NotImplementedByServerError(APIStatusError):
    wire_code = "not_implemented"
    status: Literal[501]


class ServiceUnavailableError(APIStatusError):
    """HTTP 502/503/504: a gateway or the service is temporarily unavailable."""

    wire_code = "unavailable"
    status: Literal[502, 503, 504]


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
    InternalServerError,
    NotImplementedByServerError,
    ServiceUnavailableError,
)
_CLASS_BY_CODE: dict[str, type[APIStatusError]] = {
    cls.wire_code: cls for cls in _STATUS_CLASSES if cls.wire_code
}

_STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "payment_required": 402,
    "forbidden": 403,
    "not_found": 404,
    "command_not_found": 404,
    "conflict": 409,
    "vm_busy": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "not_implemented": 501,
    "unavailable": 503,
}

# When an error status arrives without a usable envelope, the status picks the class.
_CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def status_for_code(code: str) -> int:
    """The HTTP status WIRE.md assigns to ``code`` (``unsupported_*`` → 400)."""
    if code.startswith("unsupported_"):
        return 400
    return _STATUS_BY_CODE.get(code, 500)


def code_for_status(status: int) -> str:
    """A fallback code for an error status that came without an envelope."""
    return _CODE_BY_STATUS.get(status, "bad_request" if 400 <= status < 500 else "internal")


def error_for(
    code: str, message: str, status: int, *, retry_after: float | None = None
) -> APIStatusError:
    """Build the most specific `APIStatusError` subclass for a server error."""
    cls: type[APIStatusError]
    if code.startswith("unsupported_"):
        cls = UnsupportedError
    else:
        cls = _CLASS_BY_CODE.get(code, APIStatusError)
    return cls(code, message, status, retry_after=retry_after)
