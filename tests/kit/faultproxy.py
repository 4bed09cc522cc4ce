"""A fault-injecting HTTP proxy for tests: loopback only, seeded, reproducible.

It sits between the SDK and a real ``arker serve``. Each request either passes through
untouched or suffers one fault, chosen by a seeded RNG so a failing seed reproduces:

========================  ===============================================================
``reset_before``          connection reset before the request reaches the server
``reset_after_send``      request fully served upstream, connection reset before replying
``reset_mid_body``        response headers and part of the body sent, then a reset
``reset_mid_upload``      part of the request body forwarded, then both sides reset
``status_429``            429 with ``Retry-After: 0``, not forwarded
``status_502/503/504``    that status, not forwarded
``throttle_envelope``     HTTP 200 with ``{"ok": false, "error": {"code": "internal",
                          "message": "SlowDown: please throttle"}}``, not forwarded
``delay``                 hold the request past the client's read timeout, then forward
``truncate``              forward, then send a response shorter than its Content-Length
``cut_after_headers``     served upstream; status line and headers forwarded (with the
                          Content-Length), then the connection closed without the body
``cut_mid_body``          served upstream; part of the body forwarded, then closed
``cut_mid_headers``       served upstream; the answer closed part-way through its headers,
                          before any Content-Length (a client then sees a close-delimited,
                          empty body)
========================  ===============================================================

The three ``cut_*`` faults (`CUT_FAULTS`) close with a clean FIN: the server acted, and
the client gets an answer cut by the transport. They are not in `ALL_FAULTS`.

Per-chunk faults: with ``FaultPlan(reset_every=N)`` the proxy resets the connection after
about every ``N`` bytes of request or response bodies it carries (each threshold drawn
between 0.75 N and 1.25 N), on the requests ``applies`` selects, whatever else happens to
them. What it forwarded before such a reset is delivered (it waits for the peer's
acknowledgement first); the server sees a PUT body end early, the client a reset.

`FaultProxy.bytes_up` and `FaultProxy.bytes_down` count the body bytes carried each way
(request bodies to the server, response bodies to the client), for assertions on the
bytes on the wire.

The ``Host`` header is passed through, so presigned URLs the server mints point back at
the proxy and transfers are subject to faults too.
"""

from __future__ import annotations

import array
import fcntl
import http.client
import json
import random
import socket
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ALL_FAULTS: tuple[str, ...] = (
    "reset_before",
    "reset_after_send",
    "reset_mid_body",
    "reset_mid_upload",
    "status_429",
    "status_502",
    "status_503",
    "status_504",
    "throttle_envelope",
    "delay",
    "truncate",
)

CUT_FAULTS: tuple[str, ...] = ("cut_after_headers", "cut_mid_body", "cut_mid_headers")
"""Answers cut by the transport after the server acted."""

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
_BLOCK = 256 * 1024


