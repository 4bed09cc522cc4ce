"""Measure the VMs' network: pasta vs slirp4netns, and a VM vs the host.

Run as root (it makes network namespaces and a veth pair on TEST-NET-2, 198.51.100.0/24,
removed afterwards; nothing else is targeted)::

    python benchmarks/network.py [--data-dir /var/tmp/arker-bench-net] [--runs 20]

Prints medians and ratios, all in one run:
  * pasta vs slirp4netns on a bare namespace: set-up (namespace + tool ready), TCP
    connect latency and download throughput to the outside test host;
  * a VM (``--network private``) vs the host, to the same test host: TCP connect
    latency and download throughput;
  * the first run of a new VM (its namespace and pasta are made) vs a run on a VM
    whose namespace is set up;
  * ``echo`` through ``Engine.run`` with ``private`` vs ``host``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arker.local.sandbox import Engine
from arker.local.sandbox.netns import CLONE_NEWNET, new_netns
from arker.local.sandbox.network import pasta_argv
from tests.kit.outside_host import outside_host

BASE = "base"
MIB = 1 << 20
BULK_PORT = 7999
BULK = (
    "import socket,threading\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('{addr}',{port})); s.listen(64)\n"
    "buf=b'x'*(1<<20)\n"
    "def send(c):\n"
    " n=int(c.recv(32))\n"
    " for _ in range(n): c.sendall(buf)\n"
    " c.close()\n"
    "while True:\n"
    " c,_=s.accept(); threading.Thread(target=send,args=(c,)).start()\n"
)
# Connect latency (median of N connects) and a download of M MiB, printed as one line.
PROBE = """
import socket, statistics, sys, time
addr = sys.argv[1]
port, bport, n, mib = (int(a) for a in sys.argv[2:6])
lat = []
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((addr, port))
    lat.append(time.perf_counter() - t)
    s.recv(16); s.close()
s = socket.create_connection((addr, bport)); s.sendall(str(mib).encode()); got = 0
t = time.perf_counter()
while True:
    b = s.recv(1 << 20)
    if not b: break
    got += len(b)
