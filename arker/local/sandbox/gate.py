"""Admission to one VM: many shared operations, or one exclusive one.

Runs and file I/O are shared operations: any number may be in flight at once, each
counted from `VmGate.enter` to `VmGate.leave`. Fork and delete need the VM to
themselves (a fork freezes the upper, a delete unmounts it): they close the gate to
newcomers, wait up to ``busy_wait_s`` for the operations in flight, and answer
``vm_busy`` when those do not finish in time. A session runs one command at a time:
a second command in a busy session is ``vm_busy`` at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import SandboxError

__all__ = ["VmGate"]

T = TypeVar("T")


class VmGate:
    """The gate of one VM.

    Args:
        vm_id: The VM (for error messages).
        busy_wait_s: How long `acquire_exclusive` waits for operations in flight.
    """

    def __init__(self, vm_id: str, busy_wait_s: float) -> None:
        self._vm_id = vm_id
        self._busy_wait_s = busy_wait_s
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False
        self._deleted = False
        self._sessions: set[str] = set()

    def enter(self, prepare: Callable[[], T]) -> T:
        """Wait out an exclusive holder, then count one operation in flight.

        Args:
            prepare: Called inside the gate before the operation counts (mounting the
                VM on first use); nothing exclusive can start while it runs, and its
                exception keeps the operation out.

        Returns:
            What ``prepare`` returned.

        Raises:
            SandboxError: ``not_found`` once the VM was deleted.
        """
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            if self._deleted:
                raise SandboxError("not_found", f"vm not found: {self._vm_id}")
            result = prepare()
            self._active += 1
            return result

    def leave(self) -> None:
        """End an operation counted by `enter`."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def when_idle(self, action: Callable[[], None]) -> bool:
        """Run ``action`` inside the gate if no operation is in flight; never wait.

        For evicting an idle VM's mount: nothing can enter while ``action`` runs.

        Returns:
            False when the VM is busy (operations in flight, an exclusive holder, or
            its gate held by another thread right now); True when ``action`` ran or
            the VM is deleted (nothing left to do).
        """
        if not self._cond.acquire(blocking=False):
            return False
        try:
            if self._deleted:
                return True
            if self._active or self._exclusive:
                return False
            action()
            return True
        finally:
            self._cond.release()

    def acquire_exclusive(self, tolerated: Callable[[], int] = lambda: 0) -> None:
        """Have the VM alone: no operation in flight, none admitted until release.

        ``tolerated()`` operations may stay in flight (a fork lets the VM's live runs
        go on: they are frozen while it copies, see freeze.py).

        Raises:
            SandboxError: ``not_found`` (deleted), ``vm_busy`` (operations still in
                flight after ``busy_wait_s``).
        """
        deadline = time.monotonic() + self._busy_wait_s
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            if self._deleted:
                raise SandboxError("not_found", f"vm not found: {self._vm_id}")
            self._exclusive = True
            while self._active > tolerated():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._exclusive = False
                    self._cond.notify_all()
                    raise SandboxError(
                        "vm_busy", f"vm {self._vm_id} is running commands; try again"
                    )
                self._cond.wait(timeout=left)

    def release_exclusive(self) -> None:
        """Let operations in again (after `acquire_exclusive`)."""
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    def mark_deleted(self) -> None:
        """From now on `enter` and `acquire_exclusive` answer ``not_found``."""
        with self._cond:
            self._deleted = True

    def shut(self, deadline: float) -> None:
        """Close the gate for good, after operations in flight end or ``deadline`` passes.

        For the engine's close: running commands were killed, so they end soon.
        """
        with self._cond:
            while self._active and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
            self._exclusive = True

    def claim_session(self, name: str, label: str) -> None:
        """Mark session ``name`` busy.

        Raises:
            SandboxError: ``vm_busy`` when it already is (``label`` names it).
        """
        with self._cond:
            if name in self._sessions:
                raise SandboxError("vm_busy", f"session {label!r} is busy")
            self._sessions.add(name)

    def release_session(self, name: str) -> None:
        """Mark session ``name`` free again."""
        with self._cond:
            self._sessions.discard(name)
            self._cond.notify_all()
