"""Where exposed ports' relays connect, and how many connections they may hold.

`open_in_vm` connects to a port in a VM's network; `ConnectionSlots` counts open
relayed connections per exposed port and per VM under `ProxyLimits`.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

__all__ = ["ConnectionSlots", "ProxyLimits", "open_in_vm"]


@dataclass(frozen=True)
class ProxyLimits:
    """Bounds of the relay.

    Attributes:
        per_port: Most open proxied connections to one exposed port.
        per_vm: Most open proxied connections to one VM, all its ports together.
        max_head_bytes: Largest response head accepted from the VM's server (502 beyond).
        answer_timeout_s: Longest wait for the VM's server to begin its answer (504).
        connect_timeout_s: Longest wait for the connection into the VM.
    """

    per_port: int = 32
    per_vm: int = 64
    max_head_bytes: int = 64 * 1024
    answer_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0


class ConnectionSlots:
    """Counts of open proxied connections per exposed port and per VM.

    Used from the event loop only (no lock needed).
    """

    def __init__(self, limits: ProxyLimits) -> None:
        self._limits = limits
        self._ports: Counter[tuple[str, int]] = Counter()
        self._vms: Counter[str] = Counter()

    def acquire(self, vm_id: str, port: int) -> None:
        """Count one more connection to ``port`` of ``vm_id``.

        Raises:
            ApiError: 429 ``rate_limited`` past either bound.
        """
        if self._ports[(vm_id, port)] >= self._limits.per_port:
            raise ApiError(
                "rate_limited",
                f"more than {self._limits.per_port} open connections to this exposed port",
                headers={"Retry-After": "1"},
            )
        if self._vms[vm_id] >= self._limits.per_vm:
            raise ApiError(
                "rate_limited",
                f"more than {self._limits.per_vm} open connections to this VM's ports",
                headers={"Retry-After": "1"},
            )
        self._ports[(vm_id, port)] += 1
        self._vms[vm_id] += 1

    def release(self, vm_id: str, port: int) -> None:
        """Forget one connection to ``port`` of ``vm_id``."""
        self._ports[(vm_id, port)] -= 1
        if self._ports[(vm_id, port)] <= 0:
            del self._ports[(vm_id, port)]
        self._vms[vm_id] -= 1
        if self._vms[vm_id] <= 0:
            del self._vms[vm_id]

    def open_count(self, vm_id: str) -> int:
        """Open proxied connections to ``vm_id``."""
        return self._vms[vm_id]


def open_in_vm(engine: Any, vm_id: str, port: int, timeout_s: float) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` in the VM's network (blocking).

    The engine's ``open_connection(vm_id, port)`` (the VM's own network namespace);
    on an engine whose VMs share the host's network (``network`` ``True`` or
    ``"host"``), the VM's loopback is the host's, so a plain connect is the same thing.

    Raises:
        ApiError: 502 ``unavailable`` when nothing listens there.
    """
    mode = getattr(engine, "network", None)  # True/"host": the host's own network
    opener = getattr(engine, "open_connection", None)
    try:
        if mode is True or mode == "host":
            return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if not callable(opener):
            raise ApiError("unavailable", "this server's VMs have no network to expose", 503)
        sock: socket.socket = opener(vm_id, port)
        return sock
    except ApiError:
        raise
    except Exception as exc:  # the engine's error when nothing listens, or OSError
        detail = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
        raise ApiError(
            "unavailable", f"nothing answers on port {port} in the VM ({detail})", 502
        ) from None
