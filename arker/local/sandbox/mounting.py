"""Each VM's overlay: mounted on first use, unmounted by fork, delete and close.

A VM's root is an overlay of its layer chain (its frozen layers, then its base) under
its private upper. It is mounted at ``<mount dir>/<vm id>`` and used through an
``O_PATH`` handle (bwrap's ``--bind-fd``, the file operations' ``openat2``), so runs
and file I/O never pay for a mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import mounts
from .errors import SandboxError
from .layers import LayerStore, VmMeta

__all__ = ["Overlays", "mount_dir"]


def mount_dir(data_dir: Path, tag: str, sandbox_uid: int) -> Path:
    """The directory holding an engine's mount points (created).

    bwrap resolves its ``--bind-fd`` source by path as the sandbox uid, so the
    mount points cannot live inside the 0700 data dir. They live under ``/run``
    in a directory owned by the sandbox uid with mode 0700: reachable by root and
    the sandbox uid only (and the mounts are nosuid,nodev).

    Args:
        data_dir: The engine's data dir (its parent holds the directory when the host
            has no ``/run``).
        tag: The engine's tag (one directory per data dir).
        sandbox_uid: Owner of the directory.
    """
    top = Path("/run/arker-sandbox")
    if not Path("/run").is_dir():
        top = Path(data_dir).parent / ".arker-sandbox-mnt"
    top.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(top, 0o711)
    mnt = top / tag
    mnt.mkdir(mode=0o700, exist_ok=True)
    os.chown(mnt, sandbox_uid, sandbox_uid)
    os.chmod(mnt, 0o700)
    return mnt


class Overlays:
    """Mounts and unmounts VMs' overlays under one mount directory.

    No locking: the engine mounts inside a VM's gate and unmounts holding the VM
    exclusively.

    Args:
        root: The mount directory (`mount_dir`).
        store: Where the layers are.
        base_dir: Directory of a base image, by name.
        background: Queues a job on the engine's background queue.
    """

    def __init__(
        self,
        root: Path,
        store: LayerStore,
        base_dir: Callable[[str], Path],
        background: Callable[[Callable[[], None]], None],
    ) -> None:
        self.root = root
        self._store = store
        self._base_dir = base_dir
        self._background = background

    def clear_stale(self) -> None:
        """At start-up: remove what an engine that died in the host namespace left.

        Its mounts are unmounted; the directory becomes a private mount so overlays
        mounted below it never propagate to other namespaces; then nothing is mounted
        here, so every entry is the empty mount point of a VM deleted (or forgotten)
        before the crash.
        """
        for stale in mounts.mounts_under(str(self.root)):
            with contextlib.suppress(OSError):
                mounts.umount(stale)
        mounts.make_private_bind(str(self.root))
        for leftover in self.root.iterdir():
            with contextlib.suppress(OSError):
                leftover.rmdir()

    def mount(self, meta: VmMeta) -> int:
        """Mount the VM's overlay; return an ``O_PATH`` handle on its root."""
        target = self.root / meta.vm_id
        target.mkdir(mode=0o700, exist_ok=True)
        work = self._store.work_path(meta.upper)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        lowers = [self._store.layer_ref(x) for x in reversed(meta.layers)]
        lowers.append(str(self._base_dir(meta.base)))
        try:
            mounts.mount_overlay(str(target), lowers, self._store.layer_ref(meta.upper), str(work))
        except OSError as exc:
            raise SandboxError("internal", f"cannot mount vm {meta.vm_id}: {exc}") from None
        return os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def unmount(self, meta: VmMeta, root_fd: int, *, background: bool = False) -> None:
        """Unmount the VM's overlay and close ``root_fd`` (the handle from `mount`).

        With ``background`` the mount is detached at once and the handle that keeps
        its superblock alive is closed on the background queue: overlay syncs the
        whole upper filesystem when its superblock goes away, which with a lot of
        dirty data takes far longer than the fork itself. Nothing writes through the
        detached mount, so the frozen upper is already immutable when this returns.
        """
        target = self.root / meta.vm_id
        work = self._store.work_path(meta.upper)
        try:
            if background:
                mounts.detach(str(target))
                fd, wdir = root_fd, work

                def finish() -> None:
                    os.close(fd)  # last reference: the detached overlay shuts down here
                    shutil.rmtree(wdir, ignore_errors=True)

                self._background(finish)
                root_fd = -1
            else:
                os.close(root_fd)
                root_fd = -1
                mounts.umount(str(target))
                shutil.rmtree(work, ignore_errors=True)
        except OSError as exc:
            raise SandboxError("internal", f"cannot unmount vm {meta.vm_id}: {exc}") from None
        finally:
            if root_fd >= 0:
                os.close(root_fd)
        if not background:
            # A fork remounts the parent right away; keeping its mount point also
            # avoids rmdir waiting on the detached superblock's teardown.
            with contextlib.suppress(OSError):
                target.rmdir()

    def remove_mount_point(self, vm_id: str) -> None:
        """Remove a deleted VM's mount point, once its detached overlay is gone.

        Queued behind the detach (the queue is FIFO), when the mount point is unused.
        """
        target = self.root / vm_id
        self._background(lambda: target.rmdir())

    def close(self) -> None:
        """Unmount whatever is left, remove the empty mount points and the directory."""
        for stale in mounts.mounts_under(str(self.root)):
            with contextlib.suppress(OSError):
                mounts.umount(stale)
        for leftover in self.root.iterdir():
            with contextlib.suppress(OSError):
                leftover.rmdir()  # empty mount points of forked/deleted VMs
        self.release()
        with contextlib.suppress(OSError):
            self.root.rmdir()  # one per data dir ever served: do not pile up in /run

    def release(self) -> None:
        """Undo `clear_stale`'s private bind mount (also after a failed start)."""
        with contextlib.suppress(OSError):
            mounts.umount(str(self.root))
