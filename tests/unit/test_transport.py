"""Behaviour that needs real sockets: keep-alive, timeouts, resets, no adapter retries."""

from __future__ import annotations

import threading

import pytest

from arker import APIConnectionError, APITimeoutError, Arker, Timeout


@pytest.fixture
def lclient(loopback, make_client) -> Arker:
    """A client whose both hosts are the loopback server."""
    return make_client(base_url=loopback.url, control_url=loopback.url)


def test_many_calls_share_one_tcp_connection(loopback, lclient: Arker) -> None:
    for _ in range(25):
        assert lclient.vms.list().total == 0
    assert len(loopback.requests) == 25
    assert loopback.connections == 1


def test_with_options_copies_share_the_connection(loopback, lclient: Arker) -> None:
    lclient.vms.list()
    lclient.with_options(max_retries=0).vms.list()
    lclient.with_options(timeout=5).vms.list()
    assert len(loopback.requests) == 3
    assert loopback.connections == 1


def test_reset_connection_sees_exactly_one_plus_max_retries_attempts(
    loopback, make_client, sleeps
) -> None:
    loopback.behaviour = loopback.reset_connection
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=2)
    with pytest.raises(APIConnectionError):
        client.vms.list()
    assert len(loopback.requests) == 3
    assert len(sleeps) == 2


def test_reset_with_no_retries_is_one_attempt(loopback, make_client) -> None:
    loopback.behaviour = loopback.reset_connection
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=0)
    with pytest.raises(APIConnectionError):
        client.vms.list()
    assert len(loopback.requests) == 1


def test_reset_then_recovery_on_a_new_connection(loopback, lclient: Arker) -> None:
    answers = iter([loopback.reset_connection])

    def behaviour(handler) -> None:
        next(answers, lambda h: loopback.send_json(h, 200, {"ok": True, "total": 9}))(handler)

    loopback.behaviour = behaviour
    assert lclient.vms.list().total == 9
    assert len(loopback.requests) == 2


def test_read_timeout_raises_api_timeout_error(loopback, make_client) -> None:
    release = threading.Event()

    def slow(handler) -> None:
        release.wait(5)
        loopback.send_json(handler, 200, {"ok": True})

    loopback.behaviour = slow
    client = make_client(
        base_url=loopback.url, control_url=loopback.url, timeout=(2.0, 0.2), max_retries=1
    )
    try:
        with pytest.raises(APITimeoutError) as info:
            client.vms.list()
    finally:
        release.set()
    assert isinstance(info.value, APIConnectionError)
    assert info.value.code == "timeout"
    assert len(loopback.requests) == 2  # a timeout is transient: retried once


def test_per_call_timeout_override(loopback, make_client) -> None:
    release = threading.Event()

    def slow(handler) -> None:
        release.wait(5)
        loopback.send_json(handler, 200, {"ok": True, "items": [], "total": 0})

    loopback.behaviour = slow
    client = make_client(base_url=loopback.url, control_url=loopback.url, timeout=30)
    try:
        with pytest.raises(APITimeoutError):
            client.with_options(timeout=Timeout(2.0, 0.2), max_retries=0).vms.list()
    finally:
        release.set()


def test_timeout_passed_on_every_attempt(make_client, rsps) -> None:
    client = make_client(timeout=(3.0, 7.0), max_retries=2)
    url = f"{client.control_url}/api/v1/vms/list"
    rsps.get(url, status=503, body="")
    rsps.get(url, status=502, body="")
    rsps.get(url, json={"ok": True, "items": [], "total": 0})
    client.vms.list()
    assert [c.request.req_kwargs["timeout"] for c in rsps.calls] == [(3.0, 7.0)] * 3


def test_single_number_timeout_sets_both_parts(make_client, rsps) -> None:
    client = make_client(timeout=4)
    rsps.delete(f"{client.base_url}/api/v1/vms/X", json={"ok": True})
    client.vms.delete("X")
    assert rsps.calls[0].request.req_kwargs["timeout"] == (4.0, 4.0)


def test_run_read_timeout_outlasts_the_command_timeout(make_client, rsps) -> None:
    client = make_client(timeout=(3.0, 5.0))
    rsps.post(
        f"{client.base_url}/api/v1/vms/X/run",
        json={"ok": True, "stdout": "", "stderr": "", "exit_code": 0},
    )
    client.runs.create("X", "sleep 100", timeout=100)
    connect, read = rsps.calls[0].request.req_kwargs["timeout"]
    assert connect == 3.0 and read > 100


def test_context_manager_closes_the_connection(loopback, make_client) -> None:
    with make_client(base_url=loopback.url, control_url=loopback.url) as client:
        client.vms.list()
    # The kept-alive socket was closed on exit: another call must open a new one.
    client.vms.list()
    assert loopback.connections == 2


def test_connection_refused_is_api_connection_error(make_client, sleeps) -> None:
    import socket

    with socket.socket() as s:  # find a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = make_client(base_url=url, control_url=url, max_retries=1)
    with pytest.raises(APIConnectionError) as info:
        client.vms.list()
    assert info.value.status == 0
    assert len(sleeps) == 1
