"""Uploads staged inside the VM itself, so that committing one is a rename, not a copy.

An upload (a presigned PUT or inline chunks) is written, as it arrives, to
``/.arker-uploads/<name>`` in the VM's own overlay. That directory belongs to host root
with mode 0700: the VM user (an unprivileged host uid, 1000 inside) can neither list
nor enter it, and no sync path names it (they all live under ``/home/user``). Once the
upload is whole and verified, `commit` renames the file to its path in the same
filesystem. Copying 100 MiB from a host staging area and fsyncing the copy used to
make the commit cost about as much as the upload itself; now its bytes are fsynced
while they arrive and the commit only fsyncs a directory. A staged file also counts
towards the VM's disk quota like any other file of the VM.

Forks: a fork freezes the VM's upper layer while no operation is in flight. Each write
to a `StagedFile` is one operation (it enters the VM), so a fork falls between two
writes, never inside one, and a frozen layer is never written. The handle then belongs
to the old mount, so the next write reopens the file through the new one (overlayfs
copies the partial file up: the only copy, paid only when a fork interrupts an upload).
The child keeps the hidden partial file in the shared frozen layer: invisible to it,
it costs disk until the chain is deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence

from ..fs_errors import fs_error
from . import files
from .errors import SandboxError

__all__ = ["STAGING_DIR", "StagedFile", "commit", "discard"]

STAGING_DIR = "/.arker-uploads"
_NAME = re.compile(r"^[0-9a-f]{16,64}$")
_BLOCK = 1 << 20


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SandboxError("internal", f"bad staging name: {name!r}")


def _staging_dir(root_fd: int, *, create: bool) -> int:
    """Open the VM's staging directory (as host root), creating it when asked."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = files.openat2(root_fd, STAGING_DIR, flags)
    except FileNotFoundError:
        if not create:
            raise
        top = files.openat2(root_fd, "/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(STAGING_DIR.lstrip("/"), 0o700, dir_fd=top)
        finally:
            os.close(top)
        fd = files.openat2(root_fd, STAGING_DIR, flags)
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        # Only this module creates it (as root, 0700) and the VM user cannot replace
        # it (``/`` is root's): anything else means it is not ours to write into.
        os.close(fd)
        raise SandboxError("internal", f"{STAGING_DIR} in the VM is not the server's")
    return fd


class StagedFile:
    """Random-access handle on one staged upload, safe across forks of the VM.

    Args:
        enter: Enters the VM (waiting out a fork or delete); returns the VM's merged
            root handle and its mount generation (which changes when it is remounted).
        leave: Ends what ``enter`` began.
        name: The staged file's name (hex).
    """

    def __init__(
        self, enter: Callable[[], tuple[int, int]], leave: Callable[[], None], name: str
    ) -> None:
        _check_name(name)
        self._enter = enter
        self._leave = leave
        self._name = name
        self._fd = -1
        self._generation = -1

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        root_fd, generation = self._enter()
        try:
            if generation != self._generation:
                self._close_fd()  # a handle from before a fork: reopen through the new mount
                try:
                    sdir = _staging_dir(root_fd, create=True)
                    try:
                        self._fd = os.open(
                            self._name,
                            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o600,
                            dir_fd=sdir,
                        )
                    finally:
                        os.close(sdir)
                except OSError as exc:
                    raise fs_error(exc, "cannot open the staged upload") from None
                self._generation = generation
            yield self._fd
        except OSError as exc:
            raise fs_error(exc, "cannot write the staged upload") from None
        finally:
            self._leave()

    def pwrite(self, blocks: Sequence[bytes], offset: int) -> None:
        """Write ``blocks``, one after the other, from ``offset`` (one operation)."""
        with self._opened() as fd:
            for block in blocks:
                view = memoryview(block)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view = view[n:]
                    offset += n

    def truncate(self, length: int) -> None:
        """Cut (or extend with zeros) the file to ``length`` bytes, creating it if need be."""
        with self._opened() as fd:
            os.ftruncate(fd, length)

    def fsync(self) -> None:
        """Make what was written durable."""
        with self._opened() as fd:
            os.fsync(fd)

    def read_blocks(self, length: int) -> Iterator[bytes]:
        """The first ``length`` bytes, in blocks (each read is one operation)."""
        offset = 0
        while offset < length:
            with self._opened() as fd:
                block = os.pread(fd, min(_BLOCK, length - offset), offset)
            if not block:
                return
            offset += len(block)
            yield block

    def close(self) -> None:
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def commit(root_fd: int, name: str, path: str, size: int, mode: int, uid: int, gid: int) -> None:
    """Move the staged upload ``name`` (exactly ``size`` bytes) to ``path``, atomically.

    The target's parent is resolved and created as the VM user, who must be allowed to
    write there; the rename itself runs as host root (the VM user cannot reach the
    staging directory), after the file is handed to the VM user with ``mode``.

    Raises:
        SandboxError: ``not_found`` (nothing staged under ``name``), ``bad_request``
            (wrong size, target is a directory, permission denied, bad parent),
            ``internal`` otherwise.
    """
    _check_name(name)
    try:
        sdir = _staging_dir(root_fd, create=False)
    except FileNotFoundError:
        raise SandboxError("not_found", "the staged upload is gone") from None
    fd = real_dir = -1
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sdir)
        except FileNotFoundError:
            raise SandboxError("not_found", "the staged upload is gone") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise SandboxError(
                "bad_request", f"staged upload has {st.st_size} bytes; {size} were announced"
            )
        with files.as_fs_user(uid, gid):
            real_dir, target = files.target_dir(root_fd, path, uid, gid)
            allowed = os.access(".", os.W_OK | os.X_OK, dir_fd=real_dir, effective_ids=True)
        if not allowed:
            raise SandboxError("forbidden", f"permission denied: {path}")
        os.fchown(fd, uid, gid)
        # Never hand the VM a setuid/setgid file from the host side.
        os.fchmod(fd, mode & 0o1777)
        os.fsync(fd)  # the bytes were fsynced as they came: this is metadata only
        try:
            os.rename(name, target, src_dir_fd=sdir, dst_dir_fd=real_dir)
        except IsADirectoryError:
            raise SandboxError("conflict", f"path is a directory: {path}") from None
        os.fsync(real_dir)
    except OSError as exc:
        raise fs_error(exc, f"cannot write {path}") from None
    finally:
        for handle in (fd, real_dir, sdir):
            if handle >= 0:
                os.close(handle)


def discard(root_fd: int, name: str) -> None:
    """Remove the staged upload ``name`` if it exists."""
    _check_name(name)
    try:
        sdir = _staging_dir(root_fd, create=False)
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=sdir)
    finally:
        os.close(sdir)
