"""Every failure leaves the server as the wire's error envelope with the right status.

Covers errors raised on purpose (`ApiError`), the engine's `SandboxError`, FastAPI
validation errors (wrong types, malformed JSON), routing errors (404, 405) and anything
unexpected (500 ``internal``), plus a body-size guard that refuses oversized requests
before reading them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._error_codes import code_for_status, status_for_code
from .._wire import ErrorBody, ErrorEnvelope

log = logging.getLogger("arker.local")


class ApiError(Exception):
    """An error to send as ``{"ok": false, "error": {"code", "message"}}``.

    Args:
        code: Wire code (``not_found``, ``vm_busy``…); the status follows from it.
        message: Human-readable text.
        status: Overrides the status `status_for_code` gives (rarely needed).
        headers: Extra response headers (e.g. a 416's ``Content-Range``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else status_for_code(code)
        self.headers = dict(headers or {})


def envelope(
    code: str,
    message: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON response for one error, built from the shared wire model."""
    body = ErrorEnvelope(error=ErrorBody(code=code, message=message))
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status if status is not None else status_for_code(code),
        headers=headers,
    )


def _describe_validation(exc: RequestValidationError) -> str:
    """One line naming each bad field, e.g. ``body.timeout: Input should be ...``."""
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the app can meet to the wire envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.code, exc.message, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope("bad_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = code_for_status(exc.status_code)
        status = 400 if exc.status_code == 422 else exc.status_code
        # Keep the exception's headers: a 405 must name the methods it does allow.
        return envelope(code, str(exc.detail), status, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up mid-body: nobody reads this answer, and it is no server
        # error (no traceback in the log).
        return envelope("bad_request", "client disconnected before the body was complete")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return envelope("internal", f"internal error: {type(exc).__name__}")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, without buffering them.

    A declared ``Content-Length`` over the limit is refused before any byte is read;
    a chunked body is counted as it streams and cut off once it passes the limit.
    Paths in ``exempt_prefixes`` (presigned uploads, which enforce their own size)
    pass through untouched.

    Args:
        app: The wrapped ASGI app.
        limit: Largest accepted body, in bytes.
        exempt_prefixes: URL path prefixes the guard ignores.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _send_json(send, 413, self._too_large())
            return
        seen = 0
        overflow = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns a failure while reading the body into a 400 of its own;
            # once the body has overflowed, whatever the app answers becomes our 413.
            nonlocal started
            if overflow:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_json(send, 413, self._too_large())
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflow:
                raise
            if not started:
                await _send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return ErrorEnvelope(
            error=ErrorBody(
                code="payload_too_large",
                message=f"request body exceeds {self.limit} bytes",
            )
        ).model_dump(mode="json")


class _BodyTooLarge(Exception):
    """Raised inside `BodyLimitMiddleware` when a streamed body passes the limit."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # The unread body makes the connection unusable for another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
