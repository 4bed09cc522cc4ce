"""Engine start-up: take the data dir, then recover what a crashed engine left.

Only one engine may use a data dir (an ``flock`` on ``engine/.lock``), so whatever
the engine finds at start-up was left by a predecessor: mounts of one that died in
the host namespace, processes in its cgroups, half-done forks and flattens. Each is
cleaned up before the VMs on disk are loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cgroups import VmCgroup
from .errors import SandboxUnavailable
from .layers import LayerStore, VmMeta
from .mounting import Overlays, mount_dir
from .storage import Storage, resolve
from .volume import IMAGE_NAME, BtrfsVolume
from .volume_bases import VolumeBases

__all__ = ["Recovered", "Storage", "release_data_dir", "start"]

log = logging.getLogger("arker.local")


@dataclass
class Recovered:
    """What `start` hands the engine.

    Attributes:
        lock_fd: Holds the data dir's lock (`release_data_dir` lets it go).
        tag: Names this data dir's mount directory and cgroups (stable across restarts).
        store: The layers and VM metadata.
        overlays: The VMs' mounts.
        vms: Every VM on disk.
        storage: The storage in use (``btrfs`` or ``dir``: ``auto`` resolved).
    """

    lock_fd: int
    tag: str
    store: LayerStore
    overlays: Overlays
    vms: dict[str, VmMeta]
    storage: str = "dir"


def start(
    data_dir: Path,
    sandbox_uid: int,
    base: str,
    base_dir: Callable[[str], Path],
    background: Callable[[Callable[[], None]], None],
    storage: Storage | None = None,
) -> Recovered:
    """Lock ``data_dir`` for this engine and clean up after any predecessor.

    Args:
        data_dir: The engine's data dir (created, made 0700).
        sandbox_uid: Owner of the mount directory.
        base: The engine's default base image (built or checked now).
        base_dir: Directory of a base image, by name (for `Overlays`).
        background: The engine's background queue (for `Overlays`).
        storage: Where the layers live (`Storage()` when None; ``auto`` is resolved
            by `storage.resolve` and logged in one line). With ``btrfs`` the image
            ``<data_dir>/storage.btrfs`` is made or reused and mounted on
            ``<data_dir>/engine/btrfs``, which then holds the store and a copy of
            each base image (volume_bases.py).

    Raises:
        SandboxUnavailable: Another running engine holds the data dir, or the base
            image is missing, or the btrfs storage cannot be set up (the data dir
            is released again).
    """
    storage = Storage() if storage is None else storage
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # setuid files in layers must be unreachable
    root = data_dir / "engine"
    root.mkdir(mode=0o700, exist_ok=True)
    lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        raise SandboxUnavailable(
            f"data dir {data_dir} is used by another running engine: stop it first"
        ) from None
    kind, note = resolve(data_dir, storage)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    overlays: Overlays | None = None
    store: LayerStore | None = None
    volume: BtrfsVolume | None = None
    try:
        mnt = mount_dir(data_dir, tag, sandbox_uid)
        if kind == "btrfs":
            volume = BtrfsVolume(data_dir / IMAGE_NAME, root / "btrfs", storage.size)
            store = LayerStore(volume.root, volume=volume, upper_limit=storage.upper_limit)
            lowest: Callable[[str], Path] = VolumeBases(volume.root, base_dir)
        else:
            store = LayerStore(root)
            lowest = base_dir
        overlays = Overlays(mnt, store, lowest, background)
        overlays.clear_stale()
        lowest(base)
        # --die-with-parent cannot cover an engine killed between fork and bwrap's prctl.
        VmCgroup.kill_stale(tag)
        store.clean_temp()
        log.info("%s", note)
        return Recovered(lock_fd, tag, store, overlays, store.load_all(), kind)
    except BaseException:
        if overlays is not None:
            overlays.release()
        if store is not None:
            store.close()  # and the volume under it
        elif volume is not None:
            volume.close()
        os.close(lock_fd)
        raise


def release_data_dir(lock_fd: int) -> None:
    """Let another engine use the data dir."""
    with contextlib.suppress(OSError):
        os.close(lock_fd)
