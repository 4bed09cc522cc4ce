"""The sandbox engine's errors as wire errors: one translation for every service.

The engine raises ``SandboxError(code, message)`` with the wire's own codes; each
service that calls the engine wraps the call in `engine_errors` so the route answers
the matching error envelope.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .engine_api import sandbox_error_parts
from .errors import ApiError


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn the engine's ``SandboxError`` into the wire error with the same code."""
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        parts = sandbox_error_parts(exc)
        if parts is None:
            raise
        raise ApiError(*parts) from exc
