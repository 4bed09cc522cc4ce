"""``client.sync``: read and write files inside a VM.

Writes up to 4 MiB travel inline as one chunk; larger ones ask for a presigned URL,
PUT the raw bytes there and commit. Every step retries under the client's policy and is
idempotent: the chunk's ``upload_id`` is minted once per call, and the presigned upload
is committed under the id the server gave it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import requests

from .._constants import INLINE_WRITE_MAX, MAX_FILE_BYTES
from .._exceptions import (
    BadRequestError,
    PayloadTooLargeError,
    ResponseValidationError,
    error_for,
    status_for_code,
)
from .._ids import new_ulid
from .._paths import path_problem
from .._wire import (
    ChunkEntry,
    CommitEntry,
    PresignEntry,
    SyncReadRequest,
    SyncReadResponse,
    SyncWriteRequest,
    SyncWriteResponse,
    WriteEntry,
    WriteResult,
)
from ._resource import Resource
from .vms import vm_path

__all__ = ["SyncResource", "check_path"]


def check_path(path: str) -> None:
    """Raise `BadRequestError` for a path the server would refuse (before any request)."""
    problem = path_problem(path)
    if problem is not None:
        raise BadRequestError("bad_request", problem, 400)


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise BadRequestError(
        "bad_request", f"data must be bytes or str, not {type(data).__name__}", 400
    )


def _require_written(result: WriteResult, what: str) -> None:
    if not (result.complete and result.written):
        raise ResponseValidationError(f"{what}: server did not confirm complete+written", 200)


class SyncResource(Resource):
    """File transfer for VMs. Paths must be absolute and under ``/home/user/``."""

    def read(self, vm_id: str, path: str) -> bytes:
        """Return the bytes of the file at ``path`` in the VM.

        Raises:
            NotFoundError: No such file.
            BadRequestError: ``path`` breaks the path rules (no request is made).
        """
        check_path(path)
        wire = self._client.call(
            "POST",
            vm_path(vm_id, "/sync"),
            SyncReadResponse,
            body=SyncReadRequest(path=path),
        )
        if wire.content is not None:
            data = self._inline_content(wire)
        elif wire.presigned_url:
            data = self._client.transfer("GET", wire.presigned_url, consume=_read_body)
        else:
            raise ResponseValidationError("SyncReadResponse: neither content nor presigned_url")
        if wire.size is not None and wire.size != len(data):
            raise ResponseValidationError(
                f"read {path}: server announced {wire.size} bytes, received {len(data)}"
            )
        if wire.sha256 is not None and hashlib.sha256(data).hexdigest() != wire.sha256:
            raise ResponseValidationError(f"read {path}: sha256 mismatch")
        return data

    @staticmethod
    def _inline_content(wire: SyncReadResponse) -> bytes:
        content = wire.content or ""
        if wire.encoding == "base64":
            try:
                return base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ResponseValidationError(f"content: invalid base64 ({exc})") from None
        return content.encode("utf-8", "surrogatepass")

    def write(self, vm_id: str, path: str, data: bytes | bytearray | memoryview | str) -> None:
        """Write ``data`` to ``path`` in the VM, replacing the file atomically.

        Returns once the bytes are durably stored. ``str`` is encoded as UTF-8. Empty
        files are allowed.

        Raises:
            BadRequestError: ``path`` breaks the path rules (no request is made).
            PayloadTooLargeError: ``data`` exceeds 100 MiB (no request is made).
        """
        check_path(path)
        payload = _as_bytes(data)
        if len(payload) > MAX_FILE_BYTES:
            raise PayloadTooLargeError(
                "payload_too_large",
                f"{len(payload)} bytes is over the {MAX_FILE_BYTES}-byte file limit",
                413,
            )
        digest = hashlib.sha256(payload).hexdigest()
        if len(payload) <= INLINE_WRITE_MAX:
            self._write_inline(vm_id, path, payload, digest)
        else:
            self._write_presigned(vm_id, path, payload, digest)

    def _write_inline(self, vm_id: str, path: str, payload: bytes, digest: str) -> None:
        entry = ChunkEntry(
            path=path,
            size=len(payload),
            upload_id=new_ulid(),  # once per call: a retried chunk is the same chunk
            start=0,
            end=len(payload),
            content=base64.b64encode(payload).decode("ascii"),
            sha256=digest,
        )
        result = self._write_one(vm_id, entry)
        _require_written(result, f"write {path}")

    def _write_presigned(self, vm_id: str, path: str, payload: bytes, digest: str) -> None:
        grant = self._write_one(vm_id, PresignEntry(path=path, size=len(payload)))
        if not grant.presigned_url or not grant.upload_id:
            raise ResponseValidationError("presigned write: missing presigned_url or upload_id")
        self._client.transfer(
            "PUT",
            grant.presigned_url,
            data=lambda: payload,
            consume=lambda response: None,
            headers={"Content-Type": "application/octet-stream"},
        )
        commit = CommitEntry(path=path, size=len(payload), upload_id=grant.upload_id, sha256=digest)
        _require_written(self._write_one(vm_id, commit), f"commit {path}")

    def _write_one(self, vm_id: str, entry: WriteEntry) -> WriteResult:
        """Send one write entry; its per-entry error raises inside the attempt, so a
        transient one is retried like any other transient failure."""

        def check(response: SyncWriteResponse) -> None:
            if len(response.results) != 1:
                raise ResponseValidationError(
                    f"SyncWriteResponse: expected 1 result, got {len(response.results)}", 200
                )
            result = response.results[0]
            if result.error is not None:
                code = result.error.code
                raise error_for(code, result.error.message, status_for_code(code))

        response = self._client.call(
            "POST",
            vm_path(vm_id, "/sync"),
            SyncWriteResponse,
            body=SyncWriteRequest(writes=[entry]),
            check=check,
        )
        return response.results[0]


def _read_body(response: requests.Response) -> bytes:
    return response.content
