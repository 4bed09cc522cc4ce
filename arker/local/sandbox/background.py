"""The engine's background queue: one daemon thread running jobs in order.

Work that must not hold up an answer goes here: closing a detached overlay's last
handle (overlay syncs its whole upper filesystem then), syncing the data dir's
filesystem after forks, removing layers nobody uses any more. Jobs run first in, first
out, so a job queued after a detach runs once that overlay is gone. Failures are
swallowed: nobody is left to report them to, and every job is best effort.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundQueue"]

Job = Callable[[], None]


class BackgroundQueue:
    """A FIFO of jobs run by one lazily started daemon thread.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def put(self, job: Job) -> None:
        """Run ``job`` after every job queued before it."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def coalescing(self, job: Job) -> Callable[[], None]:
        """A function that queues ``job`` unless a call to it is queued and not yet started.

        Many requests in a row (forks, deletes) then cost one run of ``job``, not a
        queue of them.
        """
        lock = threading.Lock()
        pending = False

        def run() -> None:
            nonlocal pending
            with lock:
                pending = False
            job()

        def schedule() -> None:
            nonlocal pending
            with lock:
                if pending:
                    return
                pending = True
            self.put(run)

        return schedule

    def close(self, last: Job | None = None) -> None:
        """Run the queued jobs, then ``last``, then stop the thread (waits for it)."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        if last is not None:
            self._jobs.put(last)
        self._jobs.put(None)
        thread.join()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with contextlib.suppress(Exception):  # best effort: nobody to report to
                job()
