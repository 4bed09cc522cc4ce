"""The relay behind exposed ports' URLs: HTTP requests and WebSocket upgrades.

Everything here runs on the server's event loop with asyncio streams: a proxied
connection holds no server thread (only the token check and the connect into the
VM's network run briefly in the thread pool).

- A plain request (`PortProxy.http`, an ASGI route) goes to ``127.0.0.1:{port}`` in
  the VM's network as one ``Connection: close`` request; the answer streams back. The
  request head is bounded by the HTTP front, the body by the server's body limit, the
  answer's head by `ProxyLimits.max_head_bytes`, the wait for it by
  `ProxyLimits.answer_timeout_s`.
- A WebSocket upgrade (`PortProxy.upgrade`, called by the front's h11 protocol before
  uvicorn's own WebSocket stack would take it) hands the client's connection over:
  its head goes to the VM's server as it came, and from then on bytes are relayed
  both ways untouched until either side closes (the VM's server answers the upgrade
  itself).
- Open connections are bounded per exposed port and per VM (`ConnectionSlots`):
  past either bound a request gets ``429 rate_limited``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import h11
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Send

from .errors import ApiError
from .port_slots import ConnectionSlots, ProxyLimits, open_in_vm
from .ports import PROXY_PREFIX, ExposedPorts, Target

__all__ = ["PortProxy"]

log = logging.getLogger("arker.local")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
_BLOCK = 64 * 1024
_GONE = (ConnectionError, OSError, RuntimeError)
"""What writing to a connection that went away raises (uvloop: ``RuntimeError``)."""


def _refusal(error: ApiError) -> bytes:
    body = json.dumps({"ok": False, "error": {"code": error.code, "message": error.message}})
    extra = "".join(f"{k}: {v}\r\n" for k, v in error.headers.items())
    return (
        f"HTTP/1.1 {error.status} {error.code.replace('_', ' ')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}"
        "connection: close\r\n\r\n" + body
    ).encode()


class PortProxy:
    """Relays requests on exposed ports' URLs to the ports inside the VMs.

    Args:
        ports: Resolves a URL to its VM and port.
        engine: The sandbox engine (`open_in_vm`).
        limits: The relay's bounds.
    """

    def __init__(self, ports: ExposedPorts, engine: Any, limits: ProxyLimits | None = None):
        self._ports = ports
        self._engine = engine
        self.limits = limits or ProxyLimits()
        self.slots = ConnectionSlots(self.limits)
        self._relays: set[asyncio.Task[None]] = set()
        self._open_to: dict[tuple[str, int], set[asyncio.StreamWriter]] = {}

    async def _open(
        self, raw_rest: str
    ) -> tuple[Target, asyncio.StreamReader, asyncio.StreamWriter]:
        """Check the URL, take a slot and connect; the caller must `_done` the target."""
        target = await run_in_threadpool(self._ports.resolve, raw_rest)
        self.slots.acquire(target.vm_id, target.port)
        try:
            sock = await run_in_threadpool(
                open_in_vm, self._engine, target.vm_id, target.port, self.limits.connect_timeout_s
            )
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, limit=_BLOCK)
        except BaseException:
            self.slots.release(target.vm_id, target.port)
            raise
        self._open_to.setdefault((target.vm_id, target.port), set()).add(writer)
        return target, reader, writer

    # --- plain HTTP ---------------------------------------------------------------------

    async def http(self, request: Request) -> StreamingResponse:
        """Relay one request (the route's handler)."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        rest = raw_path.decode("latin-1")[len(PROXY_PREFIX) :]
        query = request.scope.get("query_string", b"").decode("latin-1")
        target, reader, writer = await self._open(rest + (f"?{query}" if query else ""))
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_head_bytes)
            headers = [
                (k, v)
                for k, v in request.headers.raw
                if k.decode("latin-1").lower() not in _HOP_BY_HOP
            ]
            headers += [
                (b"host", f"127.0.0.1:{target.port}".encode()),
                (b"connection", b"close"),
                _body_framing(request),
            ]
            method = request.method.encode()
            out = conn.send(
                h11.Request(method=method, target=target.path.encode("latin-1"), headers=headers)
            )
            writer.write(out or b"")
            # The body streams through (the server's body limit still holds).
            async for block in request.stream():
                if block:
                    writer.write(conn.send(h11.Data(data=block)) or b"")
                    await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            answer = await asyncio.wait_for(
                _answer_head(conn, reader), self.limits.answer_timeout_s
            )
        except TimeoutError:
            self._done(target, writer)
            raise ApiError("unavailable", "the VM's server did not answer in time", 504) from None
        except (h11.ProtocolError, ConnectionError, OSError) as exc:
            self._done(target, writer)
            raise ApiError("unavailable", f"bad answer from the VM's server: {exc}", 502) from None
        except BaseException:
            self._done(target, writer)
            raise
        kept = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in answer.headers
            if k.decode("latin-1").lower() not in _HOP_BY_HOP - {"content-length"}
        ]
        response = _RelayedAnswer(
            _answer_body(
                conn,
                reader,
                method == b"HEAD",
                lambda: self._done(target, writer),
                lambda: setattr(response, "cut", True),
            ),
            status_code=answer.status_code,
            background=BackgroundTask(self._done, target, writer),
        )
        response.raw_headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in kept]
        return response

    def _done(self, target: Target, writer: asyncio.StreamWriter) -> None:
        key = (target.vm_id, target.port)
        writers = self._open_to.get(key, set())
        if writer in writers:
            writers.discard(writer)
            if not writers:
                del self._open_to[key]
            self.slots.release(target.vm_id, target.port)
        writer.close()

    def close_port(self, vm_id: str, port: int) -> None:
        """End every open connection to ``port`` of ``vm_id`` (it was unexposed).

        Call on the event loop.
        """
        for writer in list(self._open_to.get((vm_id, port), ())):
            writer.close()

    # --- WebSocket upgrades -------------------------------------------------------------

    def upgrade(
        self,
        transport: asyncio.Transport,
        raw_target: bytes,
        head: bytes,
        early: bytes,
        ended: Callable[[], None] = lambda: None,
    ) -> bool:
        """Take over an upgrade request's connection if it is aimed at an exposed port.

        Args:
            transport: The client's connection (its protocol is replaced here).
            raw_target: The request target as received.
            head: The request head as received (request line and headers, CRLF-ended).
            early: Bytes the client sent after the head.
            ended: Called once the connection is closed (the front's count of it).

        Returns:
            False (untouched) when the target is not under `PROXY_PREFIX`.
        """
        target = raw_target.decode("latin-1")
        if not target.startswith(PROXY_PREFIX):
            return False
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_BLOCK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        task = loop.create_task(
            self._relay_upgrade(target[len(PROXY_PREFIX) :], head, early, reader, writer)
        )
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        task.add_done_callback(lambda _: ended())
        return True

    async def _relay_upgrade(
        self,
        rest: str,
        head: bytes,
        early: bytes,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            target, vm_reader, vm_writer = await self._open(rest)
        except ApiError as exc:
            if not client_writer.is_closing():
                client_writer.write(_refusal(exc))
            client_writer.close()
            return
        except Exception:
            log.exception("exposed port: could not open the relay")
            client_writer.close()
            return
        try:
            vm_writer.write(_rewrite_head(head, target) + early)
            await vm_writer.drain()
            await _pipe_both(client_reader, client_writer, vm_reader, vm_writer)
        except _GONE:
            pass  # either side went away: the relay ends
        finally:
            client_writer.close()
            self._done(target, vm_writer)


def _body_framing(request: Request) -> tuple[bytes, bytes]:
    """How the relayed request frames its body: the client's length, else chunks."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        return (b"content-length", length.encode())
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return (b"transfer-encoding", b"chunked")
    return (b"content-length", b"0")


async def _answer_head(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Response:
    """Read the VM's answer up to its head (1xx answers skipped)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_BLOCK))
            continue
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the VM's server closed the connection without an answer")


class _RelayedAnswer(StreamingResponse):
    """A relayed answer: when the VM's answer is cut, the client's is cut too (its
    connection closed before the end), never ended as if it were complete."""

    cut = False

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not self.cut:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer_body(
    conn: h11.Connection,
    reader: asyncio.StreamReader,
    head_only: bool,
    end: Callable[[], None],
    cut: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The answer's body as it comes; ``end`` runs however it ends, ``cut`` first when
    the VM's server broke it off (closed early, or sent what is not HTTP)."""
    try:
        while not head_only:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_BLOCK))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            else:
                return  # EndOfMessage, ConnectionClosed
    except (h11.ProtocolError, *_GONE) as exc:
        log.info("exposed port: the answer from the VM was cut: %s", exc)
        cut()
    finally:
        end()


def _rewrite_head(head: bytes, target: Target) -> bytes:
    """The upgrade request's head for the VM: its own path, ``Host`` its address."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    version = rest.rpartition(b" ")[2]
    out = [b" ".join((method, target.path.encode("latin-1"), version))]
    for line in lines[1:]:
        if not line:
            continue
        name = line.partition(b":")[0].strip().lower()
        if name != b"host":
            out.append(line)
    out.append(f"host: 127.0.0.1:{target.port}".encode())
    return b"\r\n".join(out) + b"\r\n\r\n"


async def _pipe_both(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until both directions end (half-closes passed on)."""

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while block := await src.read(_BLOCK):
                dst.write(block)
                await dst.drain()
            if not dst.is_closing() and dst.can_write_eof():
                dst.write_eof()
        except _GONE:
            dst.close()

    await asyncio.gather(pipe(a_reader, b_writer), pipe(b_reader, a_writer))
