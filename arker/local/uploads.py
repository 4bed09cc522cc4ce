"""Chunked and presigned uploads: staged inside the VM, committed by a rename.

Bytes never sit whole in memory: chunks are written at their offset into the upload's
staging file and fsynced before they are acknowledged; a presigned PUT is streamed
into it, fsynced as it goes. The staging file lives in the VM's own filesystem, hidden
from the VM (``arker.local.sandbox.staging``), so the commit moves it into place
instead of copying 100 MiB. The byte ranges received are recorded in SQLite, so an
upload survives a restart and can be resumed. Once every byte is there (and the
optional sha256 matches), `engine.commit_staged` renames it to its path atomically.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .._constants import MAX_FILE_BYTES
from .._ids import new_ulid
from .._paths import path_problem
from .._wire import ChunkEntry, CommitEntry, PresignEntry, WriteResult
from .engine_api import EngineLike, StagedFileLike
from .engine_errors import engine_errors
from .errors import ApiError
from .store import Store, UploadRow

_WRITE_BLOCK = 1024 * 1024  # a PUT body is written in blocks this big, off the event loop
_CHECKPOINT = 16 * 1024 * 1024  # fsync + record a PUT's progress this often


def merge_range(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Add ``[start, end)`` to sorted disjoint ranges, merging overlaps and neighbours."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*ranges, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def check_target(path: str, size: int) -> None:
    """Validate the destination path and size of a write.

    Raises:
        ApiError: ``bad_request`` for a bad path, ``payload_too_large`` past 100 MiB.
    """
    problem = path_problem(path)
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
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._put_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # sha256 of staged files that one PUT wrote whole (memory only: a restart
        # just means the commit hashes the file itself).
        self._digests: dict[tuple[str, str], str] = {}
        # sha256 of files committed into VMs, keyed by (vm, path), with the identity of
        # the file it describes (memory only, bounded).
        self._file_digests: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}

    # --- entry kinds -------------------------------------------------------------------

    def chunk(self, vm_id: str, entry: ChunkEntry) -> WriteResult:
        """Store bytes ``[start, end)``; commit the file once it is whole."""
        check_target(entry.path, entry.size)
        try:
            data = base64.b64decode(entry.content, validate=True)
        except (binascii.Error, ValueError):
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
        with self._lock_for(vm_id, entry.upload_id):
            upload = self._store.create_upload(vm_id, entry.upload_id, entry.path, entry.size)
            _check_same_file(upload, entry.path, entry.size)
            if upload.committed:
                return _done(upload.size)
            if not upload.ranges:  # the upload's first bytes: is there room for all?
                with engine_errors():
                    self._engine.check_room(vm_id, entry.size)
            if data:
                self._digests.pop((vm_id, entry.upload_id), None)
                self._write_at(upload, entry.start, data)
                if entry.sha256 is not None and len(data) == entry.size:
                    # The whole file in one chunk (the usual small write): hash it
                    # here rather than read it back from the VM at the commit.
                    self._digests[(vm_id, entry.upload_id)] = hashlib.sha256(data).hexdigest()
                ranges = merge_range(upload.ranges, entry.start, entry.end)
                self._store.set_upload_ranges(vm_id, entry.upload_id, ranges)
                upload = self._refresh(upload)
            if not upload.complete:
                return WriteResult(
                    complete=False, written=False, received_bytes=upload.received_bytes
                )
            self._commit_locked(upload, entry.sha256, _mode(entry))
            return _done(upload.size)

    def presign(self, vm_id: str, entry: PresignEntry) -> str:
        """Register a server-minted upload for a presigned PUT; return its id."""
        check_target(entry.path, entry.size)
        with engine_errors():
            self._engine.check_room(vm_id, entry.size)  # before the client sends 100 MiB
        upload_id = new_ulid()
        self._store.create_upload(vm_id, upload_id, entry.path, entry.size)
        return upload_id

    def commit(self, vm_id: str, entry: CommitEntry) -> WriteResult:
        """Place the bytes of a finished upload at its path (a second commit is a no-op)."""
        check_target(entry.path, entry.size)
        with self._lock_for(vm_id, entry.upload_id):
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
            self._commit_locked(upload, entry.sha256, _mode(entry))
            return _done(upload.size)

    def held_prefix(self, vm_id: str, upload_id: str) -> int:
        """Bytes of an upload durably held from offset 0: where a PUT may resume."""
        upload = self._store.get_upload(vm_id, upload_id)
        if upload is None:
            raise ApiError("not_found", f"unknown upload_id: {upload_id}")
        return upload.size if upload.committed else _prefix(upload.ranges)

    async def receive_put(
        self,
        vm_id: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        content_range: str | None = None,
    ) -> None:
        """Stream a presigned PUT body into the staged file, never holding it in memory.

        Without ``Content-Range`` the body is the whole file. With ``bytes S-E/T`` it
        resumes at ``S``, which must not pass the bytes already held (``HEAD`` on the
        upload URL tells). What arrives is fsynced and recorded as it goes, so a PUT
        cut off mid-way leaves a prefix the next one can resume from. Disk work runs on
        a worker thread, one block behind the network, so the event loop keeps
        serving other requests and receiving overlaps writing.

        Raises:
            ApiError: ``not_found`` for an unknown upload, ``payload_too_large`` when the
                body passes the announced size, ``bad_request`` when it falls short or
                the range is malformed, ``conflict`` when it starts past what is held.
        """
        upload = self._store.get_upload(vm_id, upload_id)
        if upload is None:
            raise ApiError("not_found", f"unknown upload_id: {upload_id}")
        start = 0 if content_range is None else _parse_content_range(content_range, upload.size)
        # One PUT per upload at a time; a retry waits for the broken one to wind down.
        async with self._put_lock(vm_id, upload_id):
            upload = self._refresh(upload)
            if upload.committed:
                return
            held = _prefix(upload.ranges)
            if start > held:
                raise ApiError("conflict", f"cannot resume at byte {start}: {held} bytes are held")
            writer = _PutWriter(self, upload, start)
            pending: asyncio.Future[None] | None = None
            try:
                await _off_loop(writer.begin)
                blocks: list[bytes] = []
                buffered = 0
                received = start
                async for block in body:
                    received += len(block)
                    if received > upload.size:
                        raise ApiError(
                            "payload_too_large",
                            f"upload is larger than the announced {upload.size} bytes",
                        )
                    blocks.append(block)
                    buffered += len(block)
                    if buffered >= _WRITE_BLOCK:
                        if pending is not None:
                            await pending
                        pending = _off_loop(writer.write, blocks)
                        blocks, buffered = [], 0
                if pending is not None:
                    await pending
                    pending = None
                if blocks:
                    await _off_loop(writer.write, blocks)
                if received != upload.size:
                    raise ApiError(
                        "bad_request", f"upload has {received} bytes; {upload.size} were announced"
                    )
                self._digests[(vm_id, upload_id)] = writer.hexdigest()
            finally:
                if pending is not None:
                    await asyncio.gather(pending, return_exceptions=True)
                # Whatever arrived, complete or cut off, is kept for the next attempt.
                await _off_loop(writer.finish)

    def _checkpoint(self, staged: StagedFileLike, upload: UploadRow, held: int) -> None:
        staged.fsync()
        self._store.set_upload_ranges(upload.vm_id, upload.upload_id, [(0, held)] if held else [])

    def _put_lock(self, vm_id: str, upload_id: str) -> asyncio.Lock:
        return self._put_locks.setdefault((vm_id, upload_id), asyncio.Lock())

    def digest_of(self, vm_id: str, path: str, st: os.stat_result) -> str | None:
        """The sha256 of a file this server wrote, if it is provably unchanged since
        (same inode, size, mtime and ctime): lets a presigned read announce a digest
        without hashing 100 MiB before answering."""
        known = self._file_digests.get((vm_id, path))
        if known is None or known[0] != _identity(st):
            return None
        return known[1]

    def _remember_digest(self, vm_id: str, path: str, digest: str) -> None:
        try:
            src, _ = self._engine.open_read(vm_id, path)
        except Exception:  # a best-effort cache: never fail a committed write over it
            return
        with src:
            identity = _identity(os.fstat(src.fileno()))
        if len(self._file_digests) >= _MAX_REMEMBERED:
            self._file_digests.pop(next(iter(self._file_digests)))
        self._file_digests[(vm_id, path)] = (identity, digest)

    # --- maintenance -------------------------------------------------------------------

    def cleanup(self, max_age_s: float) -> None:
        """Expire uploads older than ``max_age_s`` and remove what they staged."""
        for vm_id, upload_id in self._store.expire_uploads(time.time() - max_age_s):
            if self._engine.exists(vm_id):
                with contextlib.suppress(Exception):  # best effort: the VM may be going
                    self._engine.discard_staged(vm_id, staging_name(vm_id, upload_id))

    # --- internals ---------------------------------------------------------------------

    def _commit_locked(self, upload: UploadRow, sha256: str | None, mode: int) -> None:
        name = staging_name(upload.vm_id, upload.upload_id)
        with engine_errors():
            if upload.size == 0:
                with self._engine.staged_file(upload.vm_id, name) as staged:
                    staged.truncate(0)  # nothing was sent: stage the empty file now
            if sha256 is not None:
                known = self._digests.pop((upload.vm_id, upload.upload_id), None)
                actual = known or self._staged_sha256(upload, name)
                if actual != sha256.lower():
                    # The bytes are wrong somewhere: start over rather than keep bad data.
                    self._store.set_upload_ranges(upload.vm_id, upload.upload_id, [])
                    self._engine.discard_staged(upload.vm_id, name)
                    raise ApiError(
                        "bad_request", f"sha256 mismatch: expected {sha256}, received {actual}"
                    )
            self._engine.commit_staged(upload.vm_id, name, upload.path, upload.size, mode)
        if sha256 is not None:
            self._remember_digest(upload.vm_id, upload.path, sha256.lower())
        # The rename is atomic and durable; only then is the upload "done". (A crash
        # right between the two leaves the upload uncommitted with nothing staged: a
        # retried commit then answers not_found and the client uploads again.)
        self._store.mark_committed(upload.vm_id, upload.upload_id)

    def _staged_sha256(self, upload: UploadRow, name: str) -> str:
        with self._engine.staged_file(upload.vm_id, name) as staged:
            return _prefix_sha256(staged, upload.size).hexdigest()

    def _write_at(self, upload: UploadRow, offset: int, data: bytes) -> None:
        name = staging_name(upload.vm_id, upload.upload_id)
        with engine_errors(), self._engine.staged_file(upload.vm_id, name) as staged:
            staged.pwrite([data], offset)
            staged.fsync()

    def _refresh(self, upload: UploadRow) -> UploadRow:
        row = self._store.get_upload(upload.vm_id, upload.upload_id)
        assert row is not None
        return row

    def _lock_for(self, vm_id: str, upload_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((vm_id, upload_id), threading.Lock())


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


def staging_name(vm_id: str, upload_id: str) -> str:
    """The staged file's name in the VM. Client-minted ids are arbitrary text: hash them
    (with the VM, so a fork's inherited leftovers never collide with its own uploads)."""
    return hashlib.sha256(f"{vm_id}\0{upload_id}".encode()).hexdigest()[:40]


class _PutWriter:
    """The disk side of one presigned PUT (each method runs on a worker thread).

    Checkpoints (fsync, then record the prefix held) run on a thread of their own with
    a handle of their own, so writing the next blocks overlaps the disk flushing the
    previous ones; at most one checkpoint is in flight. Any handle's fsync flushes the
    file, and a checkpoint records only bytes written before it began.
    """

    def __init__(self, uploads: Uploads, upload: UploadRow, start: int) -> None:
        self._uploads = uploads
        self._upload = upload
        self._name = staging_name(upload.vm_id, upload.upload_id)
        self._start = start
        self._pos = start
        self._synced = start
        self._digest = hashlib.sha256()
        self._staged: StagedFileLike | None = None
        self._syncer: ThreadPoolExecutor | None = None
        self._sync_handle: StagedFileLike | None = None
        self._sync_job: Future[None] | None = None

    def begin(self) -> None:
        up = self._upload
        self._staged = self._uploads._engine.staged_file(up.vm_id, self._name)
        self._staged.truncate(self._start)
        store = self._uploads._store
        store.set_upload_ranges(up.vm_id, up.upload_id, [(0, self._start)] if self._start else [])
        self._uploads._digests.pop((up.vm_id, up.upload_id), None)
        # Hash as the bytes arrive, so the commit need not read 100 MiB again.
        self._digest = _prefix_sha256(self._staged, self._start)

    def write(self, blocks: list[bytes]) -> None:
        assert self._staged is not None
        self._staged.pwrite(blocks, self._pos)
        for block in blocks:
            self._digest.update(block)
            self._pos += len(block)
        if self._pos - self._synced >= _CHECKPOINT and (
            self._sync_job is None or self._sync_job.done()
        ):
            if self._sync_job is not None:
                self._sync_job.result()  # a failed checkpoint fails the PUT
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="arker-put-sync")
                up = self._upload
                self._sync_handle = self._uploads._engine.staged_file(up.vm_id, self._name)
            assert self._sync_handle is not None
            self._sync_job = self._syncer.submit(
                self._uploads._checkpoint, self._sync_handle, self._upload, self._pos
            )
            self._synced = self._pos

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def finish(self) -> None:
        if self._staged is None:
            return
        try:
            if self._syncer is not None:
                # Wait for the checkpoint in flight, so it cannot land after the last.
                self._syncer.shutdown(wait=True)
            # Always a last checkpoint: the one in flight may have failed.
            self._uploads._checkpoint(self._staged, self._upload, self._pos)
        finally:
            self._staged.close()
            if self._sync_handle is not None:
                self._sync_handle.close()


