"""Presigned PUTs: a body of up to 100 MiB streamed into the upload's staged file.

Bytes never sit whole in memory. Disk work runs on a worker thread, one block behind
the network, so the event loop keeps serving other requests and receiving overlaps
writing. What arrives is fsynced and recorded as it goes, so a PUT cut off mid-way
leaves a prefix the next one can resume from (``Content-Range: bytes S-E/T``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .engine_api import EngineLike, StagedFileLike
from .engine_errors import engine_errors
from .errors import ApiError
from .keyed_locks import AsyncKeyedLocks
from .store import Store, UploadRow
from .upload_digests import StagedDigests
from .upload_staging import contiguous_prefix, prefix_ranges, prefix_sha256, staging_name

_WRITE_BLOCK = 1024 * 1024  # a PUT body is written in blocks this big, off the event loop
_CHECKPOINT = 16 * 1024 * 1024  # fsync + record a PUT's progress this often


class PresignedPuts:
    """Receives the bodies of presigned PUTs, one PUT per upload at a time.

    Args:
        store: Upload records (the prefix held is recorded at each checkpoint).
        engine: Holds the staged files.
        staged_digests: Where the digest of a body received whole is left for the commit.
    """

    def __init__(self, store: Store, engine: EngineLike, staged_digests: StagedDigests) -> None:
        self._store = store
        self._engine = engine
        self._staged_digests = staged_digests
        self._locks: AsyncKeyedLocks[tuple[str, str]] = AsyncKeyedLocks()

    async def receive(
        self,
        vm_id: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        content_range: str | None = None,
    ) -> None:
        """Stream a PUT body into the staged file, never holding it in memory.

        Without ``Content-Range`` the body is the whole file. With ``bytes S-E/T`` it
        resumes at ``S``, which must not pass the bytes already held (``HEAD`` on the
        upload URL tells).

        Raises:
            ApiError: ``not_found`` for an unknown upload, ``payload_too_large`` when the
                body passes the announced size, ``bad_request`` when it falls short or
                the range is malformed, ``conflict`` when it starts past what is held.
        """
        upload = self._store.get_upload(vm_id, upload_id)
        if upload is None:
            raise ApiError("not_found", f"unknown upload_id: {upload_id}")
        start = 0 if content_range is None else parse_content_range(content_range, upload.size)
        # One PUT per upload at a time; a retry waits for the broken one to wind down.
        async with self._locks.hold((vm_id, upload_id)):
            row = self._store.get_upload(vm_id, upload_id)
            assert row is not None
            upload = row
            if upload.committed:
                return
            held = contiguous_prefix(upload.ranges)
            if start > held:
                raise ApiError("conflict", f"cannot resume at byte {start}: {held} bytes are held")
            self._staged_digests.forget(vm_id, upload_id)  # the staged file changes now
            writer = _PutWriter(self._engine, self._store, upload, start)
            await self._stream(writer, upload, start, body)
            self._staged_digests.remember(vm_id, upload_id, writer.hexdigest())

    async def settled(self, vm_id: str, upload_id: str, wait_s: float) -> None:
        """Wait (at most ``wait_s``) for a PUT of this upload in flight to wind down, so
        that what it received is recorded as held."""

        async def idle() -> None:
            async with self._locks.hold((vm_id, upload_id)):
                pass

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(idle(), wait_s)

    async def _stream(
        self, writer: _PutWriter, upload: UploadRow, start: int, body: AsyncIterator[bytes]
    ) -> None:
        pending: asyncio.Future[None] | None = None
        try:
            await _off_loop(writer.begin)
            blocks: list[bytes] = []
            buffered = 0
            received = start
            broken: BaseException | None = None
            blocks_in = aiter(body)
            while True:
                try:
                    block = await anext(blocks_in)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # The body broke off (the client hung up): keep what arrived, so
                    # the next PUT resumes after it rather than at the last full block.
                    broken = exc
                    break
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
            if broken is not None:
                raise broken
            if received != upload.size:
                raise ApiError(
                    "bad_request", f"upload has {received} bytes; {upload.size} were announced"
                )
        finally:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            # Whatever arrived, complete or cut off, is kept for the next attempt.
            await _off_loop(writer.finish)


class _PutWriter:
    """The disk side of one presigned PUT (each method runs on a worker thread).

    Checkpoints (fsync, then record the prefix held) run on a thread of their own with
    a handle of their own, so writing the next blocks overlaps the disk flushing the
    previous ones; at most one checkpoint is in flight. Any handle's fsync flushes the
    file, and a checkpoint records only bytes written before it began.
    """

    def __init__(self, engine: EngineLike, store: Store, upload: UploadRow, start: int) -> None:
        self._engine = engine
        self._store = store
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
        self._staged = self._open()
        self._staged.truncate(self._start)
        self._record_held(self._start)
        # Hash as the bytes arrive, so the commit need not read 100 MiB again.
        self._digest = prefix_sha256(self._staged, self._start)

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
                self._sync_handle = self._open()
            assert self._sync_handle is not None
            self._sync_job = self._syncer.submit(self._checkpoint, self._sync_handle, self._pos)
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
            self._checkpoint(self._staged, self._pos)
        finally:
            self._staged.close()
            if self._sync_handle is not None:
                self._sync_handle.close()

    def _open(self) -> StagedFileLike:
        return self._engine.staged_file(self._upload.vm_id, self._name)

    def _checkpoint(self, staged: StagedFileLike, held: int) -> None:
        staged.fsync()
        self._record_held(held)

    def _record_held(self, held: int) -> None:
        up = self._upload
        self._store.set_upload_ranges(up.vm_id, up.upload_id, prefix_ranges(held))


def _off_loop(fn: Callable[..., None], *args: object) -> asyncio.Future[None]:
    """Start blocking disk work on a worker thread (engine errors mapped to wire errors);
    await the result when it is needed."""

    def run() -> None:
        with engine_errors():
            fn(*args)

    return asyncio.get_running_loop().run_in_executor(None, run)


def parse_content_range(value: str, size: int) -> int:
    """The start offset of ``bytes S-E/T``; ``E`` must be the last byte and ``T`` the size.

    Raises:
        ApiError: ``bad_request`` for any other value.
    """
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
