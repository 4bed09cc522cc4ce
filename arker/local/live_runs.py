"""Live runs: commands that outlive their request, one thread each, output on disk.

A run is recorded ``pending`` (`RunStore`), waits its turn in its session (runs of one
session go one at a time, first come first served, as on the platform; distinct
sessions run at once), becomes ``running`` when its process starts and ends
``completed`` (it exited, or its ``timeout`` killed it: exit code 124), ``cancelled``
(``DELETE …/runs/{id}``, or its session was deleted) or ``failed`` (it could not start,
its VM was deleted, the server stopped: ``fail_reason`` says which).

Its stdout and stderr go to ``<data dir>/runs/<run id>.out|.err`` (outside every VM),
each capped at `LiveLimits.output_cap` bytes (bytes past it are discarded and the
stream is flagged truncated). Followers wait for news with `LiveRuns.wait_change`, an
asyncio wait woken from the run's thread: a follower holds no server thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .._ids import new_ulid
from .engine_api import EngineLike, LiveSinkLike, SandboxError
from .engine_errors import engine_errors
from .errors import ApiError
from .run_slots import share_refused
from .run_store import RunRow, RunStore
from .store import utc_now_iso

__all__ = ["LiveLimits", "LiveRun", "LiveRuns"]

log = logging.getLogger("arker.local")

RESTART_REASON = "the server stopped while the run was live; its processes were killed"


@dataclass(frozen=True)
class LiveLimits:
    """Bounds of live runs (each refusal is ``429 rate_limited`` with the limit named).

    Attributes:
        runs_per_org: Unfinished runs one organisation may have, across its VMs: past
            it ``429 quota_exceeded`` with ``Retry-After`` (its fair share, as the
            0.1.0 route's `run_slots` share).
        runs_per_vm: Unfinished (pending or running) runs one VM may have.
        runs_per_server: Unfinished runs of all VMs together.
        followers_per_run: ``…/output`` requests waiting on one run at once.
        output_cap: Bytes kept per stream of one run (on disk); the rest is discarded.
        inline_cap: Bytes of each stream a ``Run`` or completed answer carries inline
            (the rest is read with ``…/output``).
    """

    runs_per_org: int = 32
    runs_per_vm: int = 16
    runs_per_server: int = 64
    followers_per_run: int = 32
    output_cap: int = 512 << 20
    inline_cap: int = 4 << 20


class SinkFactory(Protocol):
    """Makes a run's sink: ``(stdout file, stderr file, cap, on_output)``."""

    def __call__(
        self, stdout: BinaryIO, stderr: BinaryIO, cap: int, on_output: Callable[[], None]
    ) -> LiveSinkLike: ...


@dataclass(eq=False)
class LiveRun:
    """A run this server process is running (or about to)."""

    row: RunRow
    timeout: float
    out_path: Path
    err_path: Path
    sizes: dict[str, int] = field(default_factory=lambda: {"out": 0, "err": 0})
    truncated: dict[str, bool] = field(default_factory=lambda: {"out": False, "err": False})
    version: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    sink: LiveSinkLike | None = None  # set when its process is being started
    followers: int = 0
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list
    )
    ended: threading.Event = field(default_factory=threading.Event)


