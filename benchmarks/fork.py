"""Fork latency through the SDK: a VM holding ~0 bytes vs one holding 1 GiB in 2,000 files.

Starts its own `arker serve` (root + bubblewrap), then in one run measures
``client.vms.fork(vm)`` round trips (HTTP included):

* ``empty``: forks of a VM that wrote nothing;
* ``1GiB-fresh``: the first fork after the VM wrote 1 GiB (2,000 x 512 KiB) into its
  own writable layer — the case where a copying fork would copy everything;
* ``1GiB-again``: later forks of that VM (the data now sits in a frozen layer).

Prints medians in ms and the ratios to ``empty``. A constant-time fork keeps the ratios
near 1; copying 1 GiB takes over a second here. It prints, it does not assert::

    python benchmarks/fork.py [--samples 20] [--fresh 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _server import local_server

from arker import Arker

WRITE_1GIB = (
    'python3 -c "import os\n'
    "os.makedirs('/home/user/data', exist_ok=True)\n"
    "block = os.urandom(512 * 1024)\n"
    "for i in range(2000):\n"
    "    open(f'/home/user/data/f{i:04d}', 'wb').write(block)\n\""
)


def timed_fork(client: Arker, vm_id: str) -> tuple[float, str]:
    started = time.perf_counter()
    child = client.vms.fork(vm_id)
    return (time.perf_counter() - started) * 1000, child.vm_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="forks per steady case")
    parser.add_argument("--fresh", type=int, default=4, help="VMs given 1 GiB each")
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dir goes")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"empty": [], "1GiB-fresh": [], "1GiB-again": []}
    with local_server(args.data_root) as (_, client):
        empty = client.vms.fork("arkuntu").vm_id
        for _ in range(3):  # warm-up
            timed_fork(client, empty)
        for _ in range(args.samples):
            results["empty"].append(timed_fork(client, empty)[0])
        for _ in range(args.fresh):
            big = client.vms.fork("arkuntu").vm_id
            made = client.runs.create(big, WRITE_1GIB, timeout=600)
            assert made.exit_code == 0, made.stderr_text
            size = client.runs.create(big, "du -sm /home/user/data | cut -f1").stdout_text
            ms, child = timed_fork(client, big)
            results["1GiB-fresh"].append(ms)
            check = client.runs.create(child, "ls /home/user/data | wc -l").stdout_text.strip()
            assert check == "2000", check
            for _ in range(args.samples // args.fresh):
                results["1GiB-again"].append(timed_fork(client, big)[0])
            client.vms.delete(big)
        print(f"VM data: {size.strip()} MiB in 2000 files (checked in each child)")
    empty_ms = statistics.median(results["empty"])
    print(f"{'case':<12} {'n':>3} {'median ms':>10} {'max ms':>8} {'ratio':>6}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"{name:<12} {len(samples):>3} {median:>10.2f} {max(samples):>8.2f} "
            f"{median / empty_ms:>6.2f}"
        )


if __name__ == "__main__":
    main()
