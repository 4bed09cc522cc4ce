"""`arker serve --network`: each VM's private network, seen through the API.

The "outside" host is a network namespace of the test's own, joined to this host by a
veth pair on a /30 of TEST-NET-2 (198.51.100.0/24); nothing else is ever targeted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from arker import Arker
from arker.local.sandbox.network import missing_tools

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

CONNECT = (
    'python3 -c "import socket\n'
    "try:\n"
    " s=socket.create_connection(('{host}',{port}),timeout=3); print('OPEN', s.recv(16))\n"
    "except OSError as e: print('CLOSED', e)\""
)
OUTSIDE_SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('{addr}',{port})); s.listen(512)\n"
    "while True:\n"
    " c,_=s.accept(); c.sendall(b'outside'); c.close()\n"
)


@dataclass
class OutsideHost:
    addr: str  # the listener's address, inside the test's namespace
    host_addr: str  # this host's end of the veth pair
    port: int


@pytest.fixture
def outside() -> Iterator[OutsideHost]:
    """A listener on TEST-NET-2 in a namespace of its own, removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 missing")
    tag = secrets.token_hex(3)
    ns, veth = f"arker-t14-{tag}", f"a14{tag}"
    k = secrets.randbelow(60) + 1  # a random /30, so parallel runs do not collide
    host_addr, addr = f"198.51.100.{4 * k + 1}", f"198.51.100.{4 * k + 2}"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    server = None
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{host_addr}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = 8000 + k
        code = OUTSIDE_SERVER.format(addr=addr, port=port)
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
        yield OutsideHost(addr, host_addr, port)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)


def pasta_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith(("pasta", "passt")):
                        pids.add(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[tuple[Arker, int]]:
    from arker.testing import start_server

    if missing_tools("private") is not None:
        pytest.skip(missing_tools("private") or "")
    server = start_server(tmp_path / "data", extra_args=("--network", "private"))
    client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
    try:
        yield client, server.port
    finally:
        client.close()
        server.stop()


def run(client: Arker, vm: str, cmd: str) -> str:
    out = client.runs.create(vm, cmd)
    return out.stdout_text + out.stderr_text


def test_a_vm_reaches_an_outside_host(
    private_server: tuple[Arker, int], outside: OutsideHost
) -> None:
    client, _ = private_server
    vm = client.vms.fork("arkuntu").vm_id
    out = run(client, vm, CONNECT.format(host=outside.addr, port=outside.port))
    assert "OPEN b'outside'" in out, out


def test_a_vm_cannot_reach_the_api_or_the_hosts_services(
    private_server: tuple[Arker, int], outside: OutsideHost
) -> None:
    client, api_port = private_server
    host_listener = socket.create_server(("0.0.0.0", 0))
    try:
        vm = client.vms.fork("arkuntu").vm_id
        port = host_listener.getsockname()[1]
        targets = [("127.0.0.1", api_port), ("127.0.0.1", port)]
        # This host's own addresses that pasta does not copy into the VM.
        targets += [(outside.host_addr, port), (outside.host_addr, api_port)]
        for host, p in targets:
            out = run(client, vm, CONNECT.format(host=host, port=p))
            # Refused at once: never carried to the host (a timeout could be luck).
            assert "CLOSED" in out and "timed out" not in out, (host, p, out)
    finally:
        host_listener.close()


def test_network_host_warns_at_start(tmp_path: Path) -> None:
    from arker.testing import start_server

    server = start_server(tmp_path / "data", extra_args=("--network", "host"))
    try:
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert "--network host" in log and "loopback" in log


def test_no_network_is_a_deprecated_alias_of_network_none(tmp_path: Path) -> None:
    from arker.testing import start_server

    server = start_server(tmp_path / "data", extra_args=("--no-network",))
    try:
        client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
        vm = client.vms.fork("arkuntu").vm_id
        assert run(client, vm, "tail -n +3 /proc/net/dev | cut -d: -f1").split() == ["lo"]
        client.close()
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert "deprecated" in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_pasta_outlives_the_server(tmp_path: Path, sig: signal.Signals) -> None:
    from arker.testing import start_server

    if missing_tools("private") is not None:
        pytest.skip(missing_tools("private") or "")
    before = pasta_pids()
    server = start_server(tmp_path / "data", extra_args=("--network", "private"))
    try:
        client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
        for _ in range(2):
            run(client, client.vms.fork("arkuntu").vm_id, "true")
        client.close()
        assert len(pasta_pids() - before) == 2
    finally:
        server.stop(sig)
    deadline = time.monotonic() + 10
    while pasta_pids() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pasta_pids() - before == set()
