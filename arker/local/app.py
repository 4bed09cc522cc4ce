"""`create_app`: the FastAPI app serving every route of the Arker wire protocol.

Handlers are thin: parse with the shared `arker._wire` models, call the service
objects, dump the response model. Handlers that touch the (blocking) engine are plain
``def`` so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .._paths import path_problem
from .._version import __version__
from .._wire import (
    DeleteResponse,
    Envelope,
    ErrorEnvelope,
    ForkRequest,
    ForkResponse,
    HealthResponse,
    ListVmsResponse,
    RunRequest,
    RunResponse,
    SortOrder,
    SyncDeleteResponse,
    SyncManifestRequest,
    SyncManifestResponse,
    SyncReadRequest,
    SyncReadResponse,
    SyncRequest,
    SyncWriteRequest,
    SyncWriteResponse,
)
from .auth import RequireKeyMiddleware, require_org
from .config import BACKEND, ServerConfig
from .errors import ApiError, BodyLimitMiddleware, install_error_handlers
from .idempotency import Idempotency
from .presign import READ_ROUTE, UPLOAD_ROUTE, Signer
from .store import Store
from .sync import Sync
from .uploads import Uploads
from .vmfiles import VmFiles
from .vms import Vms


async def reject_lone_surrogates(request: Request) -> None:
    """FastAPI dependency: 400 for a JSON body with a lone surrogate (``"\\ud800"``).

    Such a string is valid JSON and passes validation as ``str``, but it cannot be
    encoded as UTF-8, so it would blow up (500) wherever a command, path or name
    meets the OS or the database. FastAPI has parsed the body already (cached on the
    request); this walks it iteratively (a deeply nested body must not recurse).

    Raises:
        ApiError: ``bad_request`` naming the problem.
    """
    try:
        body = await request.json()
    except ValueError:
        return  # not JSON: the route's own validation answers
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    "bad_request", "request body has a string that is not valid Unicode"
                ) from None


_TIMEOUT_CAP_S = 10**9
"""Run timeouts above this are treated as this (the configured maximum is far lower)."""

OrgId = Annotated[str, Depends(require_org)]
ValidText = Depends(reject_lone_surrogates)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@dataclass(frozen=True)
class Services:
    """Everything the routes use, built once at start-up."""

    config: ServerConfig
    store: Store
    vms: Vms
    sync: Sync
    uploads: Uploads
    signer: Signer
    idempotency: Idempotency
    vm_files: VmFiles


_STATUS_TEXT = {
    400: "bad_request, unsupported_*",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found, command_not_found",
    405: "method not allowed (code bad_request)",
    409: "conflict, vm_busy",
    413: "payload_too_large",
    500: "internal",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: the wire's error envelope under each status."""
    return {
        status: {"model": ErrorEnvelope, "description": _STATUS_TEXT[status]}
        for status in (*statuses, 500)
    }


_API_ERRORS = (400, 401, 413)
"""What every authenticated route with a JSON body or query may answer."""

_SyncResponse = SyncReadResponse | SyncWriteResponse | SyncManifestResponse | SyncDeleteResponse

