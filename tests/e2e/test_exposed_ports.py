"""Exposed ports against a real `arker serve`: a server started as a live run inside a
VM is reached from the host through its secret URL (plain HTTP and a WebSocket
upgrade relayed byte for byte); the URL with its secret missing or altered, after
``unexpose`` and after the VM's deletion is refused with the same 404; other orgs
cannot see or expose a VM's ports."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from arker import Arker, ExposedPort, NotFoundError
from arker._ids import new_ulid
from arker.testing import ArkerServer

pytestmark = pytest.mark.e2e

# A raw upgrade endpoint in the VM (python3 stdlib only): it answers 101, sends back
# the request line it got, then echoes every byte until the client closes.
_ECHO = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(8)
while True:
    c, _ = srv.accept(); head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    first, _, rest = head.partition(b"\r\n\r\n")
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\n" + first.split(b"\r\n")[0] + b"\n" + rest)
    while data := c.recv(4096):
        c.sendall(data)
    c.close()
"""


@pytest.fixture(autouse=True, scope="module")
def _no_unhandled_errors(arker_server: ArkerServer) -> Iterator[None]:
    """No request of this module may reach the server's 500 handler or log a traceback."""
    log = arker_server.log_path
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists():
        with open(log, "rb") as f:
            f.seek(start)
            new = f.read().decode(errors="replace")
        assert "unhandled error" not in new, new[-4000:]
        assert "Traceback" not in new, new[-4000:]


# An HTTP server in the VM that answers a POST with the method, path and body it got.
_POST_ECHO = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size); self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out = self.path.encode() + b"\n" + body
        self.send_response(201); self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Seen-Host", self.headers["Host"]); self.end_headers()
        self.wfile.write(out)
HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


def _free_port() -> int:
    # While VMs share the host's network (the stand-in of a VM's own network), their
    # ports are the host's: take one nobody uses.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def vm_id(arker_client: Arker) -> Iterator[str]:
    vm = arker_client.vms.fork("arkuntu", name=f"ports-{new_ulid().lower()}")
    yield vm.vm_id
    with contextlib.suppress(NotFoundError):  # some tests delete it
        arker_client.vms.delete(vm.vm_id)


def _get_when_up(url: str) -> requests.Response:
    """GET ``url`` until the server in the VM has started (a 502 before)."""
    deadline = time.monotonic() + 30
    while True:
        r = requests.get(url, timeout=30)
        if r.status_code != 502 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.fixture
def web(arker_client: Arker, vm_id: str) -> Iterator[tuple[ExposedPort, int]]:
    """A `python3 -m http.server` in the VM serving /home/user/site, exposed."""
    port = _free_port()
    arker_client.sync.write(vm_id, "/home/user/site/index.html", b"<h1>hello from the vm</h1>")
    handle = arker_client.runs.start(
        vm_id,
        f"cd /home/user/site && exec python3 -m http.server {port} --bind 127.0.0.1",
        session_id="web",
    )
    exposed = arker_client.vms.expose(vm_id, port)
    yield exposed, port
    with contextlib.suppress(NotFoundError):  # the test deleted the VM
        handle.cancel()


def test_the_host_fetches_a_page_from_a_server_in_the_vm_through_the_url(
    web: tuple[ExposedPort, int], arker_client: Arker, vm_id: str
) -> None:
    exposed, port = web
    assert exposed.port == port
    r = _get_when_up(exposed.url + "index.html")
    assert (r.status_code, r.content) == (200, b"<h1>hello from the vm</h1>")
    missing = requests.get(exposed.url + "nope.txt", timeout=30)
    assert missing.status_code == 404  # the VM server's own answer, relayed
    assert [(p.port, p.url) for p in arker_client.vms.list_ports(vm_id)] == [(port, exposed.url)]
    assert arker_client.vms.expose(vm_id, port).url == exposed.url  # exposing again: same URL


def test_a_url_with_its_secret_missing_or_altered_is_refused_like_an_unknown_port(
    web: tuple[ExposedPort, int], arker_client: Arker, vm_id: str
) -> None:
    exposed, port = web
    assert _get_when_up(exposed.url).status_code == 200
    prefix, token = exposed.url.rstrip("/").rsplit("/", 1)
    altered = token[:-1] + ("0" if token[-1] != "0" else "1")
    unexposed_port = 1 if port != 1 else 2
    for url in (
        f"{prefix}/{altered}/",
        f"{prefix}/",
        f"{prefix}/{token.upper()}/",
        f"{prefix.rsplit('/', 1)[0]}/{unexposed_port}/{token}/",
    ):
        r = requests.get(url, timeout=30)
        assert r.status_code == 404, url
        assert r.json()["error"] == {"code": "not_found", "message": "no exposed port at this URL"}
    # A WebSocket upgrade with the altered secret gets the same refusal, then the end.
    sock, got = _upgrade(f"{prefix}/{altered}/")
    with sock:
        assert got.startswith(b"HTTP/1.1 404"), got
        assert b'"code": "not_found"' in got or b'"code":"not_found"' in got


