"""Each VM's own host uid, from a range the server owns, kept across restarts.

The range is ``base .. base + count - 1``. A VM gets the lowest free uid of it the first
time it is mounted (a fork gets its own then: forking writes nothing here) and keeps it
until it is deleted. The table is a directory with one file per uid in use, named by
the uid's index and holding the VM id: taking a uid is one ``O_EXCL`` create, so it
stays constant time and a crash leaves no half-written table; at start the engine
drops the entries of VMs that no longer exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from . import idmap
from .errors import SandboxError

__all__ = ["SharedUid", "VmUids", "start"]

log = logging.getLogger("arker.local.sandbox")


class SharedUid:
    """Every VM runs as the canonical uid: no range configured, or no idmapped mounts."""

    def __init__(self, canonical: int) -> None:
        self.canonical = canonical

    def uid_of(self, vm_id: str) -> int:
        """The VM's host uid."""
        return self.canonical

    def ids(self, vm_id: str) -> tuple[int, tuple[int, ...]] | None:
        """What `RunPipeline.run` needs: the VM's uid and extra groups (None: the default)."""
        return None

    def owner(self, vm_id: str) -> tuple[int, int] | None:
        """What `Overlays.mount` needs: (the canonical uid on disk, the VM's uid), or
        None for a plain overlay."""
        return None

    def release(self, vm_id: str) -> None:
        """Give the VM's uid back (the VM is deleted)."""


class VmUids(SharedUid):
    """The uid table of one engine.

    Args:
        table: Directory of the table (created, mode 0700).
        base: First uid of the range.
        count: How many uids the range holds (so how many VMs can have one).
    """

    def __init__(self, table: Path, base: int, count: int, canonical: int) -> None:
        if base < 2 or count < 1 or base + count > 0xFFFFFFFF or base <= canonical < base + count:
            raise ValueError(f"bad VM uid range: {count} uids from {base}")
        super().__init__(canonical)
        self.base = base
        self.traverse_gid = base - 1
        """The one group every VM's processes hold: it lets bwrap (which resolves its
        ``--bind-fd`` source by path) reach the engine's mount directory (0710)."""
        self.count = count
        self._dir = table
        table.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._by_vm: dict[str, int] = {}
        for entry in os.scandir(table):
            if entry.name.isdigit() and int(entry.name) < count:
                with contextlib.suppress(OSError):
                    self._by_vm[Path(entry.path).read_text("ascii").strip()] = int(entry.name)
        self._used = set(self._by_vm.values())
        self._next = 0  # no uid below this one is free

    def uid_of(self, vm_id: str) -> int:
        """The VM's host uid, taken from the range on first use.

        Raises:
            SandboxError: ``unavailable`` when every uid of the range is in use.
        """
        with self._lock:
            index = self._by_vm.get(vm_id)
            if index is None:
                index = self._take(vm_id)
            return self.base + index

    def ids(self, vm_id: str) -> tuple[int, tuple[int, ...]]:
        """The VM's uid, and the extra group its processes hold."""
        return self.uid_of(vm_id), (self.traverse_gid,)

    def owner(self, vm_id: str) -> tuple[int, int]:
        """(the canonical uid on disk, the VM's uid)."""
        return self.canonical, self.uid_of(vm_id)

    def release(self, vm_id: str) -> None:
        """Give the VM's uid back (the VM is deleted)."""
        with self._lock:
            index = self._by_vm.pop(vm_id, None)
            if index is not None:
                self._used.discard(index)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dir / str(index))
                self._next = min(self._next, index)

    def keep_only(self, live: set[str]) -> None:
        """At start: give back the uids of VMs that no longer exist."""
        for vm_id in [v for v in self._by_vm if v not in live]:
            self.release(vm_id)

    def _take(self, vm_id: str) -> int:
        for index in range(self._next, self.count):
            if index in self._used:
                continue
            try:
                fd = os.open(
                    self._dir / str(index),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
            except FileExistsError:
                continue
            try:
                os.write(fd, vm_id.encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._by_vm[vm_id] = index
            self._used.add(index)
            self._next = index + 1
            return index
        raise SandboxError(
            "unavailable", f"every VM uid of the server's range ({self.count}) is in use"
        )


def start(
    engine_dir: Path,
    probe_dirs: tuple[Path, ...],
    mount_dir: Path,
    canonical: int,
    uid_range: tuple[int, int] | None,
    live: set[str],
) -> SharedUid:
    """The engine's uid table (``engine_dir/uids``, the uids of VMs not in ``live``
    given back), or `SharedUid` (every VM runs as ``canonical``) when no range is set
    or the kernel cannot make idmapped views of ``probe_dirs`` (where the layers and
    the base images live).

    ``mount_dir`` (the engine's mount points) becomes reachable by the VMs' group.
    """
    if uid_range is None or uid_range[1] == 0:
        return SharedUid(canonical)
    uids = VmUids(engine_dir / "uids", uid_range[0], uid_range[1], canonical)
    try:
        with idmap.views([str(d) for d in probe_dirs], canonical, uid_range[0]):
            pass
    except OSError as exc:
        log.warning("every VM runs as uid %d: no idmapped mounts here (%s)", canonical, exc)
        return SharedUid(canonical)
    uids.keep_only(live)
    os.chown(mount_dir, canonical, uids.traverse_gid)
    os.chmod(mount_dir, 0o710)
    return uids
