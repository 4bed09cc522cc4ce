"""Exactly-once fork and run behind an ``Idempotency-Key`` header (a wire extension).

The first request with a key runs; its successful response is stored. A later request
with the same key and the same body gets that stored response; with a different body,
409 ``conflict``. A duplicate that arrives while the first is still running waits for
its outcome.

Failures are not stored, so a retry after an error runs again — unless the handler
raises `FinalError`: an error that happened *after* the work began (a run whose command
ran and then broke the disk quota, say). That error is the request's outcome, stored and
replayed like a response, so a retry whose first attempt's answer was lost never runs a
command a second time. Errors before the work began (validation, ``not_found``, a busy
session) stay unstored: nothing happened, and a later retry may well succeed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .store import Store

MAX_KEY_LEN = 64
_ERROR_MARK = "__arker_final_error__"


class FinalError(ApiError):
    """An error that is the outcome of work that already began: stored under the key."""


def check_key(key: str) -> None:
    """Validate an Idempotency-Key: 1–64 printable ASCII characters.

    Raises:
        ApiError: ``bad_request`` for any other value.
    """
    if not 1 <= len(key) <= MAX_KEY_LEN or not all(0x20 < ord(c) < 0x7F for c in key):
        raise ApiError("bad_request", "Idempotency-Key must be 1-64 printable ASCII characters")


def body_digest(body: dict[str, Any]) -> str:
    """A stable digest of a request body (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _InFlight:
    digest: str
    done: threading.Event = field(default_factory=threading.Event)


class Idempotency:
    """Runs request handlers at most once per (org, scope, key).

    Args:
        store: Where completed outcomes are kept (they survive restarts).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str, str], _InFlight] = {}

    def execute(
        self,
        org_id: str,
        scope: str,
        key: str | None,
        body: dict[str, Any],
        handler: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run ``handler`` once for this key and body; replay its outcome afterwards.

        Args:
            org_id: Caller's org: keys of different orgs never collide.
            scope: The route and target, e.g. ``run:<vm_id>``.
            key: The Idempotency-Key header, or None to just run the handler.
            body: The parsed request body (compared across retries).
            handler: Does the work and returns the JSON response body.

        Returns:
            The response body of the first successful execution.

        Raises:
            ApiError: ``conflict`` when the key was used with a different body.
        """
        if key is None:
            return handler()
        check_key(key)
        digest = body_digest(body)
        slot = (org_id, scope, key)
        while True:
            with self._lock:
                stored = self._store.get_idempotent(org_id, scope, key)
                if stored is not None:
                    return _replay(stored, digest)
                waiting = self._in_flight.get(slot)
                if waiting is None:
                    mine = _InFlight(digest)
                    self._in_flight[slot] = mine
                    break
                if waiting.digest != digest:
                    raise _conflict()
            # Wait outside the lock; if the first attempt failed we become the runner.
            waiting.done.wait()
        try:
            try:
                response = handler()
            except FinalError as exc:
                error = {"code": exc.code, "message": exc.message, "status": exc.status}
                self._store.put_idempotent(
                    org_id, scope, key, digest, json.dumps({_ERROR_MARK: error})
                )
                raise
            self._store.put_idempotent(org_id, scope, key, digest, json.dumps(response))
            return response
        finally:
            with self._lock:
                del self._in_flight[slot]
            mine.done.set()


def _replay(stored: tuple[str, str], digest: str) -> dict[str, Any]:
    stored_digest, response = stored
    if stored_digest != digest:
        raise _conflict()
    result: dict[str, Any] = json.loads(response)
    error = result.get(_ERROR_MARK)
    if isinstance(error, dict):
        raise FinalError(str(error["code"]), str(error["message"]), int(error["status"]))
    return result


def _conflict() -> ApiError:
    return ApiError("conflict", "Idempotency-Key was already used with a different request body")