@dataclass
class FaultPlan:
    """Which requests get which faults.

    Attributes:
        seed: RNG seed; the same seed and request order give the same faults.
        rate: Probability that one request gets a fault.
        faults: The kinds to choose from.
        delay_s: How long ``delay`` holds a request (set above the client's read timeout).
        cut_fraction: Where ``reset_mid_upload``/``reset_mid_body`` cut, as a fraction.
        applies: Predicate on ``(method, path)``; others always pass through.
        max_faults: Most faults the RNG picks in all (forced ones not counted);
            `None` for no bound.
        reset_every: Reset a connection after about this many body bytes carried
            (per-chunk faults); `None` for none.
    """

    seed: int = 0
    rate: float = 0.25
    faults: Sequence[str] = ALL_FAULTS
    delay_s: float = 2.0
    cut_fraction: float = 0.5
    applies: Callable[[str, str], bool] = lambda method, path: True
    max_faults: int | None = None
    reset_every: int | None = None
    injected: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._chunk_rng = random.Random(self.seed + 1)
        self._lock = threading.Lock()
        self._forced: list[str] = []
        self._picked = 0
        self._budget = self._next_budget()

    def _next_budget(self) -> int:
        if self.reset_every is None:
            return -1
        return max(1, int(self.reset_every * self._chunk_rng.uniform(0.75, 1.25)))

    def carry(self, n: int) -> tuple[int, bool]:
        """How many of the next ``n`` body bytes may pass, and whether a per-chunk reset
        follows them (then the reset is counted and the next threshold drawn)."""
        with self._lock:
            if self._budget < 0:
                return n, False
            if n < self._budget:
                self._budget -= n
                return n, False
            allowed = self._budget
            self._budget = self._next_budget()
            self.injected["reset_every"] += 1
            return allowed, True

    def force(self, *faults: str) -> None:
        """Make the next requests get exactly these faults, in order."""
        with self._lock:
            self._forced.extend(faults)

    def choose(self, method: str, path: str) -> str:
        with self._lock:
            if not self.applies(method, path):
                fault = "pass"
            elif self._forced:
                fault = self._forced.pop(0)
            elif self._rng.random() < self.rate and (
                self.max_faults is None or self._picked < self.max_faults
            ):
                fault = self._rng.choice(list(self.faults))
                self._picked += 1
            else:
                fault = "pass"
            if fault == "throttle_envelope" and not path.startswith("/api/"):
                fault = "status_503"  # raw transfers have no JSON envelope to fake
            if fault != "pass":
                self.injected[fault] += 1
            self.log.append((method, path, fault))
            return fault


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', not a clean EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    """Close with FIN once the peer has every byte written: a clean, early end."""
    try:
        _wait_sent(sock)
        sock.shutdown(socket.SHUT_WR)
        sock.close()
    except OSError:
        pass


def _wait_sent(sock: socket.socket, limit_s: float = 10.0) -> None:
    """Wait until the peer acknowledged every byte written to ``sock`` (Linux), so a
    reset that follows discards nothing already counted as carried."""
    unsent = array.array("i", [0])
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, unsent)
        except OSError:
            return
        if unsent[0] == 0:
            return
        time.sleep(0.001)


class _Abort(Exception):
    """Stop handling this connection (it has been reset or closed)."""


