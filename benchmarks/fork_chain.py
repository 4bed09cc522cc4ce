"""A 500-deep fork chain through the SDK, on each storage: are there latency spikes?

Starts its own `arker serve` per storage (root + bubblewrap; btrfs also needs
btrfs-progs and loop devices), then builds a chain: each step writes a small file in
the newest VM, forks it and continues in the child, so every fork freezes a layer and
the chain crosses the flatten threshold again and again. Prints per storage the
median, p95 and max fork latency (ms), max/median, the median of the last 50 forks
over the first 50 (near 1: no growth with depth), and where the slowest forks were.
It prints, it does not assert::

    python benchmarks/fork_chain.py [--depth 500] [--storages dir,btrfs]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from arker import Arker
from arker.testing import ArkerServer


def chain(client: Arker, depth: int) -> list[float]:
    vm = client.vms.fork("arkuntu").vm_id
    latencies = []
    for i in range(depth):
        done = client.runs.create(vm, f"echo {i} > /home/user/f{i % 8}; echo {i} >> /home/user/log")
        assert done.exit_code == 0, done.stderr_text
        started = time.perf_counter()
        child = client.vms.fork(vm).vm_id
        latencies.append((time.perf_counter() - started) * 1000)
        if i % 2:
            client.vms.delete(vm)  # keep the server's VM count small; the chain stays
        vm = child
    log = client.runs.create(vm, "wc -l < /home/user/log").stdout_text.strip()
    assert log == str(depth), log
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=500)
    parser.add_argument("--storages", default="dir,btrfs")
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dirs go")
    args = parser.parse_args()
    rows = []
    for storage in args.storages.split(","):
        with tempfile.TemporaryDirectory(prefix="arker-bench-", dir=args.data_root) as tmp:
            server = ArkerServer(Path(tmp) / "data", extra_args=("--storage", storage))
            server.start()
            client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
            try:
                ms = chain(client, args.depth)
            finally:
                client.close()
                server.stop()
        ms_sorted = sorted(ms)
        median = statistics.median(ms)
        head = statistics.median(ms[:50])
        tail = statistics.median(ms[-50:])
        p95 = ms_sorted[int(len(ms) * 0.95) - 1]
        rows.append((storage, median, p95, max(ms), max(ms) / median, tail / head))
        slowest = sorted(range(len(ms)), key=lambda i: ms[i])[-6:]
        print(f"{storage}: slowest forks (depth: ms):", [(i, round(ms[i], 1)) for i in slowest])
    print(f"fork chain, {args.depth} deep")
    print(f"{'storage':<8} {'median':>8} {'p95':>8} {'max':>8} {'max/med':>8} {'last/first':>10}")
    for storage, median, p95, worst, spike, growth in rows:
        print(
            f"{storage:<8} {median:>8.2f} {p95:>8.2f} {worst:>8.2f} {spike:>8.2f} {growth:>10.2f}"
        )


if __name__ == "__main__":
    main()
