"""The platform's current API (the official 1.3 client's routes) over raw HTTP.

Requests that carry the official client's ``User-Agent`` (``python-httpx/…``) get the
platform's shapes on the routes both APIs share; everyone else keeps the 0.1.0 bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api

PLATFORM_CLIENT = {"User-Agent": "python-httpx2/2.16.2"}

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


def _fork(api: Api, **body: Any) -> dict[str, Any]:
    body.setdefault("source_vm_name", "arkuntu")
    r = api.post("/api/v1/fork", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _error(r: Any, status: int, code: str) -> dict[str, Any]:
    """The platform's envelope: only ``error``, with code, message, timestamp, request_id."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert error["message"] and error["timestamp"] and error["request_id"]
    return error


def test_fork_by_name_answers_the_vm_shape_with_description(api: Api) -> None:
    vm = _fork(api, name="plat-a", description="scratch box", public=False)
    assert vm["vm_id"] and vm["name"] == "plat-a" and vm["description"] == "scratch box"
    assert vm["public"] is False and vm["state"] == "idle" and vm.get("provider") is None
    assert vm["sessions"] == [] and vm["resources"] == {} and vm["network"] == {}
    assert vm["owner_org_id"] and vm["created_at"]


def test_fork_by_id_of_an_own_vm(api: Api) -> None:
    parent = _fork(api)
    api.run(parent["vm_id"], "echo kept > /home/user/f")
    child = _fork(api, source_vm_name=None, source_vm_id=parent["vm_id"])
    assert child["vm_id"] != parent["vm_id"]
    assert api.run(child["vm_id"], "cat /home/user/f")["stdout"] == "kept\n"


