"""Fork of a VM whose live runs keep running: freeze its processes, copy, thaw.

A plain fork freezes the parent's upper into a shared layer, which needs the upper
unmounted: impossible while live runs use it (and waiting for them could take
forever). Instead the VM's processes are stopped with the cgroup v1 ``freezer``
(`frozen`), the upper is copied into a new frozen layer for the child
(`copy_upper`: ``cp -a --reflink=auto``, so a reflink clone of each file on btrfs and
a full copy on other filesystems: the cost grows with the bytes the VM wrote since
its last fork), and the processes are thawed. The parent keeps its upper, its mount
and its runs; the child gets the copy and no processes. Host-side file operations
are kept out meanwhile by the VM's gate (fork holds it, letting only the live runs
stay in).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .cgroups import VmCgroup
from .errors import SandboxError
from .layers import FLATTEN_THRESHOLD, LayerStore, VmMeta

__all__ = ["copy_upper", "fork_copy", "frozen"]

_FREEZE_WAIT_S = 10.0


def _state(group: Path) -> str:
    return (group / "freezer.state").read_text().strip()


@contextlib.contextmanager
def frozen(cgroup: VmCgroup | None) -> Iterator[None]:
    """Hold every process of the VM still for the ``with`` block.

    Raises:
        SandboxError: ``unavailable`` when the host has no freezer cgroup for the VM
            or its processes do not stop within seconds.
    """
    group = None if cgroup is None else cgroup.group("freezer")
    if group is None:
        raise SandboxError(
            "unavailable", "cannot fork a VM with live runs: no freezer cgroup on this host"
        )
    (group / "freezer.state").write_text("FROZEN")
    try:
        deadline = time.monotonic() + _FREEZE_WAIT_S
        while _state(group) != "FROZEN":
            if time.monotonic() > deadline:
                raise SandboxError("unavailable", "the VM's processes did not stop; try again")
            time.sleep(0.001)
        yield
    finally:
        (group / "freezer.state").write_text("THAWED")


def copy_upper(store: LayerStore, upper: str) -> str:
    """A new layer holding a copy of ``upper`` (reflinks where the filesystem can)."""
    lid = store.new_upper()
    src, dst = store.layer_path(upper), store.layer_path(lid)
    done = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", f"{src}/.", str(dst)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        store.remove_layer(lid)
        message = done.stderr.decode(errors="replace").strip()[-300:]
        raise SandboxError("internal", f"fork failed copying the VM's files: {message}")
    return lid


def fork_copy(
    store: LayerStore, meta: VmMeta, child_id: str, base_dir: Path, cgroup: VmCgroup | None
) -> VmMeta:
    """The child of ``meta`` stacked on a copy of its upper taken with the VM frozen.

    Returns:
        The child's metadata (saved; durable after the next ``syncfs``).
    """
    with frozen(cgroup):
        copy = copy_upper(store, meta.upper)
    frozen_layers = [*meta.layers, copy]
    if len(frozen_layers) > FLATTEN_THRESHOLD:
        frozen_layers = [store.flatten(frozen_layers, base_dir)]
    child = VmMeta(
        child_id, meta.base, frozen_layers, store.new_upper(), fork_point=list(frozen_layers)
    )
    store.save_meta(child, durable=False)
    return child
