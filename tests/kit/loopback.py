"""A real HTTP/1.1 keep-alive server on 127.0.0.1 (port 0) for the SDK tests where real
sockets matter (timeouts, connection reuse, resets); ``behaviour(handler)`` answers."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
    """Answer with ``obj`` as a JSON body."""
    body = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def reset_connection(handler: BaseHTTPRequestHandler) -> None:
    """Abort the TCP connection (RST) without answering."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    handler.connection.close()


LIST_OK = {"ok": True, "items": [], "total": 0}


class LoopbackServer:
    """Counts accepted TCP connections and requests; ``behaviour(handler)`` answers."""

    send_json = staticmethod(send_json)
    reset_connection = staticmethod(reset_connection)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.behaviour: Callable[[BaseHTTPRequestHandler], None] = lambda h: send_json(
            h, 200, LIST_OK
        )
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between writes
            timeout = 10

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner.lock:
                    owner.requests.append((self.command, self.path, dict(self.headers)))
                try:
                    owner.behaviour(self)
                except OSError:  # the client gave up (e.g. its read timeout)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = super().get_request()
                with owner.lock:
                    owner.connections += 1
                return conn, addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
