"""Fair shares of the server's runs: how many commands an organisation, a VM and the
whole server may run at once.

A run takes a slot before its command starts (`RunSlots.acquire`) and gives it back
when it ends (`RunSlot.release`, or leaving its ``with`` block). A full share refuses
at once, never queues: ``429 quota_exceeded`` for an organisation's or a VM's share,
``503 unavailable`` when the server as a whole is full, both with ``Retry-After``. So one
organisation running long commands holds its own share only; the others keep theirs.
The live-runs routes take their slots here too.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from .errors import ApiError

__all__ = ["RETRY_AFTER_S", "RunSlot", "RunSlots", "share_refused"]

RETRY_AFTER_S = 1
"""``Retry-After`` of a refused run, in seconds: runs end at any time, so a short one."""


@dataclass
class RunSlot:
    """One run's place in its shares; `release` gives it back (once, whatever happens)."""

    _slots: RunSlots
    org: str
    vm: str
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        if not self._released:
            self._released = True
            self._slots._release(self.org, self.vm)

    def __enter__(self) -> RunSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunSlots:
    """Counts the runs in progress per organisation, per VM and in all.

    Args:
        per_org: Runs one organisation may have in progress at once.
        per_vm: Runs one VM may have in progress at once (each session runs one).
        total: Runs the whole server may have in progress at once; it sizes the
            pool of threads that wait on runs (`Services.run_pool`).
    """

    def __init__(self, *, per_org: int, per_vm: int, total: int) -> None:
        if min(per_org, per_vm, total) < 1:
            raise ValueError("every run limit must be at least 1")
        self.per_org = per_org
        self.per_vm = per_vm
        self.total = total
        self._lock = threading.Lock()
        self._by_org: Counter[str] = Counter()
        # By (org, VM): a slot is taken before the VM's owner is checked, so another
        # org naming this VM must not fill the owner's share of it.
        self._by_vm: Counter[tuple[str, str]] = Counter()
        self._all = 0

    def acquire(self, org: str, vm: str) -> RunSlot:
        """Take a slot for a run of ``org`` in ``vm``, or refuse at once.

        Raises:
            ApiError: ``quota_exceeded`` (429) when the organisation or the VM runs
                as many commands as its share allows; ``unavailable`` (503) when the
                server does; both with a ``Retry-After`` header.
        """
        with self._lock:
            if self._by_org[org] >= self.per_org:
                raise share_refused(
                    "quota_exceeded",
                    f"this organisation already runs {self.per_org} commands at once, "
                    "its share of the server; try again when one ends",
                )
            if self._by_vm[org, vm] >= self.per_vm:
                raise share_refused(
                    "quota_exceeded",
                    f"this VM already runs {self.per_vm} commands at once, its share of "
                    "the server; try again when one ends",
                )
            if self._all >= self.total:
                raise share_refused(
                    "unavailable",
                    f"the server already runs {self.total} commands at once; "
                    "try again when one ends",
                )
            self._by_org[org] += 1
            self._by_vm[org, vm] += 1
            self._all += 1
        return RunSlot(self, org, vm)

    def in_progress(self, org: str | None = None) -> int:
        """Runs in progress: of ``org``, or in all."""
        with self._lock:
            return self._all if org is None else self._by_org[org]

    def _release(self, org: str, vm: str) -> None:
        with self._lock:
            self._by_org[org] -= 1
            self._by_vm[org, vm] -= 1
            # No entry per idle org or VM.
            if self._by_org[org] <= 0:
                del self._by_org[org]
            if self._by_vm[org, vm] <= 0:
                del self._by_vm[org, vm]
            self._all -= 1


def share_refused(code: str, message: str) -> ApiError:
    """A refusal past a share: the error with a ``Retry-After`` header."""
    return ApiError(code, message, headers={"Retry-After": str(RETRY_AFTER_S)})
