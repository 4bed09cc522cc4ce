"""Host-side file I/O confined to a VM's merged root with ``openat2``.

A VM controls every symlink in its tree, so no path from a VM may ever be resolved
by the host's normal path walk (``/home/user/pw -> /etc/passwd`` would read the
host's file). Every lookup here starts from an ``O_PATH`` handle on the VM's merged
overlay root and uses ``RESOLVE_IN_ROOT`` (absolute links and ``..`` stay inside),
``RESOLVE_NO_MAGICLINKS`` (no ``/proc/self/fd`` tricks) and ``RESOLVE_NO_XDEV`` (never
leave the overlay mount). Every failure maps to its wire code through the one errno
table (`arker.local.fs_errors`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ..fs_errors import fs_error
from .errors import SandboxError

__all__ = [
    "RESOLVE_NO_SYMLINKS_BENEATH",
    "as_fs_user",
    "commit_state",
    "open_read",
    "openat2",
    "read_small",
    "target_dir",
    "unlink",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# openat2 has the same number on every architecture (new-style syscall table).
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
RESOLVE_NO_SYMLINKS_BENEATH = (
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
)
"""For walks that must not follow any link at all: ELOOP on a symlink anywhere."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(root_fd: int, path: str, flags: int, mode: int = 0, resolve: int = _RESOLVE) -> int:
    """Open ``path`` relative to ``root_fd`` treating it as ``/`` (RESOLVE_IN_ROOT), or
    with the ``resolve`` flags given.

    Raises:
        OSError: With the kernel's errno (ENOENT, ELOOP, EXDEV, ...).
    """
    rel = path.lstrip("/") or "."
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = rel.encode("utf-8", "surrogateescape")
    for _ in range(16):
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a concurrent rename raced the RESOLVE_IN_ROOT walk; retrying is safe.
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


_SETFS = {"x86_64": (122, 123), "aarch64": (151, 152)}.get(os.uname().machine)


@contextlib.contextmanager
def as_fs_user(uid: int, gid: int) -> Iterator[None]:
    """Do filesystem access on this thread as ``uid``/``gid`` (setfsuid/setfsgid).

    Switching the fs uid away from 0 drops CAP_DAC_OVERRIDE, CAP_FOWNER etc. for this
    thread only (raw syscalls: glibc's wrappers would not be per-thread), so a write
    cannot do more inside the VM than the VM user could: a symlink to the VM's
    ``/etc`` does not make ``/etc/passwd`` writable.
    """
    if _SETFS is None:
        yield
        return
    uid_nr, gid_nr = _SETFS
    old_gid = _libc.syscall(ctypes.c_long(gid_nr), ctypes.c_long(gid))
    old_uid = _libc.syscall(ctypes.c_long(uid_nr), ctypes.c_long(uid))
    try:
        yield
    finally:
        _libc.syscall(ctypes.c_long(uid_nr), ctypes.c_long(old_uid))
        _libc.syscall(ctypes.c_long(gid_nr), ctypes.c_long(old_gid))


def _not_found(path: str) -> SandboxError:
    return SandboxError("not_found", f"file not found: {path}")


