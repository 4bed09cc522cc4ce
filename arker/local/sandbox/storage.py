"""Which storage a data dir uses: btrfs where the host can, else plain directories.

``auto`` (the server's default) resolves once per start, in this order:

1. the data dir already has a btrfs image (``storage.btrfs``): btrfs, whatever the
   host says (its VMs are in the image: falling back would lose them, so a host that
   cannot mount it any more fails clearly);
2. the data dir already has VMs on the directory layout (``engine/vms/*.json``, made
   by an arker without btrfs storage or on a host without it): it stays on that
   layout, so nothing is lost or copied;
3. the host can hold a btrfs volume (`btrfs_unavailable`): btrfs;
4. otherwise the directory layout, with the reason in the start-up line.

An explicit ``btrfs`` on a host that cannot fails at start (the probe names what is
missing); an explicit ``dir`` never uses btrfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .volume import IMAGE_NAME, btrfs_unavailable

__all__ = ["STORAGES", "Storage", "resolve"]

STORAGES = ("auto", "dir", "btrfs")
"""``auto``: btrfs when possible; ``dir``: layers as directories on the data dir's
filesystem; ``btrfs``: layers as subvolumes of a loop-mounted image."""

_ALIASES = {"default": "dir"}  # the directory storage's name before btrfs became default


@dataclass(frozen=True)
class Storage:
    """The engine's storage choice.

    Attributes:
        kind: One of `STORAGES` (``default`` is read as ``dir``).
        size: The most the btrfs image file may grow to, in bytes (sparse; it starts
            small and grows as it fills).
        upper_limit: Bytes each VM's upper may hold (btrfs: kernel-enforced), 0: none.
    """

    kind: str = "auto"
    size: int = 32 << 30
    upper_limit: int = 0

    def __post_init__(self) -> None:
        kind = _ALIASES.get(self.kind, self.kind)
        if kind not in STORAGES:
            raise ValueError(f"unknown storage {self.kind!r}")
        object.__setattr__(self, "kind", kind)


def _has_dir_layout_vms(data_dir: Path) -> bool:
    try:
        with os.scandir(data_dir / "engine" / "vms") as it:
            return any(e.name.endswith(".json") and not e.name.startswith(".") for e in it)
    except OSError:
        return False


def resolve(data_dir: Path, storage: Storage) -> tuple[str, str]:
    """Resolve ``auto``: the storage this start uses, and a one-line note saying why.

    Args:
        data_dir: The engine's data dir.
        storage: The requested storage.

    Returns:
        ``("btrfs" | "dir", note)``; the note is for the start-up log.
    """
    image = data_dir / IMAGE_NAME
    if storage.kind == "btrfs":
        return "btrfs", f"storage: btrfs (image {image}, up to {storage.size >> 20} MiB)"
    if storage.kind == "dir":
        return "dir", f"storage: directories in {data_dir} (--storage dir)"
    if image.exists():
        return "btrfs", f"storage: btrfs (image {image}, up to {storage.size >> 20} MiB)"
    if _has_dir_layout_vms(data_dir):
        return "dir", (
            f"storage: directories in {data_dir}: its VMs were made on that layout and "
            "stay on it (a new data dir gets btrfs)"
        )
    why = btrfs_unavailable()
    if why is None:
        return "btrfs", f"storage: btrfs (image {image}, up to {storage.size >> 20} MiB)"
    return "dir", (
        f"storage: directories in {data_dir}, the fallback ({why}): copy-up copies "
        "whole files and the disk quota is checked, not enforced by the kernel"
    )
