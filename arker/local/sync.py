"""File sync: reads inline or presigned, writes per entry."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .._constants import INLINE_WRITE_MAX
from .._paths import HOME_ROOTS, path_problem
from .._wire import (
    ChunkEntry,
    CommitEntry,
    ErrorBody,
    PresignEntry,
    SyncReadResponse,
    SyncWriteRequest,
    SyncWriteResponse,
    WriteResult,
    encode_content,
)
from .byte_ranges import ByteSpan, entity_tag, requested_span
from .engine_api import EngineLike
from .engine_errors import engine_errors
from .errors import ApiError
from .presign import Signer
from .uploads import Uploads

_STREAM_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class FileStream:
    """What a presigned GET sends: ``blocks`` of the file (all of it, or ``span``)."""

    blocks: Iterator[bytes]
    size: int
    span: ByteSpan | None
    etag: str


class Sync:
    """Reads and writes files of a VM the caller has already been checked to own.

    Args:
        engine: Does the in-VM file I/O (symlink-safe).
        uploads: Staging and commit of writes.
        signer: Mints presigned URLs.
    """

    def __init__(self, engine: EngineLike, uploads: Uploads, signer: Signer) -> None:
        self._engine = engine
        self._uploads = uploads
        self._signer = signer

    def read(
        self, vm_id: str, path: str, base_url: str, roots: tuple[str, ...] = HOME_ROOTS
    ) -> SyncReadResponse:
        """Small files inline (UTF-8 or base64); larger ones as a presigned GET URL."""
        problem = path_problem(path, roots)
        if problem:
            raise ApiError("bad_request", problem)
        src, size = self._open(vm_id, path)
        with src:
            if size > INLINE_WRITE_MAX:
                return SyncReadResponse(
                    presigned_url=self._signer.read_url(base_url, vm_id, path),
                    size=size,
                    expires_in=self._signer.ttl_s,
                    sha256=self._uploads.digest_of(vm_id, path, os.fstat(src.fileno())),
                )
            data = src.read(INLINE_WRITE_MAX + 1)
        content, encoding = encode_content(data)
        return SyncReadResponse(
            content=content,
            encoding=encoding,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def stream(
        self,
        vm_id: str,
        path: str,
        range_header: str | None = None,
        if_range: str | None = None,
    ) -> FileStream:
        """A presigned GET: the blocks to send, whole file or the span asked for.

        ``range_header`` and ``if_range`` are the request's ``Range`` and ``If-Range``
        (see `requested_span`); a range that cannot be satisfied raises `ApiError`
        (``416``).
        """
        src, size = self._open(vm_id, path)
        try:
            etag = entity_tag(os.fstat(src.fileno()))
            span = requested_span(range_header, size, if_range=if_range, etag=etag)
        except BaseException:
            src.close()
            raise
        if span is None:
            return FileStream(_blocks(src, 0, size), size, None, etag)
        return FileStream(_blocks(src, span.start, span.length), size, span, etag)

    def write(
        self,
        vm_id: str,
        req: SyncWriteRequest,
        base_url: str,
        roots: tuple[str, ...] = HOME_ROOTS,
    ) -> SyncWriteResponse:
        """Apply each entry in order; an entry's failure is reported in its own result."""
        results = []
        for entry in req.writes:
            try:
                results.append(self._write_one(vm_id, entry, base_url, roots))
            except ApiError as exc:
                results.append(WriteResult(error=ErrorBody(code=exc.code, message=exc.message)))
        return SyncWriteResponse(results=results)

    def _write_one(
        self,
        vm_id: str,
        entry: ChunkEntry | PresignEntry | CommitEntry,
        base_url: str,
        roots: tuple[str, ...],
    ) -> WriteResult:
        # `Uploads` maps the engine's errors itself, where it calls the engine.
        if isinstance(entry, ChunkEntry):
            return self._uploads.chunk(vm_id, entry, roots)
        if isinstance(entry, PresignEntry):
            upload_id = self._uploads.presign(vm_id, entry, roots)
            return WriteResult(
                presigned_url=self._signer.upload_url(base_url, vm_id, upload_id),
                upload_id=upload_id,
                expires_in=self._signer.ttl_s,
            )
        return self._uploads.commit(vm_id, entry, roots)

    def _open(self, vm_id: str, path: str) -> tuple[BinaryIO, int]:
        try:
            with engine_errors():
                return self._engine.open_read(vm_id, path)
        except ApiError as exc:
            if exc.code == "not_found":
                raise ApiError("not_found", f"file not found: {path}") from exc
            raise


def _blocks(src: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes from ``start`` (fewer if the file shrank meanwhile)."""
    with src:
        if start:
            src.seek(start)
        while length > 0 and (block := src.read(min(_STREAM_BLOCK, length))):
            length -= len(block)
            yield block
