"""The sandbox engine facade used by ``arker serve``.

Concurrency model: one global lock guards the VM table; each VM has a gate
(gate.py) admitting many operations (runs, file I/O) or one exclusive one
(fork/delete), and its overlay is mounted inside the gate. A VM's overlay is mounted
once, on first use, and unmounted only by fork (non-empty upper), delete and close,
so runs never pay for a mount. A separate ``_gc_lock`` keeps layer garbage
collection from racing forks that create not-yet-referenced layers.

Disk quota: see quota.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import files, recovery, runner, staging
from .background import BackgroundQueue
from .baseimage import DEBIAN_BASE, HOST_BASE, VM_HOME, BaseImages, host_binds
from .cgroups import VmCgroup
from .errors import SandboxError, SandboxUnavailable
from .gate import VmGate
from .layers import FLATTEN_THRESHOLD, VmMeta, check_vm_id
from .limits import Limits
from .probe import find_bwrap
from .probe import probe as _probe
from .quota import DiskQuota
from .session import STATE_END, parse_state_cwd, session_name, session_state_path

__all__ = ["Engine", "Limits", "RunOutcome"]

# MAX_ARG_STRLEN is 128 KiB per argv string; the command travels as one.
_MAX_COMMAND = 128 * 1024 - 1
# bwrap itself can fail to fork the sandbox's pid 1 (EAGAIN) while the kernel is still
# reaping a killed sandbox's processes. The command never started, so trying again is
# safe; a user would otherwise see "bwrap: Can't fork for pid 1" as the run's output.
_SPAWN_ATTEMPTS = 3
_BWRAP_EAGAIN = re.compile(rb"bwrap: [^\n]*: Resource temporarily unavailable\n?")


@dataclass(frozen=True)
class RunOutcome:
    """Result of one command."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    duration_ms: float
    cwd: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool


@dataclass(eq=False)
class _Vm:
    meta: VmMeta
    gate: VmGate
    root_fd: int | None = None  # the mounted overlay (mounted on first use)
    cgroup: VmCgroup | None = None
    usage: int | None = None  # last measured disk usage (quota), saves a walk per run
    generation: int = 0  # bumped at every mount: handles from an older mount are stale


def _bwrap_could_not_fork(raw: runner.RawResult) -> bool:
    """bwrap gave up before the command started, for want of a process slot.

    Its last words are then one line of its own (``bwrap: Can't fork for pid 1:
    Resource temporarily unavailable``), nothing on stdout, exit status 1.
    """
    return (
        raw.returncode == 1
        and not raw.stdout
        and not raw.timed_out
        and _BWRAP_EAGAIN.fullmatch(raw.stderr) is not None
    )


