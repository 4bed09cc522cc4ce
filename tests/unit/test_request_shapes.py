"""Every route's request shape: method, host, path, query, JSON body and headers."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from arker import ARKUNTU_ID, Arker, __version__

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
NEW = "01J00000000000000000000000_abc1"


def _body(call: responses.Call) -> dict:
    return json.loads(call.request.body)


def _assert_api_headers(call: responses.Call, api_key: str, *, json_body: bool) -> None:
    headers = call.request.headers
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert headers["User-Agent"] == f"arker-python/{__version__}"
    if json_body:
        assert headers["Content-Type"] == "application/json"


def test_list_goes_to_control_host_with_query(client: Arker, rsps, api_key) -> None:
    rsps.get(f"{client.control_url}/api/v1/vms/list", json={"ok": True, "items": [], "total": 0})
    client.vms.list(limit=10, offset=20, q="web", sort="region")
    (call,) = rsps.calls
    parts = urlsplit(call.request.url)
    assert f"{parts.scheme}://{parts.netloc}" == client.control_url
    assert call.request.method == "GET"
    assert parts.path == "/api/v1/vms/list"
    assert parse_qs(parts.query) == {
        "limit": ["10"],
        "offset": ["20"],
        "q": ["web"],
        "sort": ["region"],
    }
    assert call.request.body is None
    _assert_api_headers(call, api_key, json_body=False)


def test_list_defaults_and_control_differs_from_base(client: Arker, rsps) -> None:
    assert client.control_url != client.base_url
    rsps.get(f"{client.control_url}/api/v1/vms/list", json={"ok": True, "items": [], "total": 0})
    client.list()
    query = parse_qs(urlsplit(rsps.calls[0].request.url).query)
    assert query.get("limit", ["25"]) == ["25"]
    assert query.get("offset", ["0"]) == ["0"]
    assert "q" not in query and "sort" not in query


def test_fork_by_id_on_base_host(client: Arker, rsps, api_key) -> None:
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/fork", json={"ok": True, "vm_id": NEW})
    result = client.vms.fork(VM, name="child", is_public=True, region="eu-west-1")
    assert result.vm_id == NEW
    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert _body(call) == {"is_public": True, "name": "child", "region": "eu-west-1"}
    _assert_api_headers(call, api_key, json_body=True)
    assert call.request.headers["Idempotency-Key"]


def test_fork_minimal_body(client: Arker, rsps) -> None:
    rsps.post(f"{client.base_url}/api/v1/vms/{VM}/fork", json={"ok": True, "vm_id": NEW})
    client.vms.fork(VM)
    assert _body(rsps.calls[0]) == {"is_public": False}


def test_arkuntu_resolves_client_side_without_extra_request(client: Arker, rsps) -> None:
    assert ARKUNTU_ID == "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
    rsps.post(
        f"{client.base_url}/api/v1/vms/01KQBYKEV5WJ7YB010603T1DCT_d8c0/fork",
        json={"ok": True, "vm_id": NEW},
    )
    child = client.vm("arkuntu").fork(name="hello")
    assert child.id == NEW
    assert len(rsps.calls) == 1
    assert _body(rsps.calls[0]) == {"is_public": False, "name": "hello"}


def test_fork_by_name_on_control_host_adds_from(client: Arker, rsps, api_key) -> None:
    rsps.post(f"{client.control_url}/api/v1/vms/fork", json={"ok": True, "vm_id": NEW})
    client.vms.fork("my-template", name="copy", region="us-east-1")
    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert _body(call) == {
        "is_public": False,
        "name": "copy",
        "region": "us-east-1",
        "from": "my-template",
    }
    _assert_api_headers(call, api_key, json_body=True)
    assert call.request.headers["Idempotency-Key"]


def test_delete_on_base_host(client: Arker, rsps, api_key) -> None:
    rsps.delete(f"{client.base_url}/api/v1/vms/{VM}", json={"ok": True})
    client.vm(VM).delete()
    (call,) = rsps.calls
    assert call.request.method == "DELETE"
    _assert_api_headers(call, api_key, json_body=False)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"command": "ls -la", "session_id": 0}),
        (
            {"session_id": "s1", "timeout": 30},
            {"command": "ls -la", "session_id": "s1", "timeout": 30},
        ),
        ({"session_id": 7}, {"command": "ls -la", "session_id": 7}),
    ],
)
def test_run_body_and_headers(client: Arker, rsps, api_key, kwargs, expected) -> None:
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/run",
        json={"ok": True, "stdout": "", "stderr": "", "exit_code": 0},
    )
    client.vm(VM).run("ls -la", **kwargs)
    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert _body(call) == expected
    _assert_api_headers(call, api_key, json_body=True)
    assert call.request.headers["Idempotency-Key"]


def test_sync_read_body(client: Arker, rsps, api_key) -> None:
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/sync",
        json={"ok": True, "content": "hi", "encoding": "utf-8"},
    )
    client.vm(VM).sync.read_file("/home/user/a.txt")
    (call,) = rsps.calls
    assert _body(call) == {"op": "read", "path": "/home/user/a.txt"}
    _assert_api_headers(call, api_key, json_body=True)


def test_sync_write_body(client: Arker, rsps, api_key) -> None:
    rsps.post(
        f"{client.base_url}/api/v1/vms/{VM}/sync",
        json={"ok": True, "results": [{"complete": True, "written": True}]},
    )
    data = b"a,b\n1,2\n"
    client.vm(VM).sync.write_file("/home/user/data.csv", data)
    (call,) = rsps.calls
    body = _body(call)
    assert body["op"] == "write"
    (entry,) = body["writes"]
    assert entry["path"] == "/home/user/data.csv"
    assert (entry["size"], entry["start"], entry["end"]) == (len(data), 0, len(data))
    assert base64.b64decode(entry["content"]) == data
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["upload_id"]
    _assert_api_headers(call, api_key, json_body=True)


def test_vm_ids_are_percent_encoded_in_paths(client: Arker, rsps) -> None:
    rsps.delete(f"{client.base_url}/api/v1/vms/a%2F..%2Fb", json={"ok": True})
    client.vms.delete("a/../b")
    assert urlsplit(rsps.calls[0].request.url).path == "/api/v1/vms/a%2F..%2Fb"


def test_default_headers_are_sent(make_client, rsps) -> None:
    c = make_client(default_headers={"X-Team": "blue"})
    rsps.delete(f"{c.base_url}/api/v1/vms/{VM}", json={"ok": True})
    c.vms.delete(VM)
    assert rsps.calls[0].request.headers["X-Team"] == "blue"
