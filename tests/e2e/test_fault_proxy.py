"""The fault proxy's faults as a client sees them, in front of a loopback upstream.

Raw sockets on the client side: what arrives before the connection ends, and how it
ends (clean close or reset), is the fault.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from tests.kit.faultproxy import CUT_FAULTS, FaultPlan, FaultProxy
from tests.kit.loopback import LoopbackServer

BODY = b'{"ok": true, "items": [], "total": 0, "padding": "' + b"x" * 4000 + b'"}'
BIG = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    server = LoopbackServer()

    def answer(h: BaseHTTPRequestHandler) -> None:
        data = BIG if h.path.startswith("/big") else BODY
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    server.behaviour = answer
    yield server
    server.close()


def _exchange(url: str, path: str, body: bytes = b"") -> tuple[bytes, str]:
    """(every byte received, how the connection ended: ``closed`` or ``reset``)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    got = bytearray()
    try:
        method = "PUT" if body else "GET"
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        while block := sock.recv(1 << 20):
            got += block
    except ConnectionResetError:
        return bytes(got), "reset"
    finally:
        sock.close()
    return bytes(got), "closed"


def _split(answer: bytes) -> tuple[bytes, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("fault", CUT_FAULTS)
def test_cut_faults_reach_the_server_and_end_cleanly(upstream: LoopbackServer, fault: str) -> None:
    plan = FaultPlan(rate=0.0)
    plan.force(fault)
    with FaultProxy(upstream.url, plan) as proxy:
        answer, end = _exchange(proxy.url, "/api/v1/vms/list")
        # The fault is spent: the next request passes whole.
        whole, _ = _exchange(proxy.url, "/api/v1/vms/list")
    assert end == "closed" and len(upstream.requests) == 2
    assert plan.injected == {fault: 1}
    assert _split(whole)[1] == BODY
    head, body = _split(answer)
    if fault == "cut_after_headers":
        assert answer.startswith(b"HTTP/1.1 200")
        assert f"Content-Length: {len(BODY)}".encode() in head and body == b""
    elif fault == "cut_mid_body":
        assert f"Content-Length: {len(BODY)}".encode() in head
        assert body == BODY[: len(BODY) // 2]
    else:
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" not in answer
        assert b"Content-Length" not in answer


def test_random_faults_stop_at_their_bound(upstream: LoopbackServer) -> None:
    plan = FaultPlan(seed=3, rate=1.0, faults=CUT_FAULTS, max_faults=2)
    with FaultProxy(upstream.url, plan) as proxy:
        for _ in range(5):
            _exchange(proxy.url, "/api/v1/vms/list")
    assert sum(plan.injected.values()) == 2
    assert [fault for *_, fault in plan.log][2:] == ["pass"] * 3


def test_per_chunk_resets_on_a_download_deliver_what_they_count(
    upstream: LoopbackServer,
) -> None:
    every = 1024 * 1024
    plan = FaultPlan(rate=0.0, reset_every=every)
    with FaultProxy(upstream.url, plan) as proxy:
        answer, end = _exchange(proxy.url, "/big")
        _, body = _split(answer)
        assert end == "reset" and plan.injected == {"reset_every": 1}
        assert 0.75 * every <= len(body) <= 1.25 * every
        assert body == BIG[: len(body)] and proxy.bytes_down == len(body)
        answer, _ = _exchange(proxy.url, "/big")
        assert proxy.bytes_down == len(body) + len(_split(answer)[1])
    assert plan.injected == {"reset_every": 2}


def test_per_chunk_resets_on_an_upload_count_what_went_up(upstream: LoopbackServer) -> None:
    plan = FaultPlan(rate=0.0, reset_every=1024 * 1024)
    with FaultProxy(upstream.url, plan) as proxy:
        _, end = _exchange(proxy.url, "/up", BIG)
        assert end == "reset" and plan.injected == {"reset_every": 1}
        assert 0.75 * 1024 * 1024 <= proxy.bytes_up <= 1.25 * 1024 * 1024
        assert proxy.bytes_down == 0


def test_per_chunk_resets_spare_requests_the_plan_does_not_apply_to(
    upstream: LoopbackServer,
) -> None:
    plan = FaultPlan(rate=0.0, reset_every=1000, applies=lambda method, path: path == "/big")
    with FaultProxy(upstream.url, plan) as proxy:
        answer, end = _exchange(proxy.url, "/api/v1/vms/list")
    assert end == "closed" and _split(answer)[1] == BODY and not plan.injected
    assert proxy.bytes_down == len(BODY)
