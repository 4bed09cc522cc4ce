"""`arker serve --network`: each VM's private network, seen through the API.

The "outside" host is a network namespace of the test's own, joined to this host by a
veth pair on a /30 of TEST-NET-2 (198.51.100.0/24); nothing else is ever targeted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker import Arker
from arker.local.sandbox.network import missing_tools
from tests.kit.outside_host import OutsideHost, outside_host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

CONNECT = (
    'python3 -c "import socket\n'
    "try:\n"
    " s=socket.create_connection(('{host}',{port}),timeout=3); print('OPEN', s.recv(16))\n"
    "except OSError as e: print('CLOSED', e)\""
)


@pytest.fixture
def outside() -> Iterator[OutsideHost]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 missing")
    with outside_host() as host:
        yield host


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
