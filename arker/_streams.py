"""Byte sources for uploads and atomic sinks for downloads, never whole files in memory.

An upload needs its size and sha256 before the first byte is sent (the protocol names
both up front), and must be re-readable from any offset so a retry can resume. A
`Source` gives exactly that for bytes, text, paths and binary file objects (a file that
cannot seek is spooled to a temporary file once).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, BinaryIO, Union, cast

from ._exceptions import ArkerError, refused_before_sending

__all__ = [
    "CHUNK",
    "BackgroundHash",
    "DataSource",
    "PathSink",
    "ProgressCallback",
    "Sink",
    "Source",
    "Tracker",
    "file_sha256",
    "open_source",
]

CHUNK = 1024 * 1024
"""Read size for hashing and streaming: big enough for throughput, small for memory."""

_WRITEBACK_EVERY = 8 * 1024 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called with ``(bytes_done, bytes_total)``. ``bytes_done`` may go back when a
transfer is retried from an earlier offset."""

DataSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]
"""What `SyncResource.write` accepts: bytes, text (UTF-8), a path, or a binary file."""


class BackgroundHash:
    """sha256 fed on a worker thread: hashlib releases the GIL on large blocks, so a
    download's hashing overlaps its network reads and disk writes."""

    _MAX_PENDING = 8

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arker-sha256")
        self._pending: deque[Future[None]] = deque()

    def update(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(self._digest.update, block))
        if len(self._pending) > self._MAX_PENDING:  # bound the memory held in the queue
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Tracker:
    """Counts bytes for a progress callback."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback

    def set(self, done: int) -> None:
        self.done = done
        if self._callback is not None:
            self._callback(done, self.total)

    def add(self, n: int) -> None:
        self.set(self.done + n)


class Source:
    """A sized, re-readable upload body whose sha256 is known or found on demand.

    Attributes:
        size: Bytes in the body.
    """

    def __init__(
        self, opener: Callable[[], BinaryIO], start: int, size: int, sha256: str | None
    ) -> None:
        self._opener = opener
        self._start = start
        self.size = size
        self._sha256 = sha256

    @property
    def sha256(self) -> str:
        """Hex digest of the body. A streamed upload that read it whole, from the
        start, has already computed it; otherwise the body is read once more."""
        if self._sha256 is None:
            with self._opener() as f:
                f.seek(self._start)
                self._sha256 = _hash_exact(f, self.size)
        return self._sha256

    def _learn(self, digest: str) -> None:
        self._sha256 = digest

    def read_all(self) -> bytes:
        """The whole body (used only for small, inline uploads)."""
        with self._opener() as f:
            f.seek(self._start)
            return f.read(self.size)

    def reader(self, offset: int, tracker: Tracker | None = None) -> _RangeReader:
        """A file-like body from ``offset`` to the end, for a streamed PUT. Read whole
        from offset 0, it also yields the body's sha256, sparing a second pass."""
        learn = self._learn if offset == 0 and self._sha256 is None else None
        return _RangeReader(self._opener, self._start + offset, self.size - offset, tracker, learn)


