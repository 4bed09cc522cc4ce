"""`OutcomeUnknownError`: a call that acts (fork, run, write, delete) whose retries ran out
after an attempt that may have reached the server says so, with the key to retry with
when it has one; a read, and a request that provably never left (refused, connect
timeout), keep their plain transport error."""

from __future__ import annotations

import json
import pickle
import socket

import pytest
import requests
from urllib3.connection import HTTPConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError

from arker import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    NotFoundError,
    OutcomeUnknownError,
    ServiceUnavailableError,
)
from arker._exceptions import error_for
from arker._retry import outcome_unknown

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
FORK_OK = {"ok": True, "vm_id": VM}
RUN_OK = {"ok": True, "stdout": "ok", "stderr": "", "exit_code": 0}


def _refused(url: str) -> requests.ConnectionError:
    """What requests raises for a refused connection: a ConnectionError around a
    MaxRetryError whose reason is urllib3's NewConnectionError."""
    reason = NewConnectionError(HTTPConnection("127.0.0.1", 9), "[Errno 111] Connection refused")
    return requests.ConnectionError(MaxRetryError(None, url, reason))  # type: ignore[arg-type]


def _call(client, route: str, key: str | None = None):
    if route == "fork":
        return client.vms.fork(VM, idempotency_key=key)
    return client.runs.create(VM, "echo hi >> /home/user/log", idempotency_key=key)


def _url(client, route: str) -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/{route}"


@pytest.mark.parametrize("route", ["fork", "run"])
def test_read_timeout_on_every_attempt_is_outcome_unknown(make_client, rsps, route) -> None:
    client = make_client(max_retries=2)
    rsps.post(_url(client, route), body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OutcomeUnknownError) as info:
        _call(client, route, key="the-key-1")
    err = info.value
    assert isinstance(err, APIConnectionError)
    assert err.code == "outcome_unknown" and err.status == 0
    assert err.idempotency_key == "the-key-1"
    assert "the-key-1" in err.message and "retry" in err.message.lower()
    assert len(rsps.calls) == 3
    assert {c.request.headers["Idempotency-Key"] for c in rsps.calls} == {"the-key-1"}


@pytest.mark.parametrize("route", ["fork", "run"])
def test_minted_key_is_carried(make_client, rsps, route) -> None:
    client = make_client(max_retries=1)
    rsps.post(_url(client, route), body=requests.ConnectionError("Connection reset by peer"))
    with pytest.raises(OutcomeUnknownError) as info:
        _call(client, route)
    sent = {c.request.headers["Idempotency-Key"] for c in rsps.calls}
    assert sent == {info.value.idempotency_key}


@pytest.mark.parametrize("route", ["fork", "run"])
def test_retry_with_the_key_learns_the_outcome(make_client, rsps, route) -> None:
    client = make_client(max_retries=0)
    url = _url(client, route)
    rsps.post(url, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OutcomeUnknownError) as info:
        _call(client, route)
    rsps.upsert("POST", url, json=FORK_OK if route == "fork" else RUN_OK)
    _call(client, route, key=info.value.idempotency_key)
    keys = [c.request.headers["Idempotency-Key"] for c in rsps.calls]
    assert keys == [info.value.idempotency_key] * 2


@pytest.mark.parametrize("route", ["fork", "run"])
def test_connect_refused_is_not_outcome_unknown(make_client, rsps, route) -> None:
    client = make_client(max_retries=2)
    url = _url(client, route)
    rsps.post(url, body=_refused(url))
    with pytest.raises(APIConnectionError) as info:
        _call(client, route, key="k")
    assert not isinstance(info.value, OutcomeUnknownError)
    assert info.value.code == "connection_error"
    assert len(rsps.calls) == 3  # still retried


@pytest.mark.parametrize("route", ["fork", "run"])
def test_connect_timeout_is_not_outcome_unknown(make_client, rsps, route) -> None:
    client = make_client(max_retries=1)
    rsps.post(_url(client, route), body=requests.ConnectTimeout("connect timed out"))
    with pytest.raises(APITimeoutError) as info:
        _call(client, route, key="k")
    assert not isinstance(info.value, OutcomeUnknownError)
    assert len(rsps.calls) == 2


def test_real_refused_port_is_not_outcome_unknown(make_client) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    client = make_client(base_url=url, control_url=url, max_retries=1)
    with pytest.raises(APIConnectionError) as info:
        client.vms.fork(VM, idempotency_key="k")
    assert not isinstance(info.value, OutcomeUnknownError)


def test_lost_attempt_then_gateway_errors_is_outcome_unknown(make_client, rsps) -> None:
    # The first attempt may have forked; the later ones never reached the server.
    client = make_client(max_retries=2)
    url = _url(client, "fork")
    rsps.post(url, body=requests.ReadTimeout("read timed out"))
    rsps.post(url, status=503, body="")
    rsps.post(url, status=429, body="")
    with pytest.raises(OutcomeUnknownError) as info:
        client.vms.fork(VM, idempotency_key="k2")
    assert info.value.idempotency_key == "k2"


def test_gateway_errors_alone_stay_service_unavailable(make_client, rsps) -> None:
    client = make_client(max_retries=2)
    rsps.post(_url(client, "fork"), status=504, body="")
    with pytest.raises(ServiceUnavailableError):
        client.vms.fork(VM, idempotency_key="k")


