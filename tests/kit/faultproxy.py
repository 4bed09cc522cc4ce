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
========================  ===============================================================

The ``Host`` header is passed through, so presigned URLs the server mints point back at
the proxy and transfers are subject to faults too.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
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
    """

    seed: int = 0
    rate: float = 0.25
    faults: Sequence[str] = ALL_FAULTS
    delay_s: float = 2.0
    cut_fraction: float = 0.5
    applies: Callable[[str, str], bool] = lambda method, path: True
    injected: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._forced: list[str] = []

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
            elif self._rng.random() < self.rate:
                fault = self._rng.choice(list(self.faults))
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


class _Abort(Exception):
    """Stop handling this connection (it has been reset)."""


class FaultProxy:
    """Run a `FaultPlan` in front of ``upstream`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, upstream: str, plan: FaultPlan, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only talks to loopback upstreams")
        self.plan = plan
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.bytes_up = 0  # request body bytes forwarded upstream
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

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _any(self) -> None:
        plan = self.owner.plan
        fault = plan.choose(self.command, urlsplit(self.path).path)
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
        plan = self.owner.plan
        upstream = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=600
        )
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    upstream.putheader(key, value)
            upstream.endheaders()
            length = int(self.headers.get("Content-Length") or 0)
            cut_at = int(length * plan.cut_fraction) if fault == "reset_mid_upload" else -1
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
                upstream.send(chunk)
                self.owner.count_up(len(chunk))
                sent += len(chunk)
            if cut_at >= 0 and length == 0:
                _reset(self.connection)
                raise _Abort
            response = upstream.getresponse()
            body_len = int(response.getheader("Content-Length") or 0)
            if fault == "reset_after_send":
                response.read()
                _reset(self.connection)
                raise _Abort
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            chunked = response.getheader("Content-Length") is None and self.command != "HEAD"
            if chunked:
                # Upstream streamed without a length: buffer (small in practice) to send one.
                data = response.read()
                body_len = len(data)
            self.send_header("Content-Length", str(body_len))
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = body_len
            if fault in ("reset_mid_body", "truncate"):
                limit = int(body_len * plan.cut_fraction)
            written = 0
            source = iter([data]) if chunked else iter(lambda: response.read(_BLOCK), b"")
            for block in source:
                if written + len(block) > limit:
                    block = block[: max(0, limit - written)]
                self.wfile.write(block)
                written += len(block)
                if written >= limit:
                    break
            if written < body_len:
                self.wfile.flush()
                if fault == "truncate":
                    self.connection.shutdown(socket.SHUT_WR)
                    self.connection.close()
                else:
                    _reset(self.connection)
                raise _Abort
        finally:
            upstream.close()
