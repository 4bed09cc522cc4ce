"""The sync route (``POST /api/v1/vms/{id}/sync``): one request per operation.

Reads, write entries, manifests and deletes, each retried under the client's policy.
Every write entry is idempotent (a chunk by its ``upload_id``, a commit by its upload),
so a whole batch may be resent.
"""

from __future__ import annotations

import base64

from .._base_client import BaseClient
from .._error_codes import status_for_code
from .._exceptions import ResponseValidationError, error_for
from .._ids import new_ulid
from .._retry import is_transient_envelope_error
from .._wire import (
    ChunkEntry,
    PresignEntry,
    SyncDeleteRequest,
    SyncDeleteResponse,
    SyncManifestRequest,
    SyncManifestResponse,
    SyncReadRequest,
    SyncReadResponse,
    SyncWriteRequest,
    SyncWriteResponse,
    WriteEntry,
    WriteResult,
)
from ._resource import vm_path

__all__ = ["SyncRoute", "inline_entry", "require_written"]


def inline_entry(path: str, payload: bytes, sha256: str, mode: int | None) -> ChunkEntry:
    """The whole file as one chunk; its ``upload_id`` is minted once per call, so a
    retried chunk is the same chunk."""
    return ChunkEntry(
        path=path,
        size=len(payload),
        upload_id=new_ulid(),
        start=0,
        end=len(payload),
        content=base64.b64encode(payload).decode("ascii"),
        sha256=sha256,
        mode=mode,
    )


def require_written(result: WriteResult, what: str) -> None:
    """Raise unless the server confirmed the entry's file complete and written."""
    if not (result.complete and result.written):
        raise ResponseValidationError(f"{what}: server did not confirm complete+written", 200)


class SyncRoute:
    """The four sync operations for one client."""

    def __init__(self, client: BaseClient) -> None:
        self._client = client

    def read(self, vm_id: str, path: str) -> SyncReadResponse:
        """Inline content, or a presigned URL to GET, for the file at ``path``."""
        return self._client.call(
            "POST",
            vm_path(vm_id, "/sync"),
            SyncReadResponse,
            body=SyncReadRequest(path=path),
            acts=False,
        )

    def write(self, vm_id: str, entries: list[WriteEntry]) -> list[WriteResult]:
        """Send write entries in one request; one result per entry, in order.

        A per-entry error raises inside the attempt, so a transient one is retried like
        any other transient failure.
        """

        def check(response: SyncWriteResponse) -> None:
            if len(response.results) != len(entries):
                raise ResponseValidationError(
                    f"SyncWriteResponse: {len(entries)} entries, {len(response.results)} results",
                    200,
                )
            errors = [
                error_for(
                    r.error.code, f"{e.path}: {r.error.message}", status_for_code(r.error.code)
                )
                for e, r in zip(entries, response.results, strict=True)
                if r.error is not None
            ]
            # A transient error first, so the whole (idempotent) batch is retried.
            errors.sort(key=lambda err: not is_transient_envelope_error(err.code, err.message))
            if errors:
                raise errors[0]

        response = self._client.call(
            "POST",
            vm_path(vm_id, "/sync"),
            SyncWriteResponse,
            body=SyncWriteRequest(writes=entries),
            check=check,
            # Asking for presigned URLs changes no file: a lost answer is not ambiguous.
            acts=not all(isinstance(e, PresignEntry) for e in entries),
        )
        return response.results

    def manifest(self, vm_id: str, path: str) -> SyncManifestResponse:
        """Every regular file under the directory ``path``: size, mode and sha256."""
        return self._client.call(
            "POST",
            vm_path(vm_id, "/sync"),
            SyncManifestResponse,
            body=SyncManifestRequest(path=path),
            acts=False,
        )

    def delete(self, vm_id: str, paths: list[str]) -> None:
        """Delete files; one already absent is not an error."""
        self._client.call(
            "POST", vm_path(vm_id, "/sync"), SyncDeleteResponse, body=SyncDeleteRequest(paths=paths)
        )