def test_refused_then_gateway_errors_is_not_outcome_unknown(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    url = _url(client, "run")
    rsps.post(url, body=_refused(url))
    rsps.post(url, status=503, body="")
    with pytest.raises(ServiceUnavailableError):
        client.runs.create(VM, "true", idempotency_key="k")


def test_server_answer_after_lost_attempt_is_definitive(make_client, rsps) -> None:
    client = make_client(max_retries=2)
    url = _url(client, "fork")
    rsps.post(url, body=requests.ReadTimeout("read timed out"))
    rsps.post(url, status=404, json={"ok": False, "error": {"code": "not_found", "message": "x"}})
    with pytest.raises(NotFoundError):
        client.vms.fork(VM, idempotency_key="k")


def test_unkeyed_calls_keep_their_transport_error(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    rsps.get(f"{client.control_url}/api/v1/vms/list", body=requests.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError) as info:
        client.vms.list()
    assert not isinstance(info.value, OutcomeUnknownError)


def test_delete_404_after_refused_attempt_is_not_success(make_client, rsps) -> None:
    # A refused attempt did not delete anything, so a 404 afterwards is the truth.
    client = make_client(max_retries=1)
    url = f"{client.base_url}/api/v1/vms/{VM}"
    rsps.delete(url, body=_refused(url))
    rsps.delete(url, status=404, json={"ok": False, "error": {"code": "not_found", "message": ""}})
    with pytest.raises(NotFoundError):
        client.vms.delete(VM)


def test_delete_404_after_reset_attempt_counts_as_done(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    url = f"{client.base_url}/api/v1/vms/{VM}"
    rsps.delete(url, body=requests.ConnectionError("Connection reset by peer"))
    rsps.delete(url, status=404, json={"ok": False, "error": {"code": "not_found", "message": ""}})
    client.vms.delete(VM)
    assert len(rsps.calls) == 2


def _truncating(loopback, good_after: int | None) -> None:
    """Answer with fewer bytes than Content-Length, then (optionally) properly."""

    def behaviour(handler) -> None:
        if good_after is not None and len(loopback.requests) > good_after:
            loopback.send_json(handler, 200, FORK_OK)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b'{"ok": true, "vm_id": "01HZ')
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_WR)

    loopback.behaviour = behaviour


def test_truncated_response_is_retried(loopback, make_client) -> None:
    _truncating(loopback, good_after=1)
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=2)
    assert client.vms.fork(VM, idempotency_key="k").vm_id == VM
    assert len(loopback.requests) == 2


def test_truncated_response_every_time_is_outcome_unknown(loopback, make_client) -> None:
    _truncating(loopback, good_after=None)
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=1)
    with pytest.raises(OutcomeUnknownError) as info:
        client.vms.fork(VM, idempotency_key="trunc-key")
    assert info.value.idempotency_key == "trunc-key"
    assert len(loopback.requests) == 2


def test_outcome_unknown_pickles_with_its_key() -> None:
    err = OutcomeUnknownError("POST /x: no answer", "key-9")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is OutcomeUnknownError
    assert (clone.code, clone.message, clone.idempotency_key) == (
        err.code,
        err.message,
        "key-9",
    )


def _lost() -> APIConnectionError:
    return APIConnectionError("reset by peer")


def _unavailable(status: int) -> APIStatusError:
    return error_for("unavailable", "gateway", status)


@pytest.mark.parametrize(
    ("exc", "acts", "lost_after_send", "unknown"),
    [
        (_lost(), True, True, True),  # acts, lost once sent, no answer after
        (_lost(), False, True, False),  # a read changes nothing
        (_lost(), True, False, False),  # never left (refused, connect timeout)
        (APITimeoutError("read timed out"), True, True, True),
        (_unavailable(502), True, True, True),  # a gateway's failure is no answer
        (_unavailable(504), True, True, True),
        (_unavailable(502), True, False, False),  # 502s alone stay unavailable
        (error_for("not_found", "gone", 404), True, True, False),  # the server's word
        (error_for("vm_busy", "busy", 409), True, True, False),
        (error_for("internal", "boom", 500), True, True, False),
        (OutcomeUnknownError("already", "k"), True, True, False),  # not wrapped twice
    ],
)
def test_outcome_unknown_decision(exc, acts, lost_after_send, unknown) -> None:
    assert outcome_unknown(exc, acts=acts, lost_after_send=lost_after_send) is unknown


def _sync_url(client) -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/sync"


def test_inline_write_lost_every_time_is_outcome_unknown_without_a_key(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    rsps.post(_sync_url(client), body=requests.ConnectionError("Connection reset by peer"))
    with pytest.raises(OutcomeUnknownError) as info:
        client.sync.write(VM, "/home/user/a", b"abc")
    assert info.value.idempotency_key is None
    assert "harmless" in info.value.message
    ids = {json.loads(c.request.body)["writes"][0]["upload_id"] for c in rsps.calls}
    assert len(rsps.calls) == 2 and len(ids) == 1  # one upload_id, resent


def test_delete_lost_every_time_is_outcome_unknown(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    url = f"{client.base_url}/api/v1/vms/{VM}"
    rsps.delete(url, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OutcomeUnknownError) as info:
        client.vms.delete(VM)
    assert info.value.idempotency_key is None


@pytest.mark.parametrize("call", ["read", "manifest"])
def test_sync_reads_keep_their_transport_error(make_client, rsps, tmp_path, call) -> None:
    client = make_client(max_retries=1)
    rsps.post(_sync_url(client), body=requests.ConnectionError("Connection reset by peer"))
    with pytest.raises(APIConnectionError) as info:
        if call == "read":
            client.sync.read(VM, "/home/user/a")
        else:
            client.sync.pull_dir(VM, "/home/user", tmp_path)  # asks for the manifest
    assert not isinstance(info.value, OutcomeUnknownError)


def test_outcome_unknown_without_a_key_pickles() -> None:
    clone = pickle.loads(pickle.dumps(OutcomeUnknownError("POST /x: no answer", None)))
    assert type(clone) is OutcomeUnknownError and clone.idempotency_key is None
