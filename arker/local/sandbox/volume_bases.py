"""Base images copied onto the btrfs volume, so copy-ups from a base are clones too.

On the btrfs storage a VM's lowest layer would otherwise be the base image on the data
dir's own filesystem, and overlay's copy-up of a base file (``apt-get`` rewriting a
package file, ``sed -i`` on ``/etc/...``) would copy it whole into the VM's upper. The
first mount of a base copies it once into a subvolume of the volume (``bases/<name>``;
a full copy, as clones cannot cross filesystems: about the image's size, once per
data dir); from then on every copy-up from it is a reflink.

Each copy carries a stamp of its source (device, inode, mtime), checked at each start:
a base rebuilt (a new directory) is copied again, into a new subvolume swapped in by
rename; the old copy goes at the next start, when nothing is mounted on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import SandboxUnavailable
from .volume import create_subvolume, destroy_subvolume, is_subvolume

__all__ = ["VolumeBases"]

_STAMP = ".arker-base-stamp"


def _stamp(src: Path) -> str:
    st = os.stat(src)
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"


class VolumeBases:
    """``base_dir`` for overlays on a btrfs volume: each base's copy on the volume.

    Args:
        root: The volume's mount point (copies go to ``root/bases/<name>``).
        source: The base images on the data dir's filesystem, by name.
    """

    def __init__(self, root: Path, source: Callable[[str], Path]) -> None:
        self._dir = root / "bases"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        for name in os.listdir(self._dir):  # nothing is mounted on them yet
            if name.startswith(("tmp-", "old-")):
                self._remove(self._dir / name)
        self._source = source
        self._lock = threading.Lock()
        self._ready: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        """The copy of base ``name`` on the volume (made on first use)."""
        ready = self._ready.get(name)
        if ready is not None:
            return ready
        with self._lock:
            src = self._source(name)
            dest = self._dir / name
            stamp = _stamp(src)
            try:
                current = (dest / _STAMP).read_text()
            except OSError:
                current = ""
            if current != stamp:
                self._copy(src, dest, stamp)
            path = dest / "root"
            self._ready[name] = path
            return path

    def _copy(self, src: Path, dest: Path, stamp: str) -> None:
        tmp = self._dir / f"tmp-{dest.name}"
        self._remove(tmp)
        try:
            create_subvolume(self._dir, tmp.name, 0)
            proc = subprocess.run(
                ["cp", "-a", "--reflink=auto", "--", str(src), str(tmp / "root")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise OSError(proc.stderr.strip()[-300:] or f"cp exited {proc.returncode}")
            (tmp / _STAMP).write_text(stamp)
        except OSError as exc:
            self._remove(tmp)
            raise SandboxUnavailable(
                f"cannot copy base image {src} onto the volume: {exc}"
            ) from None
        old = self._dir / f"old-{dest.name}"
        self._remove(old)
        with contextlib.suppress(FileNotFoundError):
            os.rename(dest, old)  # mounted VMs keep it: removed at the next start
        os.rename(tmp, dest)

    def _remove(self, path: Path) -> None:
        if is_subvolume(path):
            with contextlib.suppress(OSError):
                destroy_subvolume(path.parent, path.name)
        shutil.rmtree(path, ignore_errors=True)
