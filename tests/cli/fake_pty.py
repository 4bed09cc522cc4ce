"""A fake PTY WebSocket route on loopback, for ``arker shell``: it checks the upgrade
request, prints a prompt, echoes what it gets, records controls and closes on Ctrl-D."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
from typing import Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B3A"


class FakePty:
    def __init__(self, api_key: str, refuse: tuple[int, dict[str, Any]] | None = None) -> None:
        self.api_key = api_key
        self.refuse = refuse
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []
        self.received = b""
        self.controls: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            lines = head.decode().split("\r\n")
            self.requests.append(lines[0])
            fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            if fields.get("authorization") != f"Bearer {self.api_key}":
                self._answer(conn, 401, {"code": "unauthorized", "message": "bad key"})
                return
            if self.refuse is not None:
                self._answer(conn, *self.refuse)
                return
            accept = base64.b64encode(
                hashlib.sha1((fields["sec-websocket-key"] + GUID).encode()).digest()
            ).decode()
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
            )
            conn.sendall(_frame(0x2, b"$ ") + _frame(0x9, b"ping?"))
            buffer = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while (frame := _parse(buffer)) is not None:
                    opcode, payload, buffer = frame
                    if opcode == 0x1:
                        self.controls.append(json.loads(payload))
                    elif opcode == 0x2:
                        self.received += payload
                        if b"\x04" in payload:
                            conn.sendall(_frame(0x8, struct.pack("!H", 1000)))
                            return
                        conn.sendall(_frame(0x2, payload.upper()))

    def _answer(self, conn: socket.socket, status: int, error: dict[str, Any]) -> None:
        body = json.dumps({"ok": False, "error": error}).encode()
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


def _frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


def _parse(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """One masked client frame off ``buffer``: (opcode, payload, the rest)."""
    if len(buffer) < 2:
        return None
    assert buffer[1] & 0x80, "client frames must be masked"
    length, at = buffer[1] & 0x7F, 2
    if length == 126:
        (length,), at = struct.unpack_from("!H", buffer, 2), 4
    elif length == 127:
        (length,), at = struct.unpack_from("!Q", buffer, 2), 10
    if len(buffer) < at + 4 + length:
        return None
    mask = buffer[at : at + 4]
    data = buffer[at + 4 : at + 4 + length]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return buffer[0] & 0x0F, payload, buffer[at + 4 + length :]
