"""Interactive terminals on `arker serve`: attach time, output rate, keystroke echo.

Starts its own server (root + bubblewrap), forks a VM, opens a session and, per
round, a terminal (``…/pty-ticket`` then the ``…/pty`` WebSocket), then measures:

* ``attach``: from the WebSocket's opening to the shell's first answer;
* ``output``: ``yes | head -c BYTES`` printed to the terminal (output post-processing
  off), read by the client as fast as it can: MB/s;
* ``echo``: one keystroke sent to its echo received, median and p95 of 20.

It prints, it does not assert::

    python benchmarks/pty.py [--rounds 3] [--bytes 50000000]
"""

from __future__ import annotations

import argparse
import time

import requests
from _server import local_server
from websockets.sync.client import connect

from arker._constants import ARKUNTU_ID


def _post(base: str, key: str, path: str, body: dict[str, object]) -> dict[str, object]:
    r = requests.post(base + path, json=body, headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    out: dict[str, object] = r.json()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=50_000_000)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    with local_server(args.data_root) as (server, _):
        base, key = server.base_url, server.api_key
        vm = _post(base, key, f"/api/v1/vms/{ARKUNTU_ID}/fork", {"is_public": False})["vm_id"]
        sid = _post(base, key, f"/api/v1/vms/{vm}/sessions", {})["session_id"]
        ws_base = base.replace("http://", "ws://", 1)
        for _ in range(args.rounds):
            path = f"/api/v1/vms/{vm}/sessions/{sid}/pty-ticket"
            ticket = _post(base, key, path, {})["ticket"]
            url = f"{ws_base}/api/v1/vms/{vm}/sessions/{sid}/pty?ticket={ticket}"
            t0 = time.monotonic()
            with connect(url, max_size=None) as ws:
                ws.send(b"echo rea''dy\n")
                seen = b""
                while b"ready" not in seen:
                    seen += bytes(ws.recv())
                t1 = time.monotonic()
                ws.send(f"stty -opost; yes | head -c {args.bytes}; echo; echo do''ne\n".encode())
                total, tail = 0, b""
                while b"done" not in tail:
                    frame = bytes(ws.recv())
                    total += len(frame)
                    tail = (tail + frame)[-64:]
                t2 = time.monotonic()
                echoes = []
                for _ in range(20):
                    start = time.monotonic()
                    ws.send(b"x")
                    got = b""
                    while b"x" not in got:
                        got += bytes(ws.recv())
                    echoes.append(time.monotonic() - start)
                echoes.sort()
            print(
                f"attach {1000 * (t1 - t0):.0f} ms; output {total / 1e6:.1f} MB in "
                f"{t2 - t1:.2f} s = {total / 1e6 / (t2 - t1):.0f} MB/s; echo median "
                f"{1000 * echoes[10]:.2f} ms, p95 {1000 * echoes[18]:.2f} ms"
            )


if __name__ == "__main__":
    main()