class LiveRuns:
    """Starts, tracks, cancels and records live runs.

    Args:
        store: The run and session records.
        engine: The sandbox engine.
        new_sink: The engine's sink class (``arker.local.sandbox.live.LiveSink``).
        check_command: The engine's check of a command (raises ``SandboxError``).
        runs_dir: Where output files go (created 0700).
        limits: The bounds.
    """

    def __init__(
        self,
        store: RunStore,
        engine: EngineLike,
        new_sink: SinkFactory,
        check_command: Callable[[str], None],
        runs_dir: Path,
        limits: LiveLimits,
    ) -> None:
        self._new_sink = new_sink
        self._check_command = check_command
        self.engine = engine
        self.store = store
        self.limits = limits
        self.runs_dir = runs_dir
        self._engine = engine
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)  # a run ended or was cancelled
        self._live: dict[str, LiveRun] = {}
        self._queues: dict[tuple[str, str], deque[str]] = {}
        runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for row in store.fail_unfinished(RESTART_REASON):
            log.warning("run %s of vm %s was live at the last stop: failed", row.run_id, row.vm_id)
            sizes = {}
            for stream in ("out", "err"):  # what its files hold is what it said
                with contextlib.suppress(OSError):
                    sizes[stream] = self.output_path(row.run_id, stream).stat().st_size
            store.update_run(
                row.run_id,
                stdout_size=sizes.get("out", 0),
                stderr_size=sizes.get("err", 0),
                stdout_truncated=sizes.get("out", 0) >= limits.output_cap,
                stderr_truncated=sizes.get("err", 0) >= limits.output_cap,
            )

    # --- starting -----------------------------------------------------------------------

    def start(self, org_id: str, vm_id: str, command: str, session: str, timeout: float) -> str:
        """Record a run and start it on its own thread; return its id.

        Raises:
            ApiError: ``rate_limited`` past a bound, ``bad_request`` for a bad command.
        """
        with engine_errors():
            self._check_command(command)  # refused now rather than failed later
        run_id = new_ulid()
        row = RunRow(run_id, org_id, vm_id, session, command, "pending", utc_now_iso())
        run = LiveRun(
            row, timeout, self.output_path(run_id, "out"), self.output_path(run_id, "err")
        )
        with self._lock:
            on_vm = sum(1 for r in self._live.values() if r.row.vm_id == vm_id)
            if on_vm >= self.limits.runs_per_vm:
                raise ApiError(
                    "rate_limited",
                    f"vm {vm_id} has {on_vm} unfinished runs, the most this server allows "
                    "per VM; wait for one to end or cancel one",
                )
            on_org = sum(1 for r in self._live.values() if r.row.org_id == org_id)
            if on_org >= self.limits.runs_per_org:
                raise share_refused(
                    "quota_exceeded",
                    f"this organisation has {on_org} unfinished runs, its share of the "
                    "server; wait for one to end or cancel one",
                )
            if len(self._live) >= self.limits.runs_per_server:
                raise ApiError(
                    "rate_limited",
                    f"this server has {len(self._live)} unfinished runs, its limit; try later",
                )
            self._live[run_id] = run
            self._queues.setdefault((vm_id, session), deque()).append(run_id)
        try:
            self.store.insert_run(row)
            for path in (run.out_path, run.err_path):
                path.touch(mode=0o600)
        except BaseException:
            self._forget(run)
            raise
        threading.Thread(target=self._body, args=(run,), name=f"run-{run_id}", daemon=True).start()
        return run_id

    def forget_vms(self, existing: set[str]) -> None:
        """Drop the records and output files of VMs not in ``existing`` (at start)."""
        for vm_id in self.store.vm_ids() - existing:
            for run_id in self.store.delete_runs_of_vm(vm_id):
                for stream in ("out", "err"):
                    self.output_path(run_id, stream).unlink(missing_ok=True)

    def output_path(self, run_id: str, stream: str) -> Path:
        """The file holding a run's ``out`` or ``err`` stream."""
        return self.runs_dir / f"{run_id}.{stream}"

    def live(self, run_id: str) -> LiveRun | None:
        """The in-memory state of a run this process still runs."""
        with self._lock:
            return self._live.get(run_id)

    def sessions_in_use(self, vm_id: str) -> set[str]:
        """The VM's sessions that have a live run (pending or running)."""
        with self._lock:
            return {r.row.session_id for r in self._live.values() if r.row.vm_id == vm_id}

    # --- cancelling ---------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Stop a live run (pending or running); False when it is not live here."""
        with self._lock:
            run = self._live.get(run_id)
            if run is None or run.ended.is_set():
                return False
            run.cancel_requested = True
            run.cancel_reason = reason
            sink = run.sink
            self._turns.notify_all()
        if sink is not None:
            sink.cancel()
        self._notify(run)
        return True

    def cancel_where(
        self, vm_id: str, session: str | None = None, reason: str | None = None
    ) -> list[str]:
        """Cancel the live runs of a VM (of one session of it); return their ids."""
        with self._lock:
            ids = [
                r.row.run_id
                for r in self._live.values()
                if r.row.vm_id == vm_id and (session is None or r.row.session_id == session)
            ]
        for run_id in ids:
            self.cancel(run_id, reason)
        return ids

    def wait_ended(self, run_ids: list[str], timeout: float) -> None:
        """Block until these runs ended (or ``timeout`` seconds passed)."""
        deadline = time.monotonic() + timeout
        for run_id in run_ids:
            run = self.live(run_id)
            if run is not None:
                run.ended.wait(max(0.0, deadline - time.monotonic()))

    # --- following ----------------------------------------------------------------------

    async def wait_change(self, run: LiveRun, version: int, timeout: float) -> None:
        """Wait (without a thread) until the run changes past ``version`` or ``timeout``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if run.version != version or run.ended.is_set():
                return
            run.waiters.append(entry)
        try:
            await asyncio.wait([fut], timeout=timeout)
        except asyncio.CancelledError:  # the server stops: a retryable answer, not a 500
            raise ApiError("unavailable", "the server is stopping; ask again") from None
        finally:
            with self._lock, contextlib.suppress(ValueError):
                run.waiters.remove(entry)

    @contextlib.contextmanager
    def following(self, run: LiveRun) -> Any:
        """Count one follower of the run for the ``with`` block.

        Raises:
            ApiError: ``rate_limited`` past `LiveLimits.followers_per_run`.
        """
        with self._lock:
            if run.followers >= self.limits.followers_per_run:
                raise ApiError(
                    "rate_limited",
                    f"run {run.row.run_id} already has {run.followers} followers waiting, "
                    "the most this server allows",
                )
            run.followers += 1
        try:
            yield
        finally:
            with self._lock:
                run.followers -= 1

    async def wait_ended_async(self, run_id: str, timeout: float) -> None:
        """Wait (without a thread) up to ``timeout`` seconds for the run to end."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.live(run_id)
            left = deadline - time.monotonic()
            if run is None or run.ended.is_set() or left <= 0:
                return
            await self.wait_change(run, run.version, left)

    # --- the run's thread ---------------------------------------------------------------

    def _notify(self, run: LiveRun) -> None:
        with self._lock:
            run.version += 1
            waiters, run.waiters = run.waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, fut)

    def _my_turn(self, run: LiveRun) -> bool:
        """Whether the run heads its session's queue (the caller holds the lock)."""
        queue = self._queues.get((run.row.vm_id, run.row.session_id))
        return queue is not None and bool(queue) and queue[0] == run.row.run_id

    def _body(self, run: LiveRun) -> None:
        try:
            self._finish(run, self._run(run))
        except BaseException as exc:  # never leave a run live in the records
            log.exception("live run %s broke", run.row.run_id)
            with contextlib.suppress(BaseException):
                self._finish(run, {"state": "failed", "fail_reason": f"internal error: {exc}"})
        finally:
            self._forget(run)

    def _run(self, run: LiveRun) -> dict[str, Any]:
        """Wait for the session, run, and say how it ended (the record's changes)."""
        row = run.row
        with run.out_path.open("ab") as out, run.err_path.open("ab") as err:
            while True:
                with self._turns:  # wait for the runs ahead of it in its session
                    while not run.cancel_requested and not self._my_turn(run):
                        self._turns.wait()
                if run.cancel_requested:
                    return self._cancelled(run)
                sink = self._new_sink(out, err, self.limits.output_cap, lambda: self._grew(run))
                with self._lock:
                    run.sink = sink
                if run.cancel_requested:
                    sink.cancel()
                try:
                    outcome = self._engine.run(
                        row.vm_id,
                        row.command,
                        session=row.session_id,
                        timeout=run.timeout,
                        sink=sink,
                    )
                    break
                except SandboxError as exc:
                    if exc.code != "vm_busy":
                        reason = "the VM was deleted" if exc.code == "not_found" else exc.message
                        return {"state": "failed", "fail_reason": reason}
                finally:
                    sink.close()
                time.sleep(0.05)  # a 0.1.0 run holds the session: try again soon
        if sink.cancelled:
            if run.cancel_requested:
                return self._cancelled(run)
            if not self._engine.exists(row.vm_id):
                return {"state": "failed", "fail_reason": "the VM was deleted"}
            return {"state": "failed", "fail_reason": "the server stopped"}
        return {
            "state": "completed",
            "exit_code": 124 if outcome.timed_out else outcome.exit_code,
            "timed_out": outcome.timed_out,
            "duration_ms": float(outcome.duration_ms),
            "cwd": outcome.cwd,
        }

    @staticmethod
    def _cancelled(run: LiveRun) -> dict[str, Any]:
        if run.cancel_reason:
            return {"state": "cancelled", "fail_reason": run.cancel_reason}
        return {"state": "cancelled"}

    def _grew(self, run: LiveRun) -> None:
        sink = run.sink
        if sink is None:
            return
        first = not run.row.started_at and sink.started
        run.sizes = dict(sink.sizes)
        run.truncated = dict(sink.truncated)
        if first:
            now = utc_now_iso()
            run.row = _with(run.row, state="running", started_at=now)
            self.store.update_run(run.row.run_id, state="running", started_at=now)
        self._notify(run)

    def _finish(self, run: LiveRun, changes: dict[str, Any]) -> None:
        changes = {
            **changes,
            "completed_at": utc_now_iso(),
            "stdout_size": run.sizes["out"],
            "stderr_size": run.sizes["err"],
            "stdout_truncated": run.truncated["out"],
            "stderr_truncated": run.truncated["err"],
        }
        self.store.update_run(run.row.run_id, **changes)
        run.row = _with(run.row, **changes)

    def _forget(self, run: LiveRun) -> None:
        with self._lock:
            self._live.pop(run.row.run_id, None)
            key = (run.row.vm_id, run.row.session_id)
            queue = self._queues.get(key)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(run.row.run_id)
                if not queue:
                    del self._queues[key]
            run.ended.set()
            self._turns.notify_all()
        self._notify(run)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _with(row: RunRow, **changes: Any) -> RunRow:
    return replace(row, **changes)
