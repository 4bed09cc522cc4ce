"""The fork-diff and TTL extension routes (``docs/wire-extensions.md``), included by `app`.

``GET …/vms/{vm_id}/diff?path=`` and ``POST …/vms/{vm_id}/touch``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from .._wire import Envelope
from .._wire_diff import ForkDiffResponse, TouchRequest, TouchResponse
from .auth import require_org
from .body_checks import reject_lone_surrogates
from .openapi import API_ERRORS, error_docs
from .services import Services

__all__ = ["vm_ext_router"]

OrgId = Annotated[str, Depends(require_org)]


def _json(model: Envelope) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True))


def vm_ext_router(services: Services) -> APIRouter:
    """The routes of the fork-diff and TTL extensions."""
    router = APIRouter()
    s = services

    @router.get(
        "/api/v1/vms/{vm_id}/diff",
        response_model=ForkDiffResponse,
        responses=error_docs(*API_ERRORS, 404),
    )
    def diff(
        vm_id: str,
        org_id: OrgId,
        path: Annotated[str, Query(max_length=4096)] = "/home/user",
    ) -> JSONResponse:
        return _json(s.vms.diff(org_id, vm_id, path))

    @router.post(
        "/api/v1/vms/{vm_id}/touch",
        dependencies=[Depends(reject_lone_surrogates)],
        response_model=TouchResponse,
        responses=error_docs(*API_ERRORS, 404),
    )
    def touch(vm_id: str, org_id: OrgId, body: TouchRequest) -> JSONResponse:
        return _json(s.vms.touch(org_id, vm_id, body.ttl))

    return router
