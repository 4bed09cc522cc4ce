"""``POST /v1/vms/{id}/sync`` in the platform's shapes (the official 1.3 client's sync).

The same operations as the 0.1.0 route (`arker.local.sync`, `arker.local.vmfiles`):
only the answers differ. A read says ``op`` and ``path`` (inline ``encoding`` is
``utf8`` or ``base64``; a presigned one names its ``method``), each write result
repeats its entry's ``path`` and ``size`` with the byte ``ranges`` received so far, and a
manifest lists paths relative to its ``root`` with a ``hash`` (sha256). The 0.1.0 route
keeps answering absolute manifest paths with ``sha256``: which shape a request gets is
decided by who sends it (`arker.local.platform_errors.PlatformDialectMiddleware`), since
both send the same request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from .._paths import PLATFORM_ROOTS
from .._wire import (
    ChunkEntry,
    CommitEntry,
    PresignEntry,
    SyncDeleteRequest,
    SyncManifestRequest,
    SyncReadRequest,
    SyncRequest,
    SyncWriteRequest,
    WriteResult,
)
from .auth import require_org
from .body_checks import reject_lone_surrogates
from .errors import ApiError
from .platform_errors import PLATFORM_PREFIX
from .services import Services

__all__ = ["platform_sync_routes"]

_REQUEST: TypeAdapter[Any] = TypeAdapter(SyncRequest)
OrgId = Annotated[str, Depends(require_org)]


def _parse(body: dict[str, Any]) -> Any:
    try:
        return _REQUEST.validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError("bad_request", f"{where}: {first.get('msg', 'invalid')}") from None


def platform_sync_routes(router: APIRouter, s: Services) -> None:
    """Add the platform's sync route to ``router`` (prefix ``/api``)."""

    def ranges(vm_id: str, entry: ChunkEntry, result: WriteResult) -> list[dict[str, int]]:
        if result.complete:
            return [{"start": 0, "end": entry.size}] if entry.size else []
        upload = s.store.get_upload(vm_id, entry.upload_id)
        held = upload.ranges if upload is not None else []
        return [{"start": a, "end": b} for a, b in held]

    def write_result(
        vm_id: str, entry: ChunkEntry | PresignEntry | CommitEntry, result: WriteResult
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": entry.path,
            "size": entry.size,
            "complete": bool(result.complete),
            "written": bool(result.written),
        }
        if result.error is not None:
            out["error"] = result.error.model_dump(mode="json")
        if isinstance(entry, ChunkEntry):
            out["received_bytes"] = result.received_bytes or 0
            out["ranges"] = ranges(vm_id, entry, result) if result.error is None else []
        elif isinstance(entry, PresignEntry) and result.presigned_url is not None:
            out.update(
                presigned_url=result.presigned_url,
                upload_id=result.upload_id,
                expires_in=result.expires_in,
                method="PUT",
            )
        return out

    @router.post(
        PLATFORM_PREFIX.removeprefix("/api") + "/vms/{vm_id}/sync",
        dependencies=[Depends(reject_lone_surrogates)],
    )
    def sync(
        vm_id: str, org_id: OrgId, request: Request, body: Annotated[dict[str, Any], Body()]
    ) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id).id
        req = _parse(body)
        base_url = str(request.base_url)
        if isinstance(req, SyncReadRequest):
            read = s.sync.read(vm, req.path, base_url, PLATFORM_ROOTS)
            answer: dict[str, Any] = {"ok": True, "op": "read", "path": req.path, "size": read.size}
            if read.presigned_url is not None:
                answer.update(
                    presigned_url=read.presigned_url, expires_in=read.expires_in, method="GET"
                )
            else:
                encoding = "base64" if read.encoding == "base64" else "utf8"
                answer.update(content=read.content, encoding=encoding)
            return JSONResponse(answer)
        if isinstance(req, SyncWriteRequest):
            done = s.sync.write(vm, req, base_url, PLATFORM_ROOTS)
            results = [
                write_result(vm, e, r) for e, r in zip(req.writes, done.results, strict=True)
            ]
            return JSONResponse({"ok": True, "op": "write", "results": results})
        if isinstance(req, SyncManifestRequest):
            listed = s.vm_files.manifest(vm, req.path)
            root = req.path.rstrip("/") or "/"
            cut = len(root.rstrip("/")) + 1
            entries = [
                {"path": e.path[cut:], "size": e.size, "mode": e.mode, "hash": e.sha256}
                for e in listed.entries
            ]
            return JSONResponse(
                {
                    "ok": True,
                    "op": "manifest",
                    "root": root,
                    "hash_algo": "sha256",
                    "entries": entries,
                    "truncated": listed.truncated,
                }
            )
        assert isinstance(req, SyncDeleteRequest)
        return JSONResponse(s.vm_files.delete(vm, req.paths).model_dump(mode="json"))