def _off_loop(fn: Callable[..., None], *args: object) -> asyncio.Future[None]:
    """Start blocking disk work on a worker thread (engine errors mapped to wire errors);
    await the result when it is needed."""

    def run() -> None:
        with engine_errors():
            fn(*args)

    return asyncio.get_running_loop().run_in_executor(None, run)


_MAX_REMEMBERED = 10_000


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _prefix_sha256(staged: StagedFileLike, length: int) -> hashlib._Hash:
    """A sha256 fed with the first ``length`` bytes of a staged file."""
    digest = hashlib.sha256()
    for block in staged.read_blocks(length):
        digest.update(block)
    return digest


def _prefix(ranges: list[tuple[int, int]]) -> int:
    """Length of the run of bytes held from offset 0."""
    return ranges[0][1] if ranges and ranges[0][0] == 0 else 0


def _parse_content_range(value: str, size: int) -> int:
    """The start offset of ``bytes S-E/T``; ``E`` must be the last byte and ``T`` the size."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        start, end, whole = int(first), int(last), int(total)
    except ValueError:
        raise ApiError("bad_request", f"malformed Content-Range: {value!r}") from None
    if unit != "bytes" or whole != size or end != size - 1 or not 0 <= start <= end:
        raise ApiError(
            "bad_request", f"Content-Range {value!r} must be 'bytes S-{size - 1}/{size}'"
        )
    return start