def test_the_url_stops_working_after_unexpose_and_after_delete(
    web: tuple[ExposedPort, int], arker_client: Arker, vm_id: str
) -> None:
    exposed, port = web
    assert _get_when_up(exposed.url).status_code == 200
    arker_client.vms.unexpose(vm_id, port)
    assert requests.get(exposed.url, timeout=30).status_code == 404
    assert arker_client.vms.list_ports(vm_id) == []
    again = arker_client.vms.expose(vm_id, port)
    assert again.url != exposed.url  # a new secret
    assert _get_when_up(again.url).status_code == 200
    arker_client.vms.delete(vm_id)
    assert requests.get(again.url, timeout=30).status_code == 404


def _upgrade(url: str) -> tuple[socket.socket, bytes]:
    """Send a WebSocket upgrade to ``url`` until it is not ``502`` (the server in the
    VM not listening yet): the socket and what came back so far (a head at least)."""
    split = urlsplit(url)
    target = split.path + (f"?{split.query}" if split.query else "")
    head = (
        f"GET {target} HTTP/1.1\r\nHost: {split.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + 30
    while True:
        sock = socket.create_connection((split.hostname, split.port), timeout=30)
        sock.sendall(head)
        got = b""
        while b"\r\n\r\n" not in got and (block := sock.recv(4096)):
            got += block
        if not got.startswith(b"HTTP/1.1 502") or time.monotonic() > deadline:
            return sock, got
        sock.close()  # the server in the VM is not listening yet (502)
        time.sleep(0.1)


def test_a_websocket_upgrade_is_relayed_byte_for_byte_both_ways_until_unexposed(
    arker_client: Arker, vm_id: str, arker_server: ArkerServer
) -> None:
    port = _free_port()
    arker_client.sync.write(vm_id, "/home/user/echo.py", _ECHO.encode())
    handle = arker_client.runs.start(vm_id, f"exec python3 /home/user/echo.py {port}")
    try:
        exposed = arker_client.vms.expose(vm_id, port)
        sock, got = _upgrade(exposed.url + "chat?room=1")
        with sock:
            assert got.startswith(b"HTTP/1.1 101"), got
            rest = got.partition(b"\r\n\r\n")[2]
            while not rest.endswith(b"\n"):
                rest += sock.recv(4096)
            assert rest == b"GET /chat?room=1 HTTP/1.1\n"  # the VM sees its own path
            payload = bytes(range(256)) * 64  # not HTTP, not even UTF-8
            sock.sendall(payload)
            echoed = b""
            while len(echoed) < len(payload) and (block := sock.recv(65536)):
                echoed += block
            assert echoed == payload
            arker_client.vms.unexpose(vm_id, port)  # ends the open relay too
            sock.settimeout(30)
            assert sock.recv(4096) == b""
    finally:
        handle.cancel()


def test_request_bodies_stream_to_the_vm_with_their_length_or_in_chunks(
    arker_client: Arker, vm_id: str
) -> None:
    port = _free_port()
    arker_client.sync.write(vm_id, "/home/user/post_echo.py", _POST_ECHO.encode())
    handle = arker_client.runs.start(vm_id, f"exec python3 /home/user/post_echo.py {port}")
    try:
        url = arker_client.vms.expose(vm_id, port).url + "upload?name=a%20b"
        body = bytes(range(256)) * 12_288  # 3 MiB
        deadline = time.monotonic() + 30
        while (r := requests.post(url, data=body, timeout=60)).status_code == 502:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
        assert (r.status_code, r.content) == (201, b"/upload?name=a%20b\n" + body)
        assert r.headers["X-Seen-Host"] == f"127.0.0.1:{port}"
        chunked = requests.post(url, data=iter([b"one ", b"two ", b"three"]), timeout=60)
        assert (chunked.status_code, chunked.content) == (201, b"/upload?name=a%20b\none two three")
        # A body announced past the server's body limit is refused before it is read.
        split = urlsplit(url)
        with socket.create_connection((split.hostname, split.port), timeout=30) as sock:
            sock.sendall(
                f"POST {split.path}?{split.query} HTTP/1.1\r\nHost: {split.netloc}\r\n"
                f"Content-Length: {1 << 40}\r\n\r\nx".encode()
            )
            answer = b""
            while block := sock.recv(65536):  # the server closes after its answer
                answer += block
        assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer, answer
    finally:
        handle.cancel()


_CUT = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept(); c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"); c.close()
"""


def test_an_answer_the_vms_server_cuts_short_reaches_the_client_cut(
    arker_client: Arker, vm_id: str
) -> None:
    port = _free_port()
    arker_client.sync.write(vm_id, "/home/user/cut.py", _CUT.encode())
    handle = arker_client.runs.start(vm_id, f"exec python3 /home/user/cut.py {port}")
    try:
        url = arker_client.vms.expose(vm_id, port).url
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(url, timeout=30)
            except requests.exceptions.ChunkedEncodingError as exc:
                assert "IncompleteRead(10 bytes read, 90 more expected)" in str(exc)
                break  # not a complete-looking answer of 10 bytes
            assert r.status_code == 502 and time.monotonic() < deadline, r.content
            time.sleep(0.1)
    finally:
        handle.cancel()


def test_other_orgs_cannot_see_expose_or_unexpose_a_vms_ports(
    arker_server: ArkerServer, arker_client: Arker, vm_id: str
) -> None:
    arker_client.vms.expose(vm_id, 8000)
    with Arker(
        arker_server.create_key(f"ports-{new_ulid().lower()}"),
        base_url=arker_server.base_url,
        control_url=arker_server.control_url,
    ) as other:
        for call in (
            lambda: other.vms.list_ports(vm_id),
            lambda: other.vms.expose(vm_id, 8001),
            lambda: other.vms.unexpose(vm_id, 8000),
        ):
            with pytest.raises(NotFoundError):
                call()
    assert [p.port for p in arker_client.vms.list_ports(vm_id)] == [8000]


def test_bad_ports_are_refused_with_a_clear_400(arker_server: ArkerServer, vm_id: str) -> None:
    headers = {"Authorization": f"Bearer {arker_server.api_key}"}
    url = f"{arker_server.base_url}/api/v1/vms/{vm_id}/ports"
    for body in ({"port": 0}, {"port": 65536}, {"port": "80"}, {}):
        r = requests.post(url, json=body, headers=headers, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), body
    r = requests.delete(f"{url}/70000", headers=headers, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request")


def test_deleting_the_vm_ends_its_open_relays(arker_client: Arker, vm_id: str) -> None:
    port = _free_port()
    arker_client.sync.write(vm_id, "/home/user/echo.py", _ECHO.encode())
    arker_client.runs.start(vm_id, f"exec python3 /home/user/echo.py {port}")
    sock, got = _upgrade(arker_client.vms.expose(vm_id, port).url)
    with sock:
        assert got.startswith(b"HTTP/1.1 101"), got
        arker_client.vms.delete(vm_id)
        sock.settimeout(30)
        rest = b""
        while block := sock.recv(4096):
            rest += block  # the request line the echo server sent back, then the end
        assert rest.count(b"\n") <= 1


def test_open_connections_to_an_exposed_port_are_bounded_with_a_clear_429(
    arker_client: Arker, vm_id: str
) -> None:
    from arker.local.port_slots import ProxyLimits

    bound = ProxyLimits().per_port
    port = _free_port()
    # A listener that never accepts: each relayed upgrade waits there for its answer,
    # holding its slot.
    stall = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(256); time.sleep(600)"
    )
    handle = arker_client.runs.start(vm_id, f'exec python3 -c "{stall}"')
    socks: list[socket.socket] = []
    try:
        exposed = arker_client.vms.expose(vm_id, port)
        split = urlsplit(exposed.url)
        head = (
            f"GET {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ).encode()
        # Wait for the listener: until then an upgrade is answered 502 at once.
        deadline = time.monotonic() + 30
        while True:
            probe = socket.create_connection((split.hostname, split.port), timeout=2)
            probe.sendall(head)
            try:
                answer = probe.recv(4096)
            except TimeoutError:
                answer = b""  # no answer: it is held by the listener
            if not answer.startswith(b"HTTP/1.1 502") or time.monotonic() > deadline:
                break
            probe.close()
            time.sleep(0.1)
        socks.append(probe)
        extra = 5
        for _ in range(bound - 1 + extra):
            sock = socket.create_connection((split.hostname, split.port), timeout=30)
            sock.sendall(head)
            socks.append(sock)
        refused: list[bytes] = []
        waiting = set(socks[1:])
        deadline = time.monotonic() + 60
        while len(refused) < extra and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting), [], [], 1.0)
            for sock in ready:
                waiting.discard(sock)
                refused.append(sock.recv(4096))
        # Held connections stay silent (checked briefly: a late extra refusal shows).
        ready, _, _ = select.select(list(waiting), [], [], 0.5)
        refused += [sock.recv(4096) for sock in ready]
        assert len(refused) == extra, refused
        assert all(r.startswith(b"HTTP/1.1 429") and b"rate_limited" in r for r in refused)
    finally:
        for sock in socks:
            sock.close()
        handle.cancel()
