"""Fork diff cost through the SDK: proportional to what a fork changed, not to its size.

Starts its own `arker serve` (root + bubblewrap), then times ``client.vms.diff(child)``
(HTTP included) for forks of two parents:

* ``big``: 1 GiB in 2,000 files of 512 KiB, plus 10,000 files of 1 KiB;
* ``small``: only the 10,000 files of 1 KiB (~10 MiB).

Each child rewrites N of the 1 KiB files with new bytes (N modified entries, each
compared with the parent's version):

* ``big-10`` vs ``big-10000``: the same VM size, 1,000x the changes;
* ``small-10`` vs ``big-10``: the same changes, ~100x the VM size.

Prints medians in ms and the ratios. A diff that walked the VM would make ``big-10``
cost like ``big-10000`` and far more than ``small-10``. It prints, it does not
assert::

    python benchmarks/diff.py [--samples 7]

Measured on the development machine (2 shared cores under load from other jobs, btrfs
storage, 5 samples): ``small-10`` 10.5 ms, ``big-10`` 15.6 ms, ``big-10000`` 2,550 ms
(medians); ``big-10000 / big-10`` = 164, ``big-10 / small-10`` = 1.5. The 10-change
diff costs about the same on a 1 GiB VM as on a 10 MiB one; 10,000 changes cost about
0.25 ms each (each one: its stat, both versions hashed, the parent's lookup).
"""

from __future__ import annotations

import argparse
import statistics
import time

from _server import local_server

from arker import Arker

SMALL_FILES = (
    'python3 -c "import os\n'
    "os.makedirs('/home/user/small', exist_ok=True)\n"
    "for i in range(10000):\n"
    "    open(f'/home/user/small/s{i:05d}', 'wb').write(b'p' * 1024)\n\""
)
BIG_FILES = (
    'python3 -c "import os\n'
    "os.makedirs('/home/user/data', exist_ok=True)\n"
    "block = os.urandom(512 * 1024)\n"
    "for i in range(2000):\n"
    "    open(f'/home/user/data/f{i:04d}', 'wb').write(block)\n\""
)


def change(n: int) -> str:
    return (
        'python3 -c "\n'
        f"for i in range({n}):\n"
        "    open(f'/home/user/small/s{i:05d}', 'wb').write(b'c' * 1024)\n\""
    )


def run(client: Arker, vm_id: str, command: str) -> None:
    done = client.runs.create(vm_id, command, timeout=900)
    assert done.exit_code == 0, done.stderr_text


def timed(client: Arker, vm_id: str, samples: int, expect: int) -> list[float]:
    out = []
    for _ in range(samples + 1):
        started = time.perf_counter()
        d = client.vms.diff(vm_id)
        out.append((time.perf_counter() - started) * 1000)
        assert len(d.modified) == expect and not d.added and not d.deleted, d
    return out[1:]  # the first one warms the caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=7, help="diffs per case")
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dir goes")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with local_server(args.data_root) as (_, client):
        small = client.vms.fork("arkuntu").vm_id
        run(client, small, SMALL_FILES)
        big = client.vms.fork(small).vm_id
        run(client, big, BIG_FILES)
        size = client.runs.create(big, "du -sm /home/user | cut -f1").stdout_text.strip()
        print(f"big VM: {size} MiB under /home/user")
        for name, parent, n in (
            ("small-10", small, 10),
            ("big-10", big, 10),
            ("big-10000", big, 10000),
        ):
            child = client.vms.fork(parent).vm_id
            run(client, child, change(n))
            results[name] = timed(client, child, args.samples, n)
    med = {name: statistics.median(s) for name, s in results.items()}
    print(f"{'case':<10} {'n':>3} {'median ms':>10} {'max ms':>8}")
    for name, samples in results.items():
        print(f"{name:<10} {len(samples):>3} {med[name]:>10.2f} {max(samples):>8.2f}")
    print(f"big-10000 / big-10 (1000x the changes): {med['big-10000'] / med['big-10']:.1f}")
    print(f"big-10 / small-10 (~100x the VM size):  {med['big-10'] / med['small-10']:.2f}")


if __name__ == "__main__":
    main()
