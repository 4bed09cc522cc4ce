"""Network namespaces held by descriptor: make one, enter it from a thread, connect in it.

A namespace made here has no name in the filesystem: the server holds it by a
descriptor, so it ends when the server closes that descriptor (or dies) and the
last process in it exits. Namespaces are per thread on Linux: each step runs in a
short-lived thread of its own, so the server's other threads never change namespace.
A socket keeps the namespace it was made in, whatever thread uses it later.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["connect_in", "enter_path", "new_netns"]

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_T = TypeVar("_T")
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _in_thread(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a new thread (whose namespaces die with it); return or raise."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name="arker-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def new_netns() -> int:
    """A new network namespace with ``lo`` up, as a descriptor (the caller closes it).

    Raises:
        OSError: The kernel refused (no CAP_SYS_ADMIN, out of memory, ...).
    """

    def make() -> int:
        _check(_libc.unshare(CLONE_NEWNET))
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _lo_up()
        except BaseException:
            os.close(fd)
            raise
        return fd

    return _in_thread(make)


def enter_path(fd: int) -> str:
    """A path naming the namespace held by ``fd``, for a process this one starts
    (``nsenter --net=PATH``): valid while ``fd`` stays open."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def connect_in(fd: int, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` inside the namespace held by ``fd``.

    Raises:
        ConnectionRefusedError: Nothing listens on that port in the namespace.
        OSError: Anything else (timeout, out of descriptors).
    """

    def connect() -> socket.socket:
        _check(_libc.setns(fd, CLONE_NEWNET))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    if not 0 < port < 65536:
        raise OSError(errno.EINVAL, f"not a TCP port: {port}")
    return _in_thread(connect)
