"""Spawning commands in bubblewrap: argv, timeouts, output caps.

Process model: ``Popen(user=sandbox_uid)`` starts a tiny ``/bin/sh`` that joins the
VM's cgroups (or applies rlimits when there are none) and ``exec``s bwrap, so every
process of the command is accounted to the VM from its first instruction. bwrap
runs with a pid namespace and ``--die-with-parent``: killing bwrap ends the whole
tree, whatever the command did (``&``, ``setsid``, ``nohup``, double forks).

Disk quota (see quota.py for the design): the wrapper sets
``RLIMIT_FSIZE`` to what is left of the VM's budget and ignores ``SIGXFSZ``, so a
write past it fails with ``EFBIG`` ("File too large") instead of killing the
writer; `run_bwrap`'s ``watch`` callback lets the engine stop a command whose VM
outgrows its budget across many files.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .baseimage import VM_HOME, VM_UID
from .cgroups import VmCgroup
from .session import SESSION_WRAPPER

__all__ = ["SETPRIV", "RawResult", "bwrap_argv", "run_bwrap", "spawn_prefix"]

_SH = "/bin/sh"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DRAIN_GRACE_S = 5.0

SETPRIV = shutil.which("setpriv")
"""util-linux's setpriv: drops to the sandbox uid in the exec chain (see `spawn_prefix`)."""


