"""Interactive terminals: a shell in a VM's session on a pseudo-terminal.

The host opens the pty pair; the slave end becomes the sandbox's stdin, stdout and
stderr. The spawn wrapper joins the VM's cgroups, drops to the sandbox uid and execs
util-linux's ``setsid --ctty``: a new session whose controlling terminal is that
slave (``setsid()`` + ``TIOCSCTTY`` on fd 0), so Ctrl-C (``0x03``) reaches the
foreground process group and ``TIOCSWINSZ`` on the master sends ``SIGWINCH``.

bwrap runs *without* ``--new-session`` here: that flag calls ``setsid()`` again and
would drop the terminal (it exists so that a command cannot ``TIOCSTI`` keystrokes
into the terminal of whoever started it). The terminal is a fresh pty of this shell
alone, so the keystrokes it could inject only reach itself. Everything else is the
run's sandbox: same root, binds, namespaces, uid, cgroups and ``--die-with-parent``,
and the session's cwd and exported environment restored by `SESSION_WRAPPER`.

The master end is non-blocking: the server pumps it from its event loop
(``routes_pty``), no thread per terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from typing import BinaryIO

from . import runner
from .cgroups import VmCgroup
from .errors import SandboxError
from .limits import Limits
from .live import LiveSink
from .pipeline import check_command, sandbox_binds
from .session import session_state_path

__all__ = ["MAX_DIMENSION", "PtyShell", "shell_command", "spawn_shell", "stop_button"]

SETSID = shutil.which("setsid")
"""util-linux's setsid: ``--ctty`` makes the pty the shell's controlling terminal."""

MAX_DIMENSION = 1000
"""Largest number of columns or rows a terminal may have."""

_DEFAULT_SHELL = "command -v bash >/dev/null 2>&1 && exec bash -i; exec sh -i"
_REAP_S = 5.0


def shell_command(command: str | None) -> str:
    """What the session wrapper evals: the given executable (no splitting), or a shell.

    Raises:
        SandboxError: ``bad_request`` for an empty or NUL-bearing command.
    """
    if command is None:
        return _DEFAULT_SHELL
    if not command.strip():
        raise SandboxError("bad_request", "command must name an executable")
    check_command(command)
    return f"exec {shlex.quote(command)}"


def stop_button() -> LiveSink:
    """A sink with no output, used as the terminal's stop button in the live registry.

    Registered like a live run's sink, so deleting the VM or closing the engine stops
    the terminal, and fork counts it as a live process of the VM (frozen while the
    upper is copied).
    """
    return LiveSink(_NULL, _NULL, 0, lambda: None)


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        return None


_NULL: BinaryIO = _Null()  # type: ignore[assignment]


class PtyShell:
    """One running terminal: its master end, its process tree, its stop button.

    Args:
        proc: The spawn wrapper (which became bwrap).
        master_fd: The pty's master end (non-blocking; owned here).
        info_r: Read end of bwrap's ``--info-fd`` (owned here).
        stop: The stop button registered for this terminal.
        on_close: Called once when the terminal is closed (releases the VM).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        master_fd: int,
        info_r: int,
        stop: LiveSink,
        on_close: Callable[[], None],
    ) -> None:
        self.proc = proc
        self.master_fd = master_fd
        self.stop = stop
        self._info_r = info_r
        self._child: int | None = None
        self._on_close: Callable[[], None] | None = on_close

    def resize(self, cols: int, rows: int) -> None:
        """Set the window size (the foreground process gets ``SIGWINCH``)."""
        set_size(self.master_fd, cols, rows)

    def kill(self) -> None:
        """Kill every process of the terminal (its pid namespace's init, then bwrap)."""
        if self._child is None:
            self._child = _child_pid(self._info_r)
        child = self._child
        if child is not None:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(child)
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
        with contextlib.suppress(OSError):
            self.proc.kill()

    def close(self) -> None:
        """Kill and reap the processes, close the descriptors, release the VM (blocking)."""
        if self._on_close is None:
            return
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_REAP_S)
        for fd in (self.master_fd, self._info_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        release, self._on_close = self._on_close, None
        release()


def set_size(fd: int, cols: int, rows: int) -> None:
    """``TIOCSWINSZ`` with both dimensions clamped to 1..`MAX_DIMENSION`."""
    cols = max(1, min(MAX_DIMENSION, int(cols)))
    rows = max(1, min(MAX_DIMENSION, int(rows)))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn_shell(
    *,
    bwrap: str,
    root_fd: int,
    base: str,
    network: bool,
    prefix: list[str],
    ids: tuple[int, tuple[int, ...]],
    limits: Limits,
    cgroup: VmCgroup,
    session: str,
    command: str,
    cols: int,
    rows: int,
    stop: LiveSink,
    on_close: Callable[[], None],
) -> PtyShell:
    """Start ``command`` (from `shell_command`) on a new pty in the VM's session.

    Raises:
        SandboxError: ``internal`` when util-linux's setsid/setpriv are missing or
            the sandbox cannot start.
    """
    if SETSID is None or runner.SETPRIV is None:
        raise SandboxError("internal", "terminals need util-linux's setsid and setpriv")
    master, slave = os.openpty()
    info_r, info_w = os.pipe()
    try:
        set_size(master, cols, rows)
        os.set_blocking(master, False)
        argv = runner.spawn_prefix(
            cgroup,
            limits.pids_max,
            limits.memory_max_bytes,
            drop_to=ids[0],
            nofile=limits.nofile,
            groups=ids[1],
        )
        sandbox = runner.bwrap_argv(
            bwrap=bwrap,
            root_fd=root_fd,
            ro_binds=sandbox_binds(base, network),
            network=True,  # the VM's namespace, joined by ``prefix`` (or the host's)
            info_fd=info_w,
            command=command,
            state_path=session_state_path(session),
        )
        sandbox.remove("--new-session")  # the pty must stay the controlling terminal
        # The shell's own view of the terminal: TERM comes from the session's env
        # when it sets one (the state file is restored after these).
        at = sandbox.index("--clearenv") + 1
        sandbox[at:at] = ["--setenv", "TERM", "xterm-256color"]
        proc = subprocess.Popen(
            [*prefix, *argv, SETSID, "--ctty", *sandbox],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            pass_fds=(root_fd, info_w),
            close_fds=True,
            cwd="/",
        )
    except OSError as exc:
        for fd in (master, info_r):
            os.close(fd)
        raise SandboxError("internal", f"cannot start the terminal: {exc.strerror}") from None
    except BaseException:
        for fd in (master, info_r):
            os.close(fd)
        raise
    finally:
        os.close(slave)
        os.close(info_w)
    return PtyShell(proc, master, info_r, stop, on_close)


def _child_pid(info_r: int) -> int | None:
    """The pid (host view) of bwrap's namespace init, from ``--info-fd``, if told yet."""
    try:
        os.set_blocking(info_r, False)
        raw = os.read(info_r, 65536)
        return int(json.loads(raw)["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
