"""The HTTP front sheds abuse: connections that never finish a request head, sit idle
or stall in a body are closed; a body aimed at another org's VM is refused unread;
one client (a VM included) cannot hold more than its share of connections.

Bounds here are generous liveness limits (the server's own deadlines are 5-30 s), not
timings: on a server without these deadlines the connection stays open past them.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api, assert_healthy

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")

HEAD_TIMEOUT_S = 10.0  # FrontLimits defaults
BODY_IDLE_S = 30.0
PER_CLIENT = 64


def _connect(server: ArkerServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _closed_within(sock: socket.socket, bound_s: float, drip: bytes = b"") -> bytes:
    """Whatever the server sent until it closed ``sock``; fails if open after ``bound_s``.

    With ``drip``, one byte of it is sent every second meanwhile (a slowloris).
    """
    received = b""
    deadline = time.monotonic() + bound_s
    sock.settimeout(1.0)
    i = 0
    while time.monotonic() < deadline:
        if drip:
            try:
                sock.sendall(drip[i % len(drip) : i % len(drip) + 1])
            except OSError:
                return received
            i += 1
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return received
        if not data:
            return received
        received += data
    pytest.fail(f"connection still open after {bound_s} s; got {received[:200]!r}")


def test_a_connection_that_never_sends_is_closed(arker_server: ArkerServer) -> None:
    with _connect(arker_server) as sock:
        assert _closed_within(sock, HEAD_TIMEOUT_S + 20) == b""


def test_a_request_head_dripped_byte_by_byte_is_cut_off(arker_server: ArkerServer) -> None:
    with _connect(arker_server) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        got = _closed_within(sock, HEAD_TIMEOUT_S + 20, drip=b"X-Slow: aaaaaaaa\r\n")
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got


def _health_on(sock: socket.socket) -> None:
    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_an_idle_keep_alive_connection_is_closed_and_a_slow_next_head_too(
    arker_server: ArkerServer,
) -> None:
    with _connect(arker_server) as sock:
        _health_on(sock)
        assert _closed_within(sock, HEAD_TIMEOUT_S + 20) == b""
    with _connect(arker_server) as sock:
        _health_on(sock)
        got = _closed_within(sock, HEAD_TIMEOUT_S + 20, drip=b"GET /api/v1/health HTTP/1.1\r\n")
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got


def test_a_body_that_stops_coming_is_cut_off(arker_server: ArkerServer, vm: str) -> None:
    with _connect(arker_server) as sock:
        sock.sendall(
            f"POST /api/v1/vms/{vm}/run HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {arker_server.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            '{"command": "'.encode()
        )
        got = _closed_within(sock, BODY_IDLE_S + 30)
    # Whatever the app answered (the body was cut), the connection is gone.
    assert b"500" not in got.split(b"\r\n", 1)[0], got


def test_a_huge_body_for_another_orgs_vm_is_refused_unread(
    arker_server: ArkerServer, vm: str, other_key: str, api: Api
) -> None:
    for route in ("run", "sync", "fork"):
        conn = http.client.HTTPConnection("127.0.0.1", arker_server.port, timeout=20)
        try:
            conn.putrequest("POST", f"/api/v1/vms/{vm}/{route}")
            conn.putheader("Authorization", f"Bearer {other_key}")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(31 << 20))
            conn.endheaders()
            conn.send(b'{"command": "')
            resp = conn.getresponse()  # answered without the other 31 MB
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 404, body
        assert body["error"]["code"] == "not_found"
    assert_healthy(api, vm)


# The script a hostile VM runs: open many connections and hold them; report how many
# the server refused (an immediate 429) or closed.
_HOARD = r"""
import socket, sys, time
port, want = int(sys.argv[1]), int(sys.argv[2])
opened = []
for _ in range(want):
    try:
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass
time.sleep(1)
held = 0
for s in opened:
    s.setblocking(False)
    try:
        s.recv(64)  # an answer (429) or the end: refused
    except BlockingIOError:
        held += 1
print(held, want - held, flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_one_vm_cannot_hold_all_connections(arker_server: ArkerServer, api: Api) -> None:
    hoarder = api.fork()["vm_id"]
    bystander = api.fork()["vm_id"]
    api.run(hoarder, f"cat > /home/user/hoard.py <<'EOF'\n{_HOARD}\nEOF")
    result: dict[str, str] = {}

    def hoard() -> None:
        out = api.fresh().run(
            hoarder, f"python3 /home/user/hoard.py {arker_server.port} 300 8", timeout=120
        )
        result["stdout"] = out["stdout"]

    thread = threading.Thread(target=hoard)
    thread.start()
    time.sleep(4)  # the hoarder's connections are open (it holds them for 8 s)
    # Others are still served meanwhile: health, and another VM's run.
    assert_healthy(api.fresh(), bystander)
    thread.join(timeout=150)
    held, refused = (int(x) for x in result["stdout"].split())
    assert held <= PER_CLIENT, result
    assert refused >= 300 - PER_CLIENT, result
