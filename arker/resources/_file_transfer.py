"""One file into or out of a VM: inline or presigned, streamed, verified, resumable.

Writes up to 4 MiB travel inline as one chunk; larger ones ask for a presigned URL,
stream the raw bytes there with a PUT and commit. Every step retries under the client's
policy and is idempotent: the chunk's ``upload_id`` is minted once per call, and the
presigned upload is committed under the id the server gave it. An interrupted PUT
resumes from the bytes the server already holds when the server can say (``HEAD`` on the
upload URL answers ``Upload-Offset``), and starts over otherwise. An interrupted
presigned download resumes with ``Range: bytes=N-`` from the bytes already written to
its sink, and starts over when the server answers the whole file instead. A transfer
that keeps moving forward keeps being resumed (see `arker._presigned`). Every transfer
carries a sha256 that the receiving side checks, over the whole file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from typing import IO

import requests
import urllib3

from .._constants import INLINE_WRITE_MAX, MAX_FILE_BYTES
from .._exceptions import (
    APIConnectionError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResponseValidationError,
    refused_before_sending,
)
from .._paths import path_problem
from .._presigned import PresignedTransfer, body_start
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
from .._wire import CommitEntry, PresignEntry, SyncReadResponse, decode_content
from ._sync_route import SyncRoute, inline_entry, require_written

__all__ = ["FileTransfer", "check_path"]


def check_path(path: str) -> None:
    """Raise `BadRequestError` for a path the server would refuse (before any request)."""
    problem = path_problem(path)
    if problem is not None:
        raise refused_before_sending(problem)


class FileTransfer:
    """Reads and writes of single files, over the sync route and presigned URLs.

    Args:
        route: The sync route's requests.
        presigned: Transfers to and from presigned URLs.
    """

    def __init__(self, route: SyncRoute, presigned: PresignedTransfer) -> None:
        self._route = route
        self._presigned = presigned

    # -- reads -----------------------------------------------------------------------

    def read(self, vm_id: str, path: str, progress: ProgressCallback | None) -> bytes:
        """The bytes of the file at ``path``."""
        check_path(path)
        buffer = io.BytesIO()
        self._download(vm_id, path, Sink(buffer), progress)
        return buffer.getvalue()

    def read_to(
        self,
        vm_id: str,
        path: str,
        dest: str | os.PathLike[str] | IO[bytes],
        progress: ProgressCallback | None,
        durable: bool,
    ) -> int:
        """Stream the file at ``path`` into ``dest`` (atomically for a path); its size."""
        check_path(path)
        if isinstance(dest, (str, os.PathLike)):
            return self._download(vm_id, path, PathSink(dest, durable=durable), progress)
        return self._download(vm_id, path, Sink(dest), progress)

    def _download(
        self, vm_id: str, path: str, sink: Sink, progress: ProgressCallback | None
    ) -> int:
        try:
            wire = self._route.read(vm_id, path)
            tracker = Tracker(wire.size or 0, progress)
            if wire.content is not None:
                data = _inline_content(wire)
                sink.write(data)
                size, digest = len(data), hashlib.sha256(data).hexdigest()
                tracker.total = tracker.total or size
                tracker.set(size)
            elif wire.presigned_url:
                size, digest = _Download(sink, tracker, wire.size).run(
                    self._presigned, wire.presigned_url
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

    # -- writes ----------------------------------------------------------------------

    def write(
        self,
        vm_id: str,
        path: str,
        data: DataSource,
        mode: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        """Write ``data`` to ``path``, replacing the file atomically."""
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
            require_written(self._route.write(vm_id, [entry])[0], f"write {path}")
            tracker.set(source.size)
        else:
            upload_id = self._upload(vm_id, path, source, tracker)
            commit = CommitEntry(
                path=path, size=source.size, upload_id=upload_id, sha256=source.sha256, mode=mode
            )
            require_written(self._route.write(vm_id, [commit])[0], f"commit {path}")

    def _upload(self, vm_id: str, path: str, source: Source, tracker: Tracker) -> str:
        """PUT the bytes to a presigned URL; return the upload id to commit.

        A URL that expired mid-transfer (403) is re-requested once, transparently.
        """
        for fresh_grant in (True, False):
            grant = self._route.write(vm_id, [PresignEntry(path=path, size=source.size)])[0]
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

        def prepare(offset: int) -> tuple[Body, dict[str, str]]:
            headers = {"Content-Type": "application/octet-stream"}
            if offset:
                headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
            return source.reader(offset, tracker), headers

        self._presigned.transfer(
            "PUT",
            url,
            prepare=prepare,
            consume=lambda response: None,
            position=lambda: _held_offset(self._presigned.head(url), size),
        )


def _inline_content(wire: SyncReadResponse) -> bytes:
    try:
        return decode_content(wire.content or "", wire.encoding)
    except ValueError as exc:
        raise ResponseValidationError(f"content: {exc}") from None


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


def _body_blocks(response: requests.Response) -> Iterator[bytes]:
    """A download body in the blocks that arrived, up to `CHUNK` each.

    ``iter_content(n)`` returns a block only once ``n`` bytes are there, so a reset
    loses the block being filled; ``read1`` hands over what has arrived, so nearly every
    byte received before a reset is kept as progress to resume from, at the speed of
    1 MiB blocks. A read failure is raised as requests would raise it; a failure of the
    caller's own work on a block (a full disk) is not caught here.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 2.0 has no read1: small blocks lose little
        yield from response.iter_content(64 * 1024)
        return
    while True:
        try:
            block = read1(CHUNK, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(exc) from None
        if not block:
            return
        yield block


class _Download:
    """One presigned download into a sink, resumed from the bytes already written.

    The sha256 runs over the whole file: the hasher fed by earlier attempts is kept
    when an answer continues where they stopped, and started afresh with the sink when
    the server sends the whole file again.
    """

    def __init__(self, sink: Sink, tracker: Tracker, size: int | None) -> None:
        self._sink = sink
        self._tracker = tracker
        self._size = size  # as the sync read announced it, if it did
        self._held = 0
        self._asked = 0  # the offset the attempt under way asked for
        self._etag: str | None = None  # the strong ETag of the bytes held, if one came
        self._digest = BackgroundHash()

    def run(self, presigned: PresignedTransfer, url: str) -> tuple[int, str]:
        """Download the file; return its size and sha256."""
        try:
            return presigned.transfer(
                "GET", url, prepare=self._prepare, consume=self._consume, position=self._position
            )
        finally:
            self._digest.close()

    def _position(self) -> int:
        return self._held

    def _prepare(self, offset: int) -> tuple[None, dict[str, str]]:
        self._asked = offset if offset and (self._size is None or offset < self._size) else 0
        if not self._asked:
            return None, {}
        headers = {"Range": f"bytes={self._asked}-"}
        if self._etag is not None:
            # The rest of *this* version, or (200) the whole file if it changed since.
            headers["If-Range"] = self._etag
        return None, headers

    def _restart(self) -> None:
        self._sink.restart()
        self._digest.close()
        self._digest = BackgroundHash()
        self._held = 0

    def _consume(self, response: requests.Response) -> tuple[int, str]:
        asked = self._asked
        start = body_start(response.status_code, response.headers.get("Content-Range"), asked)
        if start is None:
            # A partial answer that does not continue where we stopped: start over.
            self._restart()
            raise APIConnectionError(
                f"download resumed at byte {asked} got {response.status_code} "
                f"Content-Range {response.headers.get('Content-Range')!r}; starting over"
            )
        if start < self._held:
            self._restart()
        etag = response.headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None  # RFC 9110 If-Range
        if start and self._etag is not None and strong != self._etag:
            # The tail of another version of the file (a server that ignored If-Range):
            # never join two versions; start over.
            self._restart()
            raise APIConnectionError(
                f"download resumed at byte {start} answered ETag {etag!r}, not "
                f"{self._etag!r}: the file changed; starting over"
            )
        if start == 0:
            self._etag = strong
        expected = self._size
        length = response.headers.get("Content-Length", "")
        if expected is None and length.isdigit():
            expected = start + int(length)
        if not self._tracker.total and expected:
            self._tracker.total = expected
        self._tracker.set(self._held)
        for block in _body_blocks(response):
            self._sink.write(block)
            self._digest.update(block)
            self._held += len(block)
            self._tracker.add(len(block))
        if expected is not None and self._held < expected:
            # Framed by the connection closing (its headers were cut): a cut, not an end.
            raise APIConnectionError(f"download cut at byte {self._held} of {expected}; resuming")
        return self._held, self._digest.hexdigest()
