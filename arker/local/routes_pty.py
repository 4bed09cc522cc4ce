"""The interactive-terminal routes: ``POST …/pty-ticket`` and the ``GET …/pty`` WebSocket.

The WebSocket authenticates with a bearer key (``Authorization`` on the upgrade) or a
``ticket`` query parameter from ``…/pty-ticket`` (pty_tickets.py). A refused upgrade
is answered with the error envelope as a plain HTTP response (401, 404, 400, 429…),
never a half-open socket. Query parameters: ``cols``, ``rows`` (default 80x24,
clamped to 1..1000), ``command`` (one executable, no splitting; default: the shell),
``cancel_ttl_secs`` (idle limit of this terminal) and ``persist`` (accepted; this
server ends the shell when the socket closes, see docs/local-server.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .auth import require_org
from .engine_errors import engine_errors
from .errors import ApiError, envelope
from .openapi import API_ERRORS, error_docs
from .pty_pump import pump
from .services import Services
from .terminals import PtyQuotaExceeded, quota_response

__all__ = ["pty_router"]

OrgId = Annotated[str, Depends(require_org)]
_TRUE = ("true", "1")
_FALSE = ("false", "0")


def _int_param(params: Any, name: str, default: int | None, low: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise ApiError("bad_request", f"{name} must be at least {low}")
    return value


def _dimension(params: Any, name: str, default: int) -> int:
    value = _int_param(params, name, default, 1)
    assert value is not None
    return value  # the engine clamps it to the largest terminal it makes


def _bearer(ws: WebSocket) -> str:
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthorized", "send 'Authorization: Bearer <key>' or a PTY ticket")
    return token.strip()


async def _deny(ws: WebSocket, response: Response) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:  # pragma: no cover - uvicorn's implementations all support it
        await ws.close(code=1008)


def pty_router(s: Services) -> APIRouter:
    """The terminal routes, bound to the server's services."""
    router = APIRouter(prefix="/api/v1/vms/{vm_id}/sessions/{session_id}")
    terminals = s.terminals
    limits = s.config.pty

    async def session_vm(org_id: str, vm_id: str, session_id: str) -> str:
        """The VM's id when the org owns it and the session exists; else 404."""
        vm = await run_in_threadpool(s.vms.owned, org_id, vm_id)
        if await run_in_threadpool(s.live.store.get_session, vm.id, session_id) is None:
            raise ApiError("not_found", f"session not found: {session_id}")
        return vm.id

    @router.post(
        "/pty-ticket",
        responses={**error_docs(*API_ERRORS, 404), 429: {"description": "quota_exceeded"}},
    )
    async def mint_ticket(vm_id: str, session_id: str, org_id: OrgId) -> JSONResponse:
        """A single-use ticket for this session's terminal (``ticket``, ``expires_in``)."""
        vm = await session_vm(org_id, vm_id, session_id)
        try:
            terminals.check_room(vm)
        except PtyQuotaExceeded as exc:
            return quota_response(exc)
        ticket = terminals.tickets.mint(org_id, vm, session_id)
        return JSONResponse({"ticket": ticket, "expires_in": int(limits.ticket_ttl_s)})

    @router.websocket("/pty")
    async def attach(ws: WebSocket, vm_id: str, session_id: str) -> None:
        params = ws.query_params
        try:
            ticket = params.get("ticket")
            if ticket:
                org_id = terminals.tickets.redeem(ticket, vm_id, session_id)
                if org_id is None:
                    raise ApiError("unauthorized", "invalid, expired or used PTY ticket")
            else:
                found = await run_in_threadpool(s.store.org_for_key, _bearer(ws))
                if found is None:
                    raise ApiError("unauthorized", "unknown API key")
                org_id = found
            cols = _dimension(params, "cols", 80)
            rows = _dimension(params, "rows", 24)
            ttl = _int_param(params, "cancel_ttl_secs", 0, 0) or 0
            persist = params.get("persist", "true").lower()
            if persist not in _TRUE + _FALSE:
                raise ApiError("bad_request", f"persist must be true or false, got {persist!r}")
            command = params.get("command")
            vm = await session_vm(org_id, vm_id, session_id)
        except ApiError as exc:
            await _deny(ws, envelope(exc.code, exc.message, exc.status))
            return
        idle = min(x for x in (ttl, limits.idle_s) if x > 0) if ttl or limits.idle_s else 0
        try:
            with terminals.slot(vm):
                try:
                    with engine_errors():
                        shell = await run_in_threadpool(
                            terminals.open, vm, session_id, command, cols, rows
                        )
                except ApiError as exc:
                    await _deny(ws, envelope(exc.code, exc.message, exc.status))
                    return
                try:
                    await ws.accept()
                    await pump(ws, shell, float(idle))
                finally:
                    await run_in_threadpool(shell.close)
                    terminals.closed(vm, session_id, shell)
        except PtyQuotaExceeded as exc:
            await _deny(ws, quota_response(exc))

    return router
