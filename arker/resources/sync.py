"""``client.sync``: move files in and out of a VM, streaming, verified, resumable.

Writes up to 4 MiB travel inline as one chunk; larger ones ask for a presigned URL,
stream the raw bytes there with a PUT and commit. Every step retries under the client's
policy and is idempotent: the chunk's ``upload_id`` is minted once per call, and the
presigned upload is committed under the id the server gave it. An interrupted PUT
resumes from the bytes the server already holds when the server can say (``HEAD`` on the
upload URL answers ``Upload-Offset``), and starts over otherwise. Every transfer carries
a sha256 that the receiving side checks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from typing import IO

import requests

from .._constants import INLINE_WRITE_MAX, MAX_FILE_BYTES
from .._error_codes import status_for_code
from .._exceptions import (
    PayloadTooLargeError,
    PermissionDeniedError,
    ResponseValidationError,
    error_for,
    refused_before_sending,
)
from .._ids import new_ulid
from .._models import DirSyncResult
from .._paths import path_problem
from .._retry import is_transient_envelope_error
from .._streams import (
    CHUNK,
    BackgroundHash,
    DataSource,
    PathSink,
    ProgressCallback,
    Sink,
    Source,
    Tracker,
    open_source,
)
from .._transport import Body
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
    decode_content,
)
from ._dirsync import Ignore, pull_dir, push_dir
from ._resource import Resource
from .vms import vm_path

__all__ = ["SyncResource", "check_path"]


def check_path(path: str) -> None:
    """Raise `BadRequestError` for a path the server would refuse (before any request)."""
    problem = path_problem(path)
    if problem is not None:
        raise refused_before_sending(problem)


def _require_written(result: WriteResult, what: str) -> None:
    if not (result.complete and result.written):
        raise ResponseValidationError(f"{what}: server did not confirm complete+written", 200)


def _inline_content(wire: SyncReadResponse) -> bytes:
    try:
        return decode_content(wire.content or "", wire.encoding)
    except ValueError as exc:
        raise ResponseValidationError(f"content: {exc}") from None


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


def _held_offset(response: requests.Response | None, size: int) -> int:
    """Where to resume an upload: the server's ``Upload-Offset``, kept below ``size`` so
    the resuming PUT always carries at least one byte."""
    if response is None:
        return 0
    try:
        held = int(response.headers.get("Upload-Offset", "0"))
    except ValueError:
        return 0
    return max(0, min(held, size - 1))


class SyncResource(Resource):
    """File transfer for VMs. Paths must be absolute and under ``/home/user/``."""

    # -- reads -----------------------------------------------------------------------

    def read(self, vm_id: str, path: str, *, progress: ProgressCallback | None = None) -> bytes:
        """Return the bytes of the file at ``path`` in the VM.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            progress: Called with ``(bytes_done, bytes_total)`` as bytes arrive.

        Raises:
            NotFoundError: No such file.
            BadRequestError: ``path`` breaks the path rules (no request is made).
            ResponseValidationError: The bytes do not match the size or sha256 the
                server announced.
        """
        check_path(path)
        buffer = io.BytesIO()
        self._download(vm_id, path, Sink(buffer), progress)
        return buffer.getvalue()

    def read_to(
        self,
        vm_id: str,
        path: str,
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        progress: ProgressCallback | None = None,
        durable: bool = False,
    ) -> int:
        """Stream the file at ``path`` into a local path or binary file; return its size.

        A download to a path lands atomically: the bytes go to a temporary file beside
        ``dest``, are verified, then renamed over it. An interrupted or corrupt download
        never leaves a truncated file under ``dest``, even if the process is killed.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            dest: A local path, or a binary file object (written from its position).
            progress: Called with ``(bytes_done, bytes_total)`` as bytes arrive.
            durable: Also survive a power cut or kernel crash: fsync the file before
                the rename and its directory after it (as ``rsync --fsync`` does).
                Off by default, as in curl, wget and rsync: it about doubles the time
                of a large download to a fast disk. Ignored for file objects.

        Raises:
            NotFoundError: No such file.
            BadRequestError: ``path`` breaks the path rules (no request is made).
            ResponseValidationError: The bytes do not match the size or sha256 the
                server announced; nothing is left under ``dest``.
        """
        check_path(path)
        if isinstance(dest, (str, os.PathLike)):
            return self._download(vm_id, path, PathSink(dest, durable=durable), progress)
        return self._download(vm_id, path, Sink(dest), progress)

    def _download(
        self, vm_id: str, path: str, sink: Sink, progress: ProgressCallback | None
    ) -> int:
        try:
            wire = self._client.call(
                "POST", vm_path(vm_id, "/sync"), SyncReadResponse, body=SyncReadRequest(path=path)
            )
            tracker = Tracker(wire.size or 0, progress)
            if wire.content is not None:
                data = _inline_content(wire)
                sink.write(data)
                size, digest = len(data), hashlib.sha256(data).hexdigest()
                tracker.total = tracker.total or size
                tracker.set(size)
            elif wire.presigned_url:
                size, digest = self._client.presigned.transfer(
                    "GET",
                    wire.presigned_url,
                    consume=lambda response: _drain(response, sink, tracker),
                )
            else:
                raise ResponseValidationError("SyncReadResponse: neither content nor presigned_url")
            if wire.size is not None and wire.size != size:
                raise ResponseValidationError(
                    f"read {path}: server announced {wire.size} bytes, received {size}"
                )
            if wire.sha256 is not None and wire.sha256 != digest:
                raise ResponseValidationError(f"read {path}: sha256 mismatch, nothing was saved")
        except BaseException:
            sink.abort()
            raise
        sink.commit()
        return size

    # -- directories -----------------------------------------------------------------

    def push_dir(
        self,
        vm_id: str,
        local_dir: str | os.PathLike[str],
        remote_dir: str,
        *,
        delete: bool = False,
        ignore: Ignore = None,
    ) -> DirSyncResult:
        """Make ``remote_dir`` in the VM hold the files of ``local_dir``.

        Only files whose sha256 or mode differ from the VM's copy are sent (the VM's
        side is read from a server-side manifest). Modes are kept. Symbolic links in
        the local tree are skipped and reported, never followed.

        Args:
            vm_id: The VM.
            local_dir: The local directory to send.
            remote_dir: Destination under ``/home/user`` (created as needed).
            delete: Also delete files under ``remote_dir`` that ``local_dir`` lacks.
            ignore: Glob patterns (``[".git", "*.pyc"]``) or a predicate on relative
                paths; ignored files are neither sent nor deleted.

        Returns:
            What was sent, skipped and deleted, and how many bytes moved.
        """
        return push_dir(self, vm_id, local_dir, remote_dir, delete=delete, ignore=ignore)

    def pull_dir(
        self,
        vm_id: str,
        remote_dir: str,
        local_dir: str | os.PathLike[str],
        *,
        delete: bool = False,
        ignore: Ignore = None,
        durable: bool = False,
    ) -> DirSyncResult:
        """Make ``local_dir`` hold the files of ``remote_dir`` in the VM.

        Only files whose sha256 or mode differ are downloaded, each landing
        atomically. Nothing is written through a symbolic link in ``local_dir``.

        Args:
            vm_id: The VM.
            remote_dir: Source directory under ``/home/user``.
            local_dir: Local destination (created as needed).
            delete: Also delete local files that ``remote_dir`` lacks.
            ignore: Glob patterns or a predicate on relative paths.
            durable: fsync each downloaded file, as `read_to` does with it.

        Returns:
            What was downloaded, skipped and deleted, and how many bytes moved.
        """
        return pull_dir(
            self, vm_id, remote_dir, local_dir, delete=delete, ignore=ignore, durable=durable
        )

    # -- writes ----------------------------------------------------------------------

    def write(
        self,
        vm_id: str,
        path: str,
        data: DataSource,
        *,
        mode: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Write ``data`` to ``path`` in the VM, replacing the file atomically.

        Returns once the bytes are durably stored and their sha256 checked by the
        server. Paths and file objects are streamed, never read whole into memory.

        Args:
            vm_id: The VM.
            path: Absolute path under ``/home/user/``.
            data: ``bytes``; ``str`` (written as UTF-8 — it is content, not a file
                name); a local path as `os.PathLike` (e.g. `pathlib.Path`); or a binary
                file object, read from its current position. Empty files are allowed.
            mode: Permission bits for the file (e.g. ``0o755``); the server's default
                (``0o644``) when omitted.
            progress: Called with ``(bytes_done, bytes_total)`` as bytes are sent.

        Raises:
            BadRequestError: ``path`` breaks the path rules or ``data`` is unreadable
                (no request is made).
            PayloadTooLargeError: ``data`` exceeds 100 MiB (no request is made).
        """
        check_path(path)
        source = open_source(data, MAX_FILE_BYTES)
        if source.size > MAX_FILE_BYTES:
            raise refused_before_sending(
                f"data is over the {MAX_FILE_BYTES}-byte (100 MiB) file limit", PayloadTooLargeError
            )
        if mode is not None and not 0 <= mode <= 0o7777:
            raise refused_before_sending(f"mode must be 0..0o7777, got {mode!r}")
        tracker = Tracker(source.size, progress)
        if source.size <= INLINE_WRITE_MAX:
            payload = source.read_all()
            entry = inline_entry(path, payload, hashlib.sha256(payload).hexdigest(), mode)
            _require_written(self._write_entries(vm_id, [entry])[0], f"write {path}")
            tracker.set(source.size)
        else:
            upload_id = self._upload(vm_id, path, source, tracker)
            commit = CommitEntry(
                path=path, size=source.size, upload_id=upload_id, sha256=source.sha256, mode=mode
            )
            _require_written(self._write_entries(vm_id, [commit])[0], f"commit {path}")

    def _upload(self, vm_id: str, path: str, source: Source, tracker: Tracker) -> str:
        """PUT the bytes to a presigned URL; return the upload id to commit.

        A URL that expired mid-transfer (403) is re-requested once, transparently.
        """
        for fresh_grant in (True, False):
            grant = self._write_entries(vm_id, [PresignEntry(path=path, size=source.size)])[0]
            if not grant.presigned_url or not grant.upload_id:
                raise ResponseValidationError("presigned write: missing presigned_url or upload_id")
            try:
                self._put(grant.presigned_url, source, tracker)
            except PermissionDeniedError:
                if not fresh_grant:
                    raise
                continue
            return grant.upload_id
        raise AssertionError("unreachable")  # pragma: no cover

    def _put(self, url: str, source: Source, tracker: Tracker) -> None:
        size = source.size

        def prepare(attempt: int) -> tuple[Body, dict[str, str]]:
            headers = {"Content-Type": "application/octet-stream"}
            offset = 0 if attempt == 1 else _held_offset(self._client.presigned.head(url), size)
            if offset:
                headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
            return source.reader(offset, tracker), headers

        self._client.presigned.transfer("PUT", url, prepare=prepare, consume=lambda response: None)

    def _write_entries(self, vm_id: str, entries: list[WriteEntry]) -> list[WriteResult]:
        """Send write entries in one request. A per-entry error raises inside the
        attempt, so a transient one is retried like any other transient failure (every
        entry is idempotent: chunks by ``upload_id``, commits by upload)."""

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
        )
        return response.results


def _drain(response: requests.Response, sink: Sink, tracker: Tracker) -> tuple[int, str]:
    """Stream a download body into ``sink``; return its size and sha256."""
    sink.restart()
    digest = BackgroundHash()
    size = 0
    if not tracker.total:
        tracker.total = int(response.headers.get("Content-Length") or 0)
    tracker.set(0)
    try:
        for block in response.iter_content(CHUNK):
            sink.write(block)
            digest.update(block)
            size += len(block)
            tracker.add(len(block))
        return size, digest.hexdigest()
    finally:
        digest.close()
