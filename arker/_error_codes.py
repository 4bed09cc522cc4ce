"""The wire's error codes and their HTTP statuses: one table for the SDK and `arker serve`.

A failure travels as ``{"ok": false, "error": {"code", "message"}}`` with the status
below. The server picks the status from the code (`status_for_code`); the client picks a
code from the status when an error response carries no usable envelope, say an HTML page
from a proxy (`code_for_status`). The SDK's exception classes (`arker._exceptions`) name
their code and take their status from here. Shared wire code: the server imports it, so
it imports nothing from the client side.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "CODE_BY_STATUS",
    "STATUS_BY_CODE",
    "UNSUPPORTED_PREFIX",
    "code_for_status",
    "status_for_code",
]

_TABLE: dict[str, tuple[int, ...]] = {
    # code: (the status a server sends it with, then other statuses that mean it).
    # Where codes share a status, the general one comes first: a bare 404 is not_found.
    "bad_request": (400,),
    "unauthorized": (401,),
    "payment_required": (402,),
    "forbidden": (403,),
    "not_found": (404,),
    "command_not_found": (404,),
    "conflict": (409,),
    "vm_busy": (409,),
    "payload_too_large": (413,),
    "rate_limited": (429,),
    # A scoped limit (here: concurrent runs per organisation or per VM) is full; the
    # answer's Retry-After says when to try again.
    "quota_exceeded": (429,),
    "internal": (500,),
    "not_implemented": (501,),
    # A gateway's 502 or 504 means the same as the service's own 503.
    "unavailable": (503, 502, 504),
}

UNSUPPORTED_PREFIX = "unsupported_"
"""``unsupported_region``, ``unsupported_operation``…: a family of 400 codes."""

STATUS_BY_CODE: Mapping[str, int] = MappingProxyType(
    {code: statuses[0] for code, statuses in _TABLE.items()}
)
"""The status each known code is sent with."""


def _code_by_status() -> dict[int, str]:
    found: dict[int, str] = {}
    for code, statuses in _TABLE.items():
        for status in statuses:
            found.setdefault(status, code)
    return found


CODE_BY_STATUS: Mapping[int, str] = MappingProxyType(_code_by_status())
"""The general code each listed status stands for."""


def status_for_code(code: str) -> int:
    """The HTTP status an error with ``code`` travels with (an unknown code: 500)."""
    if code.startswith(UNSUPPORTED_PREFIX):
        return 400
    return STATUS_BY_CODE.get(code, 500)


def code_for_status(status: int) -> str:
    """The code an error status stands for when it came without an envelope."""
    return CODE_BY_STATUS.get(status, "bad_request" if 400 <= status < 500 else "internal")