def spawn_prefix(
    cg: VmCgroup | None,
    pids_max: int,
    memory_max: int,
    drop_to: int | None = None,
    fsize_max: int | None = None,
    nofile: tuple[int, int] | None = None,
    groups: Sequence[int] = (),
) -> list[str]:
    """The ``sh -c`` wrapper that confines itself and then execs bwrap.

    With ``drop_to``, the wrapper starts as root and execs bwrap through ``setpriv``
    as that uid. Popen's own ``user=``/``group=`` would do the same, but they make
    Python fork() the whole server instead of vfork()ing it, and copying a
    server-sized process costs more per command than the two extra execs.

    With ``fsize_max`` (bytes), no file may grow past it (``RLIMIT_FSIZE``, set in
    512-byte units, rounded up) and ``SIGXFSZ`` is ignored so writers get ``EFBIG``.

    ``groups`` are the supplementary groups ``drop_to`` keeps (none by default).

    With ``nofile`` (soft, hard), the command's ``RLIMIT_NOFILE`` is that, not the
    server's raised limit it would inherit.
    """
    steps: list[str] = []
    if cg is not None:
        for f in cg.procs_files:
            # Fail closed: never run a command outside its VM's limits.
            steps.append(f"echo $$ > {shlex.quote(f)} || exit 125")
    if cg is None or not cg.has("pids"):
        steps.append(f"ulimit -u {int(pids_max)} 2>/dev/null")
    if cg is None or not cg.has("memory"):
        steps.append(f"ulimit -v {int(memory_max) // 1024} 2>/dev/null")
    if nofile is not None:
        # The wrapper may lower the hard limit, not raise it (no CAP_SYS_RESOURCE).
        inherited = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = (
            int(nofile[1])
            if inherited == resource.RLIM_INFINITY
            else min(int(nofile[1]), inherited)
        )
        steps.append(f"ulimit -Sn {min(int(nofile[0]), hard)} && ulimit -Hn {hard} || exit 125")
    if fsize_max is not None:
        blocks = max(1, -(-int(fsize_max) // 512))
        steps.append(f"trap '' XFSZ; ulimit -f {blocks} || exit 125")
    if drop_to is not None and SETPRIV is not None:
        uid = int(drop_to)
        keep = f"--groups={','.join(str(int(g)) for g in groups)}" if groups else "--clear-groups"
        steps.append(f'exec {shlex.quote(SETPRIV)} --reuid={uid} --regid={uid} {keep} -- "$@"')
    else:
        steps.append('exec "$@"')
    return [_SH, "-c", "; ".join(steps), "arker-spawn"]


def bwrap_argv(
    *,
    bwrap: str,
    root_fd: int,
    ro_binds: Sequence[str],
    network: bool,
    info_fd: int,
    command: str,
    state_path: str,
) -> list[str]:
    """Build the bwrap command line for one command in a VM."""
    argv = [bwrap, "--bind-fd", str(root_fd), "/"]
    for b in ro_binds:
        argv += ["--ro-bind", b, b]
    argv += ["--proc", "/proc", "--dev", "/dev", "--unshare-all"]
    if network:
        argv.append("--share-net")
    argv += [
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid", str(VM_UID),
        "--gid", str(VM_UID),
        "--hostname", "vm",
        "--info-fd", str(info_fd),
        "--clearenv",
        "--setenv", "PATH", _PATH,
        "--setenv", "HOME", VM_HOME,
        "--setenv", "USER", "user",
        "--setenv", "LOGNAME", "user",
        "--setenv", "LANG", "C.UTF-8",
        "--chdir", "/",  # the wrapper cds; a missing home must not break every run
        "--", _SH, "-c", SESSION_WRAPPER, "sh", state_path, command,
    ]  # fmt: skip
    return argv


@dataclass
class RawResult:
    """What came out of one bwrap run."""

    stdout: bytes
    stderr: bytes
    returncode: int
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    stopped: bool = False
    """The ``watch`` callback asked for the command to be stopped (it was killed)."""


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def run_bwrap(
    argv: list[str],
    *,
    uid: int | None,
    pass_fds: Sequence[int],
    info_w: int,
    info_r: int,
    timeout: float,
    max_output: int,
    register: Callable[[subprocess.Popen[bytes] | None, subprocess.Popen[bytes]], None],
    watch: Callable[[], bool] | None = None,
    watch_interval: float = 0.5,
    groups: Sequence[int] = (),
) -> RawResult:
    """Run ``argv`` as ``uid``, collecting capped output until exit or timeout.

    On timeout bwrap is SIGKILLed; its pid-namespace init (found via ``--info-fd``)
    gets SIGKILL too and we wait for it to vanish, so no process of the command
    outlives this call.

    Args:
        argv: Full argv (spawn wrapper + bwrap).
        uid: Host uid/gid for Popen to switch to; `None` when the argv drops
            privileges itself (`spawn_prefix` with ``drop_to``).
        pass_fds: Descriptors bwrap needs (root handle, info pipe).
        info_w: Write end of the ``--info-fd`` pipe (closed here, whatever happens).
        info_r: Read end of it (closed here, whatever happens).
        timeout: Seconds.
        max_output: Byte cap per stream; the rest is drained and discarded.
        register: Called as ``register(None, proc)`` after spawn and
            ``register(proc, proc)`` when done, so the engine can kill on close.
        watch: Called about every ``watch_interval`` seconds (longer when it is
            slow) while the command runs; True kills the tree like a timeout, and
            the result says ``stopped`` instead of ``timed_out``.
        watch_interval: Seconds between ``watch`` calls.
        groups: Supplementary groups with ``uid`` (none by default).
    """
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
        # Out of descriptors, memory or processes: the pipe must not leak as well.
        os.close(info_w)
        os.close(info_r)
        raise
    os.close(info_w)
    register(None, proc)
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {"out": bytearray(), "err": bytearray(), "info": bytearray()}
    trunc = {"out": False, "err": False, "info": False}
    sel = selectors.DefaultSelector()
    for fd, key in ((proc.stdout.fileno(), "out"), (proc.stderr.fileno(), "err"), (info_r, "info")):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, key)
    deadline = time.monotonic() + timeout
    timed_out = False
    stopped = False
    child_pidfd: int | None = None
    drain_until = 0.0
    next_watch = time.monotonic() + watch_interval
    try:
        while sel.get_map():
            now = time.monotonic()
            if watch is not None and not timed_out and now >= next_watch:
                if watch():
                    stopped = True
                    deadline = now  # stop it exactly like a timeout
                done = time.monotonic()
                # A slow check (a huge tree) must not eat the command's time.
                next_watch = done + max(watch_interval, 4 * (done - now))
                now = done
            if not timed_out and now >= deadline:
                timed_out = True
                child_pidfd = _kill_tree(proc, bufs["info"], child_pidfd)
                drain_until = now + _DRAIN_GRACE_S
            if timed_out and now >= drain_until:
                break
            wait = (drain_until if timed_out else deadline) - now
            if watch is not None and not timed_out:
                wait = min(wait, next_watch - now)
            for skey, _ in sel.select(timeout=max(0.0, min(wait, 1.0))):
                name = str(skey.data)
                try:
                    chunk = os.read(skey.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(skey.fd)
                    continue
                buf = bufs[name]
                room = (max_output if name != "info" else 65536) - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(chunk) > room:
                    trunc[name] = True
                if name == "info" and child_pidfd is None:
                    child_pidfd = _open_child_pidfd(bufs["info"])
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Pipes closed but something keeps running: it is a timeout too.
                timed_out = True
                child_pidfd = _kill_tree(proc, bufs["info"], child_pidfd)
        if timed_out:
            proc.kill()
        proc.wait()
        if child_pidfd is not None:
            _wait_pidfd(child_pidfd, _DRAIN_GRACE_S)
    finally:
        sel.close()
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
        stdout=bytes(bufs["out"]),
        stderr=bytes(bufs["err"]),
        returncode=proc.returncode,
        timed_out=timed_out and not stopped,
        stdout_truncated=trunc["out"],
        stderr_truncated=trunc["err"],
        stopped=stopped,
    )


def _open_child_pidfd(info: bytearray) -> int | None:
    # bwrap writes {"child-pid": N, ...} once the namespace init exists.
    try:
        pid = int(json.loads(bytes(info))["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    return _pidfd(pid)


def _kill_tree(
    proc: subprocess.Popen[bytes], info: bytearray, child_pidfd: int | None
) -> int | None:
    if child_pidfd is None:
        child_pidfd = _open_child_pidfd(info)
    # Killing the namespace's init makes the kernel kill every process in it.
    if child_pidfd is not None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(child_pidfd, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    return child_pidfd


def _wait_pidfd(pidfd: int, timeout: float) -> None:
    sel = selectors.DefaultSelector()
    try:
        sel.register(pidfd, selectors.EVENT_READ)
        sel.select(timeout=timeout)
    finally:
        sel.close()
