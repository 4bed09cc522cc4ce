"""A VM's manifest computed on the host from the VM's root handle, never in the VM.

The walk starts from the ``O_PATH`` handle on the VM's merged root and opens every
directory and file with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)``: no symbolic link is followed anywhere,
nothing outside the VM's tree can be reached, and a name the VM swaps for a link
mid-walk fails to open instead of being followed. Entry paths are built here from the
requested directory and the names the kernel lists, so nothing the VM writes can put
``..``, another directory or a forged size, mode or digest into them. Modes are the
permission bits only (no setuid/setgid/sticky).

Work is bounded: at most ``cap`` files are listed (then ``truncated``), at most
`WALK_CAP` directory entries are examined, and only one directory handle is open at a
time (each directory is reopened from the root, so depth costs no descriptors).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from ..._paths import path_problem
from ..fs_errors import fs_error
from .files import RESOLVE_NO_SYMLINKS_BENEATH, openat2

WALK_CAP = 100_000
"""Most directory entries one manifest examines; past it the answer is ``truncated``."""

Entry = tuple[str, int, int, str]
"""``(path, size, permission bits, sha256 hex)`` of one regular file."""

_SKIPPED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EACCES, errno.EPERM)
"""Why an entry may vanish from the walk: gone, a link, another mount, unreadable."""
_BLOCK = 1 << 20


def _open(dir_fd: int, rel: str, flags: int) -> int:
    return openat2(
        dir_fd, rel, flags | os.O_NOFOLLOW | os.O_NOCTTY, resolve=RESOLVE_NO_SYMLINKS_BENEATH
    )


def _file_entry(dir_fd: int, name: str, path: str) -> Entry | None:
    """The entry of the regular file ``name`` in ``dir_fd``, or None (not one, gone)."""
    try:
        fd = _open(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in _SKIPPED or exc.errno == errno.ENAMETOOLONG:
            return None
        raise fs_error(exc, f"cannot list {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha256()
        size = 0
        while block := os.read(fd, _BLOCK):
            digest.update(block)
            size += len(block)
        return (path, size, stat.S_IMODE(st.st_mode) & 0o777, digest.hexdigest())
    finally:
        os.close(fd)


def walk(root_fd: int, path: str, cap: int) -> tuple[list[Entry], bool]:
    """Every regular file under the VM path ``path`` (a directory or one file).

    Call with the VM user's fs identity: what the VM user cannot read is left out, as
    are links, special files and names the sync path rules refuse.

    Returns:
        ``(entries sorted by path, truncated)``.

    Raises:
        SandboxError: by the errno table, for failures other than a missing,
            linked or unreadable ``path`` (which list nothing).
    """
    base = "/" + path.strip("/")
    rel_base = base.lstrip("/")
    entries: list[Entry] = []
    try:
        fd = _open(root_fd, rel_base, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in _SKIPPED:
            return entries, False
        raise fs_error(exc, f"cannot list {base}") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISREG(mode):
        one = _file_entry(root_fd, rel_base, base)
        return ([one] if one else []), False
    if not stat.S_ISDIR(mode):
        return entries, False
    examined = 0
    pending = [""]  # directories below base, relative to it; depth first, sorted
    while pending:
        sub = pending.pop()
        try:
            dir_fd = _open(root_fd, f"{rel_base}/{sub}".rstrip("/"), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno in _SKIPPED or exc.errno == errno.ENAMETOOLONG:
                continue
            raise fs_error(exc, f"cannot list {base}/{sub}".rstrip("/")) from None
        try:
            names = sorted(os.listdir(dir_fd))
            subdirs = []
            for name in names:
                examined += 1
                if examined > WALK_CAP:
                    return sorted(entries), True
                child = f"{sub}/{name}" if sub else name
                full = f"{base}/{child}"
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(child)
                elif stat.S_ISREG(st.st_mode) and not path_problem(full):
                    if len(entries) >= cap:
                        return sorted(entries), True
                    one = _file_entry(dir_fd, name, full)
                    if one is not None:
                        entries.append(one)
            pending.extend(reversed(subdirs))
        finally:
            os.close(dir_fd)
    return sorted(entries), False
