"""What the btrfs storage adds to an `arker serve` start on a new data dir.

Starts servers on fresh data dirs, alternating ``--storage dir`` and ``--storage btrfs``
(a new image each time: ``mkfs.btrfs`` plus the loop mount, as every test server
pays), until healthy, and the first fork plus ``echo`` through the SDK. Prints medians
in ms and btrfs/dir ratios. It prints, it does not assert::

    python benchmarks/server_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from arker import Arker
from arker.testing import ArkerServer


def one(storage: str, data_root: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="arker-bench-", dir=data_root) as tmp:
        server = ArkerServer(Path(tmp) / "data", extra_args=("--storage", storage))
        started = time.perf_counter()
        server.start()
        up = (time.perf_counter() - started) * 1000
        client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
        try:
            started = time.perf_counter()
            vm = client.vms.fork("arkuntu").vm_id
            assert client.runs.create(vm, "echo hi").stdout == b"hi\n"
            first = (time.perf_counter() - started) * 1000
        finally:
            client.close()
            server.stop()
    return up, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dirs go")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"dir": [], "btrfs": []}
    for _ in range(args.rounds):
        for storage in times:
            times[storage].append(one(storage, args.data_root))
    print(f"{'storage':<8} {'start ms':>9} {'ratio':>6} {'fork+echo ms':>13} {'ratio':>6}")
    base_up = statistics.median(t[0] for t in times["dir"])
    base_first = statistics.median(t[1] for t in times["dir"])
    for storage, samples in times.items():
        up = statistics.median(t[0] for t in samples)
        first = statistics.median(t[1] for t in samples)
        ratios = f"{up / base_up:>6.2f} {first:>13.1f} {first / base_first:>6.2f}"
        print(f"{storage:<8} {up:>9.0f} {ratios}")


if __name__ == "__main__":
    main()
