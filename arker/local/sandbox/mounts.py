"""Mount plumbing: private mount namespace, overlay mounts, mountinfo parsing.

Everything goes through libc via ctypes because the engine must not shell out to
``mount(8)`` on every fork (latency) and must control the exact flags.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

__all__ = [
    "detach",
    "enter_private_mount_namespace",
    "is_mountpoint",
    "make_private_bind",
    "mount_overlay",
    "mount_source",
    "mounts_under",
    "umount",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

# The legacy mount(2) data page is one page; longer option strings are cut silently.
_MAX_MOUNT_DATA = 4095


def _raise(what: str, path: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what} {path}: {os.strerror(err)}", path)


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    rc = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data is not None else None,
    )
    if rc != 0:
        _raise("mount", target)


def enter_private_mount_namespace() -> None:
    """Move this process into its own mount namespace with private propagation.

    Call it at start-up while the process is still single threaded
    (``unshare(CLONE_NEWNS)`` fails with EINVAL once threads share the fs context).
    Overlay mounts made afterwards are invisible to the rest of the host and vanish
    by themselves when the process dies, so a crash never leaks mounts.

    Raises:
        OSError: unshare or the propagation change failed (e.g. not root).
    """
    if _libc.unshare(CLONE_NEWNS) != 0:
        _raise("unshare(CLONE_NEWNS)", "/")
    # Without this our mounts would still propagate back to the host's peer group.
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)


def make_private_bind(path: str) -> None:
    """Bind-mount ``path`` onto itself with private propagation.

    Used for the engine's mount-point directory so overlays mounted below it do not
    propagate to other namespaces even when the engine runs in the host namespace.
    """
    if not is_mountpoint(path):
        _mount(path, path, None, MS_BIND, None)
    _mount(None, path, None, MS_PRIVATE, None)


def _overlay_escape(path: str) -> str:
    # Overlay splits lowerdir on ':' and options on ','; backslash escapes both.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def mount_overlay(target: str, lowers_top_first: Sequence[str], upper: str, work: str) -> None:
    """Mount an overlay with ``userxattr`` and ``nosuid,nodev`` on ``target``.

    ``userxattr`` makes whiteouts/opaque markers use ``user.overlay.*`` so a frozen
    upper keeps meaning the same thing when later mounted as a lower layer.

    Args:
        target: Mount point.
        lowers_top_first: Lower directories, topmost first (overlay's order).
        upper: Upper directory (exclusive to this mount).
        work: Empty work directory on the same filesystem as ``upper``.

    Raises:
        OSError: The mount failed or the option string is too long.
    """
    lower = ":".join(_overlay_escape(p) for p in lowers_top_first)
    data = (
        f"lowerdir={lower},upperdir={_overlay_escape(upper)},"
        f"workdir={_overlay_escape(work)},userxattr"
    )
    if len(data.encode()) > _MAX_MOUNT_DATA:
        raise OSError(errno.E2BIG, f"overlay option string too long ({len(data)} bytes)")
    _mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, data)


def umount(target: str) -> bool:
    """Unmount ``target``; fall back to a lazy detach if it is busy.

    Returns:
        True when a mount was removed or detached, False when nothing was mounted.
    """
    if _libc.umount2(target.encode(), 0) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    if err == errno.EBUSY:
        # An open file (e.g. a streaming read) pins it; detaching is safe because
        # nothing writes through the old mount any more.
        if _libc.umount2(target.encode(), MNT_DETACH) == 0:
            return True
        err = ctypes.get_errno()
    raise OSError(err, f"umount {target}: {os.strerror(err)}", target)


def detach(target: str) -> None:
    """Lazily detach the mount at ``target`` (``MNT_DETACH``).

    The superblock lives on while any descriptor references it; closing the last
    one shuts it down (for overlay that includes a sync of the upper filesystem).
    """
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}", target)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, source) of each mount in this namespace."""
    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 5:
                continue
            sep = parts.index("-") if "-" in parts else -1
            fstype = parts[sep + 1] if 0 <= sep < len(parts) - 1 else ""
            source = _unescape(parts[sep + 2]) if 0 <= sep < len(parts) - 2 else ""
            rows.append((_unescape(parts[4]), fstype, source))
    return rows


def is_mountpoint(path: str) -> bool:
    """Whether ``path`` is a mount point in this process's namespace."""
    real = os.path.realpath(path)
    return any(mp == real for mp, _, _ in _mountinfo())


def mount_source(path: str, fstype: str) -> str | None:
    """The source (e.g. the loop device) of the ``fstype`` mount on ``path``, or None."""
    real = os.path.realpath(path)
    found = [src for mp, fs, src in _mountinfo() if mp == real and fs == fstype]
    return found[-1] if found else None


def mounts_under(prefix: str, fstype: str | None = None) -> list[str]:
    """Mount points strictly below ``prefix``, deepest first (unmount order)."""
    real = os.path.realpath(prefix).rstrip("/") + "/"
    found = [mp for mp, fs, _ in _mountinfo() if mp.startswith(real) and (fstype in (None, fs))]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)
