"""One command's run in a mounted VM, from checked input to `RunOutcome`.

The steps: check the command and timeout; spawn the session wrapper in bwrap inside
the VM's cgroups with the quota's file size cap, again when bwrap could not even fork
the sandbox (the command never started); commit the session state the wrapper saved
(unless the run timed out: a save cut short must not replace the last good one) and
read the cwd back; let the quota judge the VM's growth; map the exit status.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass

from . import files, runner
from .baseimage import HOST_BASE, VM_HOME, host_binds
from .cgroups import VmCgroup
from .errors import SandboxError
from .limits import Limits
from .live import LiveSink, run_streaming
from .quota import RunBudget
from .session import STATE_END, parse_state_cwd, session_state_path

__all__ = [
    "RunOutcome",
    "RunPipeline",
    "bwrap_could_not_fork",
    "check_command",
    "resource_error",
    "sandbox_binds",
]

# MAX_ARG_STRLEN is 128 KiB per argv string; the command travels as one.
_MAX_COMMAND = 128 * 1024 - 1
# bwrap itself can fail to fork the sandbox's pid 1 (EAGAIN) while the kernel is still
# reaping a killed sandbox's processes. The command never started, so trying again is
# safe; a user would otherwise see "bwrap: Can't fork for pid 1" as the run's output.
_SPAWN_ATTEMPTS = 3
_BWRAP_EAGAIN = re.compile(rb"bwrap: [^\n]*: Resource temporarily unavailable\n?")
_STATE_MAX = 1 << 20


# A host resource running out while one VM's sandbox starts: that run's error (503,
# the server lives on), named so that whoever reads it knows which limit to raise.
_RESOURCES = {
    errno.EMFILE: "the server's open-file limit (RLIMIT_NOFILE) is reached",
    errno.ENFILE: "the host's open-file table (fs.file-max) is full",
    errno.ENOMEM: "out of memory",
    errno.EAGAIN: "out of processes or threads (a process limit is reached)",
}


def resource_error(what: str, exc: OSError) -> SandboxError:
    """The error for ``exc``, raised while doing ``what`` for one VM.

    A resource running out is ``unavailable`` (try again later) with the resource
    named; any other failure is ``internal``.
    """
    resource = _RESOURCES.get(exc.errno or 0)
    if resource is None:
        return SandboxError("internal", f"{what}: {exc}")
    return SandboxError("unavailable", f"{what}: {resource} ({exc.strerror or exc})")


@dataclass(frozen=True)
class RunOutcome:
    """Result of one command."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    duration_ms: float
    cwd: str
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool


def check_command(command: str) -> None:
    """Refuse a command no sandbox can run.

    Raises:
        SandboxError: ``bad_request`` (NUL byte), ``payload_too_large`` (over 128 KiB).
    """
    if "\0" in command:
        raise SandboxError("bad_request", "command contains a NUL byte")
    if len(command.encode("utf-8", "surrogateescape")) > _MAX_COMMAND:
        raise SandboxError("payload_too_large", "command longer than 128 KiB")


def sandbox_binds(base: str, network: bool) -> list[str]:
    """The host paths bound read-only into a sandbox of a VM on ``base``."""
    ro_binds = host_binds() if base == HOST_BASE else []
    if network and base == HOST_BASE and os.path.exists("/etc/resolv.conf"):
        # The skeleton's copy is as old as the skeleton; DNS must follow the host.
        ro_binds.append("/etc/resolv.conf")
    return ro_binds


def bwrap_could_not_fork(raw: runner.RawResult) -> bool:
    """bwrap gave up before the command started, for want of a process slot.

    Its last words are then one line of its own (``bwrap: Can't fork for pid 1:
    Resource temporarily unavailable``), nothing on stdout, exit status 1.
    """
    return (
        raw.returncode == 1
        and not raw.stdout
        and not raw.timed_out
        and _BWRAP_EAGAIN.fullmatch(raw.stderr) is not None
    )