def test_fork_replays_the_same_vm_for_one_idempotency_key(api: Api) -> None:
    headers = {"Idempotency-Key": "plat-fork-once"}
    first = api.post("/api/v1/fork", json={"source_vm_name": "arkuntu"}, headers=headers)
    again = api.post("/api/v1/fork", json={"source_vm_name": "arkuntu"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["vm_id"] == again.json()["vm_id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "bad_request"),
        ({"source_vm_name": "arkuntu", "source_vm_id": "x"}, 400, "bad_request"),
        ({"source_vm_name": "no-such-vm-anywhere"}, 404, "not_found"),
        ({"image": "ubuntu:24.04"}, 422, "unsupported_operation"),
        ({"dockerfile": "FROM ubuntu"}, 422, "unsupported_operation"),
        ({"source_vm_name": "arkuntu", "resources": {"vcpu": 4}}, 422, "unsupported_operation"),
        ({"source_vm_name": 5}, 400, "bad_request"),
    ],
)
def test_fork_refusals_use_the_platform_envelope(
    api: Api, body: dict[str, Any], status: int, code: str
) -> None:
    error = _error(api.post("/api/v1/fork", json=body), status, code)
    if code == "unsupported_operation":
        assert "arker serve" in error["message"]
        assert error["details"] == {"reason": "feature_not_supported"}


def test_fork_without_a_key_is_401_in_the_platform_envelope(anon: Api) -> None:
    _error(anon.post("/api/v1/fork", json={"source_vm_name": "arkuntu"}), 401, "unauthorized")


def test_get_patch_and_list_vms(api: Api) -> None:
    vm = _fork(api, name="plat-b")
    vm_id = vm["vm_id"]
    got = api.get(f"/api/v1/vms/{vm_id}").json()
    assert got["vm_id"] == vm_id and got["description"] is None
    r = api.request("PATCH", f"/api/v1/vms/{vm_id}", json={"description": "d1", "name": "plat-c"})
    assert r.status_code == 200 and r.json()["description"] == "d1"
    assert r.json()["name"] == "plat-c"
    r = api.request("PATCH", f"/api/v1/vms/{vm_id}", json={"description": None})
    assert r.json()["description"] is None and r.json()["name"] == "plat-c"
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/vms", params=params).json()
        seen += [v["vm_id"] for v in page["vms"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert vm_id in seen and len(seen) == len(set(seen))
    assert api.get("/api/v1/vms/list").json()["total"] == len(seen)  # 0.1.0 route intact


def test_patch_refuses_resizing_and_others_vms(api: Api, other: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    r = api.request("PATCH", f"/api/v1/vms/{vm_id}", json={"resources": {"vcpu": 8}})
    _error(r, 422, "unsupported_operation")
    _error(other.get(f"/api/v1/vms/{vm_id}"), 404, "not_found")
    r = other.request("PATCH", f"/api/v1/vms/{vm_id}", json={"description": "mine"})
    _error(r, 404, "not_found")


def test_list_is_scoped_to_the_org(api: Api, other: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    theirs = [v["vm_id"] for v in other.get("/api/v1/vms", params={"limit": "100"}).json()["vms"]]
    assert vm_id not in theirs


def test_bad_cursor_is_400(api: Api) -> None:
    _error(api.get("/api/v1/vms", params={"cursor": "!!!"}), 400, "bad_request")


def test_whoami_and_regions(api: Api, arker_server: ArkerServer) -> None:
    me = api.get("/api/v1/whoami").json()
    assert me["org_id"] and me["org_name"]
    regions = api.get("/api/v1/regions").json()["regions"]
    assert [(r["provider"], r["region"]) for r in regions] == [("local", "local")]
    assert regions[0]["endpoint"] == f"{arker_server.base_url}/api"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/filesystems"),
        ("POST", "/api/v1/pools"),
        ("GET", "/api/v1/vms/some-vm/policies"),
        ("POST", "/api/v1/vms/some-vm/mounts"),
        ("GET", "/api/v1/api-keys"),
    ],
)
def test_what_a_local_server_cannot_do_is_422_unsupported(api: Api, method: str, path: str) -> None:
    _error(api.request(method, path, json={}), 422, "unsupported_operation")


def test_shared_routes_keep_their_0_1_0_bytes_for_other_clients(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    assert set(api.get("/api/v1/health").json()) == {"ok", "version", "backend"}
    r = api.delete(f"/api/v1/vms/{vm_id}")
    assert r.status_code == 200 and r.json() == {"ok": True}
    r = api.delete(f"/api/v1/vms/{vm_id}")
    assert r.status_code == 404 and r.json()["ok"] is False


def test_shared_routes_speak_the_platform_to_its_client(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    health = api.get("/api/v1/health", headers=PLATFORM_CLIENT).json()
    assert health["status"] == "ok" and health["timestamp"]
    r = api.delete(f"/api/v1/vms/{vm_id}", headers=PLATFORM_CLIENT)
    assert r.status_code == 200 and r.json() == {"deleted": True}
    _error(api.delete(f"/api/v1/vms/{vm_id}", headers=PLATFORM_CLIENT), 404, "not_found")
    r = api.get(f"/api/v1/vms/{vm_id}/runs", headers=PLATFORM_CLIENT)
    _error(r, 404, "not_found")


def _sync(api: Api, vm_id: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post(f"/api/v1/vms/{vm_id}/sync", json=body, headers=PLATFORM_CLIENT)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_platform_write_in_several_chunks_of_one_upload(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    data = bytes(range(256)) * 40

    def chunk(a: int, b: int) -> dict[str, Any]:
        return {
            "path": "/home/user/chunked.bin",
            "size": len(data),
            "upload_id": "01PLATFORMUPLOAD0000000000",
            "content": base64.b64encode(data[a:b]).decode(),
            "start": a,
            "end": b,
            "is_secret": False,
        }

    first = _sync(api, vm_id, {"op": "write", "writes": [chunk(0, 4000)]})["results"][0]
    assert first["complete"] is False and first["received_bytes"] == 4000
    assert first["ranges"] == [{"start": 0, "end": 4000}] and first["path"].endswith("bin")
    _sync(api, vm_id, {"op": "write", "writes": [chunk(8000, len(data))]})
    last = _sync(api, vm_id, {"op": "write", "writes": [chunk(4000, 8000)]})["results"][0]
    assert last["complete"] is True and last["written"] is True and last["size"] == len(data)
    read = _sync(api, vm_id, {"op": "read", "path": "/home/user/chunked.bin"})
    assert read["op"] == "read" and read["encoding"] == "base64" and read["size"] == len(data)
    assert base64.b64decode(read["content"]) == data
    empty = chunk(0, 0) | {"size": 0, "path": "/home/user/empty", "upload_id": "01EMPTY"}
    made = _sync(api, vm_id, {"op": "write", "writes": [empty]})["results"][0]
    assert made["complete"] is True and made["ranges"] == []


def test_platform_manifest_lists_relative_paths_with_hash(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    api.run(vm_id, "mkdir -p /home/user/tree/sub && printf hi > /home/user/tree/sub/a")
    body = {"op": "manifest", "path": "/home/user/tree"}
    platform = _sync(api, vm_id, body)
    assert platform["root"] == "/home/user/tree" and platform["hash_algo"] == "sha256"
    (entry,) = platform["entries"]
    assert entry["path"] == "sub/a" and entry["hash"] == hashlib.sha256(b"hi").hexdigest()
    ours = api.post(f"/api/v1/vms/{vm_id}/sync", json=body).json()
    (old,) = ours["entries"]
    assert old["path"] == "/home/user/tree/sub/a" and old["sha256"] == entry["hash"]


def test_platform_sync_errors_use_its_envelope(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    r = api.post(
        f"/api/v1/vms/{vm_id}/sync",
        json={"op": "read", "path": "/home/user/missing"},
        headers=PLATFORM_CLIENT,
    )
    _error(r, 404, "not_found")
    r = api.post(
        f"/api/v1/vms/{vm_id}/sync",
        json={"op": "read", "path": "/etc/passwd"},
        headers=PLATFORM_CLIENT,
    )
    _error(r, 400, "bad_request")


def test_our_sdk_gets_and_updates_a_vm(arker_client: Any) -> None:
    made = arker_client.vms.fork("arkuntu", name="sdk-upd")
    got = arker_client.vms.get(made.vm_id)
    assert (got.name, got.description, got.state) == ("sdk-upd", None, "idle")
    changed = arker_client.vms.update(made.vm_id, name="sdk-upd2", description="notes")
    assert (changed.name, changed.description) == ("sdk-upd2", "notes")
    assert arker_client.vms.update(made.vm_id, description="").description is None
    assert [v.name for v in arker_client.vms.list(q="sdk-upd2")] == ["sdk-upd2"]


def test_org_runs_list_this_orgs_runs_newest_first(api: Api, other: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    for word in ("first-run", "second-run"):
        r = api.post(f"/api/v1/vms/{vm_id}/runs", json={"command": f"echo {word}"})
        assert r.status_code == 200, r.text
    page = api.get("/api/v1/runs", params={"vm": vm_id}).json()
    assert [row["command"] for row in page["rows"]] == ["echo second-run", "echo first-run"]
    row = page["rows"][0]
    assert row["vm_id"] == vm_id and row["exit_code"] == 0 and row["state"] == "completed"
    assert api.get("/api/v1/runs", params={"vm": vm_id, "search": "first"}).json()["rows"]
    assert other.get("/api/v1/runs", params={"vm": vm_id}).json()["rows"] == []


def test_platform_presigned_write_then_commit(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    data = b"presigned bytes"
    entry = {"path": "/home/user/put.bin", "size": len(data), "presigned": True}
    asked = _sync(api, vm_id, {"op": "write", "writes": [entry]})["results"][0]
    assert asked["method"] == "PUT" and asked["upload_id"] and asked["complete"] is False
    put = api.session.put(asked["presigned_url"], data=data, timeout=60)
    assert put.status_code == 200, put.text
    commit = {"path": "/home/user/put.bin", "size": len(data), "upload_id": asked["upload_id"]}
    done = _sync(api, vm_id, {"op": "write", "writes": [commit]})["results"][0]
    assert done["complete"] is True and done["written"] is True
    assert api.run(vm_id, "cat /home/user/put.bin")["stdout"] == data.decode()


def test_platform_paths_may_be_under_tmp_but_0_1_0_paths_may_not(api: Api) -> None:
    vm_id = _fork(api)["vm_id"]
    chunk = {
        "path": "/tmp/staged.txt",
        "size": 2,
        "upload_id": "01TMPUPLOAD",
        "content": base64.b64encode(b"ok").decode(),
        "start": 0,
        "end": 2,
    }
    done = _sync(api, vm_id, {"op": "write", "writes": [chunk]})["results"][0]
    assert done["complete"] is True, done
    assert api.run(vm_id, "cat /tmp/staged.txt")["stdout"] == "ok"
    old = api.post(f"/api/v1/vms/{vm_id}/sync", json={"op": "write", "writes": [chunk]})
    assert old.json()["results"][0]["error"]["code"] == "bad_request"
    escape = {**chunk, "path": "/tmp/../etc/x", "upload_id": "01TMPESCAPE"}
    bad = _sync(api, vm_id, {"op": "write", "writes": [escape]})["results"][0]
    assert bad["error"]["code"] == "bad_request"
