"""Each VM's network: one namespace per VM, shared by its runs, with user-mode networking.

Modes (``arker serve --network``):

- ``private`` (default): the VM's own namespace, with ``lo`` and a tap device run by
  ``pasta`` (Debian's ``passt``), which carries the VM's outbound TCP, UDP and DNS
  through ordinary sockets of the host. pasta runs with every port forward off
  (``-t/-u none``: nothing of the host comes in; ``-T/-U none``: nothing of the host's
  loopback is mapped into the VM) and ``--no-map-gw`` (the gateway address is not the
  host), so from inside the VM the host's loopback, its abstract unix sockets (they
  belong to a network namespace), the API port and other VMs are unreachable. pasta
  would still carry a connection to one of the host's own addresses to the host's
  services listening on all interfaces: each of the host's addresses (when the
  namespace is made) gets a ``prohibit`` route in the VM's namespace.
- ``none``: the VM's own namespace with only ``lo``.
- ``host``: the host's namespace (the VM sees all of the host's network).

A namespace is made on a VM's first run and kept while the VM stays mounted; it ends
when the VM is evicted (also when no run has started in it for ``idle_s``: the
``on_idle`` callback evicts it if nothing is in flight), deleted or the engine closes
(`drop`, `close`). Each VM has
its own, forks included. Runs join it through ``nsenter --net`` in front of their
argv (`prefix`), before they drop privileges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import netns
from .errors import SandboxError

__all__ = ["MODES", "Networks", "missing_tools"]

MODES = ("private", "none", "host")
PASTA_PACKAGE = "passt"
_READY_S = 10.0


def missing_tools(mode: str) -> str | None:
    """What ``mode`` needs that this host lacks, as one line naming the package."""
    if mode == "host":
        return None
    if shutil.which("nsenter") is None:
        return "nsenter not found: install util-linux"
    if mode == "private" and shutil.which("pasta") is None:
        return (
            "--network private needs pasta for the VMs' outbound traffic: "
            f"apt-get install -y {PASTA_PACKAGE} (or start with --network none)"
        )
    return None


def pasta_argv(pasta: str, ns_path: str, pid_file: str) -> list[str]:
    """pasta's command line for the namespace at ``ns_path`` (see the module docs)."""
    return [
        pasta, "--foreground", "--quiet", "--config-net",
        "--netns", ns_path, "--runas", "0:0", "-P", pid_file,
        "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw",
    ]  # fmt: skip


@dataclass
class _VmNet:
    fd: int
    pasta: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        if self.pasta is not None:
            with contextlib.suppress(OSError):
                self.pasta.kill()
            self.pasta.wait()
            self.pasta = None
        os.close(self.fd)


