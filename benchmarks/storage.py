"""Storage layouts side by side: a 2-byte append to an inherited 200 MiB file, and forks.

Needs root, bubblewrap, ``btrfs-progs`` and loop devices. In one run, in a private mount
namespace, it measures:

* the append (open for append, write 2 bytes, close: overlay's copy-up happens here)
  to a 200 MiB file the writer inherited, for
  ``overlay-ext4`` (today's layout: layers are directories on the data dir's disk),
  ``overlay-btrfs`` (the same overlay, its layers on a loop-mounted btrfs image:
  copy-up clones) and ``snapshot-btrfs`` (no overlay: the writer is a btrfs snapshot
  of the subvolume holding the file); time, and disk the append cost (blocks of the
  upper for overlay-ext4, the btrfs filesystem's used bytes after a sync otherwise);
* forks through the engine (``Engine.fork``) of an empty VM and of a VM that wrote
  1 GiB, with the default storage and with ``storage="btrfs"``;
* a raw ``btrfs subvolume snapshot`` (ioctl) of an empty and of a 1 GiB subvolume.

Prints medians and the ratios to ``overlay-ext4`` / the default storage. It prints,
it does not assert::

    sudo python benchmarks/storage.py [--dir /var/tmp] [--samples 5]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from arker.local.sandbox import Engine, Limits, enter_private_mount_namespace, mounts
from arker.local.sandbox.quota import tree_bytes
from arker.local.sandbox.volume import BtrfsVolume, _vol_args, create_subvolume

MIB = 1 << 20
_SNAP_CREATE = 0x50009401  # _IOW(0x94, 1, btrfs_ioctl_vol_args)


def write_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
        os.fsync(f.fileno())


def append_two_bytes(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "ab") as f:
        f.write(b"xy")
    return (time.perf_counter() - started) * 1000


def fs_used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def snapshot(src: Path, parent: Path, name: str) -> float:
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = _vol_args(name)
        args[0:8] = sfd.to_bytes(8, "little", signed=True)
        started = time.perf_counter()
        fcntl.ioctl(pfd, _SNAP_CREATE, args)
        return (time.perf_counter() - started) * 1000
    finally:
        os.close(sfd)
        os.close(pfd)


def overlay_append(top: Path, n: int, make_layer: Callable[[Path, str], Path]) -> list[float]:
    """``n`` writers stacking one lower layer holding the big file; returns their times."""
    lower = make_layer(top, "lower")
    write_file(lower / "big", 200 * MIB)
    return _appends_over(top, lower, n, make_layer, "upper", "mnt")


def _appends_over(
    top: Path, lower: Path, n: int, make_layer: Callable[[Path, str], Path], tag: str, mnt: str
) -> list[float]:
    """``n`` overlays of a fresh upper over ``lower``, each appending 2 bytes to ``big``."""
    times = []
    for i in range(n):
        upper = make_layer(top, f"{tag}{i}")
        work = upper.parent / "work" if upper.name == "root" else top / f"work-{tag}{i}"
        work.mkdir()
        target = top / f"{mnt}{i}"
        target.mkdir()
        mounts.mount_overlay(str(target), [str(lower)], str(upper), str(work))
        try:
            times.append(append_two_bytes(target / "big"))
        finally:
            mounts.umount(str(target))
    return times


def plain_layer(top: Path, name: str) -> Path:
    path = top / name
    path.mkdir()
    return path


def subvolume_layer(top: Path, name: str) -> Path:
    create_subvolume(top, name, 0)
    (top / name / "root").mkdir()
    return top / name / "root"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp", help="an ext4 directory to work in")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    enter_private_mount_namespace()
    n = args.samples
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="arker-storage-") as tmp:
        top = Path(tmp)
        rows: dict[str, tuple[float, float]] = {}

        ext4 = top / "ext4"
        ext4.mkdir()
        times = overlay_append(ext4, n, plain_layer)
        rows["overlay-ext4"] = (statistics.median(times), tree_bytes(ext4 / "upper0"))

        vol = BtrfsVolume(top / "img", top / "btrfs", 8 << 30, initial=8 << 30)
        try:
            ob = vol.root / "ob"
            ob.mkdir()
            overlay_append(ob, 1, subvolume_layer)  # lower written, one writer
            before = fs_used(vol.root)
            times = overlay_append_more(ob, n)
            rows["overlay-btrfs"] = (statistics.median(times), (fs_used(vol.root) - before) / n)

            create_subvolume(vol.root, "snap-src", 0)
            write_file(vol.root / "snap-src" / "big", 200 * MIB)
            before = fs_used(vol.root)
            times = []
            for i in range(n):
                snapshot(vol.root / "snap-src", vol.root, f"snap{i}")
                times.append(append_two_bytes(vol.root / f"snap{i}" / "big"))
            rows["snapshot-btrfs"] = (statistics.median(times), (fs_used(vol.root) - before) / n)

            create_subvolume(vol.root, "empty", 0)
            create_subvolume(vol.root, "full", 0)
            for i in range(8):
                write_file(vol.root / "full" / f"f{i}", 128 * MIB)
            snap_empty = [snapshot(vol.root / "empty", vol.root, f"se{i}") for i in range(n)]
            snap_full = [snapshot(vol.root / "full", vol.root, f"sf{i}") for i in range(n)]
        finally:
            vol.close()

        base = rows["overlay-ext4"]
        print(f"2-byte append to an inherited 200 MiB file (median of {n}):")
        for name, (ms, disk) in rows.items():
            print(
                f"  {name:15s} {ms:8.2f} ms  {disk / MIB:9.2f} MiB of disk"
                f"   time x{ms / base[0]:.5f}  disk x{disk / max(base[1], 1):.5f}"
            )
        print("raw btrfs snapshot (ioctl):")
        e, f = statistics.median(snap_empty), statistics.median(snap_full)
        print(f"  empty {e:.2f} ms   1 GiB {f:.2f} ms   x{f / e:.2f}")

        print(f"Engine.fork (median of {n}):")
        forks = {s: engine_forks(top / f"data-{s}", s, n) for s in ("default", "btrfs")}
        d_empty, d_full = forks["default"]
        for storage, (empty, full) in forks.items():
            print(
                f"  {storage:8s} empty {empty:7.2f} ms (x{empty / d_empty:.3f})"
                f"   1 GiB {full:7.2f} ms (x{full / d_full:.3f})"
            )
        shutil.rmtree(top / "data-default", ignore_errors=True)


def overlay_append_more(top: Path, n: int) -> list[float]:
    """More writers over ``top``'s existing ``lower`` subvolume (disk measured apart)."""
    return _appends_over(top, top / "lower" / "root", n, subvolume_layer, "more", "mmnt")


