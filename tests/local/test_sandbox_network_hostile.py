"""Hostile code against the network: a connection flood and a port scan of the host."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits
from arker.local.sandbox.network import missing_tools
from tests.kit.outside_host import OutsideHost, outside_host

from .conftest import BASE_VM

VM = "01KQBYKEV5WJ7YB010603T1DCT_hst0"
OTHER = "01KQBYKEV5WJ7YB010603T1DCT_hst1"
CAP = 200

# Opens up to N connections at once (non-blocking) and keeps them; prints how many
# were established.
FLOOD = """python3 - <<'EOF'
import resource, selectors, socket, time
N = resource.RLIMIT_NOFILE; h = resource.getrlimit(N)[1]; resource.setrlimit(N, (h, h))
socks, ok, sel = [], 0, selectors.DefaultSelector()
for _ in range({n}):
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect(('{addr}', {port}))
    except BlockingIOError:
        pass
    except OSError:
        s.close(); continue
    socks.append(s); sel.register(s, selectors.EVENT_READ)
deadline = time.monotonic() + 8
done = set()
while time.monotonic() < deadline and len(done) < len(socks):
    for k, _ in sel.select(0.5):
        s = k.fileobj
        sel.unregister(s); done.add(s)
        try:
            if s.recv(16) == b'outside':
                ok += 1
        except OSError:
            pass
print('ESTABLISHED', ok)
EOF"""

# Connects to every port in [lo, hi] of each address at once; prints the open ones.
SCAN = """python3 - <<'EOF'
import resource, selectors, socket, time, errno
N = resource.RLIMIT_NOFILE; h = resource.getrlimit(N)[1]; resource.setrlimit(N, (h, h))
found = []
for addr in {addrs!r}:
    for start in range({lo}, {hi} + 1, 1000):
        sel, socks = selectors.DefaultSelector(), []
        for port in range(start, min(start + 1000, {hi} + 1)):
            s = socket.socket(); s.setblocking(False)
            if s.connect_ex((addr, port)) in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE, port); socks.append(s)
            else:
                s.close()
        deadline = time.monotonic() + 2
        while sel.get_map() and time.monotonic() < deadline:
            for k, _ in sel.select(0.2):
                s = k.fileobj
                # (a socket that connected to itself is TCP's simultaneous open, not a find)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    if s.getsockname() != s.getpeername():
                        found.append((addr, k.data))
                sel.unregister(k.fileobj)
        for s in socks: s.close()
print('OPEN', sorted(found))
EOF"""


@pytest.fixture
def outside() -> Iterator[OutsideHost]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 missing")
    with outside_host() as host:
        yield host


@pytest.fixture
def capped(sandbox_data_dir: Path) -> Iterator[Engine]:
    if missing_tools("private") is not None:
        pytest.skip(missing_tools("private") or "")
    eng = Engine(sandbox_data_dir, network="private", limits=Limits(net_files_max=CAP))
    eng.ensure_base(BASE_VM)
    eng.fork(BASE_VM, VM)
    eng.fork(BASE_VM, OTHER)
    try:
        yield eng
    finally:
        eng.close()


def run(eng: Engine, vm: str, cmd: str) -> str:
    out = eng.run(vm, cmd, session="s", timeout=120)
    return out.stdout.decode() + out.stderr.decode()


def test_a_connection_flood_is_capped_per_vm_and_others_still_connect(
    capped: Engine, outside: OutsideHost
) -> None:
    out = run(capped, VM, FLOOD.format(n=3 * CAP, addr=outside.addr, port=outside.port))
    established = int(out.split("ESTABLISHED")[1].split()[0])
    assert 0 < established <= CAP, out
    # The flood is over for its VM only: another VM, and the host, still connect.
    out = run(capped, OTHER, FLOOD.format(n=20, addr=outside.addr, port=outside.port))
    assert "ESTABLISHED 20" in out, out
    socket.create_connection((outside.addr, outside.port), timeout=5).close()


def test_a_port_scan_finds_nothing_of_the_host(capped: Engine, outside: OutsideHost) -> None:
    loopback = socket.create_server(("127.0.0.1", 0))
    everywhere = socket.create_server(("0.0.0.0", 0))
    try:
        ports = sorted(s.getsockname()[1] for s in (loopback, everywhere))
        lo, hi = max(1, ports[0] - 500), min(65535, ports[1] + 500)
        addrs = ["127.0.0.1", outside.host_addr]
        out = run(capped, VM, SCAN.format(addrs=addrs, lo=lo, hi=hi))
        assert "OPEN []" in out, out
        # The scan works: the test host's listener is found.
        outside_port = outside.port
        out = run(capped, VM, SCAN.format(addrs=[outside.addr], lo=outside_port, hi=outside_port))
        assert f"OPEN [('{outside.addr}', {outside_port})]" in out, out
    finally:
        loopback.close()
        everywhere.close()