_RAW_BYTES = {
    "description": "The raw bytes of the file",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without FastAPI's 422 responses (errors are 400 envelopes)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def _json(model: Envelope, *, exclude_none: bool = False) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True, exclude_none=exclude_none))


def create_app(services: Services) -> FastAPI:
    """Build the app around already-started services.

    Args:
        services: Store, engine-backed services and config of this server.

    Returns:
        The ASGI app.
    """
    app = FastAPI(title="arker serve", version=__version__, docs_url=None, redoc_url=None)
    app.state.services = services
    # `/openapi.json` stays on (schemathesis and client generators read it); the docs
    # UIs stay off. Handlers return `JSONResponse`s, so `response_model` only documents.
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    # Outermost last: the size guard, then the key check, both before any body is read.
    app.add_middleware(RequireKeyMiddleware, store=services.store, prefixes=("/api/v1/vms/",))
    app.add_middleware(
        BodyLimitMiddleware,
        limit=services.config.max_body_bytes,
        exempt_prefixes=("/api/v1/presigned/",),
    )
    s = services

    @app.get("/api/v1/health", response_model=HealthResponse, responses=_errors())
    def health() -> JSONResponse:
        return _json(HealthResponse(version=__version__, backend=BACKEND))

    @app.get("/api/v1/vms/list", response_model=ListVmsResponse, responses=_errors(*_API_ERRORS))
    def list_vms(
        org_id: OrgId,
        limit: Annotated[int, Query(ge=1, le=100)] = 25,
        offset: Annotated[int, Query(ge=0)] = 0,
        q: Annotated[str | None, Query(max_length=256)] = None,
        sort: SortOrder = "-created_at",
    ) -> JSONResponse:
        return _json(s.vms.list(org_id, limit=limit, offset=offset, q=q, sort=sort))

    @app.post(
        "/api/v1/vms/fork",
        dependencies=[ValidText],
        response_model=ForkResponse,
        responses=_errors(*_API_ERRORS, 404, 409),
    )
    def fork_by_name(
        org_id: OrgId, body: ForkRequest, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        return JSONResponse(
            s.idempotency.execute(
                org_id,
                "fork-by-name",
                idempotency_key,
                body.model_dump(mode="json", by_alias=True),
                lambda: _dump(s.vms.fork_by_name(org_id, body)),
            )
        )

    @app.post(
        "/api/v1/vms/{vm_id}/fork",
        dependencies=[ValidText],
        response_model=ForkResponse,
        responses=_errors(*_API_ERRORS, 404, 409),
    )
    def fork_by_id(
        vm_id: str, org_id: OrgId, body: ForkRequest, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        return JSONResponse(
            s.idempotency.execute(
                org_id,
                f"fork:{vm_id}",
                idempotency_key,
                body.model_dump(mode="json", by_alias=True),
                lambda: _dump(s.vms.fork_by_id(org_id, vm_id, body)),
            )
        )

    @app.delete(
        "/api/v1/vms/{vm_id}", response_model=DeleteResponse, responses=_errors(*_API_ERRORS, 404)
    )
    def delete_vm(vm_id: str, org_id: OrgId) -> JSONResponse:
        s.vms.delete(org_id, vm_id)
        return _json(DeleteResponse())

    @app.post(
        "/api/v1/vms/{vm_id}/run",
        dependencies=[ValidText],
        response_model=RunResponse,
        responses=_errors(*_API_ERRORS, 404, 409),
    )
    def run(
        vm_id: str, org_id: OrgId, body: RunRequest, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        request_body = body.model_dump(mode="json")
        request_body["session_id"] = str(body.session_id)
        if body.timeout is not None and body.timeout > _TIMEOUT_CAP_S:
            # Any timeout is capped by the server's maximum anyway; this keeps a huge
            # JSON integer (10**400) from overflowing when it becomes a float.
            body = body.model_copy(update={"timeout": _TIMEOUT_CAP_S})
        return JSONResponse(
            s.idempotency.execute(
                org_id,
                f"run:{vm_id}",
                idempotency_key,
                request_body,
                lambda: _dump(s.vms.run(org_id, vm_id, body)),
            )
        )

    @app.post(
        "/api/v1/vms/{vm_id}/sync",
        dependencies=[ValidText],
        response_model=_SyncResponse,
        responses=_errors(*_API_ERRORS, 404, 409),
    )
    def sync(
        vm_id: str,
        org_id: OrgId,
        request: Request,
        body: Annotated[SyncRequest, Body()],
    ) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id)
        base_url = str(request.base_url)
        if isinstance(body, SyncReadRequest):
            return _json(s.sync.read(vm.id, body.path, base_url), exclude_none=True)
        if isinstance(body, SyncWriteRequest):
            return _json(s.sync.write(vm.id, body, base_url), exclude_none=True)
        if isinstance(body, SyncManifestRequest):
            return _json(s.vm_files.manifest(vm.id, body.path))
        return _json(s.vm_files.delete(vm.id, body.paths))

    @app.get(
        READ_ROUTE,
        response_class=StreamingResponse,
        responses={200: _RAW_BYTES, **_errors(400, 403, 404)},
    )
    def presigned_read(
        vm_id: str,
        path: str = "",
        expires: str | None = None,
        signature: str | None = None,
    ) -> StreamingResponse:
        s.signer.verify("GET", vm_id, path, expires, signature)
        # The server signs only checked paths; check again all the same (defence in
        # depth should the signing secret leak: still never a path outside /home/user).
        problem = path_problem(path)
        if problem:
            raise ApiError("bad_request", problem)
        if s.store.get_vm(vm_id) is None:
            raise ApiError("not_found", f"vm not found: {vm_id}")
        blocks, size = s.sync.stream(vm_id, path)
        return StreamingResponse(
            blocks,
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.put(UPLOAD_ROUTE, response_model=Envelope, responses=_errors(400, 403, 404, 409, 413))
    async def presigned_upload(
        vm_id: str,
        upload_id: str,
        request: Request,
        expires: str | None = None,
        signature: str | None = None,
    ) -> JSONResponse:
        s.signer.verify("PUT", vm_id, upload_id, expires, signature)
        if s.store.get_vm(vm_id) is None:
            raise ApiError("not_found", f"vm not found: {vm_id}")
        # This route is exempt from the JSON body limit (it streams up to 100 MiB), so
        # refuse a declared length past the announced size here, before reading a byte:
        # otherwise the server would sit waiting for bytes it will refuse anyway.
        upload = s.store.get_upload(vm_id, upload_id)
        declared = request.headers.get("content-length", "")
        if upload is not None and declared.isdigit() and int(declared) > upload.size:
            raise ApiError(
                "payload_too_large",
                f"body of {declared} bytes is larger than the announced {upload.size}",
            )
        await s.uploads.receive_put(
            vm_id, upload_id, request.stream(), request.headers.get("content-range")
        )
        return _json(Envelope())

    @app.head(UPLOAD_ROUTE, responses=_errors(403, 404))
    def presigned_upload_offset(
        vm_id: str,
        upload_id: str,
        expires: str | None = None,
        signature: str | None = None,
    ) -> Response:
        """(ext) How much of an interrupted upload is held: ``Upload-Offset``."""
        s.signer.verify("PUT", vm_id, upload_id, expires, signature)
        held = s.uploads.held_prefix(vm_id, upload_id)
        return Response(status_code=200, headers={"Upload-Offset": str(held)})

    return app


def _dump(model: Envelope) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)
