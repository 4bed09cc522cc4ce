"""Why ``arker[local]`` pulls in uvloop: uvicorn's raw upload throughput per stack.

Serves a minimal ASGI app that reads and discards a request body, under each uvicorn
HTTP/event-loop pair available, and PUTs the same file to it with curl. Prints the
median MB/s of each pair and its ratio ("x base") to the pure-Python pair (h11 + asyncio),
measured in the same run. It does not assert::

    python benchmarks/http_stack.py [--mib 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def sink(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, answer with its length."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(http: str, loop: str, path: str, repeat: int) -> float:
    """Median seconds of ``repeat`` curl PUTs of ``path`` to a fresh server."""
    port = _free_port()
    config = uvicorn.Config(
        sink, host="127.0.0.1", port=port, http=http, loop=loop, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}/"
    times = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", "/dev/null", "-T", path, url], check=True)
            times.append(time.perf_counter() - started)
    finally:
        server.should_exit = True
        thread.join()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # arker serve runs h11 (see arker/local/server.py) on uvloop when installed.
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    pairs = [("h11", "asyncio")] + ([("h11", "uvloop")] if has_uvloop else [])
    if importlib.util.find_spec("httptools"):
        pairs.append(("httptools", "asyncio"))
        if has_uvloop:
            pairs.append(("httptools", "uvloop"))
    size = args.mib * 1024 * 1024
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1024 * 1024))
        f.flush()
        results = [(http, loop, measure(http, loop, f.name, args.repeat)) for http, loop in pairs]
    base = size / results[0][2]
    print(f"{'http':<11}{'loop':<9}{'seconds':>9}{'MB/s':>9}{'x base':>8}")
    for http, loop, seconds in results:
        rate = size / seconds
        print(f"{http:<11}{loop:<9}{seconds:>9.3f}{rate / 1e6:>9.1f}{rate / base:>8.2f}")


if __name__ == "__main__":
    main()
