"""Response validation and the public result models."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta

import pytest

from arker import (
    APIConnectionError,
    Arker,
    ArkerError,
    ForkResult,
    ResponseValidationError,
    RunResult,
    VmList,
    VmSummary,
)
from arker._wire import decode_content, encode_content

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
SUMMARY = {
    "vm_id": VM,
    "name": "web",
    "base_image": "01KQBYKEV5WJ7YB010603T1DCT_d8c0",
    "region": "us-west-2",
    "created_at": "2025-03-01T12:00:00Z",
}


def _list(client: Arker, rsps, **kwargs):
    rsps.get(f"{client.control_url}/api/v1/vms/list", **kwargs)
    return client.vms.list()


@pytest.mark.parametrize("field", ["vm_id", "base_image", "region", "created_at"])
def test_missing_required_summary_field_names_it(client: Arker, rsps, field) -> None:
    item = {k: v for k, v in SUMMARY.items() if k != field}
    with pytest.raises(ResponseValidationError) as info:
        _list(client, rsps, json={"ok": True, "items": [item], "total": 1})
    assert field in str(info.value)
    assert info.value.status == 200 and info.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("route", "field"),
    [("fork", "vm_id"), ("run", "exit_code")],
)
def test_missing_required_field_on_other_routes(client: Arker, rsps, route, field) -> None:
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/{route}", json={"ok": True})
    with pytest.raises(ResponseValidationError) as info:
        if route == "fork":
            client.vms.fork(VM)
        else:
            client.runs.create(VM, "true")
    assert field in info.value.message


def test_wrong_type_names_the_field(client: Arker, rsps) -> None:
    with pytest.raises(ResponseValidationError) as info:
        _list(client, rsps, json={"ok": True, "items": [], "total": "many"})
    assert "total" in info.value.message


def test_unknown_extra_fields_are_ignored(client: Arker, rsps) -> None:
    item = {**SUMMARY, "gpu": {"kind": "h100"}, "tags": ["a"]}
    page = _list(
        client, rsps, json={"ok": True, "items": [item], "total": 1, "next_cursor": "x", "v": 2}
    )
    assert page.items[0].vm_id == VM
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/run",
        json={"ok": True, "stdout": "hi", "exit_code": 0, "cpu_ms": 3, "new": {"x": 1}},
    )
    assert client.runs.create(VM, "echo hi").stdout == b"hi"


def test_unknown_output_encoding_does_not_break(client: Arker, rsps) -> None:
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/run",
        json={"ok": True, "stdout": "abc", "stdout_encoding": "utf-16-future", "exit_code": 0},
    )
    result = client.runs.create(VM, "x")
    assert isinstance(result.stdout, bytes)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param("<html>hello</html>", "text/html", id="html"),
        pytest.param("{not json", "application/json", id="broken-json"),
        pytest.param("", "application/json", id="empty"),
        pytest.param("[1, 2, 3]", "application/json", id="json-array"),
        pytest.param('"ok"', "application/json", id="json-string"),
    ],
)
def test_non_json_200_is_response_validation_error(client: Arker, rsps, body, content_type) -> None:
    # Well framed (Content-Length says it is whole): the server's own answer, off contract.
    headers = {"Content-Length": str(len(body))}
    with pytest.raises(ResponseValidationError) as info:
        _list(client, rsps, status=200, body=body, content_type=content_type, headers=headers)
    assert isinstance(info.value, ArkerError)
    assert info.value.status == 200


def test_unframed_non_json_200_is_a_cut_answer(client: Arker, rsps) -> None:
    # No Content-Length, not chunked: framed by the close, so half a document was cut.
    with pytest.raises(APIConnectionError):
        _list(client, rsps, status=200, body="{not json", content_type="application/json")


def test_bad_base64_output_is_response_validation_error(client: Arker, rsps) -> None:
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/run",
        json={"ok": True, "stdout": "@@not base64@@", "stdout_encoding": "base64", "exit_code": 0},
    )
    with pytest.raises(ResponseValidationError):
        client.runs.create(VM, "x")


# --- models --------------------------------------------------------------------------------


def test_run_result_round_trips_through_json_with_binary_output(client: Arker, rsps) -> None:
    raw = b"\xff\xfe\x00binary\x80"
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/run",
        json={
            "ok": True,
            "stdout": base64.b64encode(raw).decode(),
            "stdout_encoding": "base64",
            "stderr": "warn ✓\n",
            "stderr_encoding": "utf-8",
            "exit_code": 3,
            "duration_ms": 12.5,
            "session_id": "s1",
            "cwd": "/home/user/x",
        },
    )
    result = client.runs.create(VM, "x")
    assert result.stdout == raw and result.stderr == "warn ✓\n".encode()
    assert (result.exit_code, result.duration_ms, result.session_id, result.cwd) == (
        3,
        12.5,
        "s1",
        "/home/user/x",
    )
    assert not result.ok
    dumped = result.model_dump_json()
    assert RunResult.model_validate_json(dumped) == result
    assert json.loads(dumped)["stdout"] == base64.b64encode(raw).decode()  # standard base64


def test_created_at_is_tz_aware_even_without_offset(client: Arker, rsps) -> None:
    naive = {**SUMMARY, "created_at": "2025-03-01T12:00:00"}
    offset = {**SUMMARY, "created_at": "2025-03-01T14:00:00+02:00"}
    page = _list(client, rsps, json={"ok": True, "items": [naive, offset], "total": 2})
    for summary in page:
        assert summary.created_at.tzinfo is not None
        assert summary.created_at.utcoffset() is not None
    assert page.items[0].created_at.utcoffset() == timedelta(0)
    assert page.items[0].created_at == page.items[1].created_at


def test_vm_list_is_iterable_sized_and_has_items_total(client: Arker, rsps) -> None:
    second = {**SUMMARY, "vm_id": VM.replace("Z", "Y"), "name": None}
    page = _list(client, rsps, json={"ok": True, "items": [SUMMARY, second], "total": 57})
    assert isinstance(page, VmList)
    assert len(page) == 2
    assert [s.vm_id for s in page] == [s.vm_id for s in page.items] == [VM, second["vm_id"]]
    assert page.total == 57
    assert all(isinstance(s, VmSummary) for s in page)
    assert page.items[1].name is None
    assert VmList.model_validate_json(page.model_dump_json()) == page


def test_fork_result_extension_fields_optional(client: Arker, rsps) -> None:
    url = f"{client.base_url}/api/v1/vms/{VM}/fork"
    rsps.post(url, json={"ok": True, "vm_id": "NEW"})
    bare = client.vms.fork(VM)
    assert isinstance(bare, ForkResult)
    assert bare.vm_id == "NEW" and bare.region is None
    rsps.upsert("POST", url, json={"ok": True, **SUMMARY, "vm_id": "NEW2"})
    full = client.vms.fork(VM)
    assert (full.vm_id, full.region, full.name) == ("NEW2", "us-west-2", "web")


def test_fork_and_list_timestamps_are_the_same_aware_type(client: Arker, rsps) -> None:
    url = f"{client.base_url}/api/v1/vms/{VM}/fork"
    rsps.post(url, json={"ok": True, **SUMMARY, "created_at": "2025-03-01T12:00:00"})
    forked = client.vms.fork(VM)
    assert forked.created_at is not None and forked.created_at.utcoffset() == timedelta(0)
    assert ForkResult.model_fields["created_at"].annotation == (
        VmSummary.model_fields["created_at"].annotation | None
    )
    with pytest.raises(ValueError):
        ForkResult(vm_id="x", created_at=datetime(2025, 3, 1, 12))  # naive: refused


# --- the content codec client and server share ------------------------------------------


@pytest.mark.parametrize(
    ("data", "encoding"),
    [(b"", "utf-8"), ("héllo\n".encode(), "utf-8"), (b"\xff\x00\xfe", "base64")],
)
def test_content_codec_round_trips_and_prefers_text(data, encoding) -> None:
    text, used = encode_content(data)
    assert used == encoding
    assert decode_content(text, used) == data


def test_content_codec_takes_an_unknown_encoding_as_text() -> None:
    assert decode_content("plain", "utf-16-someday") == b"plain"
    assert decode_content("plain", None) == b"plain"


def test_content_codec_refuses_bad_base64() -> None:
    with pytest.raises(ValueError, match="invalid base64"):
        decode_content("not base64!", "base64")