class RunPipeline:
    """Runs commands in VMs; kills every running one at `kill_all`.

    Args:
        bwrap: Path of the bwrap binary.
        sandbox_uid: Host uid/gid the VM user maps to.
        network: The network mode (network.py): DNS follows the host's unless ``none``.
        limits: Output cap, timeout cap and the per-VM rlimit fallbacks.
    """

    def __init__(self, *, bwrap: str, sandbox_uid: int, network: str, limits: Limits) -> None:
        self._bwrap = bwrap
        self._uid = sandbox_uid
        self._network = network
        self._limits = limits
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    def check(self, command: str, timeout: float) -> float:
        """Validate a command and its timeout; return the timeout to apply (capped).

        Raises:
            SandboxError: ``bad_request`` (NUL byte, timeout not positive),
                ``payload_too_large`` (command over 128 KiB).
        """
        check_command(command)
        limit = float(timeout)
        if not limit > 0:
            raise SandboxError("bad_request", "timeout must be positive")
        return min(limit, self._limits.max_timeout_s)

    def run(
        self,
        *,
        prefix: list[str],
        root_fd: int,
        base: str,
        cgroup: VmCgroup,
        session: str,
        command: str,
        limit: float,
        budget: RunBudget | None,
        sink: LiveSink | None = None,
        ids: tuple[int, tuple[int, ...]] | None = None,
    ) -> RunOutcome:
        """Run ``command`` (checked by `check`) in the VM mounted at ``root_fd``.

        Args:
            prefix: argv put in front (joins the VM's network, network.py).
            root_fd: Handle on the VM's mounted root.
            base: The VM's base image name.
            cgroup: The VM's cgroups.
            session: The session's file name (`session.session_name`).
            command: The command.
            limit: Timeout in seconds (from `check`).
            budget: The quota's part, None without a quota.
            sink: A live run's output files and stop button (live.py); None keeps
                the output in memory, capped at ``Limits.max_output_bytes``.
            ids: The VM's host uid (its overlay is idmapped for it) and extra
                groups; None: the engine's ``sandbox_uid``, no extra group.

        Raises:
            SandboxError: ``internal`` (cannot start, cannot join the cgroups),
                ``payload_too_large`` (disk quota).
        """
        state = session_state_path(session)
        ro_binds = sandbox_binds(base, self._network != "none")
        drop_in_argv = runner.SETPRIV is not None
        host_uid, groups = (self._uid, ()) if ids is None else ids
        start = time.monotonic()
        for attempt in range(_SPAWN_ATTEMPTS):
            if attempt:
                time.sleep(0.05 * attempt)
            try:
                info_r, info_w = os.pipe()
            except OSError as exc:
                raise resource_error("cannot start sandbox", exc) from None
            argv = (
                prefix
                + runner.spawn_prefix(
                    cgroup,
                    self._limits.pids_max,
                    self._limits.memory_max_bytes,
                    nofile=self._limits.nofile,
                    drop_to=host_uid if drop_in_argv else None,
                    groups=groups,
                    fsize_max=None if budget is None else budget.fsize_max,
                )
                + runner.bwrap_argv(
                    bwrap=self._bwrap,
                    root_fd=root_fd,
                    ro_binds=ro_binds,
                    network=True,  # the namespace joined by ``prefix`` (or the host's)
                    info_fd=info_w,
                    command=command,
                    state_path=state,
                )
            )
            try:
                if sink is not None:
                    raw = run_streaming(
                        argv,
                        uid=None if drop_in_argv else host_uid,
                        groups=groups,
                        pass_fds=(root_fd, info_w),
                        info_w=info_w,
                        info_r=info_r,
                        timeout=max(limit - (time.monotonic() - start), 0.1),
                        sink=sink,
                        register=self._register,
                        watch=None if budget is None else budget.exceeded,
                    )
                    break
                raw = runner.run_bwrap(
                    argv,
                    uid=None if drop_in_argv else host_uid,
                    groups=groups,
                    pass_fds=(root_fd, info_w),
                    info_w=info_w,
                    info_r=info_r,
                    timeout=max(limit - (time.monotonic() - start), 0.1),
                    max_output=self._limits.max_output_bytes,
                    register=self._register,
                    watch=None if budget is None else budget.exceeded,
                )
            except OSError as exc:
                raise resource_error("cannot start sandbox", exc) from None
            if not bwrap_could_not_fork(raw):
                break
        duration_ms = (time.monotonic() - start) * 1000.0
        if raw.returncode == 125 and b"arker-spawn" in raw.stderr[:500]:
            raise SandboxError("internal", "cannot place the command in the VM's cgroups")
        if raw.timed_out:  # a save cut short must not replace the last good state
            saved = files.read_small(root_fd, state, _STATE_MAX)
        else:
            saved = files.commit_state(root_fd, state, STATE_END, _STATE_MAX)
        cwd = (parse_state_cwd(saved) if saved is not None else None) or VM_HOME
        if budget is not None:
            budget.finish(stopped=raw.stopped)
        code = raw.returncode
        if raw.timed_out:
            code = 124
        elif code < 0:
            code = 128 - code  # killed by a signal (engine closing)
        return RunOutcome(
            stdout=raw.stdout,
            stderr=raw.stderr,
            exit_code=code,
            duration_ms=duration_ms,
            cwd=cwd,
            timed_out=raw.timed_out,
            stdout_truncated=raw.stdout_truncated,
            stderr_truncated=raw.stderr_truncated,
        )

    def kill_all(self) -> None:
        """Kill every running command, and any started from now on."""
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()

    def _register(
        self, done: subprocess.Popen[bytes] | None, proc: subprocess.Popen[bytes]
    ) -> None:
        with self._lock:
            if done is not None:
                self._procs.discard(done)
            else:
                self._procs.add(proc)
                if self._closed:
                    proc.kill()
