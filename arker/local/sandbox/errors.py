"""Errors raised by the sandbox engine.

`SandboxError` is defined beside the engine's interface (`arker.local.engine_api`) so
that the HTTP layer recognises it without importing this package; it is re-exported
here for the engine's modules.
"""

from __future__ import annotations

from ..engine_api import SandboxError

__all__ = ["SandboxError", "SandboxUnavailable"]


class SandboxUnavailable(Exception):
    """The start-up probe failed; ``str()`` is one line naming the cause and the fix."""