class Engine:
    """Forkable Linux VMs: bubblewrap sandboxes over overlayfs layer chains.

    Args:
        data_dir: Directory for all engine state (made 0700).
        network: Give commands the host network namespace (``--share-net``).
        sandbox_uid: Unprivileged host uid/gid the VM user (uid 1000 inside) maps to.
        limits: Resource limits (`Limits()` when None).
        base: ``"host"`` (zero-download skeleton + host ``/usr``) or ``"debian"`` (the
            rootfs built by ``build_debian_rootfs(default_debian_rootfs(data_dir))``).
        busy_wait_s: How long fork/delete wait for running commands before ``vm_busy``.

    Raises:
        SandboxUnavailable: bwrap missing, debian rootfs absent, or the data dir is in
            use by another engine.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        network: bool = True,
        sandbox_uid: int = 60999,
        limits: Limits | None = None,
        base: str = HOST_BASE,
        busy_wait_s: float = 2.0,
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
        self._bwrap = bwrap
        self.data_dir = Path(data_dir)
        self.network = network
        self.sandbox_uid = sandbox_uid
        self.limits = Limits() if limits is None else limits
        self.base = base
        self.busy_wait_s = busy_wait_s
        self._lock = threading.RLock()
        self._gc_lock = threading.Lock()
        self._vms: dict[str, _Vm] = {}
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._closed = False
        self._background = BackgroundQueue("arker-sandbox-bg")
        self._bases = BaseImages(self.data_dir, sandbox_uid)
        state = recovery.start(
            self.data_dir, sandbox_uid, base, self._bases.path, self._background.put
        )
        self._lock_fd = state.lock_fd
        self._tag = state.tag
        self._store = state.store
        self._overlays = state.overlays
        self._quota = DiskQuota(
            self.limits.disk_quota_bytes, self.limits.max_file_bytes, self._store.layer_path
        )
        # Fork metadata and frozen layers are made durable soon after (coalesced).
        self._schedule_sync = self._background.coalescing(self._store.syncfs)
        # Removing a deeply forked VM's layers is many rmtrees: done after the answer,
        # coalesced so that concurrent deletes do not queue up on the GC lock.
        self._schedule_collect = self._background.coalescing(self._collect_layers)
        for vm_id, meta in state.vms.items():
            self._vms[vm_id] = self._new_vm(meta)
        try:
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

    @staticmethod
    def probe(data_dir: Path) -> None:
        """Check that this host can run the sandbox.

        Raises:
            SandboxUnavailable: One line naming the cause and the fix.
        """
        _probe(data_dir)

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

        Constant time: the parent's upper is frozen into a shared read-only layer and
        both get a new empty upper (no data moves; an empty upper is not even
        frozen). Chains past the flatten threshold are merged by hard-linking.

        Raises:
            SandboxError: ``not_found``, ``bad_request`` (child exists / bad id),
                ``vm_busy`` (parent kept running commands past ``busy_wait_s``).
        """
        check_vm_id(child_id)
        self._check_open()
        parent = self._get(parent_id)
        with self._lock:
            if child_id in self._vms:
                raise SandboxError("bad_request", f"vm already exists: {child_id}")
        parent.gate.acquire_exclusive()
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
            meta = parent.meta
            if self._store.is_empty(meta.upper):
                # Nothing to freeze: the child shares exactly the parent's lowers
                # and the parent keeps its (still empty) upper and its mount.
                child = VmMeta(child_id, meta.base, list(meta.layers), self._store.new_upper())
                self._store.save_meta(child, durable=False)
            else:
                self._unmount(parent, background=True)
                frozen = [*meta.layers, meta.upper]
                if len(frozen) > FLATTEN_THRESHOLD:
                    frozen = [self._store.flatten(frozen, self._bases.path(meta.base))]
                child = VmMeta(child_id, meta.base, list(frozen), self._store.new_upper())
                new_parent = VmMeta(
                    meta.vm_id, meta.base, list(frozen), self._store.new_upper(), meta.is_base
                )
                # Order from LOCAL-SANDBOX.md: child's metadata in a temp file,
                # parent's replaced (the commit point), then the child's renamed in.
                # No fsyncs here (see LayerStore.write_meta_tmp): ext4's journal
                # keeps the renames in order and a background syncfs follows.
                ctmp = self._store.write_meta_tmp(child, durable=False)
                self._store.save_meta(new_parent, durable=False)
                parent.meta = new_parent
                self._store.commit_meta(ctmp, child_id, durable=False)
            with self._lock:
                self._vms[child_id] = self._new_vm(child)
            self._schedule_sync()

    def delete(self, vm_id: str) -> None:
        """Delete a VM; its forks keep working and shared layers stay.

        Raises:
            SandboxError: ``not_found`` or ``vm_busy``.
        """
        self._check_open()
        vm = self._get(vm_id)
        vm.gate.acquire_exclusive()
        try:
            # Detached in the background: tearing an overlay down syncs the whole
            # upper filesystem, which must not stall the request.
            self._unmount(vm, background=True)
            self._overlays.remove_mount_point(vm_id)
            self._store.remove_meta(vm_id, durable=False)
            with self._lock:
                self._vms.pop(vm_id, None)
            vm.gate.mark_deleted()
            if vm.cgroup is not None:
                vm.cgroup.remove()
        finally:
            vm.gate.release_exclusive()
        self._schedule_sync()
        self._schedule_collect()  # behind the detached unmount on the background queue

    def run(self, vm_id: str, command: str, *, session: str, timeout: float) -> RunOutcome:
        """Run ``/bin/sh -c command`` as the VM user in session ``session``.

        ``timeout`` (seconds) is the caller's: the server's configuration holds the
        default; the engine only caps it at ``Limits.max_timeout_s``.

        Raises:
            SandboxError: ``not_found``, ``vm_busy`` (session busy), ``bad_request``.
        """
        self._check_open()
        name = session_name(session)
        if "\0" in command:
            raise SandboxError("bad_request", "command contains a NUL byte")
        if len(command.encode("utf-8", "surrogateescape")) > _MAX_COMMAND:
            raise SandboxError("payload_too_large", "command longer than 128 KiB")
        limit = float(timeout)
        if not limit > 0:
            raise SandboxError("bad_request", "timeout must be positive")
        limit = min(limit, self.limits.max_timeout_s)
        vm = self._get(vm_id)
        vm.gate.claim_session(name, session)
        try:
            root_fd = self._enter(vm)
            try:
                return self._run_in(vm, root_fd, name, command, limit)
            finally:
                self._leave(vm)
        finally:
            vm.gate.release_session(name)

    def open_read(self, vm_id: str, path: str) -> tuple[BinaryIO, int]:
        """Open a regular file of the VM for reading, resolved inside the VM.

        Returns:
            ``(file object at offset 0, size)``; the caller closes it.

        Raises:
            SandboxError: ``not_found`` (``file not found: <path>``), ``bad_request``.
        """
        self._check_open()
        vm = self._get(vm_id)
        root_fd = self._enter(vm)
        try:
            return files.open_read(root_fd, path)
        finally:
            self._leave(vm)

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

        return staging.StagedFile(enter, lambda: self._leave(vm), name)

    def commit_staged(self, vm_id: str, name: str, path: str, size: int, mode: int = 0o644) -> None:
        """Atomically move the staged upload ``name`` (``size`` bytes) to ``path``.

        Raises:
            SandboxError: ``not_found`` (VM or staged file), ``bad_request``.
        """
        self._check_open()
        vm = self._get(vm_id)
        root_fd = self._enter(vm)
        try:
            staging.commit(root_fd, name, path, size, mode, self.sandbox_uid, self.sandbox_uid)
            if vm.usage is not None:
                vm.usage += size  # staged after the last measurement: an upper bound
        finally:
            self._leave(vm)

    def discard_staged(self, vm_id: str, name: str) -> None:
        """Remove the staged upload ``name`` if it (and the VM) still exist."""
        self._check_open()
        vm = self._get(vm_id)
        root_fd = self._enter(vm)
        try:
            staging.discard(root_fd, name)
        finally:
            self._leave(vm)

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
            procs = list(self._procs)
            vms = list(self._vms.values())
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        deadline = time.monotonic() + 15.0
        for vm in vms:
            vm.gate.shut(deadline)
            self._unmount(vm)
            if vm.cgroup is not None:
                vm.cgroup.remove()
                vm.cgroup = None
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
                self._mount(vm)
            assert vm.root_fd is not None
            return vm.root_fd

        return vm.gate.enter(prepare)

    def _leave(self, vm: _Vm) -> None:
        vm.gate.leave()

    def _mount(self, vm: _Vm) -> None:
        """Mount the VM's overlay (inside its gate)."""
        vm.root_fd = self._overlays.mount(vm.meta)
        vm.generation += 1

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

    def _register(
        self, done: subprocess.Popen[bytes] | None, proc: subprocess.Popen[bytes]
    ) -> None:
        with self._lock:
            if done is not None:
                self._procs.discard(done)
            else:
                self._procs.add(proc)
                if self._closed:
                    proc.kill()

    def _run_in(self, vm: _Vm, root_fd: int, name: str, command: str, limit: float) -> RunOutcome:
        with self._lock:
            if vm.cgroup is None:
                vm.cgroup = VmCgroup(
                    self._tag,
                    vm.meta.vm_id,
                    self.sandbox_uid,
                    self.limits.pids_max,
                    self.limits.memory_max_bytes,
                )
            cgroup = vm.cgroup
        state = session_state_path(name)
        ro_binds = host_binds() if vm.meta.base == HOST_BASE else []
        if self.network and vm.meta.base == HOST_BASE and os.path.exists("/etc/resolv.conf"):
            # The skeleton's copy is as old as the skeleton; DNS must follow the host.
            ro_binds.append("/etc/resolv.conf")
        drop_in_argv = runner.SETPRIV is not None

        def record(usage: int) -> None:
            vm.usage = usage

        budget = self._quota.start_run(vm.meta, vm.usage, record)
        start = time.monotonic()
        for attempt in range(_SPAWN_ATTEMPTS):
            if attempt:
                time.sleep(0.05 * attempt)
            info_r, info_w = os.pipe()
            argv = runner.spawn_prefix(
                cgroup,
                self.limits.pids_max,
                self.limits.memory_max_bytes,
                drop_to=self.sandbox_uid if drop_in_argv else None,
                fsize_max=None if budget is None else budget.fsize_max,
            ) + runner.bwrap_argv(
                bwrap=self._bwrap,
                root_fd=root_fd,
                ro_binds=ro_binds,
                network=self.network,
                info_fd=info_w,
                command=command,
                state_path=state,
            )
            try:
                raw = runner.run_bwrap(
                    argv,
                    uid=None if drop_in_argv else self.sandbox_uid,
                    pass_fds=(root_fd, info_w),
                    info_w=info_w,
                    info_r=info_r,
                    timeout=max(limit - (time.monotonic() - start), 0.1),
                    max_output=self.limits.max_output_bytes,
                    register=self._register,
                    watch=None if budget is None else budget.exceeded,
                )
            except OSError as exc:
                raise SandboxError("internal", f"cannot start sandbox: {exc}") from None
            if not _bwrap_could_not_fork(raw):
                break
        duration_ms = (time.monotonic() - start) * 1000.0
        if raw.returncode == 125 and b"arker-spawn" in raw.stderr[:500]:
            raise SandboxError("internal", "cannot place the command in the VM's cgroups")
        if raw.timed_out:  # a save cut short must not replace the last good state
            saved = files.read_small(root_fd, state, 1 << 20)
        else:
            saved = files.commit_state(root_fd, state, STATE_END, 1 << 20)
        cwd = (parse_state_cwd(saved) if saved is not None else None) or VM_HOME
        if budget is not None:
            budget.finish(stopped=raw.stopped)
        code = raw.returncode
        if raw.timed_out:
            code = 124
        elif code < 0:
            code = 128 - code  # killed by a signal (engine closing)
        return RunOutcome(
            stdout=raw.stdout,
            stderr=raw.stderr,
            exit_code=code,
            duration_ms=duration_ms,
            cwd=cwd,
            timed_out=raw.timed_out,
            stdout_truncated=raw.stdout_truncated,
            stderr_truncated=raw.stderr_truncated,
        )
