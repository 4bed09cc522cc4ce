"""A minimal WebSocket client (RFC 6455) for ``arker shell``: the opening handshake
with the client's headers, masked frames out, whole messages in.

Small on purpose: one connection, no extensions, no subprotocols, read when the
socket is readable (`WebSocket.receive` never blocks past one ``recv``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["BINARY", "CLOSE", "TEXT", "HandshakeRefused", "WebSocket"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B3A"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HEAD = 64 * 1024


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class WebSocket:
    """One client connection. ``connect`` opens it; ``send``, ``receive``, ``close``."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self._buffer = bytearray(leftover)
        self._message: list[bytes] = []
        self._message_opcode = BINARY
        self.closed = False

    @classmethod
    def connect(cls, url: str, headers: Mapping[str, str], timeout: float | None = 30) -> WebSocket:
        """Open ``url`` (``http(s)://``; the scheme picks plain or TLS).

        Raises:
            HandshakeRefused: Any answer but ``101 Switching Protocols``.
            OSError: The connection failed.
        """
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if tls else 80)
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head, rest = _read_head(sock)
        status, fields = _parse_head(head)
        if status != 101:
            raise HandshakeRefused(status, _read_body(sock, rest, fields))
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != expected:
            sock.close()
            raise HandshakeRefused(status, b"bad Sec-WebSocket-Accept")
        sock.settimeout(None)
        return cls(sock, rest)

    def send(self, data: bytes, opcode: int = BINARY) -> None:
        """One whole message (client frames are masked, as the protocol requires)."""
        mask = os.urandom(4)
        length = len(data)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        self.sock.sendall(head + mask + _masked(data, mask))

    def receive(self) -> list[tuple[int, bytes]]:
        """Read what the socket holds now (one ``recv``) and return the whole messages
        it completes; answers pings. An empty read or a close frame sets ``closed``."""
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
        self._buffer += data
        return self.pending()

    def pending(self) -> list[tuple[int, bytes]]:
        """The whole messages already buffered (the handshake may have read some)."""
        messages = []
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode == PING:
                self.send(payload, PONG)
            elif opcode == CLOSE:
                if not self.closed:
                    self.closed = True
                    self.send(payload[:2], CLOSE)
                messages.append((CLOSE, payload))
            elif opcode == PONG:
                continue
            else:
                if opcode != CONTINUATION:
                    self._message_opcode = opcode
                self._message.append(payload)
                if fin:
                    messages.append((self._message_opcode, b"".join(self._message)))
                    self._message = []
        return messages

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.send(struct.pack("!H", 1000), CLOSE)
        self.sock.close()

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, length = bool(buf[1] & 0x80), buf[1] & 0x7F
        at = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            at = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            at = 10
        mask = b""
        if masked:
            mask, at = bytes(buf[at : at + 4]), at + 4
        if len(buf) < at + length:
            return None
        payload = bytes(buf[at : at + length])
        del buf[: at + length]
        return fin, opcode, _masked(payload, mask) if masked else payload


def _masked(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    key = int.from_bytes((mask * (len(data) // 4 + 1))[: len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > _MAX_HEAD:
            raise HandshakeRefused(0, b"the server closed the connection during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise HandshakeRefused(0, f"not HTTP: {status_line[:80]!r}".encode()) from None
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields


def _read_body(sock: socket.socket, rest: bytes, fields: Mapping[str, str]) -> bytes:
    try:
        wanted = int(fields.get("content-length", "0"))
    except ValueError:
        wanted = 0
    body = rest
    while len(body) < min(wanted, _MAX_HEAD):
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    sock.close()
    return body[:wanted]
