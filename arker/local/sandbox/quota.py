"""Disk quota per VM (``Limits.disk_quota_bytes``): what a VM's disk costs, and the checks.

What a VM costs is the blocks of its own layer chain: every frozen layer it stacks
(immutable, so measured once and cached by id) plus its live upper (walked again,
O(files), at each check: once after every run; the engine keeps the value for the
next run's start). The base image is not counted. Enforcement, all in the engine,
nothing mounted:

* `DiskQuota.check_room` refuses a file that would not fit (``payload_too_large``).
* A run starts with ``RLIMIT_FSIZE`` = what is left of the budget (plus 1 MiB of
  slack) and ``SIGXFSZ`` ignored, so one big file fails with ``EFBIG``; while it
  runs the upper is re-measured about twice a second (less often for huge trees)
  and the command is killed once the VM passes its budget (many files). A run that
  grew the VM past its budget fails with ``payload_too_large`` ("disk quota
  exceeded: VM uses X of Y bytes"). Runs are still allowed over the budget, with
  the 1 MiB per-file cap, so the user can delete files (the only way back).

Why not a hard filesystem limit: ext4 project quotas need the ``quota``/``project``
features, which a mounted root filesystem cannot gain (root filesystems are commonly
mounted without them); a loop-mounted or size-limited tmpfs upper per VM would make
fork no longer constant time (a frozen upper would stay a mounted image, one loop
device per layer) or put VM disks in RAM. Limits of this design: it is a soft limit
checked by polling, so a VM can overshoot by what it writes between two checks
(write rate times ~0.5 s, plus up to the remaining budget per file written in
parallel); space freed by deleting a file from a frozen layer (after a fork) is not
given back (overlay keeps the lower copy); files written through ``/dev/shm`` are
memory (cgroup-limited), not disk; an upload counts once staged (see staging.py).

With the btrfs storage (volume.py) the kernel also holds each upper to a byte limit
(``EDQUOT``, no overshoot, nothing to walk around). At the start of every run that
limit is set to what the VM's frozen layers leave of the budget (plus the slack), so
the kernel holds the whole VM, inherited layers included, to the budget as this
module measures them (``st_blocks``: a cloned file counts whole, so the figure is
never under what the kernel charges). These checks stay on top for the
``payload_too_large`` answers.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import SandboxError
from .layers import LayerStore, VmMeta
from .limits import Limits

__all__ = ["DiskQuota", "RunBudget", "tree_bytes"]

# Per-file headroom past the budget: a file that hits RLIMIT_FSIZE always ends the
# run over budget (so the error is reported), and an over-budget VM can still run
# commands that write small files (the session state) while it cleans up.
_SLACK = 1 << 20
_NOISE = 64 << 10


def tree_bytes(path: Path) -> int:
    """Allocated bytes (``st_blocks``) of a directory tree, hard links counted once.

    Never follows symlinks; entries that vanish while it walks (a command running
    in the VM) are skipped.
    """
    total = 0
    seen: set[int] = set()
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


class RunBudget:
    """The quota's part in one run: the file size cap, the watch, the final check.

    Args:
        quota: The VM's budget in bytes.
        before: The VM's usage when the run starts.
        measure: Measures the VM's usage now.
        record: Told the usage measured after the run (the engine keeps it).
    """

    def __init__(
        self, quota: int, before: int, measure: Callable[[], int], record: Callable[[int], None]
    ) -> None:
        self._quota = quota
        self._before = before
        self._measure = measure
        self._record = record

    @property
    def fsize_max(self) -> int:
        """``RLIMIT_FSIZE`` for the run: what is left of the budget, plus the slack."""
        return max(self._quota - self._before, 0) + _SLACK

    def exceeded(self) -> bool:
        """Whether the VM has passed its budget (polled while the command runs)."""
        return self._measure() > self._quota + _SLACK

    def finish(self, stopped: bool) -> None:
        """Measure the VM after the run and record it.

        Args:
            stopped: The command was killed because `exceeded` said so.

        Raises:
            SandboxError: ``payload_too_large`` when the run crossed the budget, grew
                an over-budget VM, or was stopped.
        """
        after = self._measure()
        self._record(after)
        quota, before = self._quota, self._before
        # Crossing the budget is an error; once over it (cleaning up), only real
        # growth is: a rewritten session state file may take a block more.
        crossed = before <= quota < after
        grew = before > quota and after > before + _NOISE
        if stopped or crossed or grew:
            what = "the command was stopped" if stopped else "the command grew it"
            raise SandboxError(
                "payload_too_large",
                f"disk quota exceeded: VM uses {after} of {quota} bytes ({what}; "
                "delete files to free space)",
            )


class DiskQuota:
    """Measures VMs' layer chains against one per-VM budget.

    Args:
        quota_bytes: The budget per VM; 0 (or less) disables the quota.
        max_file_bytes: Largest single file a VM may take in.
        layer_path: Host directory of a layer id.
        kernel_limit: Sets the kernel's byte limit of an upper (btrfs storage), called
            with the upper's id and its room at each run's start; None: no kernel limit.
    """

    def __init__(
        self,
        quota_bytes: int,
        max_file_bytes: int,
        layer_path: Callable[[str], Path],
        kernel_limit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.quota_bytes = quota_bytes
        self._max_file_bytes = max_file_bytes
        self._layer_path = layer_path
        self._kernel_limit = kernel_limit
        self._lock = threading.Lock()
        self._frozen: dict[str, int] = {}  # frozen layers are immutable

    @classmethod
    def of(cls, limits: Limits, store: LayerStore) -> DiskQuota:
        """The quota of an engine's limits over its store (kernel limits on btrfs)."""
        kernel = store.limit_upper if store.subvolumes else None
        return cls(limits.disk_quota_bytes, limits.max_file_bytes, store.layer_path, kernel)

    def usage(self, meta: VmMeta) -> int:
        """Bytes (allocated blocks) of the VM's layer chain, the quota's measure."""
        return self._frozen_bytes(meta) + self._upper_bytes(meta)

    def forget(self, layer_id: str) -> None:
        """Drop a removed layer's cached size."""
        with self._lock:
            self._frozen.pop(layer_id, None)

    def check_room(self, meta: VmMeta, size: int) -> None:
        """Refuse (``payload_too_large``) a ``size``-byte file the VM has no room for."""
        if size < 0:
            raise SandboxError("bad_request", "negative size")
        if size > self._max_file_bytes:
            raise SandboxError(
                "payload_too_large", f"file larger than {self._max_file_bytes} bytes"
            )
        quota = self.quota_bytes
        if quota <= 0:
            return
        used = self.usage(meta)
        if used + size > quota:
            raise SandboxError(
                "payload_too_large",
                f"disk quota exceeded: VM uses {used} of {quota} bytes; "
                f"a {size}-byte file does not fit (delete files to free space)",
            )

    def start_run(
        self, meta: VmMeta, last_usage: int | None, record: Callable[[int], None]
    ) -> RunBudget | None:
        """The budget of a run in a VM whose chain stays ``meta`` until it ends.

        Args:
            meta: The VM's chain (fork/delete wait for runs: it cannot change).
            last_usage: The last measurement (after the previous run or upload); it
                stands in for a fresh walk, stale only while other sessions of the
                VM run. None: measure now.
            record: Told the usage measured after the run.

        Returns:
            None when the quota is disabled.
        """
        quota = self.quota_bytes
        if quota <= 0:
            return None
        frozen = self._frozen_bytes(meta)
        if self._kernel_limit is not None:
            # The inherited layers count too: the upper gets only what they leave.
            self._kernel_limit(meta.upper, max(quota - frozen, 0) + _SLACK)

        def measure() -> int:
            return frozen + self._upper_bytes(meta)

        before = measure() if last_usage is None else last_usage
        return RunBudget(quota, before, measure, record)

    def _frozen_bytes(self, meta: VmMeta) -> int:
        """Bytes of the VM's frozen layers (each measured once: they never change)."""
        total = 0
        for lid in meta.layers:
            with self._lock:
                cached = self._frozen.get(lid)
            if cached is None:
                cached = tree_bytes(self._layer_path(lid))
                with self._lock:
                    self._frozen[lid] = cached
            total += cached
        return total

    def _upper_bytes(self, meta: VmMeta) -> int:
        return tree_bytes(self._layer_path(meta.upper))
