"""Per-call overhead of the SDK against a loopback HTTP/1.1 keep-alive server.

Measures, in one run, N sequential small calls (the list route, a tiny JSON envelope):

* ``sdk``: ``client.vms.list()`` on one `arker.Arker` (pooled keep-alive connection);
* ``floor``: a raw `http.client.HTTPConnection` keep-alive loop — the fastest Python can go;
* ``requests``: a bare `requests.Session.get` loop (informational);
* ``adapter``: a prepared request straight to requests' pooled adapter, and ``urllib3``:
  urllib3's pool alone — the cost floor of the stack the SDK is built on;
* ``per-conn``: `urllib.request.urlopen` per call, a new TCP connection each time
  (how arker 0.1.0 talks).

Each variant is warmed up, then run for several interleaved rounds; the median is
reported. This prints, it does not assert::

    python benchmarks/overhead.py --n 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import urllib3

from arker import Arker

BODY = json.dumps({"ok": True, "items": [], "total": 0}).encode()
PATH = "/api/v1/vms/list?limit=25&offset=0"


RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment with no Nagle delay: otherwise delayed ACKs
    # add ~40 ms per call and every variant measures the kernel, not the client.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.wfile.write(RESPONSE)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def start_server() -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def sdk_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    client = Arker(api_key="bench-key", base_url=url, control_url=url, max_retries=0)

    def run(n: int) -> None:
        for _ in range(n):
            client.vms.list()

    return run, client.close


def floor_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}

    def run(n: int) -> None:
        for _ in range(n):
            conn.request("GET", PATH, headers=headers)
            response = conn.getresponse()
            json.loads(response.read())

    return run, conn.close


def requests_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """Bare `requests.Session.get` on a kept-alive connection: the floor of the HTTP
    stack the SDK is built on (what the SDK itself adds is ``sdk`` minus this)."""
    session = requests.Session()
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}

    def run(n: int) -> None:
        for _ in range(n):
            json.loads(session.get(url + PATH, headers=headers, timeout=(10, 120)).content)

    return run, session.close


def adapter_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A prepared request straight to requests' pooled HTTPAdapter: the cheapest way to
    use the stack the SDK is built on (requests.Session + urllib3 pooling)."""
    session = requests.Session()
    adapter = session.get_adapter(url)
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}

    def run(n: int) -> None:
        for _ in range(n):
            prepared = requests.PreparedRequest()
            prepared.method, prepared.url, prepared.body = "GET", url + PATH, None
            prepared.headers = requests.structures.CaseInsensitiveDict(headers)
            json.loads(adapter.send(prepared, timeout=(10, 120)).content)

    return run, session.close


def urllib3_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """urllib3's connection pool alone, under requests."""
    host, port = url.removeprefix("http://").split(":")
    pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1)
    headers = {"Authorization": "Bearer bench-key", "Accept": "application/json"}

    def run(n: int) -> None:
        for _ in range(n):
            json.loads(pool.urlopen("GET", PATH, headers=headers, retries=False).data)

    return run, pool.close


def per_connection_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    headers = {"authorization": "Bearer bench-key", "content-type": "application/json"}

    def run(n: int) -> None:
        for _ in range(n):
            request = urllib.request.Request(url + PATH, headers=headers)
            with urllib.request.urlopen(request, timeout=30) as response:
                json.loads(response.read())

    return run, lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per variant")
    args = parser.parse_args()
    logging.getLogger("arker").setLevel(logging.WARNING)  # as in production: no handler

    server, url = start_server()
    variants = {
        "sdk": sdk_loop(url),
        "floor": floor_loop(url),
        "requests": requests_loop(url),
        "adapter": adapter_loop(url),
        "urllib3": urllib3_loop(url),
        "per-conn": per_connection_loop(url),
    }
    # The per-connection loop is slow and fills TIME_WAIT; give it fewer calls per round.
    calls = {name: args.n for name in variants}
    calls["per-conn"] = max(1, args.n // 4)
    try:
        for run, _ in variants.values():
            run(args.warmup)
        per_call: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (run, _) in variants.items():
                started = time.perf_counter()
                run(calls[name])
                per_call[name].append((time.perf_counter() - started) / calls[name])
    finally:
        for _, close in variants.values():
            close()
        server.shutdown()
        server.server_close()

    median = {name: statistics.median(times) for name, times in per_call.items()}
    header = f"{'variant':<10} {'calls/round':>11} {'calls/s':>10} {'us/call':>9}"
    print(f"{header}  (median of {args.rounds} rounds)")
    for name, seconds in median.items():
        print(f"{name:<10} {calls[name]:>11} {1 / seconds:>10.0f} {seconds * 1e6:>9.1f}")
    sdk_vs_floor = median["sdk"] / median["floor"]
    speedup = median["per-conn"] / median["sdk"]
    print(f"SDK / floor (time per call):      {sdk_vs_floor:.2f}x  (target <= 1.5x)")
    print(f"per-conn / SDK (time per call):   {speedup:.2f}x  (SDK faster when > 1)")
    print(f"SDK / bare requests:              {median['sdk'] / median['requests']:.2f}x")
    adapter_vs_floor = median["adapter"] / median["floor"]
    print(f"SDK / requests adapter:           {median['sdk'] / median['adapter']:.2f}x")
    print(f"adapter / floor (stack's cost):   {adapter_vs_floor:.2f}x")
    print(f"urllib3 / floor:                  {median['urllib3'] / median['floor']:.2f}x")
    print(f"({len(os.environ)} environment variables: requests scans them on every call)")


if __name__ == "__main__":
    main()
