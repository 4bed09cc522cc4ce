"""Bearer-token authentication: every API route but health and presigned URLs.

The key is checked twice over, cheaply: `RequireKeyMiddleware` refuses a request
without a known key *before its body is read* (FastAPI parses and validates a JSON
body before it runs any dependency, so without the middleware an anonymous caller
could make the server parse megabytes of JSON and would learn validation details
before hearing 401), and the `require_org` dependency hands the org id to the routes.
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, envelope
from .store import Store

_STATE_KEY = "arker_org_id"


def _org_for_header(header: str, store: Store) -> str:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError("unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    org_id = store.org_for_key(token)
    if org_id is None:
        raise ApiError("unauthorized", "unknown API key")
    return org_id


def require_org(request: Request) -> str:
    """FastAPI dependency: the caller's org id, or 401 ``unauthorized``.

    Args:
        request: The incoming request; its app state carries the `Store`.

    Returns:
        The id of the org the bearer key belongs to.

    Raises:
        ApiError: ``unauthorized`` when the header is missing, malformed or unknown.
    """
    checked = request.scope.get("state", {}).get(_STATE_KEY)
    if isinstance(checked, str):
        return checked
    store: Store = request.app.state.services.store
    return _org_for_header(request.headers.get("authorization", ""), store)


class RequireKeyMiddleware:
    """Answer 401 to requests under ``prefixes`` that lack a known key, unread.

    Args:
        app: The wrapped ASGI app.
        store: Where keys are looked up.
        prefixes: URL path prefixes that need a key.
    """

    def __init__(self, app: ASGIApp, store: Store, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.store = store
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            header = ""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            try:
                org_id = await anyio.to_thread.run_sync(_org_for_header, header, self.store)
            except ApiError as exc:
                await envelope(exc.code, exc.message, exc.status)(scope, receive, send)
                return
            scope.setdefault("state", {})[_STATE_KEY] = org_id
        await self.app(scope, receive, send)
