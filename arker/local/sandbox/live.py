"""Live runs' processes: output pumped to files as it comes, stopped on request.

A live run is a normal run (pipeline.py: the same bwrap sandbox, cgroups, session
state and quota) whose stdout and stderr go to two files on the host (outside any
VM's reach) instead of memory, each capped at `LiveSink.cap` bytes (the rest is read
and discarded, and the stream is flagged truncated). `LiveSink.cancel` stops it at
once: the pump wakes on a pipe, SIGKILLs the sandbox's pid-namespace init and the
kernel kills every process in that namespace, ``setsid``/``nohup`` daemons and
double forks included (they cannot leave a pid namespace).

`LiveRegistry` knows each VM's live sinks, so delete and close can stop them all.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from .errors import SandboxError
from .runner import RawResult, _kill_tree, _open_child_pidfd, _pidfd, _wait_pidfd

__all__ = ["LiveRegistry", "LiveSink", "run_streaming"]

_DRAIN_GRACE_S = 5.0
_READ_BLOCK = 65536


class LiveSink:
    """Where one live run's output goes, and its stop button.

    Args:
        stdout: File the stdout bytes are appended to (the caller closes it).
        stderr: Same for stderr.
        cap: Bytes kept per stream; later bytes are discarded and flagged.
        on_output: Called (from the pump's thread) after new bytes reach a file, and
            once when the process has started (`started` is then set).
    """

    def __init__(
        self, stdout: BinaryIO, stderr: BinaryIO, cap: int, on_output: Callable[[], None]
    ) -> None:
        self._files = {"out": stdout, "err": stderr}
        self.sizes = {"out": 0, "err": 0}
        self.truncated = {"out": False, "err": False}
        self.cap = cap
        self._on_output = on_output
        self.started = False
        self.cancelled = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()

    @property
    def wake_fd(self) -> int:
        """Readable once `cancel` was called."""
        return self._wake_r

    def cancel(self) -> None:
        """Stop the run's processes (now if running, at start if not started yet)."""
        with self._lock:
            self.cancelled = True
            if self._wake_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

    def mark_started(self) -> None:
        """The process exists (called by the pump)."""
        self.started = True
        self._on_output()

    def write(self, stream: str, chunk: bytes) -> None:
        """Append ``chunk`` to ``stream`` (``out``/``err``) within the cap."""
        room = self.cap - self.sizes[stream]
        if room > 0:
            kept = chunk[:room]
            self._files[stream].write(kept)
            self._files[stream].flush()
            self.sizes[stream] += len(kept)
        if len(chunk) > room:
            self.truncated[stream] = True
        self._on_output()

    def close(self) -> None:
        """Release the wake pipe (the output files are the caller's)."""
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1


class LiveRegistry:
    """The live sinks of each VM, to stop them on delete and close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_vm: dict[str, set[LiveSink]] = {}
        self._closed = False

    def add(self, vm_id: str, sink: LiveSink | None) -> None:
        """Register a run about to start (cancelled at once after `cancel_all`)."""
        if sink is None:
            return
        with self._lock:
            self._by_vm.setdefault(vm_id, set()).add(sink)
            closed = self._closed
        if closed:
            sink.cancel()

    def remove(self, vm_id: str, sink: LiveSink | None) -> None:
        """Forget a run that ended."""
        if sink is None:
            return
        with self._lock:
            sinks = self._by_vm.get(vm_id)
            if sinks is not None:
                sinks.discard(sink)
                if not sinks:
                    del self._by_vm[vm_id]

    def count(self, vm_id: str) -> int:
        """How many live runs the VM has now."""
        with self._lock:
            return len(self._by_vm.get(vm_id, ()))

    def cancel_vm(self, vm_id: str) -> int:
        """Stop every live run of the VM; return how many there were."""
        with self._lock:
            sinks = list(self._by_vm.get(vm_id, ()))
        for sink in sinks:
            sink.cancel()
        return len(sinks)

    def stop_then(self, vm_id: str, acquire_exclusive: Callable[[], None]) -> None:
        """Stop the VM's live runs, then take it exclusively (for delete).

        A live run that started in between is stopped too, and the gate tried again.
        """
        self.cancel_vm(vm_id)
        try:
            acquire_exclusive()
        except SandboxError as exc:
            if exc.code != "vm_busy" or not self.cancel_vm(vm_id):
                raise
            acquire_exclusive()

    def cancel_all(self) -> None:
        """Stop every live run, and any registered from now on."""
        with self._lock:
            self._closed = True
            sinks = [s for group in self._by_vm.values() for s in group]
        for sink in sinks:
            sink.cancel()


def run_streaming(
    argv: list[str],
    *,
    uid: int | None,
    pass_fds: Sequence[int],
    info_w: int,
    info_r: int,
    timeout: float,
    sink: LiveSink,
    register: Callable[[subprocess.Popen[bytes] | None, subprocess.Popen[bytes]], None],
    watch: Callable[[], bool] | None = None,
    watch_interval: float = 0.5,
    groups: Sequence[int] = (),
) -> RawResult:
    """Like `runner.run_bwrap`, but the output goes to ``sink`` and it can be cancelled.

    The result's ``stdout``/``stderr`` are empty (the bytes are in the sink's files);
    ``stopped`` means the quota's ``watch`` stopped it; a cancel shows in
    ``sink.cancelled``.
    """
    if sink.cancelled:
        os.close(info_w)
        os.close(info_r)
        return RawResult(b"", b"", -9, False, False, False)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=uid,
            group=uid,
            extra_groups=None if uid is None else list(groups),
            pass_fds=tuple(pass_fds),
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
    except BaseException:
        os.close(info_w)
        os.close(info_r)
        raise
    os.close(info_w)
    register(None, proc)
    sink.mark_started()
    assert proc.stdout is not None and proc.stderr is not None
    info = bytearray()
    sel = selectors.DefaultSelector()
    for fd, key in ((proc.stdout.fileno(), "out"), (proc.stderr.fileno(), "err"), (info_r, "info")):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, key)
    sel.register(sink.wake_fd, selectors.EVENT_READ, "wake")
    proc_fd = _pidfd(proc.pid)
    if proc_fd is not None:
        sel.register(proc_fd, selectors.EVENT_READ, "exit")
    deadline = time.monotonic() + timeout
    killed = timed_out = stopped = exited = False
    child_pidfd: int | None = None
    drain_until = 0.0
    next_watch = time.monotonic() + watch_interval
    try:
        while True:
            now = time.monotonic()
            if watch is not None and not killed and now >= next_watch:
                if watch():
                    stopped = True
                    deadline = now
                done = time.monotonic()
                next_watch = done + max(watch_interval, 4 * (done - now))
                now = done
            if not killed and (now >= deadline or sink.cancelled):
                killed = True
                timed_out = not sink.cancelled and not stopped
                child_pidfd = _kill_tree(proc, info, child_pidfd)
                drain_until = now + _DRAIN_GRACE_S
            streams = any(k.data in ("out", "err") for k in sel.get_map().values())
            if not streams and (exited or proc_fd is None):
                break  # everything said and the sandbox is gone (no pidfd: pipes only)
            if drain_until and now >= drain_until:
                break
            wait = (drain_until if drain_until else deadline) - now
            if watch is not None and not killed:
                wait = min(wait, next_watch - now)
            for skey, _ in sel.select(timeout=max(0.0, min(wait, 1.0))):
                name = str(skey.data)
                if name in ("wake", "exit"):
                    sel.unregister(skey.fd)  # cancelled: killed next turn
                    if name == "exit":
                        exited = True
                        if not drain_until:  # its pid namespace is gone: so are writers
                            drain_until = time.monotonic() + _DRAIN_GRACE_S
                    continue
                try:
                    chunk = os.read(skey.fd, _READ_BLOCK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(skey.fd)
                    continue
                if name == "info":
                    if len(info) < _READ_BLOCK:
                        info += chunk
                    if child_pidfd is None:
                        child_pidfd = _open_child_pidfd(info)
                else:
                    sink.write(name, chunk)
        if killed:
            proc.kill()
        proc.wait()
        if child_pidfd is not None:
            _wait_pidfd(child_pidfd, _DRAIN_GRACE_S)
    finally:
        sel.close()
        if proc_fd is not None:
            os.close(proc_fd)
        proc.stdout.close()
        proc.stderr.close()
        os.close(info_r)
        if child_pidfd is not None:
            os.close(child_pidfd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        register(proc, proc)
    return RawResult(
        stdout=b"",
        stderr=b"",
        returncode=proc.returncode,
        timed_out=timed_out,
        stdout_truncated=sink.truncated["out"],
        stderr_truncated=sink.truncated["err"],
        stopped=stopped,
    )
