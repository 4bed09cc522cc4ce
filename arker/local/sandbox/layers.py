"""Layer store: frozen layers, per-VM chain metadata, fork, flatten (flatten.py) and GC.

On-disk layout under ``<data_dir>/engine``::

    layers/<id>/      a layer: either a VM's live upper dir or a frozen (read-only) one
    layers/tmp-<id>/  a flatten in progress (removed by GC after a crash)
    work/<upper id>/  overlay work dir of a mounted upper
    vms/<vm>.json     chain metadata: base name, frozen layer ids (bottom first), upper id

A VM's lower stack is ``layers`` (top first) then its base. Freezing an upper is pure
metadata: the same directory is referenced as a lower from then on, so a fork moves
no data. Layer ids are 8 hex digits so overlay option strings stay short.

With the btrfs storage (volume.py) the store lives on the loop-mounted volume and
``layers/<id>`` is a btrfs subvolume holding ``root/`` (the layer itself) and
``work/`` (its overlay work dir: overlay renames from work into upper, which btrfs
refuses across subvolumes). An upper's subvolume carries the kernel-enforced byte
limit; a flattened layer is a plain directory of the same shape. New uppers come from
a pool of spares made and committed ahead (upper_pool.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import SandboxError
from .flatten import merge_layers
from .merge_ahead import MergeAhead
from .upper_pool import UpperPool
from .vm_meta import VmMeta, check_vm_id
from .volume import (
    BtrfsVolume,
    commit_transaction,
    create_subvolume,
    destroy_subvolume,
    is_subvolume,
    set_limit,
)

__all__ = [
    "FLATTEN_THRESHOLD",
    "LayerStore",
    "VmMeta",
    "check_vm_id",
]

FLATTEN_THRESHOLD = 32
_LAYER_ID = re.compile(r"^[0-9a-f]{8}$")
_libc = ctypes.CDLL(None, use_errno=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LayerStore:
    """Directories and metadata files of the engine; no locking (the engine locks).

    Args:
        root: ``<data_dir>/engine``, or the btrfs volume's mount point.
        volume: The btrfs volume mounted on ``root`` (the store owns it from now on:
            `close` unmounts it); each upper is then a subvolume of it.
        upper_limit: With a volume: the bytes each upper may hold, enforced by the
            kernel (``EDQUOT``); 0 for no limit.
        spares: With a volume: how many empty uppers `UpperPool` keeps ready (0: none).
    """

    def __init__(
        self,
        root: Path,
        *,
        volume: BtrfsVolume | None = None,
        upper_limit: int = 0,
        spares: int = 8,
    ) -> None:
        self.root = root
        self._volume = volume
        self.subvolumes = volume is not None
        self._upper_limit = upper_limit
        self._limits: dict[str, int] = {}  # upper id -> the kernel limit last set
        self._inner = "/root" if volume is not None else ""
        self.layers_dir = root / "layers"
        self.work_dir = root / "work"
        self.vms_dir = root / "vms"
        for d in (self.layers_dir, self.work_dir, self.vms_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Mount options name layers as /proc/self/fd/<fd>/<id>: short whatever the
        # data dir's path length, so deep chains fit the 4 KiB option page; and a VM
        # reading its /proc/self/mountinfo learns no host path from them.
        self._layers_fd = os.open(self.layers_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._work_fd = os.open(self.work_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._pin_lock = threading.Lock()
        self._pinned: set[str] = set()  # layers kept from collection though unreferenced
        self._flattening: set[str] = set()  # tmp-<id> dirs being written
        self._ahead = MergeAhead(self._merge_pinned, self._unpin, FLATTEN_THRESHOLD)
        self.pool: UpperPool | None = None
        if volume is not None and spares > 0:
            self.pool = UpperPool(
                self._make_upper, lambda: commit_transaction(self.layers_dir), size=spares
            )

    def close(self) -> None:
        """Release the directory handle (and unmount the btrfs volume, if any)."""
        self._ahead.close()
        if self.pool is not None:
            self.pool.close()
        for fd in (self._layers_fd, self._work_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._volume is not None:
            self._volume.close()

    # -- layers ------------------------------------------------------------------------

    def layer_path(self, layer_id: str) -> Path:
        """Host path of a layer directory."""
        return self.layers_dir / f"{layer_id}{self._inner}"

    def layer_ref(self, layer_id: str) -> str:
        """Short path naming a layer for overlay mount options."""
        return f"/proc/self/fd/{self._layers_fd}/{layer_id}{self._inner}"

    def work_path(self, upper_id: str) -> Path:
        """Overlay work dir used while ``upper_id`` is mounted."""
        if self.subvolumes:
            return self.layers_dir / upper_id / "work"
        return self.work_dir / upper_id

    def work_ref(self, upper_id: str) -> str:
        """Short path naming `work_path` for overlay mount options (no host path)."""
        if self.subvolumes:
            return f"/proc/self/fd/{self._layers_fd}/{upper_id}/work"
        return f"/proc/self/fd/{self._work_fd}/{upper_id}"

    def new_upper(self) -> str:
        """Create an empty upper owned by root (it becomes the VM's ``/``).

        On the btrfs storage a spare from the pool, when one is ready.
        """
        spare = None if self.pool is None else self.pool.take()
        if spare is not None:
            return spare
        while True:
            lid = secrets.token_hex(4)
            try:
                self._make_upper(lid)
            except FileExistsError:
                continue
            return lid

    def _make_upper(self, lid: str) -> None:
        """Make the empty upper ``lid`` (``FileExistsError`` when the id is taken)."""
        if self.subvolumes:
            create_subvolume(self.layers_dir, lid, self._upper_limit)
            os.mkdir(self.layer_path(lid), 0o755)
        else:
            os.mkdir(self.layers_dir / lid, 0o755)
        os.chmod(self.layer_path(lid), 0o755)  # umask-proof

    def limit_upper(self, upper_id: str, limit: int) -> None:
        """Set an upper's kernel byte limit (btrfs storage; a no-op on directories).

        Raises:
            SandboxError: ``unavailable`` when the kernel refuses.
        """
        if not self.subvolumes or self._limits.get(upper_id) == limit:
            return
        try:
            set_limit(self.layers_dir / upper_id, limit)
        except OSError as exc:
            raise SandboxError("unavailable", f"cannot set the disk limit: {exc}") from None
        self._limits[upper_id] = limit

    def is_empty(self, layer_id: str) -> bool:
        """True when a layer holds no entries at all."""
        with os.scandir(self.layer_path(layer_id)) as it:
            return next(it, None) is None

    def remove_layer(self, layer_id: str) -> None:
        """Delete a layer directory (and its work dir)."""
        self._limits.pop(layer_id, None)
        if is_subvolume(self.layers_dir / layer_id):
            with contextlib.suppress(OSError):
                destroy_subvolume(self.layers_dir, layer_id)  # frees its blocks
        shutil.rmtree(self.layers_dir / layer_id, ignore_errors=True)
        shutil.rmtree(self.work_dir / layer_id, ignore_errors=True)

    def spare_ids(self) -> set[str]:
        """Layers that are the pool's spares (no VM's yet, not garbage)."""
        return set() if self.pool is None else self.pool.reserved()

    def layer_ids_on_disk(self) -> set[str]:
        """Every complete layer directory present."""
        return {n for n in os.listdir(self.layers_dir) if _LAYER_ID.match(n)}

    # -- fork ----------------------------------------------------------------------------

    def branch(self, meta: VmMeta, child_id: str) -> VmMeta:
        """Fork a VM whose upper is empty: the child shares exactly its frozen layers.

        Returns:
            The child's metadata (saved; durable after the next `syncfs`).
        """
        child = VmMeta(child_id, meta.base, list(meta.layers), self.new_upper())
        child.fork_point = list(meta.layers)
        self.save_meta(child, durable=False)
        return child

    def freeze(
        self,
        meta: VmMeta,
        child_id: str,
        base_dir: Path,
        committed: Callable[[VmMeta], None],
    ) -> VmMeta:
        """Fork a VM by freezing its (unmounted) upper into a layer both then stack.

        Both get a new empty upper; no data moves. A chain longer than
        `FLATTEN_THRESHOLD` is first merged into one layer (hard links).

        Args:
            meta: The parent's metadata; its upper must not be mounted.
            child_id: The child.
            base_dir: The base image under the chain (for flattening).
            committed: Called with the parent's new metadata once it is on disk (the
                commit point), before the child's metadata is put in place.

        Returns:
            The child's metadata (saved; durable after the next `syncfs`).
        """
        frozen = [*meta.layers, meta.upper]
        if len(frozen) > FLATTEN_THRESHOLD:
            # Merged ahead in the background (merge_ahead.py), else merged now.
            frozen = self._ahead.shorten(frozen, base_dir) or [self.flatten(frozen, base_dir)]
        self._ahead.consider(frozen, base_dir)
        child = VmMeta(child_id, meta.base, list(frozen), self.new_upper(), False, list(frozen))
        new_parent = VmMeta(
            meta.vm_id, meta.base, list(frozen), self.new_upper(), meta.is_base, meta.fork_point
        )
        # Child's metadata in a temp file, parent's replaced (the commit point), then
        # the child's renamed in: after a crash the parent is whole and the child
        # either whole or absent (start-up removes temp files). No fsyncs here (see
        # write_meta_tmp): ext4's journal keeps the renames in order and the engine
        # runs a syncfs in the background right after.
        ctmp = self.write_meta_tmp(child, durable=False)
        self.save_meta(new_parent, durable=False)
        committed(new_parent)
        self.commit_meta(ctmp, child_id, durable=False)
        return child

    # -- garbage collection ------------------------------------------------------------

    def remove_unused(self, metas: list[VmMeta]) -> list[str]:
        """Remove the layers and work dirs none of ``metas`` references.

        Returns:
            The ids of the layers removed.
        """
        used: set[str] = set()
        uppers: set[str] = set()
        for meta in metas:
            used.update(meta.layers)
            used.add(meta.upper)
            uppers.add(meta.upper)
        # The disk is listed before the spares and pins: both are kept before they exist.
        on_disk = self.layer_ids_on_disk()
        removed = sorted(on_disk - used - self.spare_ids() - self._pinned_ids())
        for lid in removed:
            self.remove_layer(lid)
        self._ahead.drop_stale(on_disk - set(removed))
        for name in os.listdir(self.work_dir):
            if name not in uppers:
                shutil.rmtree(self.work_dir / name, ignore_errors=True)
        return removed

    def flatten(
        self, layer_ids_bottom_first: list[str], base_dir: Path | None, *, pin: bool = False
    ) -> str:
        """Merge frozen layers into one new frozen layer, hard-linking file data.

        Args:
            layer_ids_bottom_first: Layers to merge (all immutable).
            base_dir: The base layer that stays below the merged one (whiteouts are
                kept only where they hide something in it).
            pin: Keep the new layer from collection until `_unpin` (a merge made
                without the engine's GC lock, which no VM references yet).

        Returns:
            The id of the new layer (complete and durable on return).
        """
        lid = secrets.token_hex(4)
        while (self.layers_dir / lid).exists():
            lid = secrets.token_hex(4)
        tmp = self.layers_dir / f"tmp-{lid}"
        with self._pin_lock:
            self._flattening.add(tmp.name)
            if pin:
                self._pinned.add(lid)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp, 0o755)
            if self.subvolumes:
                os.mkdir(tmp / "root", 0o755)
            srcs = [self.layer_path(x) for x in reversed(layer_ids_bottom_first)]
            merge_layers(srcs, base_dir, Path(f"{tmp}{self._inner}"))
            os.rename(tmp, self.layers_dir / lid)
            _fsync_dir(self.layers_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            self._unpin(lid)
            raise
        finally:
            with self._pin_lock:
                self._flattening.discard(tmp.name)
        return lid

    def _merge_pinned(self, layer_ids_bottom_first: list[str], base_dir: Path) -> str:
        return self.flatten(layer_ids_bottom_first, base_dir, pin=True)

    def _unpin(self, layer_id: str) -> None:
        with self._pin_lock:
            self._pinned.discard(layer_id)

    def _pinned_ids(self) -> set[str]:
        with self._pin_lock:
            return set(self._pinned)

    # -- metadata ----------------------------------------------------------------------

    def meta_path(self, vm_id: str) -> Path:
        """Metadata file of a VM."""
        return self.vms_dir / f"{vm_id}.json"

    def write_meta_tmp(self, meta: VmMeta, *, durable: bool = True) -> Path:
        """Write metadata to a temp file; rename it with :meth:`commit_meta`.

        Args:
            meta: The metadata.
            durable: fsync the file. Forks pass False: on ext4 (data=ordered) an
                fsync waits for unrelated dirty data (a VM that just wrote 1 GiB made
                a fork take seconds); the engine syncs the filesystem in the
                background right after instead. Rename order is kept by the journal,
                so a process crash never sees a half-done fork either way.
        """
        tmp = self.vms_dir / f".{meta.vm_id}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, meta.to_json())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def commit_meta(self, tmp: Path, vm_id: str, *, durable: bool = True) -> None:
        """Atomically put a temp metadata file in place (the commit point)."""
        os.rename(tmp, self.meta_path(vm_id))
        if durable:
            _fsync_dir(self.vms_dir)

    def save_meta(self, meta: VmMeta, *, durable: bool = True) -> None:
        """Write and commit metadata atomically."""
        self.commit_meta(self.write_meta_tmp(meta, durable=durable), meta.vm_id, durable=durable)

    def syncfs(self) -> None:
        """Flush the data dir's filesystem (background durability for forks)."""
        fd = os.open(self.vms_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _libc.syncfs(fd)
        finally:
            os.close(fd)

    def remove_meta(self, vm_id: str, *, durable: bool = True) -> None:
        """Forget a VM (durably unless ``durable`` is False)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.meta_path(vm_id))
        if durable:
            _fsync_dir(self.vms_dir)

    def load_all(self) -> dict[str, VmMeta]:
        """Read every committed VM metadata file."""
        out: dict[str, VmMeta] = {}
        for name in os.listdir(self.vms_dir):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                meta = VmMeta.from_json((self.vms_dir / name).read_bytes())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable metadata is treated as absent
            out[meta.vm_id] = meta
        return out

    def clean_temp(self) -> None:
        """Remove leftovers of interrupted forks/flattens (startup or GC only)."""
        for name in os.listdir(self.vms_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.vms_dir / name)
        with self._pin_lock:
            busy = set(self._flattening)
        for name in os.listdir(self.layers_dir):
            if name.startswith("tmp-") and name not in busy:
                shutil.rmtree(self.layers_dir / name, ignore_errors=True)
