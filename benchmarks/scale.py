"""Latency against the number of VMs that have run: echo, fork, list, a 1 KiB write.

Starts its own `arker serve` (root + bubblewrap), then grows the server's VM count
step by step (each new VM is forked from the base and runs ``true`` once, as a user's
VMs would) and, at each step, measures round trips through the SDK on one probe VM:

* ``echo``: ``client.runs.create(vm, "echo hi")``;
* ``fork``: ``client.vms.fork(vm)`` (the child is deleted after, untimed);
* ``list``: ``client.vms.list(limit=25)``;
* ``write``: ``client.sync.write(vm, path, 1 KiB)``.

Prints medians in ms with the ratio to the first step, and the server's open
descriptors and mount-table entries (``/proc/<pid>/fd``, ``/proc/<pid>/mountinfo``:
the server lives in a private mount namespace). Latency independent of the VM count
keeps the ratios near 1. It prints, it does not assert::

    python benchmarks/scale.py [--counts 1,1000,3000] [--samples 20] [--workers 2]
                               [--storage auto|btrfs|dir]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

from _server import local_server

from arker import Arker

OPS = ("echo", "fork", "list", "write")


def grow(make_client: Callable[[], Arker], start: int, stop: int, workers: int) -> None:
    """Create VMs ``start..stop-1``: each is forked from the base and runs once."""
    next_index = start
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal next_index
        client = make_client()
        try:
            while True:
                with lock:
                    if next_index >= stop or errors:
                        return
                    next_index += 1
                vm = client.vms.fork("arkuntu").vm_id
                assert client.runs.create(vm, "true").exit_code == 0
        except BaseException as exc:  # report the first failure, stop the others
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def server_resources(pid: int) -> tuple[int, int]:
    """(open descriptors, mount-table entries) of the server process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as fh:
        mounts = sum(1 for _ in fh)
    return fds, mounts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,1000,3000", help="VM counts, ascending")
    parser.add_argument("--samples", type=int, default=20, help="round trips per op and step")
    parser.add_argument("--workers", type=int, default=2, help="clients creating the VMs")
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dir goes")
    parser.add_argument("--storage", default="auto", help="the server's --storage")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.counts.split(",")})
    results: dict[int, dict[str, float]] = {}
    extra: dict[int, tuple[int, int, float]] = {}
    payload = os.urandom(1024)
    print(f"storage: {args.storage}")
    with local_server(args.data_root, ("--storage", args.storage)) as (server, client):

        def make_client() -> Arker:
            return Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)

        probe = client.vms.fork("arkuntu").vm_id
        have = 1  # the probe, which runs at the first warm-up
        forked: list[str] = []

        def echo() -> None:
            assert client.runs.create(probe, "echo hi").stdout == b"hi\n"

        def fork() -> None:
            child = client.vms.fork(probe).vm_id
            forked.append(child)

        def listing() -> None:
            client.vms.list(limit=25)

        def write() -> None:
            client.sync.write(probe, "/home/user/kib", payload)

        ops: dict[str, Callable[[], None]] = {
            "echo": echo,
            "fork": fork,
            "list": listing,
            "write": write,
        }
        for count in counts:
            started = time.perf_counter()
            if count > have:
                grow(make_client, have, count, args.workers)
                have = count
            grow_s = time.perf_counter() - started
            times: dict[str, list[float]] = {name: [] for name in OPS}
            for fn in ops.values():  # warm-up (and the probe's own mount)
                fn()
            for _ in range(args.samples):
                for name in OPS:
                    t0 = time.perf_counter()
                    ops[name]()
                    times[name].append((time.perf_counter() - t0) * 1000)
            for child in forked:
                client.vms.delete(child)
            forked.clear()
            results[count] = {name: statistics.median(xs) for name, xs in times.items()}
            fds, mounts = server_resources(server.pid)
            extra[count] = (fds, mounts, grow_s)
            print(
                f"[{count} VMs ready: {grow_s:.0f} s to create; server fds={fds} mounts={mounts}]",
                flush=True,
            )
    first = results[counts[0]]
    print(f"{'VMs':>6} " + " ".join(f"{n + ' ms':>9} {'ratio':>5}" for n in OPS))
    for count in counts:
        row = results[count]
        cells = " ".join(f"{row[n]:>9.2f} {row[n] / first[n]:>5.2f}" for n in OPS)
        print(f"{count:>6} {cells}")
    print(f"{'VMs':>6} {'fds':>6} {'mounts':>7} {'create s':>9}")
    for count in counts:
        fds, mounts, grow_s = extra[count]
        print(f"{count:>6} {fds:>6} {mounts:>7} {grow_s:>9.1f}")


if __name__ == "__main__":
    main()