class Networks:
    """The VMs' network namespaces, made on demand.

    Args:
        mode: One of `MODES`; True means ``host`` and False ``none``.
        files_max: RLIMIT_NOFILE of each VM's pasta: it caps the VM's open outbound
            connections and flows, and a flooding VM runs out of them, not the host.
    """

    def __init__(
        self,
        mode: str | bool,
        files_max: int = 4096,
        idle_s: float = 300.0,
        on_idle: Callable[[str], object] | None = None,
    ) -> None:
        if isinstance(mode, bool):
            mode = "host" if mode else "none"
        if mode not in MODES:
            raise ValueError(f"unknown network mode {mode!r}")
        self.mode = mode
        self._lock = threading.Lock()
        self._vms: dict[str, _VmNet] = {}
        self._pasta = shutil.which("pasta")
        self._nsenter = shutil.which("nsenter") or "nsenter"
        self._tmp: str | None = None
        self._files_max = files_max
        self._idle_s = idle_s
        self._on_idle = on_idle
        self._used: dict[str, float] = {}  # vm id -> monotonic time of its last run
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        # pasta gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG):
        # one long-lived thread starts them all, so none outlives the server, even
        # one killed with SIGKILL.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="arker-pasta")
        self._setpriv = shutil.which("setpriv")
        self._prlimit = shutil.which("prlimit") or "prlimit"

    @property
    def shares_host(self) -> bool:
        """Runs share the host's namespace (``host`` mode)."""
        return self.mode == "host"

    def prefix(self, vm_id: str) -> list[str]:
        """argv to put in front of a run's so that it runs in the VM's namespace.

        Raises:
            SandboxError: ``unavailable`` (the namespace or pasta cannot be set up).
        """
        if self.mode == "host":
            return []
        net = self._ensure(vm_id)
        with self._lock:
            self._used[vm_id] = time.monotonic()
        return [self._nsenter, f"--net={netns.enter_path(net.fd)}", "--"]

    def open_connection(self, vm_id: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A connected TCP socket to ``127.0.0.1:port`` inside the VM's namespace.

        Raises:
            SandboxError: ``bad_request`` (not a port), ``conflict`` (the VM has no
                namespace: ``host`` mode, or no run since it was last set up),
                ``unavailable`` (nothing listens there, or the connect failed).
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise SandboxError("bad_request", f"not a TCP port: {port!r}")
        if self.mode == "host":
            raise SandboxError("conflict", "VMs share the host's network (--network host)")
        with self._lock:
            net = self._vms.get(vm_id)
            if net is None:
                raise SandboxError("conflict", f"vm {vm_id} has no network: nothing runs in it")
            fd = os.dup(net.fd)  # a concurrent drop must not close it under the connect
        try:
            return netns.connect_in(fd, port, timeout)
        except ConnectionRefusedError:
            raise SandboxError(
                "unavailable", f"nothing listens on port {port} in vm {vm_id}"
            ) from None
        except OSError as exc:
            raise SandboxError(
                "unavailable", f"cannot connect to port {port} in vm {vm_id}: {exc}"
            ) from None
        finally:
            os.close(fd)

    def has(self, vm_id: str) -> bool:
        """Whether the VM has a namespace now."""
        with self._lock:
            return vm_id in self._vms

    def drop(self, vm_id: str) -> None:
        """End the VM's namespace (and its pasta), if it has one."""
        with self._lock:
            net = self._vms.pop(vm_id, None)
            self._used.pop(vm_id, None)
        if net is not None:
            net.close()

    def close(self) -> None:
        """End every namespace."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
        with self._lock:
            nets, self._vms = list(self._vms.values()), {}
        for net in nets:
            net.close()
        self._spawner.shutdown()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _ensure(self, vm_id: str) -> _VmNet:
        with self._lock:
            net = self._vms.get(vm_id)
            if net is not None and (net.pasta is None or net.pasta.poll() is None):
                return net
            if net is not None:  # pasta died: rebuild the whole namespace
                del self._vms[vm_id]
                net.close()
            try:
                net = _VmNet(netns.new_netns())
            except OSError as exc:
                raise SandboxError("unavailable", f"cannot make the vm's network: {exc}") from None
            try:
                if self.mode == "private":
                    net.pasta = self._start_pasta(net.fd)
                    self._shut_out_host(net.fd)
            except BaseException:
                net.close()
                raise
            self._vms[vm_id] = net
            if self._reaper is None and self._on_idle is not None:
                self._reaper = threading.Thread(
                    target=self._reap, name="arker-net-idle", daemon=True
                )
                self._reaper.start()
            return net

    def _reap(self) -> None:
        """Hand VMs whose namespace has been idle for ``idle_s`` to ``on_idle``."""
        assert self._on_idle is not None
        while not self._stop.wait(min(max(self._idle_s / 4, 0.05), 30.0)):
            now = time.monotonic()
            with self._lock:
                idle = [v for v, t in self._used.items() if now - t >= self._idle_s]
            for vm_id in idle:
                with contextlib.suppress(Exception):  # a VM deleted meanwhile, ...
                    self._on_idle(vm_id)

    def _shut_out_host(self, fd: int) -> None:
        """Add a ``prohibit`` route in the namespace for each of the host's addresses
        (the ones pasta copies into it stay local: the local table comes first)."""
        ip = shutil.which("ip")
        if ip is None:
            raise SandboxError("unavailable", "ip not found: apt-get install -y iproute2")
        try:
            done = subprocess.run([ip, "-j", "addr"], capture_output=True, check=True, timeout=10)
            routes = []
            for link in json.loads(done.stdout):
                for info in link.get("addr_info", []):
                    addr = ipaddress.ip_address(info["local"])
                    if not (addr.is_loopback or addr.is_link_local):
                        routes.append(f"route add prohibit {addr}/{addr.max_prefixlen}\n")
            subprocess.run(
                [self._nsenter, f"--net={netns.enter_path(fd)}", "--", ip, "-force", "-batch", "-"],
                input="".join(routes).encode(),
                capture_output=True,
                check=True,
                timeout=10,
            )
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            raise SandboxError("unavailable", f"cannot shut the host out of a vm: {exc}") from None

    def _start_pasta(self, fd: int) -> subprocess.Popen[bytes]:
        if self._pasta is None:
            raise SandboxError("unavailable", missing_tools("private") or "pasta not found")
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="arker-net-")
        pid_file = os.path.join(self._tmp, f"pasta-{fd}.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
        argv = pasta_argv(self._pasta, f"/proc/self/fd/{fd}", pid_file)
        # Never above the server's own hard limit: raising it needs CAP_SYS_RESOURCE,
        # which a server held to a low limit (`prlimit`, a container) may lack, and
        # pasta would then not start at all.
        n = min(int(self._files_max), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        argv = [self._prlimit, f"--nofile={n}:{n}", "--", *argv]
        if self._setpriv is not None:
            argv = [self._setpriv, "--pdeathsig", "KILL", "--", *argv]
        proc = self._spawner.submit(
            subprocess.Popen,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            start_new_session=True,
        ).result()
        deadline = time.monotonic() + _READY_S
        # pasta writes its pid file once the namespace's interface is configured.
        while not os.path.exists(pid_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    proc.kill()
                status = proc.wait()
                raise SandboxError(
                    "unavailable", f"pasta could not set up the vm's network (status {status})"
                )
            time.sleep(0.002)
        os.unlink(pid_file)
        return proc
