"""Bearer-token authentication: every API route but health and presigned URLs."""

from __future__ import annotations

from fastapi import Request

from .errors import ApiError
from .store import Store


def require_org(request: Request) -> str:
    """FastAPI dependency: the caller's org id, or 401 ``unauthorized``.

    Args:
        request: The incoming request; its app state carries the `Store`.

    Returns:
        The id of the org the bearer key belongs to.

    Raises:
        ApiError: ``unauthorized`` when the header is missing, malformed or unknown.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError("unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    store: Store = request.app.state.services.store
    org_id = store.org_for_key(token)
    if org_id is None:
        raise ApiError("unauthorized", "unknown API key")
    return org_id
