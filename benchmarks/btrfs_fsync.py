"""An fsync in a btrfs subvolume made in the running transaction, against one after a commit.

btrfs cannot log an fsync in a subvolume created in the current transaction and commits
the whole transaction instead; that commit grows with the number of subvolumes (with
the btrfs storage: one per VM layer). Creates a scratch volume (root, btrfs-progs,
loop devices) with N subvolumes, then times a 1 KiB write + fsync in a brand-new
subvolume, in the same one after a commit, and in a spare as the engine's pool makes
them (upper_pool.py: made, then committed with ``BTRFS_IOC_START_SYNC``, which is
also timed: the pool thread pays it, not the fork). Prints medians and the ratio of
new to spare. It prints, it does not assert::

    python benchmarks/btrfs_fsync.py [--subvolumes 10,1000] [--samples 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from arker.local.sandbox import volume


def fsync_write(sub: Path) -> float:
    started = time.perf_counter()
    fd = os.open(sub / "f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"x" * 1024)
        os.fsync(fd)
    finally:
        os.close(fd)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subvolumes", default="10,1000")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--data-root", default="/var/tmp")
    args = parser.parse_args()
    print(
        f"{'subvolumes':>10} {'new ms':>8} {'committed ms':>13} {'spare ms':>9}"
        f" {'ratio':>6} {'pool commit ms':>15}"
    )
    for count in (int(c) for c in args.subvolumes.split(",")):
        with tempfile.TemporaryDirectory(prefix="arker-bench-", dir=args.data_root) as tmp:
            vol = volume.BtrfsVolume(Path(tmp) / "img", Path(tmp) / "mnt", 4 << 30, watch=False)
            try:
                for i in range(count):
                    volume.create_subvolume(vol.root, f"s{i}", 1 << 30)
                os.sync()
                fresh, committed, spare, commits = [], [], [], []
                for i in range(args.samples):
                    volume.create_subvolume(vol.root, f"n{i}", 1 << 30)
                    fresh.append(fsync_write(vol.root / f"n{i}"))
                    os.sync()
                    committed.append(fsync_write(vol.root / f"n{i}"))
                    volume.create_subvolume(vol.root, f"p{i}", 1 << 30)
                    started = time.perf_counter()
                    volume.commit_transaction(vol.root)
                    commits.append((time.perf_counter() - started) * 1000)
                    spare.append(fsync_write(vol.root / f"p{i}"))
            finally:
                vol.close()
        new, old = statistics.median(fresh), statistics.median(committed)
        ready, commit = statistics.median(spare), statistics.median(commits)
        print(
            f"{count:>10} {new:>8.1f} {old:>13.1f} {ready:>9.1f} {new / ready:>6.2f}"
            f" {commit:>15.1f}"
        )


if __name__ == "__main__":
    main()
