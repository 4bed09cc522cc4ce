"""Chunked and presigned uploads: staged inside the VM, committed by a rename.

Bytes never sit whole in memory: chunks are written at their offset into the upload's
staging file and fsynced before they are acknowledged; a presigned PUT is streamed
into it, fsynced as it goes (`arker.local.upload_put`). The staging file lives in the
VM's own filesystem, hidden from the VM (``arker.local.sandbox.staging``), so the
commit moves it into place instead of copying 100 MiB. The byte ranges received are
recorded in SQLite, so an upload survives a restart and can be resumed. Once every
byte is there (and the optional sha256 matches), the commit renames it to its path
atomically (`arker.local.upload_commit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from .._constants import MAX_FILE_BYTES
from .._ids import new_ulid
from .._paths import HOME_ROOTS, path_problem
from .._wire import ChunkEntry, CommitEntry, PresignEntry, WriteResult, decode_content
from .engine_api import EngineLike
from .engine_errors import engine_errors
from .errors import ApiError
from .keyed_locks import KeyedLocks
from .store import Store, UploadRow
from .upload_commit import Committer
from .upload_digests import FileDigests, StagedDigests
from .upload_put import PresignedPuts
from .upload_staging import contiguous_prefix, merge_range, staging_name

_SETTLE_WAIT_S = 10.0
"""How long ``HEAD`` on an upload URL waits for a PUT in flight before answering."""


def check_target(path: str, size: int, roots: tuple[str, ...] = HOME_ROOTS) -> None:
    """Validate the destination path and size of a write.

    Raises:
        ApiError: ``bad_request`` for a bad path, ``payload_too_large`` past 100 MiB.
    """
    problem = path_problem(path, roots)
    if problem:
        raise ApiError("bad_request", problem)
    if size > MAX_FILE_BYTES:
        raise ApiError("payload_too_large", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")


class Uploads:
    """Owns the upload rows of the store and the files they stage in VMs.

    Args:
        store: Persistent upload records.
        engine: Stages uploads inside VMs and moves finished ones into place.
    """

    def __init__(self, store: Store, engine: EngineLike) -> None:
        self._store = store
        self._engine = engine
        # One chunk or commit per upload at a time (entries are freed after use).
        self._locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
        self._staged_digests = StagedDigests()
        self._file_digests = FileDigests()
        self._committer = Committer(store, engine, self._staged_digests, self._file_digests)
        self._puts = PresignedPuts(store, engine, self._staged_digests)

    # --- entry kinds -------------------------------------------------------------------

    def chunk(
        self, vm_id: str, entry: ChunkEntry, roots: tuple[str, ...] = HOME_ROOTS
    ) -> WriteResult:
        """Store bytes ``[start, end)``; commit the file once it is whole."""
        check_target(entry.path, entry.size, roots)
        try:
            data = decode_content(entry.content, "base64")
        except ValueError:
            raise ApiError("bad_request", "chunk content is not valid base64") from None
        if entry.end < entry.start or entry.end > entry.size:
            raise ApiError(
                "bad_request",
                f"chunk range [{entry.start}, {entry.end}) is outside a {entry.size}-byte file",
            )
        if len(data) != entry.end - entry.start:
            raise ApiError(
                "bad_request",
                f"chunk carries {len(data)} bytes for range [{entry.start}, {entry.end})",
            )
        with self._locks.hold((vm_id, entry.upload_id)):
            upload = self._store.create_upload(vm_id, entry.upload_id, entry.path, entry.size)
            _check_same_file(upload, entry.path, entry.size)
            if upload.committed:
                return _done(upload.size)
            if not upload.ranges:  # the upload's first bytes: is there room for all?
                with engine_errors():
                    self._engine.check_room(vm_id, entry.size)
            if data:
                self._staged_digests.forget(vm_id, entry.upload_id)
                self._write_at(upload, entry.start, data)
                if entry.sha256 is not None and len(data) == entry.size:
                    # The whole file in one chunk (the usual small write): hash it
                    # here rather than read it back from the VM at the commit.
                    digest = hashlib.sha256(data).hexdigest()
                    self._staged_digests.remember(vm_id, entry.upload_id, digest)
                ranges = merge_range(upload.ranges, entry.start, entry.end)
                self._store.set_upload_ranges(vm_id, entry.upload_id, ranges)
                upload = self._reload(upload)
            if not upload.complete:
                return WriteResult(
                    complete=False, written=False, received_bytes=upload.received_bytes
                )
            self._committer.commit(upload, entry.sha256, _mode(entry))
            return _done(upload.size)

    def presign(self, vm_id: str, entry: PresignEntry, roots: tuple[str, ...] = HOME_ROOTS) -> str:
        """Register a server-minted upload for a presigned PUT; return its id."""
        check_target(entry.path, entry.size, roots)
        with engine_errors():
            self._engine.check_room(vm_id, entry.size)  # before the client sends 100 MiB
        upload_id = new_ulid()
        self._store.create_upload(vm_id, upload_id, entry.path, entry.size)
        return upload_id

    def commit(
        self, vm_id: str, entry: CommitEntry, roots: tuple[str, ...] = HOME_ROOTS
    ) -> WriteResult:
        """Place the bytes of a finished upload at its path (a second commit is a no-op)."""
        check_target(entry.path, entry.size, roots)
        with self._locks.hold((vm_id, entry.upload_id)):
            upload = self._store.get_upload(vm_id, entry.upload_id)
            if upload is None:
                raise ApiError("not_found", f"unknown upload_id: {entry.upload_id}")
            _check_same_file(upload, entry.path, entry.size)
            if upload.committed:
                return _done(upload.size)
            if not upload.complete:
                raise ApiError(
                    "bad_request",
                    f"upload incomplete: {upload.received_bytes} of {upload.size} bytes received",
                )
            self._committer.commit(upload, entry.sha256, _mode(entry))
            return _done(upload.size)

    def held_prefix(self, vm_id: str, upload_id: str) -> int:
        """Bytes of an upload durably held from offset 0: where a PUT may resume."""
        upload = self._store.get_upload(vm_id, upload_id)
        if upload is None:
            raise ApiError("not_found", f"unknown upload_id: {upload_id}")
        return upload.size if upload.committed else contiguous_prefix(upload.ranges)

    async def settled_prefix(self, vm_id: str, upload_id: str) -> int:
        """`held_prefix` once a PUT of this upload still in flight has wound down.

        A client asks right after its PUT broke, often before the server noticed: the
        answer must count what that PUT delivered, not the last checkpoint before it
        (checkpoints are 16 MiB apart), or every resume would send those bytes again.
        """
        await self._puts.settled(vm_id, upload_id, _SETTLE_WAIT_S)
        return self.held_prefix(vm_id, upload_id)

    async def receive_put(
        self,
        vm_id: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        content_range: str | None = None,
    ) -> None:
        """Stream a presigned PUT body into the staged file (`PresignedPuts.receive`)."""
        await self._puts.receive(vm_id, upload_id, body, content_range)

    def digest_of(self, vm_id: str, path: str, st: os.stat_result) -> str | None:
        """The sha256 of a file this server wrote, if it is provably unchanged since
        (same inode, size, mtime and ctime): lets a presigned read announce a digest
        without hashing 100 MiB before answering."""
        return self._file_digests.lookup(vm_id, path, st)

    # --- maintenance -------------------------------------------------------------------

    def cleanup(self, max_age_s: float) -> None:
        """Expire uploads older than ``max_age_s`` and remove what they staged."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=max_age_s)
        for vm_id, upload_id in self._store.expire_uploads(cutoff):
            self._staged_digests.forget(vm_id, upload_id)
            if self._engine.exists(vm_id):
                with contextlib.suppress(Exception):  # best effort: the VM may be going
                    self._engine.discard_staged(vm_id, staging_name(vm_id, upload_id))

    # --- internals ---------------------------------------------------------------------

    def _write_at(self, upload: UploadRow, offset: int, data: bytes) -> None:
        name = staging_name(upload.vm_id, upload.upload_id)
        with engine_errors(), self._engine.staged_file(upload.vm_id, name) as staged:
            staged.pwrite([data], offset)
            staged.fsync()

    def _reload(self, upload: UploadRow) -> UploadRow:
        row = self._store.get_upload(upload.vm_id, upload.upload_id)
        assert row is not None
        return row


def _check_same_file(upload: UploadRow, path: str, size: int) -> None:
    if upload.path != path or upload.size != size:
        raise ApiError(
            "conflict",
            f"upload_id {upload.upload_id} belongs to {upload.path} ({upload.size} bytes)",
        )


def _mode(entry: ChunkEntry | CommitEntry) -> int:
    """Permission bits for the file: the entry's (ext) ``mode`` without setuid/setgid."""
    mode = getattr(entry, "mode", None)
    return 0o644 if mode is None else int(mode) & 0o777


def _done(size: int) -> WriteResult:
    return WriteResult(complete=True, written=True, received_bytes=size)
