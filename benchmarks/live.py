"""Live runs on `arker serve`, in raw HTTP, printed as ratios in one run.

Starts its own server (root + bubblewrap), then measures:

* ``follow``: latency from a line written by a command in the VM to that line in the
  hands of a raw HTTP follower of ``…/runs/{id}/output`` (long-poll), median and p99;
  against ``poll-0.5s``: the same lines seen by polling ``GET …/runs/{id}`` every 0.5 s
  (the fallback of a client for a server without the extension). The command writes
  each line's wall-clock time (the VM shares the host's clock) at random intervals.
* ``start`` vs ``run``: round trip of ``POST …/runs`` with ``time_to_background: 0``
  for ``true`` against the 0.1.0 ``POST …/run`` of ``true``.
* ``fork-live`` vs ``fork-idle``: ``POST …/fork`` of a VM with a live writer (the
  fork freezes it and copies its upper) against a VM without runs.

It prints, it does not assert::

    python benchmarks/live.py [--lines 60] [--samples 20]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import threading
import time
from typing import Any

import requests
from _server import local_server

from arker._constants import ARKUNTU_ID

WRITER = (
    'exec python3 -c "import random, sys, time\n'
    "for i in range({n}):\n"
    "    time.sleep(random.uniform(0.05, 0.3))\n"
    "    sys.stdout.write('%d\\n' % time.time_ns()); sys.stdout.flush()\n\""
)


class Raw:
    def __init__(self, base_url: str, key: str) -> None:
        self.base = base_url.rstrip("/") + "/api/v1/vms"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, f"{self.base}{path}", timeout=120, **kw)
        assert r.status_code in (200, 202), r.text
        return r.json()

    def fork(self, vm: str) -> str:
        return str(self.call("POST", f"/{vm}/fork", json={"is_public": False})["vm_id"])

    def start(self, vm: str, command: str, session: str) -> str:
        body = {"command": command, "session_id": session, "time_to_background": 0}
        return str(self.call("POST", f"/{vm}/runs", json=body)["run_id"])


def _lat(lines: bytes, seen_at: int) -> list[float]:
    return [(seen_at - int(x)) / 1e6 for x in lines.split()]


def follow(raw: Raw, vm: str, lines: int) -> list[float]:
    run = raw.start(vm, WRITER.format(n=lines), "follow")
    out: list[float] = []
    offset = 0
    buf = b""
    while True:
        ans = raw.call(
            "GET", f"/{vm}/runs/{run}/output", params={"stdout_offset": offset, "wait": 20}
        )
        now = time.time_ns()
        data = base64.b64decode(ans["stdout"]["data"])
        offset = ans["stdout"]["next_offset"]
        buf += data
        whole, _, buf = buf.rpartition(b"\n")
        out += _lat(whole, now)
        if ans["done"]:
            return out


def poll(raw: Raw, vm: str, lines: int) -> list[float]:
    run = raw.start(vm, WRITER.format(n=lines), "poll")
    out: list[float] = []
    seen = 0
    while True:
        time.sleep(0.5)
        ans = raw.call("GET", f"/{vm}/runs/{run}")
        now = time.time_ns()
        text = ans["stdout"]
        whole = text[seen : text.rfind("\n") + 1]
        seen += len(whole)
        out += _lat(whole.encode(), now)
        if ans["state"] not in ("pending", "running"):
            return out


def timed(fn: Any, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=60, help="lines per latency case")
    parser.add_argument("--samples", type=int, default=20, help="round trips per case")
    parser.add_argument("--data-root", default="/var/tmp", help="where the data dir goes")
    args = parser.parse_args()
    with local_server(args.data_root) as (server, _):
        raw = Raw(server.base_url, server.api_key)
        vm = raw.fork(ARKUNTU_ID)
        results: dict[str, list[float]] = {}
        threads = [
            threading.Thread(
                target=lambda: results.__setitem__("follow", follow(raw, vm, args.lines))
            ),
            threading.Thread(
                target=lambda: results.__setitem__(
                    "poll-0.5s", poll(Raw(server.base_url, server.api_key), vm, args.lines)
                )
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def start_noop() -> None:
            raw.start(vm, "true", f"s{time.monotonic_ns()}")

        def run_noop() -> None:
            raw.call("POST", f"/{vm}/run", json={"command": "true", "session_id": "r"})

        results["start"] = timed(start_noop, args.samples)
        results["run"] = timed(run_noop, args.samples)
        time.sleep(1)  # let the started no-ops end

        idle = raw.fork(ARKUNTU_ID)
        raw.call("POST", f"/{idle}/run", json={"command": "echo x > /home/user/f"})
        live = raw.fork(ARKUNTU_ID)
        writer = raw.start(live, "while :; do echo line >> /home/user/log; sleep 0.01; done", "w")
        time.sleep(1)
        results["fork-idle"] = timed(lambda: raw.fork(idle), args.samples)
        results["fork-live"] = timed(lambda: raw.fork(live), args.samples)
        raw.call("DELETE", f"/{live}/runs/{writer}")

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'case':<12} {'median ms':>10} {'p99 ms':>10} {'n':>5}")
    for k, v in results.items():
        print(f"{k:<12} {med[k]:>10.2f} {p99(v):>10.2f} {len(v):>5}")
    print(
        f"latency poll-0.5s / follow: median {med['poll-0.5s'] / med['follow']:.1f}x, "
        f"p99 {p99(results['poll-0.5s']) / p99(results['follow']):.1f}x"
    )
    print(f"start / run (no-op): {med['start'] / med['run']:.2f}x")
    print(f"fork-live / fork-idle: {med['fork-live'] / med['fork-idle']:.2f}x")


if __name__ == "__main__":
    main()
