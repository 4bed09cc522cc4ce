"""Each VM's overlay: mounted on use, a bounded set kept mounted, the rest unmounted.

A VM's root is an overlay of its layer chain (its frozen layers, then its base) under
its private upper. It is mounted at ``<mount dir>/<vm id>`` and used through an
``O_PATH`` handle (bwrap's ``--bind-fd``, the file operations' ``openat2``).

Only the `MAX_MOUNTED` most recently used VMs stay mounted; past that, the least
recently used idle ones are evicted (detached at once, their handle closed by a small
pool of teardown threads: closing the last handle makes overlay sync its upper
filesystem, on btrfs a transaction commit, so closes done one after another on the
engine's queue fell behind a burst of new VMs, holding descriptors; concurrent closes
share commits). Every mount costs on every sandbox start of every VM (bwrap and
``unshare(CLONE_NEWNS)`` copy and walk the whole mount table), and a handle kept per
VM would run the server out of descriptors: an idle VM holds neither.
Fork, delete and close unmount as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import idmap, mounts
from .errors import SandboxError
from .layers import LayerStore, VmMeta
from .pipeline import resource_error

__all__ = ["MAX_MOUNTED", "Overlays", "mount_dir"]

# Measured on a 2-core VM (docs/local-server.md, "Scale"): each mounted overlay
# added ~50 µs to a bare bwrap start and ~100 µs to a run's echo; mounting an evicted
# VM again costs ~0.7 ms (the mount) and ~2 ms per run when a working set cycles past
# the bound. 16 keeps the mount table's share of a run under ~1-2 ms.
MAX_MOUNTED = 16
"""How many VMs stay mounted when idle (least recently used are evicted past it)."""

TEARDOWN_THREADS = 4
"""Threads closing evicted overlays' handles."""


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
        max_mounted: How many idle VMs stay mounted (`MAX_MOUNTED`).
    """

    def __init__(
        self,
        root: Path,
        store: LayerStore,
        base_dir: Callable[[str], Path],
        background: Callable[[Callable[[], None]], None],
        max_mounted: int = MAX_MOUNTED,
    ) -> None:
        self.root = root
        self._store = store
        self._base_dir = base_dir
        self._background = background
        self._max_mounted = max_mounted
        self._lock = threading.Lock()
        # VM id -> its evictor, least recently used first.
        self._recent: OrderedDict[str, Callable[[], bool]] = OrderedDict()
        # VM id -> set once its evicted overlay is gone (a re-mount waits for it).
        self._evicting: dict[str, threading.Event] = {}
        self._teardown = ThreadPoolExecutor(TEARDOWN_THREADS, thread_name_prefix="arker-teardown")

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

    def touch(self, vm_id: str, evict: Callable[[], bool]) -> None:
        """Record a use of the mounted VM ``vm_id``; evict idle VMs past the bound.

        ``evict`` unmounts that VM if it is idle (see `evict`) and returns False when
        it is busy, so that it is tried again later; busy VMs are skipped, never
        waited for. Called inside ``vm_id``'s gate: evictors must not block on a gate.
        """
        with self._lock:
            self._recent[vm_id] = evict
            self._recent.move_to_end(vm_id)
            over = len(self._recent) - self._max_mounted
            victims = list(self._recent.items())[:over] if over > 0 else []
        for victim, evictor in victims:
            if victim != vm_id and evictor():
                with self._lock:
                    if self._recent.get(victim) is evictor:
                        del self._recent[victim]

    def evict(self, meta: VmMeta, root_fd: int) -> None:
        """Unmount an idle VM's overlay: detach now, finish on the teardown pool.

        Its mount point and handle go away, so an idle VM holds neither; mounting it
        again first waits for this teardown (it reuses the same upper and work dir).
        A file still open for reading (a streamed download) keeps the old superblock
        alive until it is closed; overlay (no ``index``) lets the new mount share the
        upper meanwhile, and nothing writes through the old one.
        """
        target = self.root / meta.vm_id
        work = self._store.work_path(meta.upper)
        done = threading.Event()
        with self._lock:
            self._evicting[meta.vm_id] = done
        with contextlib.suppress(OSError):  # still mounted: close() unmounts it
            mounts.detach(str(target))

        def finish() -> None:
            try:
                os.close(root_fd)  # last reference: the detached overlay shuts down here
                shutil.rmtree(work, ignore_errors=True)
                with contextlib.suppress(OSError):
                    target.rmdir()
            finally:
                with self._lock:
                    if self._evicting.get(meta.vm_id) is done:
                        del self._evicting[meta.vm_id]
                done.set()

        try:
            self._teardown.submit(finish)
        except RuntimeError:  # closing: the pool is gone
            finish()

    def mount(self, meta: VmMeta, owner: tuple[int, int] | None = None) -> int:
        """Mount the VM's overlay; return an ``O_PATH`` handle on its root.

        With ``owner`` (the canonical uid on disk, the VM's uid), the overlay is
        mounted over idmapped views of the layers (`idmap.mount_overlay_as`).
        """
        with self._lock:
            evicting = self._evicting.get(meta.vm_id)
        if evicting is not None:
            evicting.wait()
        target = self.root / meta.vm_id
        target.mkdir(mode=0o700, exist_ok=True)
        work = self._store.work_path(meta.upper)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        try:
            if owner is None:
                # The options name every directory through a descriptor, never by
                # host path: the VM sees them in its /proc/self/mountinfo.
                base_fd = os.open(
                    self._base_dir(meta.base), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
                )
                try:
                    lowers = [self._store.layer_ref(x) for x in reversed(meta.layers)]
                    lowers.append(f"/proc/self/fd/{base_fd}")
                    upper = self._store.layer_ref(meta.upper)
                    work_ref = self._store.work_ref(meta.upper)
                    mounts.mount_overlay(str(target), lowers, upper, work_ref)
                finally:
                    os.close(base_fd)
            else:
                # Idmapped views are named through descriptors too (idmap.views).
                base = self._base_dir(meta.base)
                idmap.mount_overlay_as(
                    str(target),
                    [self._store.layer_path(x) for x in reversed(meta.layers)] + [base],
                    self._store.layer_path(meta.upper),
                    work,
                    lower_roots=(self._store.layers_dir, base),
                    upper_root=self._store.root,
                    canonical=owner[0],
                    uid=owner[1],
                )
        except OSError as exc:
            raise resource_error(f"cannot mount vm {meta.vm_id}", exc) from None
        try:
            return os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            with contextlib.suppress(OSError):
                mounts.umount(str(target))
            raise resource_error(f"cannot open vm {meta.vm_id}", exc) from None

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
        self._teardown.shutdown(wait=True)
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
        self._teardown.shutdown(wait=True)
        with contextlib.suppress(OSError):
            mounts.umount(str(self.root))
