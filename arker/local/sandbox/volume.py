"""The btrfs storage volume (``storage="btrfs"``): a loop-mounted image file with quotas.

With this storage the engine keeps its layers on a btrfs filesystem held in one
sparse image file of the data dir (``<data_dir>/storage.btrfs``), loop-mounted by the
engine at start (in the server's private mount namespace) and unmounted at close. What
it buys over plain directories on the data dir's own filesystem:

* every VM upper is a btrfs subvolume with a qgroup limit, so the kernel stops the
  VM's writes with ``EDQUOT`` whatever the code does (unlinked open files, deep
  paths, hard links);
* overlayfs copy-up clones (reflinks) instead of copying, so a small write to a big
  inherited file costs about a block;
* it is mounted with ``discard=sync``: blocks freed inside (a deleted VM's subvolume)
  are punched out of the sparse image, so the host gets them back; and with
  ``commit=5``: btrfs's cleaner frees a deleted subvolume after a commit, and the
  default 30 s interval kept a deleted VM's blocks that long.

Simple quotas (kernel 6.7+) are enabled through the ioctl when the kernel has them
(they do not pay classic qgroups' accounting cost with many snapshots); classic
qgroups otherwise. Subvolumes are made and limited through ioctls: a fork stays a
few syscalls. Requirements: ``mkfs.btrfs`` (``btrfs-progs``), loop devices, the btrfs
kernel module, root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

from . import mounts
from .errors import SandboxUnavailable

__all__ = ["BtrfsVolume", "btrfs_unavailable", "clone_file"]

_VOL_ARGS = struct.Struct("q4088s")  # struct btrfs_ioctl_vol_args
_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, vol_args)
_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, vol_args)
_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, btrfs_ioctl_quota_ctl_args)
_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, btrfs_ioctl_qgroup_limit_args)
_FICLONE = 0x40049409
_QUOTA_ENABLE = 1
_QUOTA_ENABLE_SIMPLE = 4
_LIMIT_MAX_EXCL = 1 << 1
_SUBVOL_ROOT_INO = 256
_MIN_SIZE = 256 << 20  # mkfs.btrfs refuses much smaller images
_FIX = "install btrfs-progs (apt-get install -y btrfs-progs) or use the default storage"


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()
        raise OSError(f"{' '.join(argv)}: {out[-1] if out else proc.returncode}")


def _vol_args(name: str) -> bytearray:
    # A mutable buffer: ioctl copies immutable arguments only up to 1024 bytes.
    return bytearray(_VOL_ARGS.pack(0, name.encode()))


def btrfs_unavailable() -> str | None:
    """Why this host cannot hold a btrfs storage volume, or None when it can."""
    if os.geteuid() != 0:
        return "btrfs storage needs root (to loop-mount its image)"
    if shutil.which("mkfs.btrfs") is None:
        return f"mkfs.btrfs not found: {_FIX}"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing): load the loop module"
    with contextlib.suppress(OSError):
        if "btrfs" not in Path("/proc/filesystems").read_text():
            subprocess.run(["modprobe", "btrfs"], capture_output=True, check=False)
            if "btrfs" not in Path("/proc/filesystems").read_text():
                return "the kernel has no btrfs (modprobe btrfs failed)"
    return None


def clone_file(src: str, dst: str) -> None:
    """Make ``dst`` a reflink copy of regular file ``src`` (same btrfs filesystem)."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(dfd, _FICLONE, sfd)
            os.fchown(dfd, st.st_uid, st.st_gid)
            os.fchmod(dfd, st.st_mode & 0o7777)
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


class BtrfsVolume:
    """A btrfs image file loop-mounted on a directory, with quotas on.

    Args:
        image: The image file (created sparse, or grown to ``size``).
        mountpoint: Where it is mounted (created).
        size: Size of the image in bytes (an existing smaller image is grown).

    Raises:
        SandboxUnavailable: The host cannot hold it (one line: cause and fix), or
            making, growing or mounting the image failed.
    """

    def __init__(self, image: Path, mountpoint: Path, size: int) -> None:
        why = btrfs_unavailable()
        if why is not None:
            raise SandboxUnavailable(why)
        self.image = image
        self.root = mountpoint
        size = max(size, _MIN_SIZE)
        try:
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            if os.path.ismount(mountpoint):
                # Left mounted by an engine that died in the host namespace (with
                # its overlays, which hold it): reuse it as it is.
                self.simple_quotas = self._enable_quotas()
                return
            fresh = not image.exists()
            if fresh:
                fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.ftruncate(fd, size)  # sparse: blocks are allocated as used
                finally:
                    os.close(fd)
                _run("mkfs.btrfs", "-q", str(image))
            grow = image.stat().st_size < size
            if grow:
                os.truncate(image, size)
            _run(
                "mount",
                "-t",
                "btrfs",
                "-o",
                "loop,noatime,discard=sync,commit=5",
                str(image),
                str(mountpoint),
            )
            if grow:
                _run("btrfs", "filesystem", "resize", "max", str(mountpoint))
            os.chmod(mountpoint, 0o700)
            self.simple_quotas = self._enable_quotas()
        except OSError as exc:
            with contextlib.suppress(OSError):
                mounts.detach(str(mountpoint))
            raise SandboxUnavailable(f"cannot set up btrfs storage {image}: {exc}") from None

    def _enable_quotas(self) -> bool:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for cmd in (_QUOTA_ENABLE_SIMPLE, _QUOTA_ENABLE):
                try:
                    fcntl.ioctl(fd, _QUOTA_CTL, struct.pack("QQ", cmd, 0))
                    return cmd == _QUOTA_ENABLE_SIMPLE
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                        raise
            raise OSError("the kernel refused to enable btrfs quotas")
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmount the volume (lazily: a detached overlay may still hold it)."""
        with contextlib.suppress(OSError):
            mounts.detach(str(self.root))


def create_subvolume(parent: Path, name: str, limit: int) -> None:
    """Create subvolume ``parent/name``; limit its exclusive bytes to ``limit`` (0: none)."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(pfd, _SUBVOL_CREATE, _vol_args(name))
    finally:
        os.close(pfd)
    if limit > 0:
        set_limit(parent / name, limit)


def set_limit(subvolume: Path, limit: int) -> None:
    """Limit the bytes a subvolume holds on its own (its qgroup's ``max_excl``)."""
    fd = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # qgroupid 0: the subvolume of fd; then flags, max_rfer, max_excl, rsv_*.
        args = struct.pack("QQQQQQ", 0, _LIMIT_MAX_EXCL, 0, limit, 0, 0)
        fcntl.ioctl(fd, _QGROUP_LIMIT, args)
    finally:
        os.close(fd)


def is_subvolume(path: Path) -> bool:
    """True when ``path`` is the root of a btrfs subvolume."""
    try:
        return os.lstat(path).st_ino == _SUBVOL_ROOT_INO
    except OSError:
        return False


def destroy_subvolume(parent: Path, name: str) -> None:
    """Delete subvolume ``parent/name`` with everything in it (its blocks are freed)."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(pfd, _SNAP_DESTROY, _vol_args(name))
    finally:
        os.close(pfd)