class _RangeReader(io.RawIOBase):
    """Reads ``length`` bytes of a file from ``start``; ``len()`` lets requests send a
    Content-Length instead of chunked encoding."""

    def __init__(
        self,
        opener: Callable[[], BinaryIO],
        start: int,
        length: int,
        tracker: Tracker | None,
        learn: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        # Hashed on a worker thread while the socket sends: not one after the other.
        self._digest = BackgroundHash() if learn is not None else None
        self._learn = learn
        self._file = opener()
        self._file.seek(start)
        self._left = length
        self._length = length
        self._tracker = tracker
        if tracker is not None:
            tracker.set(tracker.total - length)

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        # requests sizes a body as len() - tell(); without this it sees 0 and falls back
        # to chunked encoding, which presigned-URL stores (and simple proxies) refuse.
        return self._length - self._left

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(n)
        self._left -= len(data)
        if self._digest is not None:
            self._digest.update(data)
            if self._left == 0 and self._learn is not None:
                self._learn(self._digest.hexdigest())
                self._learn = None
        if self._tracker is not None and data:
            self._tracker.add(len(data))
        return data

    def close(self) -> None:
        if self._digest is not None:
            self._digest.close()
        self._file.close()
        super().close()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a whole local file, read in `CHUNK` blocks."""
    with open(path, "rb") as f:
        return _hash_exact(f, sys.maxsize)


def _hash_exact(f: IO[bytes], length: int) -> str:
    """sha256 of the next ``length`` bytes of ``f`` (fewer if it ends first)."""
    digest = hashlib.sha256()
    while length > 0:
        block = f.read(min(CHUNK, length))
        if not block:
            break
        digest.update(block)
        length -= len(block)
    return digest.hexdigest()


def open_source(data: DataSource, limit: int) -> Source:
    """Normalise what the user passed into a `Source`.

    ``str`` is content, as in 0.1.0; a path must be an `os.PathLike` (e.g.
    `pathlib.Path`). Sizes over ``limit`` are reported without reading further.

    Raises:
        BadRequestError: ``data`` is of an unsupported type or not readable.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        blob = bytes(data)
        return Source(lambda: io.BytesIO(blob), 0, len(blob), hashlib.sha256(blob).hexdigest())
    if isinstance(data, os.PathLike):
        path = Path(data)
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                # A FIFO or device has no size up front: spool it like a pipe.
                with path.open("rb") as f:
                    return _spool(f, limit)
            with path.open("rb"):
                pass  # readable now, not only later mid-upload
        except OSError as exc:
            raise refused_before_sending(f"cannot read {path}: {exc}") from None
        # The sha256 is computed while the bytes stream out (or on demand).
        return Source(lambda: path.open("rb"), 0, st.st_size, None)
    if hasattr(data, "read"):
        return _file_source(data, limit)
    raise refused_before_sending(
        f"data must be bytes, str, a path or a binary file, not {type(data).__name__}"
    )


def _file_source(f: IO[bytes], limit: int) -> Source:
    probe = f.read(0)
    if not isinstance(probe, bytes):
        raise refused_before_sending("file objects must be opened in binary mode")
    try:
        seekable = f.seekable()
    except (AttributeError, ValueError):
        seekable = False
    if seekable:
        start = f.tell()
        size = f.seek(0, os.SEEK_END) - start
        f.seek(start)

        def reopen() -> BinaryIO:
            return cast(BinaryIO, _Unclosable(f))

        return Source(reopen, start, size, None)
    return _spool(f, limit)


def _spool(f: IO[bytes], limit: int) -> Source:
    """Copy a stream that cannot seek (a pipe, a socket) to a temp file once, so
    retries can re-read it."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the Source
    digest_obj = hashlib.sha256()
    size = 0
    while block := f.read(CHUNK):
        size += len(block)
        if size > limit:
            spool.close()
            return Source(lambda: io.BytesIO(), 0, size, "")
        digest_obj.update(block)
        spool.write(block)
    spool.flush()
    return Source(lambda: cast(BinaryIO, _Unclosable(spool)), 0, size, digest_obj.hexdigest())


class _Unclosable(io.RawIOBase):
    """A view of the caller's file that never closes it (the caller owns it)."""

    def __init__(self, f: IO[bytes]) -> None:
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)


class Sink:
    """Where a download goes. `restart` drops what an interrupted attempt wrote."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._start: int | None = None
        self._dirty = False
        try:
            if f.seekable():
                self._start = f.tell()
        except (AttributeError, ValueError, OSError):
            self._start = None

    def restart(self) -> None:
        if not self._dirty:
            return
        if self._start is None:
            raise ArkerError(
                "download_interrupted",
                "the download broke after bytes were written to a file object that cannot "
                "seek back; pass a path or a seekable file to let the SDK retry",
                0,
            )
        self._f.seek(self._start)
        self._f.truncate()
        self._dirty = False

    def write(self, block: bytes) -> None:
        self._dirty = True
        self._f.write(block)

    def commit(self) -> None:
        self._f.flush()

    def abort(self) -> None:
        pass


class PathSink(Sink):
    """A download to a temp file beside ``dest``, renamed over ``dest`` on success.

    An interrupted download never leaves a truncated file under the final name: the
    rename happens only once every byte is there and verified. That holds against the
    process dying at any point. Surviving a power cut as well takes ``durable=True``:
    the file (then its directory) is fsynced around the rename, which on a fast disk
    costs about as much as the download itself (``benchmarks/transfer.py`` measures
    ``durable=True`` against the default).
    """

    def __init__(self, dest: os.PathLike[str] | str, *, durable: bool = False) -> None:
        self.dest = Path(dest)
        self._durable = durable
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.dest.name}.", suffix=".part", dir=self.dest.parent
        )
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "w+b")
        self._unflushed = 0
        super().__init__(self._file)

    def write(self, block: bytes) -> None:
        super().write(block)
        if not self._durable:
            return
        self._unflushed += len(block)
        if self._unflushed >= _WRITEBACK_EVERY and hasattr(os, "posix_fadvise"):
            # Start writing back now rather than leave 100 MiB for the final fsync.
            self._file.flush()
            os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self._unflushed = 0

    def commit(self) -> None:
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.dest)
        if self._durable:
            _fsync_dir(self.dest.parent)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
