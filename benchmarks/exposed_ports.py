"""Exposed ports on `arker serve`: the relay's cost, printed as ratios in one run.

Starts its own server (root + bubblewrap) and a ``python3 -m http.server`` as a live
run in a VM, exposes its port, then measures, through the URL against straight to
the port (while VMs share the host's network the VM's port is the host's; with a
network of their own only the URL is measured):

* ``get-small``: median and p99 of a GET of a 1 KiB file, a new connection each;
* ``get-large``: throughput of a GET of a 64 MiB file.

It prints, it does not assert::

    python benchmarks/exposed_ports.py [--samples 200]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

import requests
from _server import local_server

from arker._constants import ARKUNTU_ID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _latencies(url: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        r = requests.get(url, timeout=60)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.status_code
    return sorted(out)


def _throughput(url: str) -> float:
    t = time.perf_counter()
    size = 0
    with requests.get(url, stream=True, timeout=120) as r:
        for block in r.iter_content(1 << 20):
            size += len(block)
    return size / (1 << 20) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    with local_server(args.data_root) as (_, client):
        vm = client.vms.fork(ARKUNTU_ID).vm_id
        client.sync.write(vm, "/home/user/site/small", b"x" * 1024)
        client.runs.create(vm, "head -c 67108864 /dev/zero > /home/user/site/large")
        port = _free_port()
        web = client.runs.start(
            vm, f"cd /home/user/site && exec python3 -m http.server {port} --bind 127.0.0.1"
        )
        url = client.vms.expose(vm, port).url
        direct = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while requests.get(url + "small", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the server in the VM never answered"
            time.sleep(0.1)
        try:
            requests.get(direct + "small", timeout=5)
        except requests.ConnectionError:  # the VM has a network of its own
            print("direct: unreachable from the host (VMs have their own network)")
            direct = ""
        for name, base in (("direct", direct), ("exposed", url)):
            if not base:
                continue
            lat = _latencies(base + "small", args.samples)
            p99 = lat[int(len(lat) * 0.99) - 1]
            mib_s = _throughput(base + "large")
            print(
                f"{name:8} get-small median {statistics.median(lat):6.2f} ms "
                f"p99 {p99:6.2f} ms   get-large {mib_s:7.1f} MiB/s"
            )
        web.cancel()


if __name__ == "__main__":
    main()
