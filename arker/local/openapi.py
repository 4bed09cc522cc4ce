"""The OpenAPI document of `arker serve`: error responses as the wire's envelopes.

Routes declare which error statuses they may answer with `error_docs`; the
document drops FastAPI's 422 responses, since every error, validation included, is an
envelope with a wire status.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .._wire import ErrorEnvelope

_STATUS_TEXT = {
    400: "bad_request, unsupported_*",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found, command_not_found",
    405: "method not allowed (code bad_request)",
    409: "conflict, vm_busy",
    413: "payload_too_large",
    416: "(ext) range not satisfiable (code bad_request, Content-Range: bytes */size)",
    429: "quota_exceeded: the organisation's or the VM's share of runs is full (Retry-After)",
    500: "internal",
    503: "unavailable: the server is full or out of a resource (Retry-After when full)",
}


def error_docs(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: the wire's error envelope under each status."""
    return {
        status: {"model": ErrorEnvelope, "description": _STATUS_TEXT[status]}
        for status in (*statuses, 500)
    }


API_ERRORS = (400, 401, 413)
"""What every authenticated route with a JSON body or query may answer."""

RAW_BYTES = {
    "description": "The raw bytes of the file",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without FastAPI's 422 responses (errors are 400 envelopes)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema
