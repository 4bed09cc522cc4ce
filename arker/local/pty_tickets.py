"""PTY tickets: the credential a browser passes in the WebSocket URL instead of a key.

A ticket is 32 random bytes (URL-safe text), kept in memory only as its SHA-256, bound
to one organisation, VM and session, valid for a short time and for one WebSocket
upgrade: redeeming it removes it. (The platform documents its tickets as multi-use
within their lifetime; the published client mints a fresh one per connection, so a
single-use ticket costs it nothing and a leaked URL cannot be replayed.) A server
restart forgets every ticket.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TicketBook"]


@dataclass(frozen=True)
class _Grant:
    org_id: str
    vm_id: str
    session_id: str
    expires: float


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


class TicketBook:
    """Outstanding tickets, bounded in number and lifetime.

    Args:
        ttl_s: Seconds a ticket stays valid.
        max_outstanding: Most unexpired tickets kept; the oldest goes first.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self, ttl_s: float, max_outstanding: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._max = max_outstanding
        self._now = clock
        self._lock = threading.Lock()
        self._grants: dict[bytes, _Grant] = {}  # insertion order is expiry order

    def mint(self, org_id: str, vm_id: str, session_id: str) -> str:
        """A new ticket for this org's terminal on ``vm_id``/``session_id``."""
        ticket = secrets.token_urlsafe(32)
        grant = _Grant(org_id, vm_id, session_id, self._now() + self.ttl_s)
        with self._lock:
            self._prune()
            while len(self._grants) >= self._max:
                del self._grants[next(iter(self._grants))]
            self._grants[_digest(ticket)] = grant
        return ticket

    def redeem(self, ticket: str, vm_id: str, session_id: str) -> str | None:
        """The org a valid ticket for this VM and session belongs to, used up; else None.

        A ticket presented for another VM or session is used up too: whoever holds it
        is probing.
        """
        with self._lock:
            self._prune()
            grant = self._grants.pop(_digest(ticket), None)
        if grant is None or grant.vm_id != vm_id or grant.session_id != session_id:
            return None
        return grant.org_id

    def _prune(self) -> None:
        now = self._now()
        while self._grants:
            first = next(iter(self._grants))
            if self._grants[first].expires > now:
                break
            del self._grants[first]
