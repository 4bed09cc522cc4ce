"""Interactive terminals on behalf of the routes: tickets, the per-VM bound, opening.

The bound (`PtyLimits.per_vm`) is counted here, in this server's memory: a terminal
holds its slot from the WebSocket's acceptance to the end of its shell. Past it the
answer is the platform's ``429 quota_exceeded`` with the ``pty_sessions`` details.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse

from .config import PtyLimits
from .engine_api import EngineLike, PtyShellLike
from .pty_tickets import TicketBook

__all__ = ["PtyQuotaExceeded", "Terminals", "quota_response"]


class PtyQuotaExceeded(Exception):
    """The VM has `PtyLimits.per_vm` terminals open already."""

    def __init__(self, vm_id: str, current: int, cap: int) -> None:
        super().__init__(f"vm {vm_id} has {current} terminals open (at most {cap})")
        self.vm_id = vm_id
        self.current = current
        self.cap = cap


def quota_response(exc: PtyQuotaExceeded) -> JSONResponse:
    """The 429 ``quota_exceeded`` envelope, with the platform's details shape."""
    details: dict[str, Any] = {
        "limit": {"metric": "pty_sessions", "unit": "sessions"},
        "scope": {"kind": "vm", "vm_id": exc.vm_id},
        "enforcement": "worker_local",
        "measurements": {"kind": "measured", "current_usage": exc.current, "cap": exc.cap},
    }
    message = f"{exc}: close one first"
    error = {"code": "quota_exceeded", "message": message, "details": details}
    body = {"ok": False, "error": error}
    return JSONResponse(body, status_code=429)


class Terminals:
    """The server's terminals: who may open one, how many are open, opening them.

    Args:
        engine: The sandbox engine (`EngineLike.open_pty`).
        limits: The terminals' bounds.
    """

    def __init__(self, engine: EngineLike, limits: PtyLimits) -> None:
        self.engine = engine
        self.limits = limits
        self.tickets = TicketBook(limits.ticket_ttl_s, limits.max_tickets)
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._shells: dict[tuple[str, str], set[PtyShellLike]] = {}

    def open_count(self, vm_id: str) -> int:
        """Terminals open on ``vm_id`` now."""
        with self._lock:
            return self._open.get(vm_id, 0)

    def check_room(self, vm_id: str) -> None:
        """Raise `PtyQuotaExceeded` when the VM has no room for another terminal."""
        current = self.open_count(vm_id)
        if current >= self.limits.per_vm:
            raise PtyQuotaExceeded(vm_id, current, self.limits.per_vm)

    @contextmanager
    def slot(self, vm_id: str) -> Iterator[None]:
        """Hold one of the VM's terminal slots (`PtyQuotaExceeded` when none is free)."""
        with self._lock:
            current = self._open.get(vm_id, 0)
            if current >= self.limits.per_vm:
                raise PtyQuotaExceeded(vm_id, current, self.limits.per_vm)
            self._open[vm_id] = current + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._open[vm_id] - 1
                if left:
                    self._open[vm_id] = left
                else:
                    del self._open[vm_id]

    def open(
        self, vm_id: str, session_id: str, command: str | None, cols: int, rows: int
    ) -> PtyShellLike:
        """Start the terminal's shell (blocking: run it off the event loop).

        The caller calls `closed` once the shell is closed.
        """
        engine = self.engine
        shell = engine.open_pty(vm_id, session=session_id, command=command, cols=cols, rows=rows)
        with self._lock:
            self._shells.setdefault((vm_id, session_id), set()).add(shell)
        return shell

    def closed(self, vm_id: str, session_id: str, shell: PtyShellLike) -> None:
        """Forget a terminal whose shell was closed."""
        with self._lock:
            shells = self._shells.get((vm_id, session_id))
            if shells is not None:
                shells.discard(shell)
                if not shells:
                    del self._shells[(vm_id, session_id)]

    def end_session(self, vm_id: str, session_id: str) -> int:
        """Kill the shells of the session's terminals (their sockets then close)."""
        with self._lock:
            shells = list(self._shells.get((vm_id, session_id), ()))
        for shell in shells:
            shell.kill()
        return len(shells)
