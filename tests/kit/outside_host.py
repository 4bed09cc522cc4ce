"""An "outside" host for the network tests: a namespace of the test's own on TEST-NET-2.

A veth pair joins this host (``host_addr``) to a new network namespace (``addr``) on a
random /30 of 198.51.100.0/24, so parallel runs do not collide; a listener there answers
every connection with ``b"outside"`` and holds it open until the peer closes it. All of
it is removed on exit. Needs root and iproute2. Nothing but these addresses is ever targeted.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Answers b"outside" and keeps the connection open until the peer closes it, so that
# a flood's connections stay open at both ends.
_SERVER = (
    "import resource,selectors,socket\n"
    "N=resource.RLIMIT_NOFILE; h=resource.getrlimit(N)[1]; resource.setrlimit(N,(h,h))\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('{addr}',{port})); s.listen(4096)\n"
    "sel=selectors.DefaultSelector(); sel.register(s,selectors.EVENT_READ)\n"
    "while True:\n"
    " for k,_ in sel.select():\n"
    "  if k.fileobj is s:\n"
    "   c,_=s.accept(); c.sendall(b'outside'); sel.register(c,selectors.EVENT_READ)\n"
    "  elif not k.fileobj.recv(4096):\n"
    "   sel.unregister(k.fileobj); k.fileobj.close()\n"
)


@dataclass
class OutsideHost:
    addr: str
    """The listener's address, in the test's namespace."""
    host_addr: str
    """This host's end of the veth pair (one of this host's own addresses)."""
    port: int
    ns: str
    """The namespace's name (``ip netns``)."""


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def outside_host() -> Iterator[OutsideHost]:
    """Make the outside host; remove it (namespace, veth, listener) afterwards."""
    tag = secrets.token_hex(3)
    ns, veth = f"arker-t14-{tag}", f"a14{tag}"
    k = secrets.randbelow(60) + 1
    host_addr, addr = f"198.51.100.{4 * k + 1}", f"198.51.100.{4 * k + 2}"
    _sh("ip", "netns", "add", ns)
    server = None
    try:
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "addr", "add", f"{host_addr}/30", "dev", veth)
        _sh("ip", "link", "set", veth, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = 8000 + k
        code = _SERVER.format(addr=addr, port=port)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((addr, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield OutsideHost(addr, host_addr, port, ns)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
