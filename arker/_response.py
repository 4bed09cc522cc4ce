"""Decoding: one HTTP response in, one validated model (or one `ArkerError`) out.

An answer the transport cut short is not the server's word: `is_cut_answer` tells one
apart, and `decode_response` raises it as an `APIConnectionError` (retried, and
ambiguous for a request that acts) rather than as a `ResponseValidationError`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from ._error_codes import code_for_status
from ._exceptions import APIConnectionError, APIStatusError, ResponseValidationError, error_for
from ._retry import parse_retry_after
from ._wire import ErrorEnvelope

__all__ = ["decode_response", "error_from_response", "is_cut_answer", "validation_message"]

M = TypeVar("M", bound=BaseModel)

_SNIPPET = 200


def validation_message(exc: ValidationError, what: str) -> str:
    """``"<what>: field 'items.0.vm_id': Field required"`` — names the first bad field."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{what}: field {loc!r}: {first['msg']}{more}"


def is_cut_answer(
    status: int, content_length: str | None, transfer_encoding: str | None, body: bytes
) -> bool:
    """Whether a success answer that arrived "whole" was in fact cut by the transport.

    An answer framed by ``Content-Length`` or chunked encoding that stops short is
    already a transport failure (urllib3 counts the bytes). One framed by the closing of
    the connection (neither header: what is left when the headers themselves were cut)
    cannot be told from a whole one by its framing, only by its content: a success
    answer is a JSON envelope, so one that is not a complete JSON document was cut. An
    error status is the server's own word whatever follows it (its class comes from the
    status), so it is never counted as cut.
    """
    if status >= 400 or content_length is not None:
        return False
    if transfer_encoding is not None and "chunked" in transfer_encoding.lower():
        return False
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


def _json_or_none(response: requests.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError:
        return None


def error_from_response(response: requests.Response, payload: Any = None) -> APIStatusError:
    """The error an error response stands for: from its envelope when it has one."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if payload is None:
        payload = _json_or_none(response)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        try:
            env = ErrorEnvelope.model_validate(payload)
        except ValidationError:
            pass
        else:
            return error_for(
                env.error.code, env.error.message, response.status_code, retry_after=retry_after
            )
    text = response.text[:_SNIPPET] if response.content else response.reason or ""
    status = response.status_code
    return error_for(
        code_for_status(status), f"HTTP {status}: {text}", status, retry_after=retry_after
    )


def decode_response(response: requests.Response, model: type[M]) -> M:
    """Validate a JSON envelope into ``model``; raise the error it carries instead.

    An ``ok: false`` envelope is an error whatever the HTTP status (the protocol lets
    transient errors arrive with HTTP 200).
    """
    headers = response.headers
    if is_cut_answer(
        response.status_code,
        headers.get("Content-Length"),
        headers.get("Transfer-Encoding"),
        response.content,
    ):
        raise APIConnectionError(
            f"{model.__name__}: the answer was cut by the transport "
            f"({len(response.content)} bytes, framed only by the connection closing)"
        )
    payload = _json_or_none(response)
    if response.status_code >= 400:
        raise error_from_response(response, payload)
    if not isinstance(payload, dict):
        kind = "no body" if not response.content else "not a JSON object"
        raise ResponseValidationError(
            f"{model.__name__}: response is {kind}: {response.text[:_SNIPPET]!r}",
            response.status_code,
        )
    if payload.get("ok") is False:
        raise error_from_response(response, payload)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ResponseValidationError(
            validation_message(exc, model.__name__), response.status_code
        ) from None
