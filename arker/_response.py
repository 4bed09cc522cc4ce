"""Decoding: one HTTP response in, one validated model (or one `ArkerError`) out."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from ._error_codes import code_for_status
from ._exceptions import APIStatusError, ResponseValidationError, error_for
from ._retry import parse_retry_after
from ._wire import ErrorEnvelope

__all__ = ["decode_response", "error_from_response", "validation_message"]

M = TypeVar("M", bound=BaseModel)

_SNIPPET = 200


def validation_message(exc: ValidationError, what: str) -> str:
    """``"<what>: field 'items.0.vm_id': Field required"`` — names the first bad field."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{what}: field {loc!r}: {first['msg']}{more}"


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