class FaultProxy:
    """Run a `FaultPlan` in front of ``upstream`` (``http://127.0.0.1:PORT``).

    Attributes:
        bytes_up: Request body bytes forwarded to the server.
        bytes_down: Response body bytes forwarded to the client.
    """

    def __init__(self, upstream: str, plan: FaultPlan, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only talks to loopback upstreams")
        self.plan = plan
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.bytes_up = 0
        self.bytes_down = 0
        self._count_lock = threading.Lock()
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = _QuietServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def count_up(self, n: int) -> None:
        with self._count_lock:
            self.bytes_up += n

    def count_down(self, n: int) -> None:
        with self._count_lock:
            self.bytes_down += n

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Connections this proxy reset on purpose end in socket errors; they are the
        # point, not a problem worth a traceback.
        pass


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    chunk_faults = False  # per-chunk resets apply to this request

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _any(self) -> None:
        plan = self.owner.plan
        path = urlsplit(self.path).path
        fault = plan.choose(self.command, path)
        self.chunk_faults = plan.reset_every is not None and plan.applies(self.command, path)
        try:
            self._handle(fault)
        except _Abort:
            self.close_connection = True
        except (TimeoutError, ConnectionError, http.client.HTTPException):
            self.close_connection = True
            _reset(self.connection)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any

    # -- faults that never reach the server ------------------------------------------

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self._drain_request()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drain_request(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(_BLOCK, length))
            if not chunk:
                break
            length -= len(chunk)

    def _handle(self, fault: str) -> None:
        if fault == "reset_before":
            _reset(self.connection)
            raise _Abort
        if fault.startswith("status_"):
            status = int(fault.removeprefix("status_"))
            body = json.dumps(
                {"ok": False, "error": {"code": "unavailable", "message": f"injected {status}"}}
            ).encode()
            headers = {"Content-Type": "application/json"}
            if status == 429:
                headers["Retry-After"] = "0"
            self._reply(status, body, headers)
            return
        if fault == "throttle_envelope":
            body = json.dumps(
                {"ok": False, "error": {"code": "internal", "message": "SlowDown: please throttle"}}
            ).encode()
            self._reply(200, body, {"Content-Type": "application/json"})
            return
        if fault == "delay":
            time.sleep(self.owner.plan.delay_s)
        self._forward(fault)

    # -- forwarding --------------------------------------------------------------------

    def _forward(self, fault: str) -> None:
        upstream = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=600
        )
        try:
            self._send_request(upstream, fault)
            response = upstream.getresponse()
            if fault == "reset_after_send":
                response.read()
                _reset(self.connection)
                raise _Abort
            if fault == "cut_mid_headers":
                response.read()  # the server answered in full; the client gets a part
                self._cut_headers(response)
            self._send_response(response, fault)
        finally:
            upstream.close()

    def _send_request(self, upstream: http.client.HTTPConnection, fault: str) -> None:
        """Forward the request line, headers and body (the ``*_upload`` faults cut it)."""
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                upstream.putheader(key, value)
        upstream.endheaders()
        length = int(self.headers.get("Content-Length") or 0)
        cut_at = int(length * self.owner.plan.cut_fraction) if fault == "reset_mid_upload" else -1
        sent = 0
        while sent < length:
            want = min(_BLOCK, length - sent)
            if cut_at >= 0:
                want = min(want, cut_at - sent)
                if want <= 0:
                    _reset(self.connection)
                    if upstream.sock is not None:
                        _reset(upstream.sock)
                    raise _Abort
            chunk = self.rfile.read(want)
            if not chunk:
                raise _Abort
            allowed, reset = self._carry(len(chunk))
            upstream.send(chunk[:allowed])
            self.owner.count_up(allowed)
            sent += allowed
            if reset:
                # The server gets what was forwarded, then the end of the body; the
                # client, a reset.
                if upstream.sock is not None:
                    _close(upstream.sock)
                _reset(self.connection)
                raise _Abort
        if cut_at >= 0 and length == 0:
            _reset(self.connection)
            raise _Abort

    def _carry(self, n: int) -> tuple[int, bool]:
        return self.owner.plan.carry(n) if self.chunk_faults else (n, False)

    def _cut_headers(self, response: http.client.HTTPResponse) -> None:
        """Send the status line and part of the headers, never a Content-Length; close."""
        lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n".encode()]
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                lines.append(f"{key}: {value}\r\n".encode())
        block = b"".join(lines)
        cut = max(len(lines[0]), int(len(block) * self.owner.plan.cut_fraction))
        self.wfile.write(block[:cut])
        _close(self.connection)
        raise _Abort

    def _send_response(self, response: http.client.HTTPResponse, fault: str) -> None:
        plan = self.owner.plan
        body_len = int(response.getheader("Content-Length") or 0)
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        chunked = response.getheader("Content-Length") is None and self.command != "HEAD"
        data = b""
        if chunked:
            # Upstream streamed without a length: buffer (small in practice) to send one.
            data = response.read()
            body_len = len(data)
        self.send_header("Content-Length", str(body_len))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "cut_after_headers":
            response.read()
            _close(self.connection)
            raise _Abort
        limit = body_len
        if fault in ("reset_mid_body", "truncate", "cut_mid_body"):
            limit = int(body_len * plan.cut_fraction)
        written = 0
        source = iter([data]) if chunked else iter(lambda: response.read(_BLOCK), b"")
        for whole in source:
            block = whole[: max(0, limit - written)]
            allowed, reset = self._carry(len(block))
            self.wfile.write(block[:allowed])
            self.owner.count_down(allowed)
            written += allowed
            if reset:
                _wait_sent(self.connection)
                _reset(self.connection)
                raise _Abort
            if written >= limit:
                break
        if written < body_len:
            if fault in ("truncate", "cut_mid_body"):
                _close(self.connection)
            else:
                _reset(self.connection)
            raise _Abort
