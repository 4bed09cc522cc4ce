"""Every route and error code of the control plane: auth, list, fork, delete, run."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from arker._constants import ARKUNTU_ID
from arker._ids import looks_like_vm_id, new_ulid
from tests.kit.server import Api, error_of


def test_health_needs_no_auth(anon: Api) -> None:
    r = anon.get("/api/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert body["version"]
    assert body["backend"] == "bwrap-overlayfs"


def test_missing_or_unknown_key_is_401(anon: Api, vm: str) -> None:
    calls = [
        ("GET", "/api/v1/vms/list", None),
        ("POST", f"/api/v1/vms/{ARKUNTU_ID}/fork", {"is_public": False}),
        ("POST", "/api/v1/vms/fork", {"from": "arkuntu"}),
        ("POST", f"/api/v1/vms/{vm}/run", {"command": "true"}),
        ("POST", f"/api/v1/vms/{vm}/sync", {"op": "read", "path": "/home/user/x"}),
        ("DELETE", f"/api/v1/vms/{vm}", None),
    ]
    for method, path, body in calls:
        assert error_of(anon.request(method, path, json=body)) == (401, "unauthorized")
        bad = anon.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert error_of(bad) == (401, "unauthorized")
    assert error_of(anon.get("/api/v1/vms/list", headers={"Authorization": "Basic x"}))[0] == 401


def test_unknown_route_and_wrong_method_use_the_envelope(api: Api) -> None:
    assert error_of(api.get("/api/v1/nope")) == (404, "not_found")
    assert error_of(api.get("/")) == (404, "not_found")
    status, _ = error_of(api.request("PUT", "/api/v1/vms/list"))
    assert status == 405


def test_malformed_json_and_wrong_types_are_400(api: Api, vm: str) -> None:
    headers = {"Content-Type": "application/json"}
    bad_json = api.post(f"/api/v1/vms/{vm}/run", data=b'{"command": ', headers=headers)
    assert error_of(bad_json) == (400, "bad_request")
    assert error_of(api.post(f"/api/v1/vms/{vm}/run", json={"command": 5})) == (400, "bad_request")
    assert error_of(api.post(f"/api/v1/vms/{vm}/run", json={})) == (400, "bad_request")
    no_cmd = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true", "timeout": 0})
    assert error_of(no_cmd) == (400, "bad_request")
    fork = api.post(f"/api/v1/vms/{vm}/fork", json={"is_public": [1]})
    assert error_of(fork) == (400, "bad_request")
    assert error_of(api.post(f"/api/v1/vms/{vm}/run", json=[1, 2])) == (400, "bad_request")
    sync = api.post(f"/api/v1/vms/{vm}/sync", json={"op": "dance", "path": "/home/user/x"})
    assert error_of(sync) == (400, "bad_request")


def test_body_over_the_limit_is_413_without_being_sent(arker_server: Any, api: Api) -> None:
    # Announce 1 GB and send nothing: the server must answer without reading it.
    host, port = arker_server.base_url.rsplit("/", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/v1/vms/{ARKUNTU_ID}/run HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {arker_server.api_key}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response or not response.endswith(b"}"):
            block = sock.recv(65536)
            if not block:
                break
            response += block
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in body


def test_list_params_are_validated(api: Api) -> None:
    for query in (
        "limit=0",
        "limit=101",
        "limit=abc",
        "offset=-1",
        "sort=name",
        "sort=created_at&limit=1.5",
    ):
        assert error_of(api.get(f"/api/v1/vms/list?{query}")) == (400, "bad_request"), query


def test_list_paging_filter_and_sort(api: Api) -> None:
    tag = f"lst-{new_ulid().lower()}"
    made = [api.fork(name=f"{tag}-{i}")["vm_id"] for i in range(3)]
    api.fork(name="unrelated")
    page = api.get(f"/api/v1/vms/list?q={tag}&limit=2").json()
    assert page["ok"] is True and page["total"] == 3
    assert [i["vm_id"] for i in page["items"]] == made[::-1][:2]  # default -created_at
    rest = api.get(f"/api/v1/vms/list?q={tag}&limit=2&offset=2").json()
    assert [i["vm_id"] for i in rest["items"]] == made[:1] and rest["total"] == 3
    oldest = api.get(f"/api/v1/vms/list?q={tag}&sort=created_at").json()
    assert [i["vm_id"] for i in oldest["items"]] == made
    by_region = api.get(f"/api/v1/vms/list?q={tag}&sort=-region").json()
    assert {i["vm_id"] for i in by_region["items"]} == set(made)
    item = oldest["items"][0]
    assert set(item) >= {"vm_id", "name", "base_image", "region", "created_at"}
    assert item["region"] == "local" and item["created_at"].endswith(("Z", "+00:00"))
    default = api.get("/api/v1/vms/list").json()
    assert len(default["items"]) <= 25 and default["total"] >= 4
    assert ARKUNTU_ID not in [i["vm_id"] for i in default["items"]]


def test_fork_by_id_returns_the_summary(api: Api) -> None:
    body = api.fork(name="fork-me", region="local")
    assert body["ok"] is True
    assert looks_like_vm_id(body["vm_id"]) and body["vm_id"].endswith("_loc0")
    assert body["name"] == "fork-me" and body["region"] == "local"
    assert body["base_image"] and body["created_at"]


def test_fork_by_name_own_and_public(api: Api) -> None:
    r = api.post("/api/v1/vms/fork", json={"from": "arkuntu", "is_public": False, "name": "n1"})
    assert r.status_code == 200, r.text
    first = r.json()["vm_id"]
    r = api.post("/api/v1/vms/fork", json={"from": "n1", "is_public": False})
    assert r.status_code == 200, r.text
    assert r.json()["vm_id"] != first
    missing = api.post("/api/v1/vms/fork", json={"from": "no-such-name", "is_public": False})
    assert error_of(missing) == (404, "not_found")
    assert error_of(api.post("/api/v1/vms/fork", json={"is_public": False}))[0] == 400


def test_unsupported_region(api: Api) -> None:
    r = api.post(f"/api/v1/vms/{ARKUNTU_ID}/fork", json={"is_public": False, "region": "mars"})
    assert error_of(r) == (400, "unsupported_region")


def test_fork_of_unknown_vm_is_404(api: Api) -> None:
    r = api.post(f"/api/v1/vms/{new_ulid()}_loc0/fork", json={"is_public": False})
    assert error_of(r) == (404, "not_found")


def test_delete_and_forks_keep_working(api: Api, vm: str) -> None:
    api.run(vm, "echo parent > /home/user/p.txt")
    child = api.fork(vm)["vm_id"]
    r = api.delete(f"/api/v1/vms/{vm}")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert error_of(api.delete(f"/api/v1/vms/{vm}")) == (404, "not_found")
    assert error_of(api.post(f"/api/v1/vms/{vm}/run", json={"command": "true"}))[0] == 404
    assert api.run(child, "cat /home/user/p.txt")["stdout"] == "parent\n"


def test_base_image_cannot_be_deleted(api: Api) -> None:
    status, _ = error_of(api.delete(f"/api/v1/vms/{ARKUNTU_ID}"))
    assert status in (403, 404)
    api.fork()  # still forkable


def test_run_outputs_and_sessions(api: Api, vm: str) -> None:
    out = api.run(vm, "echo out; echo err >&2; exit 3")
    assert (out["stdout"], out["stderr"], out["exit_code"]) == ("out\n", "err\n", 3)
    assert out["stdout_encoding"] == "utf-8" and out["session_id"] == "0"
    assert isinstance(out["duration_ms"], float)
    moved = api.run(vm, "mkdir -p /home/user/d && cd /home/user/d && export FOO=bar", session_id=7)
    assert moved["session_id"] == "7" and moved["cwd"] == "/home/user/d"
    again = api.run(vm, 'pwd; echo "$FOO"', session_id="7")
    assert again["stdout"] == "/home/user/d\nbar\n"
    other = api.run(vm, "pwd", session_id="other")
    assert other["stdout"] == "/home/user\n"


def test_run_non_utf8_output_is_base64(api: Api, vm: str) -> None:
    import base64

    out = api.run(vm, r"printf '\377\376'")
    assert out["stdout_encoding"] == "base64"
    assert base64.b64decode(out["stdout"]) == b"\xff\xfe"


def test_run_timeout(api: Api, vm: str) -> None:
    out = api.run(vm, "echo started; sleep 60", timeout=1)
    assert out["timed_out"] is True and out["exit_code"] == 124
    assert out["stdout"] == "started\n"


def test_run_on_a_busy_session_is_vm_busy(api: Api, vm: str) -> None:
    results: list[Any] = []

    def long_run() -> None:
        client = api.fresh()
        results.append(client.run(vm, "touch /home/user/started; sleep 5", session_id="busy"))
        client.close()

    thread = threading.Thread(target=long_run)
    thread.start()
    try:
        while api.run(vm, "test -e /home/user/started", session_id="probe")["exit_code"]:
            time.sleep(0.05)
        r = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true", "session_id": "busy"})
        assert error_of(r) == (409, "vm_busy")
    finally:
        thread.join()
    assert results and results[0]["exit_code"] == 0


def test_idempotent_run_runs_once(api: Api, vm: str) -> None:
    body = {"command": "echo x >> /home/user/log; wc -l < /home/user/log"}
    key = {"Idempotency-Key": f"run-{new_ulid()}"}
    first = api.post(f"/api/v1/vms/{vm}/run", json=body, headers=key)
    second = api.post(f"/api/v1/vms/{vm}/run", json=body, headers=key)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert api.run(vm, "cat /home/user/log")["stdout"] == "x\n"
    changed = api.post(f"/api/v1/vms/{vm}/run", json={"command": "true"}, headers=key)
    assert error_of(changed) == (409, "conflict")
    bad_key = api.post(f"/api/v1/vms/{vm}/run", json=body, headers={"Idempotency-Key": "x" * 65})
    assert error_of(bad_key) == (400, "bad_request")


def test_idempotent_fork_makes_one_vm(api: Api) -> None:
    name = f"idem-{new_ulid().lower()}"
    body = {"is_public": False, "name": name}
    key = {"Idempotency-Key": f"fork-{new_ulid()}"}
    url = f"/api/v1/vms/{ARKUNTU_ID}/fork"
    first = api.post(url, json=body, headers=key)
    second = api.post(url, json=body, headers=key)
    assert first.status_code == 200 and first.json()["vm_id"] == second.json()["vm_id"]
    assert api.get(f"/api/v1/vms/list?q={name}").json()["total"] == 1
    changed = api.post(url, json={**body, "is_public": True}, headers=key)
    assert error_of(changed) == (409, "conflict")


def test_concurrent_idempotent_duplicates_wait_for_the_first(api: Api, vm: str) -> None:
    body = {"command": "sleep 1; echo y >> /home/user/clog"}
    key = {"Idempotency-Key": f"race-{new_ulid()}"}
    answers: list[Any] = []

    def call() -> None:
        client = api.fresh()
        answers.append(client.post(f"/api/v1/vms/{vm}/run", json=body, headers=key))
        client.close()

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert api.run(vm, "cat /home/user/clog")["stdout"] == "y\n"
