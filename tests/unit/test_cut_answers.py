"""An answer cut by the transport is an ambiguous outcome, never a validation error.

A tiny loopback server answers a fork or a run with (a) headers carrying a
Content-Length and then nothing, (b) half the body, (c) headers cut mid-way (so the body
is close-delimited) or (d) a complete, well-framed JSON body that breaks the contract.
(a)–(c) may have been acted on: the SDK retries them with the same idempotency key and,
when every attempt is cut, raises `OutcomeUnknownError` with that key. (d) is a
definitive answer: `ResponseValidationError`, not retried.
"""

from __future__ import annotations

import json
import socket

import pytest

from arker import APIConnectionError, OutcomeUnknownError, ResponseValidationError

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
FORK_OK = json.dumps({"ok": True, "vm_id": VM}).encode()
RUN_OK = json.dumps({"ok": True, "stdout": "ok", "stderr": "", "exit_code": 0}).encode()


def _head(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )


def _cut(kind: str, body: bytes) -> bytes:
    """The bytes a cut answer of ``kind`` carries before the connection closes."""
    if kind == "headers-only":
        return _head(body)
    if kind == "half-body":
        return _head(body) + body[: len(body) // 2]
    if kind == "headers-cut":
        return b"HTTP/1.1 200 OK\r\nContent-Type: applic"
    raise AssertionError(kind)


CUTS = ["headers-only", "half-body", "headers-cut"]


def _serve(loopback, answers: list[bytes]) -> None:
    """Answer the n-th request with ``answers[n]`` (the last one repeats), then close."""

    def behaviour(handler) -> None:
        n = min(len(loopback.requests), len(answers)) - 1
        handler.wfile.write(answers[n])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_WR)

    loopback.behaviour = behaviour


def _call(client, route: str, key: str):
    if route == "fork":
        return client.vms.fork(VM, idempotency_key=key)
    return client.runs.create(VM, "echo hi", idempotency_key=key)


def _ok(route: str) -> bytes:
    body = FORK_OK if route == "fork" else RUN_OK
    return _head(body) + body


@pytest.mark.parametrize("route", ["fork", "run"])
@pytest.mark.parametrize("kind", CUTS)
def test_cut_answer_every_time_is_outcome_unknown_with_the_key(
    loopback, make_client, route, kind
) -> None:
    _serve(loopback, [_cut(kind, FORK_OK if route == "fork" else RUN_OK)])
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=1)
    with pytest.raises(OutcomeUnknownError) as info:
        _call(client, route, "cut-key")
    assert info.value.idempotency_key == "cut-key"
    assert [r[2]["Idempotency-Key"] for r in loopback.requests] == ["cut-key"] * 2


@pytest.mark.parametrize("route", ["fork", "run"])
@pytest.mark.parametrize("kind", CUTS)
def test_cut_answer_is_retried_with_the_same_key(loopback, make_client, route, kind) -> None:
    body = FORK_OK if route == "fork" else RUN_OK
    _serve(loopback, [_cut(kind, body), _ok(route)])
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=2)
    _call(client, route, "retry-key")
    assert [r[2]["Idempotency-Key"] for r in loopback.requests] == ["retry-key"] * 2


@pytest.mark.parametrize("kind", CUTS)
def test_cut_answer_to_a_read_stays_a_connection_error(loopback, make_client, kind) -> None:
    _serve(loopback, [_cut(kind, b'{"ok": true, "items": [], "total": 0}')])
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=1)
    with pytest.raises(APIConnectionError) as info:
        client.vms.list()
    assert not isinstance(info.value, OutcomeUnknownError)
    assert len(loopback.requests) == 2


def test_complete_answer_off_contract_is_a_validation_error(loopback, make_client) -> None:
    body = b'{"ok": true, "nothing": "here"}'
    _serve(loopback, [_head(body) + body])
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=2)
    with pytest.raises(ResponseValidationError):
        _call(client, "fork", "k")
    assert len(loopback.requests) == 1


def test_close_delimited_complete_json_is_decoded(loopback, make_client) -> None:
    # An HTTP/1.0-style answer without Content-Length is framed by the close: complete
    # when the body is a whole JSON document.
    _serve(loopback, [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + FORK_OK])
    client = make_client(base_url=loopback.url, control_url=loopback.url, max_retries=0)
    assert client.vms.fork(VM, idempotency_key="k").vm_id == VM


@pytest.mark.parametrize(
    ("status", "content_length", "transfer_encoding", "body", "cut"),
    [
        (200, None, None, b"", True),  # headers cut: nothing after them
        (200, None, None, b'{"ok": true, "vm_', True),  # close-delimited, half a document
        (200, None, None, b"<html>", True),  # not JSON at all, and not framed
        (200, None, None, b'{"ok": true}', False),  # close-delimited but whole
        (200, None, None, b"[1, 2]", False),  # whole (the contract check comes later)
        (200, "12", None, b'{"ok": true}', False),  # framed by length: urllib3 counts
        (200, "0", None, b"", False),  # framed, empty on purpose: a contract matter
        (200, None, "chunked", b"", False),  # framed by chunks: urllib3 checks
        (200, None, "gzip, Chunked", b"", False),
        (404, None, None, b"", False),  # an error status is the server's word
        (502, None, None, b"<html>bad gateway", False),
    ],
)
def test_is_cut_answer(status, content_length, transfer_encoding, body, cut) -> None:
    from arker._response import is_cut_answer

    assert is_cut_answer(status, content_length, transfer_encoding, body) is cut
