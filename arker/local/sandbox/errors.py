"""Errors raised by the sandbox engine.

The server maps :class:`SandboxError` codes one-to-one onto wire error codes, so the
codes here are the wire's (``not_found``, ``vm_busy``, ``bad_request``,
``payload_too_large``, ``internal``).
"""

from __future__ import annotations

__all__ = ["SandboxError", "SandboxUnavailable"]


class SandboxError(Exception):
    """A request-level failure with a wire error code.

    Attributes:
        code: One of ``not_found``, ``vm_busy``, ``bad_request``, ``payload_too_large``,
            ``internal``.
        message: Human-readable text, safe to show to the API caller.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SandboxUnavailable(Exception):
    """The start-up probe failed; ``str()`` is one line naming the cause and the fix."""
