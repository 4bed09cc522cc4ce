"""Errors in the platform's envelope, and which requests speak the platform's dialect.

The platform's API answers a failure as ``{"error": {"code", "message", "timestamp",
"request_id", "request", …}}`` with no ``ok`` field; the 0.1.0 wire answers
``{"ok": false, "error": {"code", "message"}}``. The official 1.3 client only decodes the
first (anything else becomes its code ``internal``), the 0.1.0 client and our SDK read
the second.

* Routes only the platform has (``/v1/fork``, ``GET/PATCH /v1/vms/{id}``…) use
  `PlatformRoute`: every failure, validation and auth included, in the platform's shape.
* Routes both APIs share (``DELETE /v1/vms/{id}``, ``…/sync``, ``/v1/health``, runs and
  sessions) keep their 0.1.0 bytes. `PlatformDialectMiddleware` gives a request of the
  official platform client (it sends no marker but its HTTP library's ``User-Agent``,
  ``python-httpx2/…``) the platform's shapes: the delete, health and sync requests go to
  the platform's handlers (``/api/v1/_platform/…``), and any 0.1.0 error envelope in its
  answers is rewritten into the platform's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._error_codes import code_for_status, status_for_code
from .._ids import new_ulid
from .._wire_platform import PlatformErrorBody
from .errors import ApiError
from .errors import _describe_validation as describe_validation

__all__ = [
    "PLATFORM_PREFIX",
    "PlatformDialectMiddleware",
    "PlatformRoute",
    "platform_envelope",
    "unsupported",
]

PLATFORM_PREFIX = "/api/v1/_platform"
"""Where the platform's variants of shared routes are served (reached by rewriting)."""

_PLATFORM_CLIENT_AGENTS = ("python-httpx/", "python-httpx2/")
_SHARED = (
    ("DELETE", re.compile(r"^/api/v1/vms/[^/]+$")),
    ("POST", re.compile(r"^/api/v1/vms/[^/]+/sync$")),
    ("GET", re.compile(r"^/api/v1/health$")),
)
_BUFFER_CAP = 1 << 20
"""Error answers are small; a larger body is passed on as it is."""


def platform_envelope(
    code: str,
    message: str,
    status: int | None = None,
    *,
    details: dict[str, Any] | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """One failure in the platform's envelope."""
    body = PlatformErrorBody(
        code=code,
        message=message,
        timestamp=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        request_id=new_ulid(),
        request={"kind": "unmatched", "method": method},
        details=details,
    )
    return JSONResponse(
        {"error": body.model_dump(mode="json", exclude_none=True)},
        status_code=status if status is not None else status_for_code(code),
        headers=headers,
    )


def unsupported(what: str) -> ApiError:
    """``422 unsupported_operation``: something `arker serve` cannot do locally."""
    return ApiError(
        "unsupported_operation",
        f"{what} is not supported by arker serve (the local server); "
        "it needs the hosted Arker platform",
        status=422,
    )


def _details(code: str) -> dict[str, Any] | None:
    return {"reason": "feature_not_supported"} if code == "unsupported_operation" else None


def _as_platform(exc: Exception, method: str) -> JSONResponse | None:
    if isinstance(exc, ApiError):
        return platform_envelope(
            exc.code,
            exc.message,
            exc.status,
            details=_details(exc.code),
            method=method,
            headers=exc.headers or None,
        )
    if isinstance(exc, RequestValidationError):
        return platform_envelope("bad_request", describe_validation(exc), 400, method=method)
    if isinstance(exc, StarletteHTTPException):
        status = 400 if exc.status_code == 422 else exc.status_code
        return platform_envelope(
            code_for_status(exc.status_code), str(exc.detail), status, method=method
        )
    return None


class PlatformRoute(APIRoute):
    """A route whose failures (auth and validation included) use the platform's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def platform_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                answer = _as_platform(exc, request.method)
                if answer is None:
                    raise
                return answer

        return platform_handler


def speaks_platform(scope: Scope) -> bool:
    """Whether a request comes from the official platform client (by its User-Agent)."""
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            return bytes(value).decode("latin-1").startswith(_PLATFORM_CLIENT_AGENTS)
    return False


class PlatformDialectMiddleware:
    """Platform-client requests on shared routes get the platform's shapes (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/v1/") or not speaks_platform(scope):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        if any(method == m and pattern.match(path) for m, pattern in _SHARED):
            new_path = PLATFORM_PREFIX + path.removeprefix("/api/v1")
            scope = {**scope, "path": new_path, "raw_path": new_path.encode()}
        await self.app(scope, receive, _ErrorRewriter(send, method))


class _ErrorRewriter:
    """Rewrites a buffered 0.1.0 error envelope into the platform's; passes all else."""

    def __init__(self, send: Send, method: str) -> None:
        self._send = send
        self._method = method
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400 and _is_json(message):
                self._start = message
                return
            await self._send(message)
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        self._size += len(self._chunks[-1])
        if message.get("more_body", False) and self._size <= _BUFFER_CAP:
            return
        body = b"".join(self._chunks)
        start, self._start, self._chunks = self._start, None, []
        await self._flush(start, body, more=message.get("more_body", False))

    async def _flush(self, start: Message, body: bytes, *, more: bool) -> None:
        rewritten = None if more else self._rewrite(body, start["status"])
        if rewritten is None:
            await self._send(start)
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(rewritten)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": rewritten})

    def _rewrite(self, body: bytes, status: int) -> bytes | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("ok") is not False:
            return None
        error = payload.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return None
        answer = platform_envelope(
            error["code"],
            str(error.get("message", "")),
            status,
            details=_details(error["code"]),
            method=self._method,
        )
        return bytes(answer.body)


def _is_json(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).startswith(b"application/json")
    return False