def open_read(root_fd: int, path: str) -> tuple[BinaryIO, int]:
    """Open a regular file inside the VM for reading.

    Returns:
        The file object (positioned at 0) and its size.

    Raises:
        SandboxError: ``not_found`` or ``bad_request`` (not a regular file).
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang the server thread.
        fd = openat2(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EXDEV):
            raise _not_found(path) from None
        raise fs_error(exc, f"cannot open {path}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SandboxError("bad_request", f"path is a directory: {path}")
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError("bad_request", f"not a regular file: {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_small(root_fd: int, path: str, limit: int) -> bytes | None:
    """Read at most ``limit`` bytes of a regular file inside the VM, or None if absent."""
    try:
        fh, _ = open_read(root_fd, path)
    except SandboxError:
        return None
    with fh:
        return fh.read(limit)


def commit_state(root_fd: int, path: str, marker: bytes, limit: int) -> bytes | None:
    """Move ``<path>.new`` over ``path`` if it is complete; return the current state.

    Used for session state files the VM writes with shell builtins only. The
    directory is resolved inside the VM; the two names are then plain entries of it
    (``O_NOFOLLOW``, ``renameat``), so nothing can point the host elsewhere.

    Returns:
        The committed (or previous) state, or None when there is none.
    """
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        dfd = _open_dir(root_fd, parent or "/")
    except OSError:
        return None
    try:
        try:
            fd = os.open(
                f"{name}.new",
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=dfd,
            )
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                data = os.read(fd, limit) if stat.S_ISREG(st.st_mode) else b""
            finally:
                os.close(fd)
            if data.endswith(marker):
                with contextlib.suppress(OSError):
                    os.rename(f"{name}.new", name, src_dir_fd=dfd, dst_dir_fd=dfd)
                return data
    finally:
        os.close(dfd)
    return read_small(root_fd, path, limit)


def _open_dir(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    return openat2(root_fd, path, flags | os.O_DIRECTORY)


def _ensure_dirs(root_fd: int, parts: list[str], uid: int, gid: int) -> int:
    """Open (creating as needed, owned by ``uid``) the directory ``/parts...``.

    Each level is re-resolved from the VM root, so a component that is a symlink is
    followed inside the VM, never on the host.
    """
    parent = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            try:
                fd = _open_dir(root_fd, sub)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
                except FileExistsError:
                    pass  # raced with the VM or another writer; re-resolve below
                fd = _open_dir(root_fd, sub)
            os.close(parent)
            parent = fd
        return parent
    except BaseException:
        os.close(parent)
        raise


def target_dir(root_fd: int, path: str, uid: int, gid: int) -> tuple[int, str]:
    """Resolve (creating as the VM user) the parent of ``path``; refuse a directory
    target. Call with the VM user's fs identity.

    Returns:
        ``(dir_fd, name)``: a real (non-``O_PATH``) handle on the parent, so it can be
        fsynced, and the last path component. The caller closes ``dir_fd``.
    """
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise SandboxError("bad_request", f"invalid path: {path}")
    name = parts[-1]
    try:
        dir_fd = _ensure_dirs(root_fd, parts[:-1], uid, gid)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise SandboxError("conflict", f"parent is not a directory: {path}") from None
        # ENOENT after mkdir said EEXIST means a dangling symlink in the path.
        if exc.errno in (errno.EXDEV, errno.ELOOP, errno.ENOENT):
            raise SandboxError("bad_request", f"cannot resolve parent of {path}") from None
        raise fs_error(exc, f"cannot create parents of {path}") from None
    try:
        real_dir = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        try:
            st = os.stat(name, dir_fd=real_dir, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise SandboxError("conflict", f"path is a directory: {path}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise fs_error(exc, f"cannot write {path}") from None
    except BaseException:
        os.close(real_dir)
        raise
    return real_dir, name


def unlink(root_fd: int, path: str) -> bool:
    """Remove the file ``path`` of the VM; False when it is absent. Call with the VM
    user's fs identity: the VM user's permissions decide.

    The parent is resolved inside the VM (links in it stay inside); the name itself is
    removed, never followed.

    Raises:
        SandboxError: by the errno table: a directory at ``path`` or a file in the way
            of its parent (``conflict``), a read-only place (``forbidden``), a name too
            long (``bad_request``).
    """
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise SandboxError("bad_request", f"invalid path: {path}")
    try:
        dir_fd = _open_dir(root_fd, "/".join(parts[:-1]) or "/")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise fs_error(exc, f"cannot delete {path}") from None
    try:
        os.unlink(parts[-1], dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise fs_error(exc, f"cannot delete {path}") from None
    finally:
        os.close(dir_fd)
