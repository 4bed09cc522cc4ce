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

The image starts small (`INITIAL_SIZE`, sparse) and grows while the volume is mounted:
a watcher checks the free space every `GROW_CHECK_S` and, when less than half the
image is free, doubles the file (``truncate``, ``LOOP_SET_CAPACITY``, then an online
btrfs resize), up to the configured size and never past what the host's own
filesystem has free (a sparse image over a full host disk would make btrfs fail
writes and go read-only). A writer faster than half the image per check can still
meet ``ENOSPC`` before the next growth.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

from . import mounts
from .errors import SandboxUnavailable

__all__ = ["IMAGE_NAME", "INITIAL_SIZE", "BtrfsVolume", "btrfs_unavailable", "clone_file"]

log = logging.getLogger("arker.local")

IMAGE_NAME = "storage.btrfs"
"""The image file's name in the data dir."""

INITIAL_SIZE = 4 << 30
"""Size of a new image (sparse), before it grows."""

GROW_CHECK_S = 1.0
"""How often the mounted volume's free space is checked."""

_VOL_ARGS = struct.Struct("q4088s")  # struct btrfs_ioctl_vol_args
_SUBVOL_CREATE = 0x5000940E  # _IOW(0x94, 14, vol_args)
_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, vol_args)
_QUOTA_CTL = 0xC0109428  # _IOWR(0x94, 40, btrfs_ioctl_quota_ctl_args)
_QGROUP_LIMIT = 0x8030942B  # _IOR(0x94, 43, btrfs_ioctl_qgroup_limit_args)
_RESIZE = 0x50009403  # _IOW(0x94, 3, vol_args)
_START_SYNC = 0x80089418  # _IOR(0x94, 24, __u64)
_WAIT_SYNC = 0x40089416  # _IOW(0x94, 22, __u64)
_FICLONE = 0x40049409
_LOOP_SET_CAPACITY = 0x4C07
_QUOTA_ENABLE = 1
_QUOTA_ENABLE_SIMPLE = 4
_LIMIT_MAX_EXCL = 1 << 1
_SUBVOL_ROOT_INO = 256
_MIN_SIZE = 256 << 20  # mkfs.btrfs refuses much smaller images
_FIX = "install btrfs-progs (apt-get install -y btrfs-progs) or use --storage dir"


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
    """A btrfs image file loop-mounted on a directory, with quotas on, grown as it fills.

    Args:
        image: The image file (created sparse at ``initial`` bytes if missing).
        mountpoint: Where it is mounted (created).
        size: The most the image may grow to, in bytes.
        initial: Size of a new image (`INITIAL_SIZE`; at most ``size``).
        watch: Start the growth watcher (`grow_if_needed` every `GROW_CHECK_S`).

    Raises:
        SandboxUnavailable: The host cannot hold it (one line: cause and fix), or
            making or mounting the image failed.
    """

    def __init__(
        self,
        image: Path,
        mountpoint: Path,
        size: int,
        *,
        initial: int = INITIAL_SIZE,
        watch: bool = True,
    ) -> None:
        why = btrfs_unavailable()
        if why is not None:
            raise SandboxUnavailable(why)
        self.image = image
        self.root = mountpoint
        self.max_size = max(size, _MIN_SIZE)
        self._grow_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        try:
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            if os.path.ismount(mountpoint):
                # Left mounted by an engine that died in the host namespace (with
                # its overlays, which hold it): reuse it as it is.
                self.simple_quotas = self._enable_quotas()
            else:
                if not image.exists():
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    fd = os.open(image, flags, 0o600)
                    try:
                        # sparse: blocks are allocated as used
                        os.ftruncate(fd, min(self.max_size, max(initial, _MIN_SIZE)))
                    finally:
                        os.close(fd)
                    _run("mkfs.btrfs", "-q", str(image))
                opts = "loop,nosuid,nodev,noatime,discard=sync,commit=5"
                _run("mount", "-t", "btrfs", "-o", opts, str(image), str(mountpoint))
                os.chmod(mountpoint, 0o700)
                self.simple_quotas = self._enable_quotas()
            self._loop = _loop_device(mountpoint)
            # An image grown while unmounted (by an older arker at start) is used whole.
            self._resize_max()
        except OSError as exc:
            with contextlib.suppress(OSError):
                mounts.detach(str(mountpoint))
            raise SandboxUnavailable(f"cannot set up btrfs storage {image}: {exc}") from None
        if watch:
            self._watcher = threading.Thread(
                target=self._watch, name="arker-btrfs-grow", daemon=True
            )
            self._watcher.start()

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

    def _resize_max(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _RESIZE, _vol_args("max"))
        finally:
            os.close(fd)

    def grow_if_needed(self) -> bool:
        """Double the image when less than half of it is free (up to ``size``).

        Never past what the host filesystem under the image has free.

        Returns:
            True when the image grew.
        """
        with self._grow_lock:
            st = os.statvfs(self.root)
            current = os.stat(self.image)
            if st.f_bavail * st.f_frsize >= current.st_size // 2:
                return False
            target = min(self.max_size, current.st_size * 2)
            host = os.statvfs(self.image.parent)
            # Blocks the image may still allocate must fit on the host.
            room = host.f_bavail * host.f_frsize + current.st_blocks * 512
            target = min(target, room - (room >> 4))
            if target <= current.st_size:
                return False
            os.truncate(self.image, target)
            lfd = os.open(self._loop, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(lfd, _LOOP_SET_CAPACITY, 0)
            finally:
                os.close(lfd)
            self._resize_max()
            log.info(
                "btrfs storage grown to %d MiB (at most %d MiB)", target >> 20, self.max_size >> 20
            )
            return True

    def _watch(self) -> None:
        while not self._stop.wait(GROW_CHECK_S):
            try:
                self.grow_if_needed()
            except OSError as exc:
                log.warning("cannot grow the btrfs storage %s: %s", self.image, exc)

    def close(self) -> None:
        """Stop the watcher, unmount the volume (lazily: a detached overlay may hold it)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with contextlib.suppress(OSError):
            mounts.detach(str(self.root))


def _loop_device(mountpoint: Path) -> str:
    """The loop device mounted on ``mountpoint``."""
    found = mounts.mount_source(str(mountpoint), "btrfs")
    if found is None or not found.startswith("/dev/"):
        raise OSError(errno.ENODEV, f"no btrfs loop mount on {mountpoint}")
    return found


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


def commit_transaction(path: Path) -> None:
    """Commit the running btrfs transaction of the filesystem holding ``path``, and wait.

    Unlike ``syncfs`` it does not write out dirty file data first: only the
    transaction (metadata, subvolumes made in it) is committed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        transid = bytearray(8)
        fcntl.ioctl(fd, _START_SYNC, transid)
        fcntl.ioctl(fd, _WAIT_SYNC, transid)
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
