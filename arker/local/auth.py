"""Bearer-token authentication: every API route but health and presigned URLs.

The key is checked twice over, cheaply: `RequireKeyMiddleware` refuses a request
without a known key *before its body is read* (FastAPI parses and validates a JSON
body before it runs any dependency, so without the middleware an anonymous caller
could make the server parse megabytes of JSON and would learn validation details
before hearing 401), and the `require_org` dependency hands the org id to the routes.
The middleware also answers 404 to a request with a body aimed at a VM the org may
not use (`vms.may_use`), unread: another org's VM is never worth parsing a body for.
"""

from __future__ import annotations

import re

import anyio.to_thread
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, envelope
from .store import Store
from .vms import may_use

_STATE_KEY = "arker_org_id"
_VM_ROUTE = re.compile(r"^/api/v1/vms/([^/]+)/(run|sync|fork)$")


def _org_for_header(header: str, store: Store) -> str:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError("unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    org_id = store.org_for_key(token)
    if org_id is None:
        raise ApiError("unauthorized", "unknown API key")
    return org_id


def _check_target(path: str, org_id: str, store: Store) -> None:
    """404 for a VM route whose VM ``org_id`` may not use (read before any body)."""
    match = _VM_ROUTE.match(path)
    if match is None:
        return
    vm_id, action = match.groups()
    if not may_use(store.get_vm(vm_id), org_id, fork=action == "fork"):
        raise ApiError("not_found", f"vm not found: {vm_id}")


def _org_and_target(header: str, path: str, store: Store) -> str:
    org_id = _org_for_header(header, store)
    _check_target(path, org_id, store)
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
                org_id = await anyio.to_thread.run_sync(
                    _org_and_target, header, scope["path"], self.store
                )
            except ApiError as exc:
                # The body stays unread: the connection cannot carry another request.
                closing = {"connection": "close"} if _has_body(scope) else None
                await envelope(exc.code, exc.message, exc.status, closing)(scope, receive, send)
                return
            scope.setdefault("state", {})[_STATE_KEY] = org_id
        await self.app(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value not in (b"0", b"")):
            return True
    return False
