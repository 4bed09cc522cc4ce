"""Idmapped views of the layers: files on disk keep one owner, each VM sees its own.

Every VM's processes run as a host uid of their own (`vm_uids`), so no per-uid kernel
limit (inotify instances, POSIX message queues, keys, ``RLIMIT_NPROC``) is shared
between VMs. Yet a fork inherits its parent's files, and chowning them would make
fork cost a walk of the whole tree. So the files on disk stay owned by one canonical
uid (the engine's ``sandbox_uid``) and each VM's overlay is mounted over *idmapped*
views of the layers (``open_tree`` + ``mount_setattr(MOUNT_ATTR_IDMAP)``): through
them a file of the canonical uid appears as the VM's uid, and what the VM's uid
creates lands on disk as the canonical uid. A view is a detached mount: no path in
any namespace, gone once its descriptor is closed and the overlay holds its own
private clone. Making one costs a few syscalls, whatever the size of the tree.

The mapping swaps the canonical uid and the VM's uid and maps every other id to
itself (root-owned files stay root's, so copy-up of ``/tmp`` keeps its owner).
The user namespace that carries the mapping is made by a short-lived helper
(``unshare --user``): a threaded server cannot ``unshare`` itself. The helper costs
a process start, so the namespaces of the recently mounted VMs are kept
(`USERNS_KEPT` descriptors at most).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import mounts

__all__ = [
    "IDMAP_UNSHARE",
    "idmapped_view",
    "mount_overlay_as",
    "swap_mapping",
    "swap_userns",
    "views",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# New-style syscalls: the same number on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_UID_MAX = 0xFFFFFFFF  # exclusive end of the 32-bit id space ((uid_t)-1 is invalid)

USERNS_KEPT = 16
"""How many mapping namespaces `views` keeps open for the next mount of their VM: each
is a descriptor of the server, so a few (an idle VM holds no descriptor, see mounting)."""

IDMAP_UNSHARE = shutil.which("unshare")
"""util-linux's unshare: the helper that makes the mapping's user namespace."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def swap_mapping(canonical: int, uid: int) -> str:
    """A ``uid_map`` swapping ``canonical`` and ``uid``, every other id mapped to itself."""
    low, high = sorted((canonical, uid))
    if low == high or low < 1 or high >= _UID_MAX:
        raise ValueError(f"cannot swap uids {canonical} and {uid}")
    rows = [
        (0, 0, low),
        (low, high, 1),
        (low + 1, low + 1, high - low - 1),
        (high, low, 1),
        (high + 1, high + 1, _UID_MAX - high - 1),
    ]
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in rows if count)


def swap_userns(canonical: int, uid: int) -> int:
    """A user namespace whose mapping is `swap_mapping`; returns a descriptor on it.

    Raises:
        OSError: The helper is missing or failed, or the mapping was refused.
    """
    if IDMAP_UNSHARE is None:
        raise OSError("unshare(1) (util-linux) not found")
    mapping = swap_mapping(canonical, uid)
    helper = subprocess.Popen(
        [IDMAP_UNSHARE, "--user", "--", "/bin/sh", "-c", "echo; exec cat >/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        if helper.stdout.readline() != b"\n":  # it prints once it has unshared
            raise OSError(f"unshare --user failed (status {helper.wait()})")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{name}", "w", encoding="ascii") as fh:
                fh.write(mapping)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.stdin.close()
        helper.stdout.close()
        helper.wait()


def idmapped_view(path: str, userns_fd: int) -> int:
    """A detached clone of the directory ``path``, idmapped through ``userns_fd``.

    Returns:
        A descriptor on the view's root (refer to it as ``/proc/self/fd/N/...``).

    Raises:
        OSError: The kernel or the filesystem does not support idmapped mounts.
    """
    fd = int(
        _libc.syscall(
            ctypes.c_long(_SYS_OPEN_TREE),
            ctypes.c_int(-100),  # AT_FDCWD
            path.encode(),
            ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    rc = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR),
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(_AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"idmapped mount of {path}: {os.strerror(err)}")
    return fd


@contextlib.contextmanager
def views(paths: list[str], canonical: int, uid: int) -> Iterator[list[str]]:
    """Idmapped views of ``paths`` for ``uid`` while the block runs: their ``/proc``
    names, valid for this process until the block ends (mount the overlay inside it).
    """
    fds: list[int] = []
    try:
        with _kept.lock:  # held while in use: an eviction cannot close it under us
            userns = _kept.get(canonical, uid)
            for path in paths:
                fds.append(idmapped_view(path, userns))
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


class _Kept:
    """The most recently used mapping namespaces, by (canonical, uid)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()

    def get(self, canonical: int, uid: int) -> int:
        key = (canonical, uid)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = swap_userns(canonical, uid)
            while len(self._fds) > USERNS_KEPT:
                os.close(self._fds.popitem(last=False)[1])
        self._fds.move_to_end(key)
        return fd


_kept = _Kept()


def mount_overlay_as(
    target: str,
    lowers_top_first: Sequence[Path],
    upper: Path,
    work: Path,
    *,
    lower_roots: Sequence[Path],
    upper_root: Path,
    canonical: int,
    uid: int,
) -> None:
    """`mounts.mount_overlay` over idmapped views: the overlay shows ``canonical``'s
    files as ``uid``'s, and what ``uid`` writes lands on disk as ``canonical``'s.

    Args:
        target: Mount point.
        lowers_top_first: Lower directories, topmost first; each under one of
            ``lower_roots`` (the first that holds it).
        upper: Upper directory, under ``upper_root``.
        work: Work directory, under ``upper_root`` too (overlay wants both on one
            mount: one view serves them).
        lower_roots: The directories to view the lowers through (a view each).
        upper_root: The directory to view the upper and work through.
        canonical: The owner of the files on disk.
        uid: The VM's host uid.

    Raises:
        OSError: No user namespace, no idmapped mount, or the mount failed.
    """
    roots = list(dict.fromkeys([*lower_roots, upper_root]))
    with views([str(r) for r in roots], canonical, uid) as named:
        by_root = dict(zip(roots, named, strict=True))

        def through(path: Path, candidates: Sequence[Path]) -> str:
            for root in candidates:
                if path == root:
                    return by_root[root]
                if root in path.parents:
                    return f"{by_root[root]}/{path.relative_to(root)}"
            raise OSError(f"{path} is under none of {list(candidates)}")

        mounts.mount_overlay(
            target,
            [through(p, lower_roots) for p in lowers_top_first],
            through(upper, [upper_root]),
            through(work, [upper_root]),
        )
