"""The HTTP front: uvicorn's h11 protocol with the deadlines and caps that shed abuse.

uvicorn (0.54) arms no timer on a new connection, and cancels its keep-alive timer on
any byte received: a client that never completes its request head (slowloris), or
that stalls in the middle of a body, holds a connection and a descriptor forever.
`guarded_protocol` adds, per connection, one timer re-armed at each deadline:

- the request head must be complete `FrontLimits.head_timeout_s` after the connection
  opened or its previous answer was sent, however slowly its bytes arrive;
- while a body is read, the next byte must come within `FrontLimits.body_idle_s`
  (time the server itself stops reading, to push back, does not count);
- an idle keep-alive connection closes after `FrontLimits.keep_alive_s` (uvicorn's).

and caps open connections per client (`ClientCaps`): a refused connection gets one
``429 rate_limited`` (or, when the server-wide cap is reached, ``503 unavailable``)
answer and is closed. A client is an address; on loopback, an address and the uid
owning the peer socket (`arker.local.peer`), so a VM sharing the host's network is a
client of its own, not the same one as the user's SDK.

Body sizes are checked by `errors.BodyLimitMiddleware` (``Content-Length`` before
reading, chunked bodies while reading), keys and VM ownership by
`auth.RequireKeyMiddleware`, both before a body is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from collections import Counter
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import FrontLimits
from .peer import peer_uid


class ClientCaps:
    """Counts of open connections, per client and in all; thread-safe.

    Args:
        per_client: Most connections one client may hold open.
        total: Most connections in all.
    """

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> str | None:
        """Count one more connection of ``key``; None, or the wire code refusing it."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                return "unavailable"
            if self._open[key] >= self.per_client:
                return "rate_limited"
            self._open[key] += 1
            return None

    def release(self, key: str) -> None:
        """Forget one connection of ``key``."""
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]


def client_key(client: tuple[str, int] | None, server: tuple[str, int | None] | None) -> str:
    """Whom a connection counts against: its address, plus the peer's uid on loopback."""
    if client is None:
        return "unix"
    ip = client[0]
    try:
        loopback = ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return ip
    if loopback and server is not None and server[1] is not None:
        uid = peer_uid(client, (server[0], server[1]))
        if uid is not None:
            return f"{ip} uid {uid}"
    return ip


def _refusal(code: str, limits: ClientCaps) -> bytes:
    status, reason, message = (
        (429, "Too Many Requests", f"more than {limits.per_client} open connections")
        if code == "rate_limited"
        else (503, "Service Unavailable", "the server holds all the connections it can")
    )
    body = json.dumps({"ok": False, "error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


OnUpgrade = Callable[[asyncio.Transport, bytes, bytes, bytes, Callable[[], None]], bool]
"""Offered each WebSocket upgrade (transport, target, head, early bytes, and what to
call once the connection ends); True when it took the connection over (the exposed
ports' relay, `port_proxy.PortProxy.upgrade`)."""


def guarded_protocol(
    limits: FrontLimits, caps: ClientCaps, on_upgrade: OnUpgrade | None = None
) -> type[H11Protocol]:
    """The h11 protocol class for ``uvicorn.Config(http=...)`` under these limits."""

    class GuardedH11Protocol(H11Protocol):
        _cap_key: str | None = None
        _timer: asyncio.TimerHandle | None = None
        _waiting_since = 0.0
        _last_byte = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            key = client_key(self.client, self.server)
            refused = caps.acquire(key)
            if refused is not None:
                transport.write(_refusal(refused, caps))
                transport.close()
                return
            self._cap_key = key
            self._waiting_since = self._last_byte = self.loop.time()
            self._arm(limits.head_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._release()
            super().connection_lost(exc)

        def _release(self) -> None:
            """Stop this connection's timer and stop counting it."""
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._cap_key is not None:
                caps.release(self._cap_key)
                self._cap_key = None

        def data_received(self, data: bytes) -> None:
            self._last_byte = self.loop.time()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._waiting_since = self.loop.time()
            super().on_response_complete()
            self._arm(limits.head_timeout_s)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            if on_upgrade is not None:
                head = [event.method, b" ", event.target, b" HTTP/1.1\r\n"]
                for name, value in event.headers:
                    head += [name, b": ", value, b"\r\n"]
                head.append(b"\r\n")
                early = self.conn.trailing_data[0]
                ended = self._release  # it still counts against the client's caps
                if on_upgrade(self.transport, event.target, b"".join(head), early, ended):
                    # The relay owns the connection now: this protocol's deadlines end.
                    self.connections.discard(self)
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
                    return
            # Else the socket passes to the WebSocket protocol (a terminal, routes_pty):
            # the HTTP deadlines stop, and the client's slot is released when it closes.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            key, self._cap_key = self._cap_key, None
            super().handle_websocket_upgrade(event)
            if key is None:
                return
            upgraded = self.transport.get_protocol()
            lost = upgraded.connection_lost

            def release(exc: Exception | None) -> None:
                caps.release(key)
                lost(exc)

            upgraded.connection_lost = release  # type: ignore[method-assign]

        def _arm(self, delay: float) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(max(delay, 0.05), self._check)

        def _check(self) -> None:
            """Close the connection past its deadline; else re-arm for the next one."""
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            state = self.conn.their_state
            if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                left = self._waiting_since + limits.head_timeout_s - now
                if left <= 0:
                    self._give_up(partial=self._last_byte > self._waiting_since)
                else:
                    self._arm(left)
            elif state is h11.SEND_BODY:
                if self.flow.read_paused:
                    self._last_byte = now  # the server is pushing back, not the client
                left = self._last_byte + limits.body_idle_s - now
                if left <= 0:
                    self._give_up(partial=False)
                else:
                    self._arm(left)
            # Otherwise a request is being answered: on_response_complete re-arms.

        def _give_up(self, *, partial: bool) -> None:
            if partial:
                # A request head begun and never finished: say why before closing.
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
                    b"content-length: 0\r\n\r\n"
                )
            self.transport.close()

    return GuardedH11Protocol
