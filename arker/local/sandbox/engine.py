"""The sandbox engine facade used by ``arker serve``: forkable VMs over overlayfs.

Each job lives in its own module (docs/architecture.md lists them); the engine holds
the VM table and composes them.

Concurrency: one lock guards the VM table; each VM's gate orders its operations. A
VM's overlay is mounted on use, unmounted by fork (non-empty upper), delete, close,
and when it is evicted idle from the bounded set of mounted VMs. A separate ``_gc_lock``
keeps layer garbage collection from racing forks that create not-yet-referenced
layers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import diff as vm_diff
from . import files, freeze, manifest, pty, recovery, staging
from . import vm_uids as uid_table
from .background import BackgroundQueue
from .baseimage import DEBIAN_BASE, HOST_BASE, BaseImages
from .cgroups import VmCgroup
from .errors import SandboxError, SandboxUnavailable
from .gate import VmGate
from .layers import VmMeta, check_vm_id
from .limits import Limits
from .live import LiveRegistry, LiveSink
from .network import Networks
from .pipeline import RunOutcome, RunPipeline, resource_error
from .probe import find_bwrap
from .quota import DiskQuota
from .session import session_name

__all__ = ["Engine", "Limits", "RunOutcome"]


@dataclass(eq=False)
class _Vm:
    meta: VmMeta
    gate: VmGate
    root_fd: int | None = None  # the mounted overlay (None: not mounted now)
    cgroup: VmCgroup | None = None
    usage: int | None = None  # last measured disk usage (quota), saves a walk per run
    generation: int = 0  # bumped at every mount: handles from an older mount are stale


class Engine:
    """Forkable Linux VMs: bubblewrap sandboxes over overlayfs layer chains.

    Args:
        data_dir: Directory for all engine state (made 0700).
        network: ``"private"``, ``"none"`` or ``"host"`` (network.py); True means
            ``"host"`` and False ``"none"``.
        sandbox_uid: Unprivileged host uid/gid the VM user (uid 1000 inside) maps to.
        limits: Resource limits (`Limits()` when None).
        base: ``"host"`` (zero-download skeleton + host ``/usr``) or ``"debian"`` (the
            rootfs built by ``build_debian_rootfs(default_debian_rootfs(data_dir))``).
        busy_wait_s: How long fork/delete wait for running commands before ``vm_busy``.
        storage: ``"default"``, or ``"btrfs"``: a ``storage_size`` image (volume.py).
        vm_uids: (first uid, how many): each VM's processes run as a host uid of
            this range (`vm_uids`); None or a count of 0: all run as ``sandbox_uid``.

    Raises:
        SandboxUnavailable: bwrap missing, debian rootfs absent, or the data dir is in
            use by another engine, or the btrfs storage cannot be set up.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        network: bool | str = "private",
        sandbox_uid: int = 60999,
        limits: Limits | None = None,
        base: str = HOST_BASE,
        busy_wait_s: float = 2.0,
        storage: str = "default",
        storage_size: int = recovery.Storage.size,
        vm_uids: tuple[int, int] | None = None,
    ) -> None:
        if base not in (HOST_BASE, DEBIAN_BASE):
            raise ValueError(f"unknown base {base!r}")
        if sandbox_uid <= 0:
            raise ValueError("sandbox_uid must be an unprivileged uid")
        bwrap = find_bwrap()
        if bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) not found: install it: apt-get install -y bubblewrap"
            )
        self.data_dir = Path(data_dir)
        self.limits = Limits() if limits is None else limits
        lim = self.limits
        self._net = Networks(network, lim.net_files_max, lim.net_idle_s, self._evict_idle)
        self.network = self._net.mode
        self.sandbox_uid = sandbox_uid
        self.base = base
        self.busy_wait_s = busy_wait_s
        self._lock = threading.RLock()
        self._gc_lock = threading.Lock()
        self._vms: dict[str, _Vm] = {}
        self._pipeline = RunPipeline(
            bwrap=bwrap, sandbox_uid=sandbox_uid, network=self.network, limits=self.limits
        )
        self._bwrap = bwrap
        self._live = LiveRegistry()  # live runs' stop buttons, per VM
        self._closed = False
        self._background = BackgroundQueue("arker-sandbox-bg")
        self._bases = BaseImages(self.data_dir, sandbox_uid)
        disk = recovery.Storage(storage, storage_size, self.limits.disk_quota_bytes)
        state = recovery.start(
            self.data_dir, sandbox_uid, base, self._bases.path, self._background.put, disk
        )
        self._lock_fd = state.lock_fd
        self._tag = state.tag
        self._store = state.store
        self._overlays = state.overlays
        self._quota = DiskQuota.of(self.limits, self._store)
        # Fork metadata and frozen layers are made durable soon after (coalesced).
        self._schedule_sync = self._background.coalescing(self._store.syncfs)
        # Removing a deeply forked VM's layers is many rmtrees: done after the answer,
        # coalesced so that concurrent deletes do not queue up on the GC lock.
        self._schedule_collect = self._background.coalescing(self._collect_layers)
        for vm_id, meta in state.vms.items():
            self._vms[vm_id] = self._new_vm(meta)
        try:
            probe = (self._store.layers_dir, self.data_dir)  # the layers, the base images
            dirs = (self.data_dir / "engine", probe, self._overlays.root)
            self._uids = uid_table.start(*dirs, sandbox_uid, vm_uids, set(self._vms))
            self._collect_layers()
        except BaseException:
            self._overlays.release()
            self._store.close()
            recovery.release_data_dir(self._lock_fd)
            raise

    # -- public API ----------------------------------------------------------------------

    @property
    def mount_dir(self) -> Path:
        """Where the VMs' overlays are mounted (one directory per data dir)."""
        return self._overlays.root

    def ensure_base(self, vm_id: str) -> None:
        """Make sure the public base image VM ``vm_id`` exists (idempotent)."""
        check_vm_id(vm_id)
        self._check_open()
        with self._gc_lock, self._lock:
            if vm_id in self._vms:
                return
            self._bases.path(self.base)
            meta = VmMeta(vm_id, self.base, [], self._store.new_upper(), is_base=True)
            self._store.save_meta(meta)
            self._vms[vm_id] = self._new_vm(meta)

    def exists(self, vm_id: str) -> bool:
        """Whether the engine has a VM with this id."""
        with self._lock:
            return vm_id in self._vms

    def vm_ids(self) -> set[str]:
        """Ids of every VM the engine holds."""
        with self._lock:
            return set(self._vms)

    def fork(self, parent_id: str, child_id: str) -> None:
        """Create ``child_id`` as a copy-on-write copy of ``parent_id``.

        Constant time: the parent's upper is frozen into a shared layer, both get a new
        empty upper. With live runs, the child gets a copy taken frozen (freeze.py).

        Raises:
            SandboxError: ``not_found``, ``bad_request`` (child exists / bad id),
                ``vm_busy`` (other commands ran past ``busy_wait_s``).
        """
        check_vm_id(child_id)
        self._check_open()
        parent = self._get(parent_id)
        parent.gate.acquire_exclusive(tolerated=lambda: self._live.count(parent_id))
        try:
            self._fork_locked(parent, child_id)
        except OSError as exc:
            raise SandboxError("internal", f"fork failed: {exc}") from None
        finally:
            parent.gate.release_exclusive()

    def _fork_locked(self, parent: _Vm, child_id: str) -> None:
        """Body of :meth:`fork`; the caller holds the parent exclusively."""
        with self._gc_lock:
            with self._lock:
                if child_id in self._vms:
                    raise SandboxError("bad_request", f"vm already exists: {child_id}")
            meta, base_dir = parent.meta, self._bases.path(parent.meta.base)
            if self._live.count(meta.vm_id):  # live runs go on (freeze.py)
                child = freeze.fork_copy(self._store, meta, child_id, base_dir, parent.cgroup)
            elif self._store.is_empty(meta.upper):
                # Nothing to freeze: the parent keeps its (still empty) upper and mount.
                child = self._store.branch(meta, child_id)
            else:
                # The upper must be unmounted before it is frozen; the detached
                # overlay shuts down on the background queue.
                self._unmount(parent, background=True)

                def committed(new_parent: VmMeta) -> None:
                    parent.meta = new_parent

                child = self._store.freeze(meta, child_id, base_dir, committed)
            with self._lock:
                self._vms[child_id] = self._new_vm(child)
            self._schedule_sync()

    def delete(self, vm_id: str) -> None:
        """Delete a VM, stopping its live runs; its forks keep working, layers stay.

        Raises:
            SandboxError: ``not_found`` or ``vm_busy``.
        """
        self._check_open()
        vm = self._get(vm_id)
        self._live.stop_then(vm_id, vm.gate.acquire_exclusive)
        try:
            # Detached in the background: tearing an overlay down syncs the whole
            # upper filesystem, which must not stall the request.
            self._unmount(vm, background=True)
            self._net.drop(vm_id)
            self._overlays.remove_mount_point(vm_id)
            self._store.remove_meta(vm_id, durable=False)
            with self._lock:
                self._vms.pop(vm_id, None)
            vm.gate.mark_deleted()
            if vm.cgroup is not None:
                vm.cgroup.remove()
            self._uids.release(vm_id)
        finally:
            vm.gate.release_exclusive()
        self._schedule_sync()
        self._schedule_collect()  # behind the detached unmount on the background queue

    def run(
        self,
        vm_id: str,
        command: str,
        *,
        session: str,
        timeout: float,
        sink: LiveSink | None = None,
    ) -> RunOutcome:
        """Run ``/bin/sh -c command`` as the VM user in session ``session``.

        ``timeout`` (seconds) is the caller's, capped at ``Limits.max_timeout_s``. With
        ``sink`` (a live run) the output goes to its files; delete and close stop it.

        Raises:
            SandboxError: ``not_found``, ``vm_busy`` (session busy), ``bad_request``.
        """
        self._check_open()
        name = session_name(session)
        limit = self._pipeline.check(command, timeout)
        vm = self._get(vm_id)
        vm.gate.claim_session(name, session)
        try:
            root_fd = self._enter(vm)
            self._live.add(vm_id, sink)  # once entered: counted by the gate (fork)
            try:
                cgroup = self._cgroup(vm)

                def record(usage: int) -> None:
                    vm.usage = usage

                # The chain cannot change under this run (fork waits or copies; delete waits).
                try:
                    budget = self._quota.start_run(vm.meta, vm.usage, record)
                except OSError as exc:  # e.g. EMFILE while measuring: this run's error
                    raise resource_error("cannot start sandbox", exc) from None
                return self._pipeline.run(
                    prefix=self._net.prefix(vm_id),
                    root_fd=root_fd,
                    base=vm.meta.base,
                    cgroup=cgroup,
                    session=name,
                    command=command,
                    limit=limit,
                    budget=budget,
                    sink=sink,
                    ids=self._uids.ids(vm_id),
                )
            finally:
                self._live.remove(vm_id, sink)
                vm.gate.leave()
        finally:
            vm.gate.release_session(name)

    def open_pty(
        self, vm_id: str, *, session: str, command: str | None, cols: int, rows: int
    ) -> pty.PtyShell:
        """A terminal in session ``session`` (pty.py); the VM stays in use until closed.

        Raises:
            SandboxError: ``not_found``, ``bad_request`` (command), ``internal``.
        """
        self._check_open()
        name, shell = session_name(session), pty.shell_command(command)
        vm = self._get(vm_id)
        root_fd, stop = self._enter(vm), pty.stop_button()
        self._live.add(vm_id, stop)  # stopped by delete and close, frozen by fork

        def release() -> None:
            self._live.remove(vm_id, stop)
            stop.close()
            vm.gate.leave()

        try:
            return pty.spawn_shell(
                bwrap=self._bwrap, root_fd=root_fd, base=vm.meta.base,
                network=self.network != "none", prefix=self._net.prefix(vm_id),
                ids=self._uids.ids(vm_id) or (self.sandbox_uid, ()),
                limits=self.limits, cgroup=self._cgroup(vm),
                session=name, command=shell, cols=cols, rows=rows, stop=stop, on_close=release,
            )  # fmt: skip
        except BaseException:
            release()
            raise

    def open_connection(self, vm_id: str, port: int) -> socket.socket:
        """A TCP connection to ``127.0.0.1:port`` in the VM's network namespace; raises
        `SandboxError` ``not_found`` or as `Networks.open_connection` does."""
        self._check_open()
        self._get(vm_id)
        return self._net.open_connection(vm_id, port)

    def open_read(self, vm_id: str, path: str) -> tuple[BinaryIO, int]:
        """Open a regular file of the VM for reading, resolved inside the VM.

        Returns:
            ``(file object at offset 0, size)``; the caller closes it.

        Raises:
            SandboxError: ``not_found`` (``file not found: <path>``), ``bad_request``.
        """
        with self._inside(vm_id) as (_, root_fd):
            return files.open_read(root_fd, path)

    def manifest(self, vm_id: str, path: str, cap: int) -> tuple[list[manifest.Entry], bool]:
        """The VM's regular files under ``path``, walked from the host (manifest.py)."""
        uid = self._uids.uid_of(vm_id)  # the VM's files appear as its uid's (idmap)
        with self._inside(vm_id) as (_, root_fd), files.as_fs_user(uid, uid):
            return manifest.walk(root_fd, path, cap)

    def diff(self, vm_id: str, path: str) -> vm_diff.DiffResult:
        """What the VM changed under ``path`` since its fork, from its own layers (diff.py)."""
        self._check_open()
        vm = self._get(vm_id)
        vm.gate.enter(self._check_open)  # no fork or delete moves its layers meanwhile
        try:
            base_dir = self._bases.path(vm.meta.base)
            return vm_diff.vm_diff(self._store, vm.meta, base_dir, path, self.sandbox_uid)
        finally:
            vm.gate.leave()

    def delete_files(self, vm_id: str, paths: list[str]) -> list[str]:
        """Unlink ``paths`` in order as the VM user; return those that existed."""
        uid = self._uids.uid_of(vm_id)  # the VM's files appear as its uid's (idmap)
        with self._inside(vm_id) as (_, root_fd), files.as_fs_user(uid, uid):
            return [p for p in paths if files.unlink(root_fd, p)]

    def check_room(self, vm_id: str, size: int) -> None:
        """Refuse (``payload_too_large``) a ``size``-byte file the VM has no room for."""
        self._check_open()
        self._quota.check_room(self._get(vm_id).meta, size)

    # -- uploads staged inside the VM (see staging.py) -------------------------------------

    def staged_file(self, vm_id: str, name: str) -> staging.StagedFile:
        """A handle on the upload staged as ``name`` in the VM (created on first write).

        Raises:
            SandboxError: ``not_found`` (now or at any later write, once the VM is gone).
        """
        self._check_open()
        vm = self._get(vm_id)

        def enter() -> tuple[int, int]:
            root_fd = self._enter(vm)
            return root_fd, vm.generation  # stable while entered: no remount can happen

        return staging.StagedFile(enter, vm.gate.leave, name)

    def commit_staged(self, vm_id: str, name: str, path: str, size: int, mode: int = 0o644) -> None:
        """Atomically move the staged upload ``name`` (``size`` bytes) to ``path``.

        Raises:
            SandboxError: ``not_found`` (VM or staged file), ``bad_request``.
        """
        with self._inside(vm_id) as (vm, root_fd):
            uid = self._uids.uid_of(vm_id)  # it writes through the VM's idmapped view
            staging.commit(root_fd, name, path, size, mode, uid, uid)
            if vm.usage is not None:
                vm.usage += size  # staged after the last measurement: an upper bound

    def discard_staged(self, vm_id: str, name: str) -> None:
        """Remove the staged upload ``name`` if it (and the VM) still exist."""
        with self._inside(vm_id) as (_, root_fd):
            staging.discard(root_fd, name)

    def disk_usage(self, vm_id: str) -> int:
        """Bytes (allocated blocks) of the VM's layer chain, the quota's measure."""
        return self._quota.usage(self._get(vm_id).meta)

    def gc(self, live_vm_ids: set[str]) -> None:
        """Delete VMs not in ``live_vm_ids`` (base VMs excepted) and unused layers."""
        self._check_open()
        with self._lock:
            doomed = [
                v for v, vm in self._vms.items() if v not in live_vm_ids and not vm.meta.is_base
            ]
        for vm_id in doomed:
            with contextlib.suppress(SandboxError):
                self.delete(vm_id)
        with self._gc_lock:
            self._store.clean_temp()
        self._collect_layers()

    def close(self) -> None:
        """Kill running commands, unmount every overlay and release the data dir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            vms = list(self._vms.values())
        self._pipeline.kill_all()
        self._live.cancel_all()
        deadline = time.monotonic() + 15.0
        for vm in vms:
            vm.gate.shut(deadline)
            self._unmount(vm)
            if vm.cgroup is not None:
                vm.cgroup.remove()
                vm.cgroup = None
        self._net.close()
        self._background.close(last=self._store.syncfs)
        self._overlays.close()
        VmCgroup.remove_groups(self._tag)
        self._store.close()
        recovery.release_data_dir(self._lock_fd)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("internal", "sandbox engine is closed")

    def _get(self, vm_id: str) -> _Vm:
        with self._lock:
            vm = self._vms.get(vm_id) if isinstance(vm_id, str) else None
        if vm is None:
            raise SandboxError("not_found", f"vm not found: {vm_id}")
        return vm

    def _new_vm(self, meta: VmMeta) -> _Vm:
        return _Vm(meta, VmGate(meta.vm_id, self.busy_wait_s))

    def _enter(self, vm: _Vm) -> int:
        """Wait out fork/delete, mount if needed, count one in-flight operation."""

        def prepare() -> int:
            self._check_open()
            if vm.root_fd is None:
                vm.root_fd = self._overlays.mount(vm.meta, self._uids.owner(vm.meta.vm_id))
                vm.generation += 1
            self._overlays.touch(vm.meta.vm_id, lambda: vm.gate.when_idle(lambda: self._evict(vm)))
            return vm.root_fd

        return vm.gate.enter(prepare)

    @contextlib.contextmanager
    def _inside(self, vm_id: str) -> Iterator[tuple[_Vm, int]]:
        """One operation on the VM's mounted root (the VM and its root handle)."""
        self._check_open()
        vm = self._get(vm_id)
        root_fd = self._enter(vm)
        try:
            yield vm, root_fd
        finally:
            vm.gate.leave()

    def _evict_idle(self, vm_id: str) -> None:
        with self._lock:
            vm = self._vms.get(vm_id)
        if vm is not None:
            vm.gate.when_idle(lambda: self._evict(vm))

    def _evict(self, vm: _Vm) -> None:
        """Unmount an idle VM, drop its cgroups (kernel memory; ~1 ms to make again)."""
        if vm.root_fd is not None:
            root_fd, vm.root_fd = vm.root_fd, None
            self._overlays.evict(vm.meta, root_fd)
        self._net.drop(vm.meta.vm_id)
        if vm.cgroup is not None:  # no run in flight: none is using them
            vm.cgroup.remove()
            vm.cgroup = None

    def _unmount(self, vm: _Vm, *, background: bool = False) -> None:
        """Unmount the VM's overlay, if mounted (the caller holds the VM exclusively)."""
        if vm.root_fd is None:
            return
        root_fd, vm.root_fd = vm.root_fd, None
        self._overlays.unmount(vm.meta, root_fd, background=background)

    def _collect_layers(self) -> None:
        """Remove layers and work dirs that no VM references."""
        with self._gc_lock:
            with self._lock:
                metas = [vm.meta for vm in self._vms.values()]
            for lid in self._store.remove_unused(metas):
                self._quota.forget(lid)

    def _cgroup(self, vm: _Vm) -> VmCgroup:
        """The VM's cgroups, created on its first run."""
        with self._lock:
            if vm.cgroup is None:
                vm.cgroup = VmCgroup(
                    self._tag,
                    vm.meta.vm_id,
                    self._uids.uid_of(vm.meta.vm_id),
                    self.limits.pids_max,
                    self.limits.memory_max_bytes,
                )
            return vm.cgroup