el = time.perf_counter() - t
print(statistics.median(lat) * 1000, got / el / (1 << 20))
"""

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(fd: int, fn: Callable[[], object]) -> object:
    box: list[object] = []

    def body() -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        box.append(fn())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return box[0]


def probe_here(addr: str, port: int, n: int, mib: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, addr, str(port), str(BULK_PORT), str(n), str(mib)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


def start_tool(tool: str, fd: int, tmp: str) -> tuple[subprocess.Popen[bytes], float]:
    """Start pasta or slirp4netns on the namespace ``fd``; return it and the set-up time."""
    t = time.perf_counter()
    if tool == "pasta":
        pid_file = os.path.join(tmp, "pasta.pid")
        argv = pasta_argv(shutil.which("pasta") or "pasta", f"/proc/self/fd/{fd}", pid_file)
        proc = subprocess.Popen(argv, pass_fds=(fd,), stderr=subprocess.DEVNULL)
        while not os.path.exists(pid_file):
            time.sleep(0.001)
        os.unlink(pid_file)
    else:
        r, w = os.pipe()
        ns = f"/proc/self/fd/{fd}"
        argv = ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                "--netns-type=path", "--ready-fd", str(w), ns, "tap0"]  # fmt: skip
        proc = subprocess.Popen(
            argv, pass_fds=(fd, w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(w)
        os.read(r, 1)
        os.close(r)
    return proc, time.perf_counter() - t


def compare_tools(addr: str, port: int, runs: int, mib: int) -> None:
    tmp = tempfile.mkdtemp(prefix="arker-bench-net-")
    print("pasta vs slirp4netns (a bare namespace, to the test host):")
    for tool in ("pasta", "slirp4netns"):
        if shutil.which(tool) is None:
            print(f"  {tool}: not installed")
            continue
        setups, lats, rates = [], [], []
        for _ in range(max(3, runs // 4)):
            t = time.perf_counter()
            fd = new_netns()
            proc, _ = start_tool(tool, fd, tmp)
            setups.append(time.perf_counter() - t)
            try:
                lat, rate = in_netns(fd, lambda: probe_here(addr, port, runs, mib))  # type: ignore[misc]
                lats.append(lat)
                rates.append(rate)
            finally:
                proc.kill()
                proc.wait()
                os.close(fd)
        print(
            f"  {tool:12s} set-up {statistics.median(setups) * 1000:7.1f} ms   "
            f"connect {statistics.median(lats):6.3f} ms   "
            f"download {statistics.median(rates):8.1f} MiB/s"
        )
    shutil.rmtree(tmp, ignore_errors=True)


def vm_probe(eng: Engine, vm: str, addr: str, port: int, n: int, mib: int) -> tuple[float, float]:
    cmd = f"python3 - {addr} {port} {BULK_PORT} {n} {mib} <<'EOF'\n{PROBE}\nEOF"
    out = eng.run(vm, cmd, session="s", timeout=300)
    assert out.exit_code == 0, out.stderr
    lat, rate = out.stdout.split()
    return float(lat), float(rate)


def echo_ms(eng: Engine, vm: str, runs: int) -> float:
    eng.run(vm, "true", session="e", timeout=30)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        eng.run(vm, "echo hi", session="e", timeout=30)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("/var/tmp/arker-bench-net"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=256, help="download size (MiB)")
    args = parser.parse_args()
    with outside_host() as host:
        bulk = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.ns,
                sys.executable,
                "-c",
                BULK.format(addr=host.addr, port=BULK_PORT),
            ]
        )
        try:
            time.sleep(0.5)
            compare_tools(host.addr, host.port, args.runs, args.mib)
            lat_h, rate_h = probe_here(host.addr, host.port, args.runs, args.mib)
            results: dict[str, float] = {}
            for mode in ("private", "host"):
                shutil.rmtree(args.data_dir, ignore_errors=True)
                with Engine(args.data_dir, network=mode) as eng:
                    eng.ensure_base(BASE)
                    results[f"echo_{mode}"] = echo_ms(eng, BASE, args.runs)
                    if mode != "private":
                        continue
                    lat_v, rate_v = vm_probe(eng, BASE, host.addr, host.port, args.runs, args.mib)
                    first, later = [], []
                    for i in range(max(3, args.runs // 4)):
                        vm = f"vm{i}"
                        eng.fork(BASE, vm)
                        t = time.perf_counter()
                        eng.run(vm, "true", session="f", timeout=30)
                        first.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        eng.run(vm, "true", session="f", timeout=30)
                        later.append(time.perf_counter() - t)
                    results["first"] = statistics.median(first) * 1000
                    results["later"] = statistics.median(later) * 1000
            shutil.rmtree(args.data_dir, ignore_errors=True)
        finally:
            bulk.kill()
            bulk.wait()
    print("a VM (--network private) vs the host, to the test host:")
    print(f"  connect   VM {lat_v:6.3f} ms   host {lat_h:6.3f} ms   ratio {lat_v / lat_h:5.2f}x")
    print(f"  download  VM {rate_v:7.1f} MiB/s   host {rate_h:7.1f} MiB/s   "
          f"ratio {rate_v / rate_h:5.2f}x")  # fmt: skip
    first, later = results["first"], results["later"]
    print(f"first run of a new VM {first:6.1f} ms   a set-up VM's run "
          f"{later:6.1f} ms   ratio {first / later:5.2f}x")  # fmt: skip
    ratio = results["echo_private"] / results["echo_host"]
    print(f"echo: private {results['echo_private']:6.2f} ms   host {results['echo_host']:6.2f} ms"
          f"   ratio {ratio:5.3f}x (target: within 1.10x)")  # fmt: skip


if __name__ == "__main__":
    main()
