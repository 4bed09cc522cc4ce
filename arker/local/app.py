"""`create_app`: the FastAPI app serving every route of the Arker wire protocol.

Handlers are thin: parse with the shared `arker._wire` models, call the service
objects, dump the response model. Handlers that touch the (blocking) engine are plain
``def`` so FastAPI runs them in its thread pool; ``run``, which may wait for an hour,
waits in a pool of its own (`Services.run_pool`) behind the fair shares (`run_slots`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .._paths import path_problem
from .._version import __version__
from .._wire import (
    DeleteResponse,
    Envelope,
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
from .body_checks import reject_lone_surrogates
from .config import BACKEND
from .errors import ApiError, BodyLimitMiddleware, install_error_handlers
from .openapi import API_ERRORS, RAW_BYTES, error_docs, openapi_document
from .platform_errors import PlatformDialectMiddleware
from .presign import READ_ROUTE, UPLOAD_ROUTE
from .routes_live import live_router
from .routes_platform import platform_router
from .routes_ports import ports_router
from .routes_pty import pty_router
from .routes_vm_ext import vm_ext_router
from .services import Services

_TIMEOUT_CAP_S = 10**9
"""Run timeouts above this are treated as this (the configured maximum is far lower)."""

OrgId = Annotated[str, Depends(require_org)]
ValidText = Depends(reject_lone_surrogates)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


_SyncResponse = SyncReadResponse | SyncWriteResponse | SyncManifestResponse | SyncDeleteResponse


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
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    app.add_middleware(PlatformDialectMiddleware)  # the 1.3 client's shapes (platform_errors)
    # Outermost last: the size guard, then the key check, both before any body is read.
    app.add_middleware(RequireKeyMiddleware, store=services.store, prefixes=("/api/v1/vms/",))
    app.add_middleware(
        BodyLimitMiddleware,
        limit=services.config.max_body_bytes,
        exempt_prefixes=("/api/v1/presigned/",),
    )
    s = services
    app.include_router(live_router(services))  # live runs and sessions (routes_live.py)
    app.include_router(pty_router(services))  # interactive terminals (routes_pty.py)
    app.include_router(ports_router(services))  # exposed ports (routes_ports.py)
    app.include_router(vm_ext_router(services))  # fork diffs and TTLs (routes_vm_ext.py)

    @app.get("/api/v1/health", response_model=HealthResponse, responses=error_docs())
    def health() -> JSONResponse:
        return _json(HealthResponse(version=__version__, backend=BACKEND))

    @app.get("/api/v1/vms/list", response_model=ListVmsResponse, responses=error_docs(*API_ERRORS))
    def list_vms(
        org_id: OrgId,
        limit: Annotated[int, Query(ge=1, le=100)] = 25,
        offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # SQLite integers
        q: Annotated[str | None, Query(max_length=256)] = None,
        sort: SortOrder = "-created_at",
    ) -> JSONResponse:
        return _json(s.vms.list(org_id, limit=limit, offset=offset, q=q, sort=sort))

    @app.post(
        "/api/v1/vms/fork",
        dependencies=[ValidText],
        response_model=ForkResponse,
        responses=error_docs(*API_ERRORS, 404, 409),
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
        responses=error_docs(*API_ERRORS, 404, 409),
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
        "/api/v1/vms/{vm_id}",
        response_model=DeleteResponse,
        responses=error_docs(*API_ERRORS, 404),
    )
    def delete_vm(vm_id: str, org_id: OrgId) -> JSONResponse:
        s.vms.delete(org_id, vm_id)
        return _json(DeleteResponse())

    @app.post(
        "/api/v1/vms/{vm_id}/run",
        dependencies=[ValidText],
        response_model=RunResponse,
        responses=error_docs(*API_ERRORS, 404, 409, 429, 503),
    )
    async def run(
        vm_id: str, org_id: OrgId, body: RunRequest, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        # Async, so waiting on the command holds no thread of the pool that serves the
        # other requests: the run takes a slot of its org's share (429 when full, before
        # anything is stored under its key) and waits in a thread of `run_pool`, which
        # has one thread per slot.
        request_body = body.model_dump(mode="json")
        request_body["session_id"] = str(body.session_id)
        if body.timeout is not None and body.timeout > _TIMEOUT_CAP_S:
            # Any timeout is capped by the server's maximum anyway; this keeps a huge
            # JSON integer (10**400) from overflowing when it becomes a float.
            body = body.model_copy(update={"timeout": _TIMEOUT_CAP_S})
        slot = s.run_slots.acquire(org_id, vm_id)

        def execute() -> dict[str, Any]:
            with slot:  # released by the thread itself, even if the request is gone
                return s.idempotency.execute(
                    org_id,
                    f"run:{vm_id}",
                    idempotency_key,
                    request_body,
                    lambda: _dump(s.vms.run(org_id, vm_id, body)),
                )

        try:
            future = s.run_pool.submit(execute)
        except BaseException:
            slot.release()
            raise
        return JSONResponse(await asyncio.wrap_future(future))

    @app.post(
        "/api/v1/vms/{vm_id}/sync",
        dependencies=[ValidText],
        response_model=_SyncResponse,
        responses=error_docs(*API_ERRORS, 404, 409),
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
        responses={200: RAW_BYTES, 206: RAW_BYTES, **error_docs(400, 403, 404, 416)},
    )
    def presigned_read(
        vm_id: str,
        path: str = "",
        expires: str | None = None,
        signature: str | None = None,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    ) -> StreamingResponse:
        """Raw bytes of a file; (ext) ``Range: bytes=N-`` answers ``206`` from byte N."""
        s.signer.verify("GET", vm_id, path, expires, signature)
        # The server signs only checked paths; check again all the same (defence in
        # depth should the signing secret leak: still never a path outside /home/user).
        problem = path_problem(path)
        if problem:
            raise ApiError("bad_request", problem)
        if s.store.get_vm(vm_id) is None:
            raise ApiError("not_found", f"vm not found: {vm_id}")
        sent = s.sync.stream(vm_id, path, range_header, if_range)
        headers = {"Accept-Ranges": "bytes", "ETag": sent.etag, "Content-Length": str(sent.size)}
        if sent.span is not None:
            headers["Content-Length"] = str(sent.span.length)
            headers["Content-Range"] = sent.span.content_range
        return StreamingResponse(
            sent.blocks,
            status_code=206 if sent.span is not None else 200,
            media_type="application/octet-stream",
            headers=headers,
        )

    @app.put(UPLOAD_ROUTE, response_model=Envelope, responses=error_docs(400, 403, 404, 409, 413))
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

    @app.head(UPLOAD_ROUTE, responses=error_docs(403, 404))
    async def presigned_upload_offset(
        vm_id: str,
        upload_id: str,
        expires: str | None = None,
        signature: str | None = None,
    ) -> Response:
        """(ext) How much of an interrupted upload is held: ``Upload-Offset``."""
        s.signer.verify("PUT", vm_id, upload_id, expires, signature)
        held = await s.uploads.settled_prefix(vm_id, upload_id)
        return Response(status_code=200, headers={"Upload-Offset": str(held)})

    app.include_router(platform_router(services))  # the platform's API (routes_platform.py)
    return app


def _dump(model: Envelope) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)
