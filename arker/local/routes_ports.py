"""The exposed-port routes: ``…/ports`` (expose, list, unexpose) and the URLs they give.

``POST/GET /api/v1/vms/{vm_id}/ports``, ``DELETE …/ports/{port}``
(docs/wire-extensions.md, "Exposed ports"), and every method on ``/exposed/…``, the
exposed ports' own URLs, relayed by `port_proxy.PortProxy` (a WebSocket upgrade on
those URLs never reaches this app: the HTTP front hands it to the relay).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .._wire import Envelope, ErrorEnvelope
from .._wire_ports import (
    PORT_MAX,
    PORT_MIN,
    ExposedPortWire,
    ExposePortRequest,
    ListPortsResponse,
    UnexposePortResponse,
)
from .auth import require_org
from .openapi import API_ERRORS, error_docs
from .ports import PROXY_PREFIX
from .services import Services

__all__ = ["ports_router"]

OrgId = Annotated[str, Depends(require_org)]
PortNumber = Annotated[int, Path(ge=PORT_MIN, le=PORT_MAX)]
_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorEnvelope, "description": "rate_limited (too many exposed ports)"}
}
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _json(model: Envelope) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True))


def ports_router(s: Services) -> APIRouter:
    """The exposed-port routes, bound to the server's services."""
    router = APIRouter()
    found = error_docs(*API_ERRORS, 404)

    @router.post(
        "/api/v1/vms/{vm_id}/ports",
        response_model=ExposedPortWire,
        responses={**found, **_LIMITED},
    )
    async def expose(
        vm_id: str, org_id: OrgId, body: ExposePortRequest, request: Request
    ) -> JSONResponse:
        base = str(request.base_url)
        return _json(await run_in_threadpool(s.ports.expose, org_id, vm_id, body.port, base))

    @router.get("/api/v1/vms/{vm_id}/ports", response_model=ListPortsResponse, responses=found)
    async def list_ports(vm_id: str, org_id: OrgId, request: Request) -> JSONResponse:
        base = str(request.base_url)
        return _json(await run_in_threadpool(s.ports.list, org_id, vm_id, base))

    @router.delete(
        "/api/v1/vms/{vm_id}/ports/{port}",
        response_model=UnexposePortResponse,
        responses=found,
    )
    async def unexpose(vm_id: str, port: PortNumber, org_id: OrgId) -> JSONResponse:
        await run_in_threadpool(s.ports.unexpose, org_id, vm_id, port)
        s.port_proxy.close_port(vm_id, port)
        return _json(UnexposePortResponse())

    @router.api_route(PROXY_PREFIX + "{rest:path}", methods=_METHODS, include_in_schema=False)
    async def relay(request: Request) -> Response:
        return await s.port_proxy.http(request)

    return router
