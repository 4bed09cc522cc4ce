"""``echo hi`` round trip: through the SDK vs a bare bwrap spawn vs a host subprocess.

Starts its own `arker serve` (root + bubblewrap) and measures, interleaved, in one run:

* ``sdk``: ``client.runs.create(vm, "echo hi")`` — HTTP, the session wrapper, the
  sandbox and the JSON answer;
* ``bwrap``: a bare bwrap spawn shaped like a VM's, from Python's `subprocess`: the
  same namespaces (user, pid, ipc, uts, mount; network shared as by default), ``/proc``
  and ``/dev``, uid 1000 inside and an unprivileged uid outside, ``sh -c 'echo hi'``
  — the sandbox alone, without the server, the VM's overlay or its session state;
* ``bwrap-min``: the least a bwrap spawn can be (``--unshare-all --share-net
  --ro-bind / / echo hi`` as root);
* ``host``: ``subprocess.run(["echo", "hi"])``.

Prints medians in ms and the ratios to ``bwrap``. It prints, it does not assert::

    python benchmarks/run.py [--samples 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

from _server import local_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    vm_shaped = [
        setpriv, "--reuid=60999", "--regid=60999", "--clear-groups", "--",
        bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
        "--unshare-all", "--share-net", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--uid", "1000", "--gid", "1000",
        "--hostname", "vm", "--", "/bin/sh", "-c", "echo hi",
    ]  # fmt: skip
    minimal = [bwrap, "--unshare-all", "--share-net", "--ro-bind", "/", "/", "echo", "hi"]
    with local_server() as (_, client):
        vm = client.vms.fork("arkuntu").vm_id

        def sdk() -> None:
            assert client.runs.create(vm, "echo hi").stdout == b"hi\n"

        def sandbox() -> None:
            subprocess.run(vm_shaped, check=True, capture_output=True)

        def sandbox_min() -> None:
            subprocess.run(minimal, check=True, capture_output=True)

        def host() -> None:
            subprocess.run(["echo", "hi"], check=True, capture_output=True)

        variants: dict[str, Callable[[], None]] = {
            "sdk": sdk,
            "bwrap": sandbox,
            "bwrap-min": sandbox_min,
            "host": host,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            for _ in range(5):
                fn()
        for _ in range(args.samples):
            for name, fn in variants.items():
                started = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - started) * 1000)
    bwrap_ms = statistics.median(times["bwrap"])
    print(f"{'variant':<10} {'median ms':>10} {'p90 ms':>8} {'/ bwrap':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = sorted(samples)[int(len(samples) * 0.9)]
        print(f"{name:<10} {median:>10.2f} {p90:>8.2f} {median / bwrap_ms:>8.2f}")


if __name__ == "__main__":
    main()