def engine_forks(data_dir: Path, storage: str, n: int) -> tuple[float, float]:
    """Median fork times of an empty VM and of a VM that wrote 1 GiB (first fork after)."""
    engine = Engine(data_dir, limits=Limits(disk_quota_bytes=4 << 30), **_storage_args(storage))
    try:
        engine.ensure_base("base")
        engine.fork("base", "empty")
        empty = []
        for i in range(n):
            started = time.perf_counter()
            engine.fork("empty", f"e{i}")
            empty.append((time.perf_counter() - started) * 1000)
        full = []
        for i in range(n):
            vm = f"full{i}"
            engine.fork("base", vm)
            engine.run(
                vm,
                "python3 -c \"import os\nb=os.urandom(1<<20)\nf=open('/home/user/g','wb')\n"
                'for _ in range(1024): f.write(b)"',
                session="s",
                timeout=300,
            )
            started = time.perf_counter()
            engine.fork(vm, f"{vm}-child")
            full.append((time.perf_counter() - started) * 1000)
            engine.delete(f"{vm}-child")
            engine.delete(vm)
        return statistics.median(empty), statistics.median(full)
    finally:
        engine.close()


def _storage_args(storage: str) -> dict[str, object]:
    if storage == "default":
        return {}
    return {"storage": storage, "storage_size": 8 << 30}


if __name__ == "__main__":
    main()
