"""The platform's current API: the routes the official ``arker`` 1.3 client calls.

``POST /v1/fork``, ``GET /v1/vms``, ``GET/PATCH /v1/vms/{id}``, ``/v1/whoami``,
``/v1/regions``, the platform's variants of the shared routes (delete, health; sync is
`arker.local.platform_sync`), and ``422 unsupported_operation`` for what a local server
cannot do. Same tenancy, keys and VMs as the 0.1.0 routes; failures in the platform's
envelope (`arker.local.platform_errors`). Left out of this server's OpenAPI document:
their contract is the platform's own.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from .._version import __version__
from .._wire import ForkRequest, WireModel
from .._wire_platform import (
    UNSUPPORTED_FORK_FIELDS,
    UNSUPPORTED_PATCH_FIELDS,
    DeleteVmResponse,
    ListRegionsResponse,
    PatchVmRequest,
    PlatformForkRequest,
    PlatformHealth,
    PlatformVm,
    PlatformVmList,
    RegionPlacement,
    WhoamiResponse,
)
from .auth import require_org
from .body_checks import reject_lone_surrogates
from .config import BACKEND, REGION
from .errors import ApiError
from .names import Names
from .platform_errors import PLATFORM_PREFIX, PlatformRoute, unsupported
from .platform_runs import OrgRuns
from .platform_store import PlatformStore
from .platform_sync import platform_sync_routes
from .run_views import session_view
from .services import Services
from .store import VmRow

__all__ = ["platform_router"]

OrgId = Annotated[str, Depends(require_org)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=64)]
PROVIDER = "local"
"""The ``provider`` of the one placement ``/v1/regions`` reports. A VM names none: the
official client would route a listed VM with a provider to a hosted address."""
_UNSUPPORTED_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/v1/filesystems", "GET,POST", "filesystems"),
    ("/v1/filesystems/{filesystem_id}", "GET,DELETE", "filesystems"),
    ("/v1/pools", "GET,POST", "pools"),
    ("/v1/pools/{pool_id}", "GET,PATCH,DELETE", "pools"),
    ("/v1/pools/{pool_id}/{rest:path}", "GET,POST,PUT,PATCH,DELETE", "pools"),
    ("/v1/api-keys", "GET,POST", "API key management over HTTP (use `arker serve keys`)"),
    ("/v1/api-keys/{key_id}", "DELETE", "API key management over HTTP (use `arker serve keys`)"),
    ("/v1/vms/{vm_id}/policies", "GET,PUT", "network policies"),
    ("/v1/vms/{vm_id}/mounts", "GET,POST", "filesystems and mounts"),
    ("/v1/vms/{vm_id}/mounts/{mount_id}", "DELETE", "filesystems and mounts"),
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _json(model: WireModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def _cursor(vm: VmRow) -> str:
    return base64.urlsafe_b64encode(f"{vm.created_at}|{vm.id}".encode()).decode()


def _after(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        created_at, _, vm_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    except (binascii.Error, UnicodeError, ValueError):
        raise ApiError("bad_request", "cursor is not one this server issued") from None
    if not vm_id:
        raise ApiError("bad_request", "cursor is not one this server issued")
    return created_at, vm_id


def _refuse_unsupported(body: dict[str, Any], fields: dict[str, str]) -> None:
    for field, what in fields.items():
        if body.get(field) is not None:
            raise unsupported(f"`{field}` ({what})")


def _parse(model: type[Any], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError("bad_request", f"{where}: {first.get('msg', 'invalid')}") from None


def platform_router(s: Services) -> APIRouter:
    """The platform's routes, bound to the server's services."""
    router = APIRouter(prefix="/api", route_class=PlatformRoute, include_in_schema=False)
    details = PlatformStore(s.config.db_path)
    names = Names(s.store)
    valid_text = [Depends(reject_lone_surrogates)]

    def view(vm: VmRow) -> PlatformVm:
        in_use = s.live.sessions_in_use(vm.id)
        sessions = [
            session_view(r, r.session_id in in_use).model_dump(mode="json", exclude={"ok"})
            for r in s.live.store.list_sessions(vm.id)
        ]
        return PlatformVm(
            vm_id=vm.id,
            owner_org_id=vm.org_id,
            created_at=vm.created_at,
            description=details.description(vm.id),
            public=vm.is_public,
            state="running" if in_use else "idle",
            sessions=sessions,
            name=vm.name,
            root_source_vm_id=vm.base_image,
            region=vm.region,
        )

    def fork(org_id: str, req: PlatformForkRequest) -> dict[str, Any]:
        wire = ForkRequest(
            is_public=bool(req.public),
            name=req.name,
            from_=req.source_vm_name,
            source_org_id=req.source_org_id,
            source_org_name=req.source_org_name,
        )
        if req.source_vm_id is not None:
            made = s.vms.fork_by_id(org_id, req.source_vm_id, wire)
        else:
            made = s.vms.fork_by_name(org_id, wire)
        if req.description is not None:
            details.set_description(made.vm_id, req.description)
        return view(s.vms.owned(org_id, made.vm_id)).model_dump(mode="json")

    @router.post("/v1/fork", dependencies=valid_text)
    def fork_route(
        org_id: OrgId,
        body: Annotated[dict[str, Any], Body()],
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        _refuse_unsupported(body, UNSUPPORTED_FORK_FIELDS)
        req: PlatformForkRequest = _parse(PlatformForkRequest, body)
        if (req.source_vm_id is None) == (req.source_vm_name is None):
            raise ApiError("bad_request", "give exactly one of source_vm_id and source_vm_name")
        scope = f"platform-fork:{req.source_vm_id or ''}"
        payload = req.model_dump(mode="json", exclude={"queueing_timeout"})
        return JSONResponse(
            s.idempotency.execute(
                org_id, scope, idempotency_key, payload, lambda: fork(org_id, req)
            )
        )

    @router.get("/v1/vms")
    def list_vms(
        org_id: OrgId,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        public: bool | None = None,
        state: Annotated[str | None, Query(pattern="^(idle|running)$")] = None,
        region: Annotated[str | None, Query(max_length=64)] = None,
        provider: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        if (region not in (None, REGION)) or (provider not in (None, PROVIDER)):
            return _json(PlatformVmList())
        after = _after(cursor)
        matched: list[tuple[VmRow, PlatformVm]] = []
        while len(matched) <= limit:
            rows = details.page(org_id, after=after, limit=100, public=public)
            for row in rows:
                shown = view(row)
                if state is None or shown.state == state:
                    matched.append((row, shown))
                    if len(matched) > limit:
                        break
                after = (row.created_at, row.id)
            if len(rows) < 100:
                break
        page = matched[:limit]
        next_cursor = _cursor(page[-1][0]) if len(matched) > limit else None
        vms = [shown for _, shown in page]
        return _json(PlatformVmList(vms=vms, next_cursor=next_cursor))

    @router.get("/v1/vms/{vm_id}")
    def get_vm(vm_id: str, org_id: OrgId) -> JSONResponse:
        return _json(view(s.vms.owned(org_id, vm_id)))

    @router.patch("/v1/vms/{vm_id}", dependencies=valid_text)
    def patch_vm(
        vm_id: str, org_id: OrgId, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id)
        _refuse_unsupported(body, UNSUPPORTED_PATCH_FIELDS)
        req: PatchVmRequest = _parse(PatchVmRequest, body)
        if req.name is not None and req.name != vm.name:
            names.check_new_name(org_id, req.name)
            details.rename(vm.id, req.name)
        if "description" in req.model_fields_set:
            details.set_description(vm.id, req.description or None)
        return _json(view(s.vms.owned(org_id, vm_id)))

    @router.delete(PLATFORM_PREFIX.removeprefix("/api") + "/vms/{vm_id}")
    def delete_vm(vm_id: str, org_id: OrgId) -> JSONResponse:
        s.vms.delete(org_id, vm_id)
        details.forget(vm_id)
        return _json(DeleteVmResponse())

    @router.get(PLATFORM_PREFIX.removeprefix("/api") + "/health")
    def health() -> JSONResponse:
        return _json(PlatformHealth(timestamp=_now(), version=__version__, backend=BACKEND))

    @router.get("/v1/whoami")
    def whoami(org_id: OrgId) -> JSONResponse:
        return _json(WhoamiResponse(org_id=org_id, org_name=details.org_name(org_id)))

    @router.get("/v1/regions")
    def regions(request: Request, _org: OrgId) -> JSONResponse:
        endpoint = str(request.base_url).rstrip("/") + "/api"
        here = RegionPlacement(provider=PROVIDER, region=REGION, endpoint=endpoint)
        return _json(ListRegionsResponse(regions=[here]))

    org_runs = OrgRuns(s.config.db_path)

    @router.get("/v1/runs")
    def list_org_runs(
        org_id: OrgId,
        since: Annotated[int, Query(ge=0)] = 0,
        until: Annotated[int | None, Query(ge=0)] = None,
        vm: Annotated[str | None, Query(max_length=256)] = None,
        vms: Annotated[str | None, Query(max_length=8192)] = None,
        search: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        lite: bool = False,
    ) -> JSONResponse:
        end = until if until is not None else int(datetime.now(timezone.utc).timestamp()) + 1
        wanted = [v for v in [vm, *(vms or "").split(",")] if v] or None
        rows = org_runs.rows(
            org_id,
            since=since,
            until=end,
            vm_ids=wanted,
            search=search,
            limit=limit,
            offset=offset,
        )
        answer = {"since": since, "until": end, "limit": limit, "offset": offset, "lite": lite}
        return JSONResponse({**answer, "rows": rows})

    platform_sync_routes(router, s)
    for path, methods, what in _UNSUPPORTED_ROUTES:
        router.add_api_route(path, _refusal(what), methods=methods.split(","))
    return router


def _refusal(what: str) -> Any:
    def refuse(_org: OrgId) -> JSONResponse:
        raise unsupported(what)

    return refuse
