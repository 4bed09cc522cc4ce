"""Exposed ports: the SDK's requests and answers (``responses``), the Computer handle,
and the server's pieces that need no sandbox: URL tokens, their checks, the bounds
on open connections."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from arker import BadRequestError, Computer, ExposedPort, NotFoundError
from arker.local.errors import ApiError
from arker.local.port_slots import ConnectionSlots, ProxyLimits, open_in_vm
from arker.local.ports import PROXY_PREFIX, ExposedPorts, PortStore
from tests.unit.live_fakes import VM

URL = "http://127.0.0.1:9/exposed/vm/8000/abc/"
EXPOSED = {"port": 8000, "url": URL, "created_at": "2026-12-02T02:00:00Z"}


def _url(client: Any, suffix: str = "") -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/ports{suffix}"


def test_expose_posts_the_port_and_returns_its_url(client: Any, rsps: Any) -> None:
    rsps.post(_url(client), json=EXPOSED)
    exposed = client.vms.expose(VM, 8000)
    assert isinstance(exposed, ExposedPort)
    assert (exposed.port, exposed.url, exposed.created_at.tzinfo is not None) == (8000, URL, True)
    assert json.loads(rsps.calls[0].request.body) == {"port": 8000}


def test_expose_is_retried_after_a_reset_since_exposing_twice_is_exposing_once(
    client: Any, rsps: Any
) -> None:
    rsps.post(_url(client), body=requests.ConnectionError("reset"))
    rsps.post(_url(client), json=EXPOSED)
    assert client.vms.expose(VM, 8000).url == URL
    assert len(rsps.calls) == 2


@pytest.mark.parametrize("port", [0, 65536, -1, "80", True, 80.0])
def test_expose_and_unexpose_refuse_bad_ports_before_sending(
    client: Any, rsps: Any, port: Any
) -> None:
    with pytest.raises(BadRequestError):
        client.vms.expose(VM, port)
    with pytest.raises(BadRequestError):
        client.vms.unexpose(VM, port)
    assert not rsps.calls


def test_list_ports_reads_every_exposed_port(client: Any, rsps: Any) -> None:
    rsps.get(_url(client), json={"ports": [EXPOSED, {**EXPOSED, "port": 9000}]})
    assert [p.port for p in client.vms.list_ports(VM)] == [8000, 9000]


def test_unexpose_deletes_the_port_and_a_missing_vm_is_not_found(client: Any, rsps: Any) -> None:
    rsps.delete(_url(client, "/8000"), json={"ok": True})
    client.vms.unexpose(VM, 8000)
    rsps.delete(
        _url(client, "/8001"),
        status=404,
        json={"ok": False, "error": {"code": "not_found", "message": "vm not found"}},
    )
    with pytest.raises(NotFoundError):
        client.vms.unexpose(VM, 8001)


def test_the_computer_handle_exposes_and_unexposes_its_vm(client: Any, rsps: Any) -> None:
    rsps.post(_url(client), json=EXPOSED)
    rsps.delete(_url(client, "/8000"), json={"ok": True})
    vm = Computer(client, VM)
    assert vm.expose(8000).url == URL
    vm.unexpose(8000)
    assert [c.request.method for c in rsps.calls] == ["POST", "DELETE"]


# --- the server's pieces -----------------------------------------------------------------


class _Vms:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    def owned(self, org_id: str, vm_id: str) -> Any:
        if org_id != self.owner:
            raise ApiError("not_found", f"vm not found: {vm_id}")
        return SimpleNamespace(id=vm_id)


class _Store:
    def __init__(self) -> None:
        self.vms = {"vm1"}

    def get_vm(self, vm_id: str) -> Any:
        return SimpleNamespace(id=vm_id) if vm_id in self.vms else None


@pytest.fixture
def ports(tmp_path: Path) -> ExposedPorts:
    return ExposedPorts(PortStore(tmp_path / "db"), _Store(), _Vms("org"), b"k" * 32)  # type: ignore[arg-type]


def _rest(url: str) -> str:
    return url.split(PROXY_PREFIX, 1)[1]


def test_a_token_resolves_to_its_port_and_the_path_after_it(ports: ExposedPorts) -> None:
    url = ports.expose("org", "vm1", 8000, "http://h:1/").url
    assert url.startswith("http://h:1/exposed/vm1/8000/")
    target = ports.resolve(_rest(url) + "a/b?x=1")
    assert (target.vm_id, target.port, target.path) == ("vm1", 8000, "/a/b?x=1")
    assert ports.resolve(_rest(url).rstrip("/")).path == "/"


def test_every_refusal_is_the_same_not_found(ports: ExposedPorts) -> None:
    rest = _rest(ports.expose("org", "vm1", 8000, "http://h:1/").url)
    vm, port, token, _ = rest.split("/")
    for bad in (
        f"{vm}/{port}/{token[:-1]}x/",
        f"{vm}/{port}/",
        f"{vm}/8001/{token}/",
        f"vm2/{port}/{token}/",
        f"{vm}/+8000/{token}/",
        f"{vm}/{port}",
        "",
    ):
        with pytest.raises(ApiError) as caught:
            ports.resolve(bad)
        assert (caught.value.status, caught.value.message) == (404, "no exposed port at this URL")


def test_a_reexposed_port_gets_a_new_token_and_the_old_one_dies(ports: ExposedPorts) -> None:
    first = ports.expose("org", "vm1", 8000, "http://h/").url
    assert ports.expose("org", "vm1", 8000, "http://h/").url == first
    ports.unexpose("org", "vm1", 8000)
    second = ports.expose("org", "vm1", 8000, "http://h/").url
    assert second != first
    with pytest.raises(ApiError):
        ports.resolve(_rest(first))


def test_a_token_dies_with_its_vm_and_prune_forgets_the_vms_ports(ports: ExposedPorts) -> None:
    url = ports.expose("org", "vm1", 8000, "http://h/").url
    ports._store.vms.clear()  # type: ignore[attr-defined]
    with pytest.raises(ApiError):
        ports.resolve(_rest(url))
    ports.records.prune(set())
    assert ports.records.list("vm1") == []


def test_another_org_cannot_expose_list_or_unexpose(ports: ExposedPorts) -> None:
    for call in (
        lambda: ports.expose("intruder", "vm1", 8000, "http://h/"),
        lambda: ports.list("intruder", "vm1", "http://h/"),
        lambda: ports.unexpose("intruder", "vm1", 8000),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == 404


def test_a_vm_has_a_bounded_number_of_exposed_ports(ports: ExposedPorts) -> None:
    from arker.local.ports import MAX_PORTS_PER_VM

    for port in range(1, MAX_PORTS_PER_VM + 1):
        ports.expose("org", "vm1", port, "http://h/")
    with pytest.raises(ApiError) as caught:
        ports.expose("org", "vm1", 9999, "http://h/")
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")


def test_open_connections_are_bounded_per_port_and_per_vm() -> None:
    slots = ConnectionSlots(ProxyLimits(per_port=2, per_vm=3))
    slots.acquire("vm", 1)
    slots.acquire("vm", 1)
    with pytest.raises(ApiError, match="exposed port") as per_port:
        slots.acquire("vm", 1)
    slots.acquire("vm", 2)
    with pytest.raises(ApiError, match="VM's ports") as per_vm:
        slots.acquire("vm", 3)
    assert per_port.value.status == per_vm.value.status == 429
    slots.acquire("other", 1)  # another VM has its own
    slots.release("vm", 1)
    slots.acquire("vm", 3)
    assert slots.open_count("vm") == 3


class _NetEngine:
    """An engine as the relay sees it: its network mode and, maybe, open_connection."""

    def __init__(self, network: object, opener: Any = None) -> None:
        self.network = network
        if opener is not None:
            self.open_connection = opener


def test_the_relay_connects_through_the_engine_into_the_vms_own_network() -> None:
    made: list[tuple[str, int]] = []
    a, b = socket.socketpair()

    def opener(vm_id: str, port: int) -> socket.socket:
        made.append((vm_id, port))
        return a

    with a, b:
        assert open_in_vm(_NetEngine("private", opener), "vm1", 8000, 1.0) is a
    assert made == [("vm1", 8000)]


def test_with_the_host_network_the_vms_port_is_the_hosts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def never(vm_id: str, port: int) -> socket.socket:
            raise AssertionError("host mode must not ask the engine")

        for mode in (True, "host"):
            with open_in_vm(_NetEngine(mode, never), "vm1", port, 5.0) as sock:
                assert sock.getpeername()[1] == port
                listener.accept()[0].close()


def test_nothing_listening_is_a_502_and_no_network_a_503() -> None:
    from arker.local.engine_api import SandboxError

    def refused(vm_id: str, port: int) -> socket.socket:
        raise SandboxError("unavailable", f"nothing listens on port {port} in vm {vm_id}")

    with pytest.raises(ApiError) as nothing:
        open_in_vm(_NetEngine("private", refused), "vm1", 8000, 1.0)
    assert (nothing.value.status, nothing.value.code) == (502, "unavailable")
    assert "nothing listens on port 8000" in nothing.value.message
    with pytest.raises(ApiError) as no_network:
        open_in_vm(_NetEngine(False), "vm1", 8000, 1.0)
    assert (no_network.value.status, no_network.value.code) == (503, "unavailable")


def test_an_answer_head_past_the_bound_is_a_protocol_error() -> None:
    import asyncio

    import h11

    from arker.local.port_proxy import _answer_head

    async def read(head: bytes) -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(head)
        reader.feed_eof()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "vm")]))
        conn.send(h11.EndOfMessage())
        return await _answer_head(conn, reader)

    small = asyncio.run(read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n"))
    assert small.status_code == 200  # 1xx answers are skipped
    with pytest.raises(h11.RemoteProtocolError):
        asyncio.run(read(b"HTTP/1.1 200 OK\r\nA: " + b"b" * 200_000 + b"\r\n\r\n"))
