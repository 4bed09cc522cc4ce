"""Sync: inline and presigned reads and writes, chunking, limits, presigned URL checks."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from arker._constants import MAX_FILE_BYTES
from arker._ids import new_ulid
from arker.local.presign import signature
from tests.kit.server import Api, error_of


def chunk(
    path: str, data: bytes, start: int, end: int, size: int, upload_id: str
) -> dict[str, Any]:
    return {
        "path": path,
        "size": size,
        "upload_id": upload_id,
        "start": start,
        "end": end,
        "content": base64.b64encode(data[start:end]).decode(),
    }


def read(api: Api, vm: str, path: str) -> bytes:
    r = api.sync(vm, {"op": "read", "path": path})
    assert r.status_code == 200, r.text
    body = r.json()
    if "content" in body:
        raw = body["content"]
        return base64.b64decode(raw) if body["encoding"] == "base64" else raw.encode()
    got = requests.get(body["presigned_url"], timeout=120)
    assert got.status_code == 200
    return got.content


def test_inline_write_and_read(api: Api, vm: str) -> None:
    text = "héllo\n".encode()
    binary = bytes(range(256))
    results = api.write(
        vm,
        chunk("/home/user/t.txt", text, 0, len(text), len(text), new_ulid()),
        chunk("/home/user/sub/dir/b.bin", binary, 0, 256, 256, new_ulid()),
        chunk("/home/user/empty", b"", 0, 0, 0, new_ulid()),
    )
    assert all(r["complete"] and r["written"] for r in results), results
    body = api.sync(vm, {"op": "read", "path": "/home/user/t.txt"}).json()
    assert body == {**body, "content": "héllo\n", "encoding": "utf-8", "size": len(text)}
    bin_body = api.sync(vm, {"op": "read", "path": "/home/user/sub/dir/b.bin"}).json()
    assert bin_body["encoding"] == "base64"
    assert base64.b64decode(bin_body["content"]) == binary
    assert read(api, vm, "/home/user/empty") == b""
    assert api.run(vm, "stat -c %U /home/user/t.txt; cat /home/user/t.txt")["stdout"] == (
        "user\nhéllo\n"
    )


def test_read_missing_and_bad_paths(api: Api, vm: str) -> None:
    missing = api.sync(vm, {"op": "read", "path": "/home/user/missing"})
    assert error_of(missing) == (404, "not_found")
    assert missing.json()["error"]["message"] == "file not found: /home/user/missing"
    for path in ("/etc/passwd", "home/user/x", "/home/user/../../etc/passwd", "/home/user/a\x00"):
        r = api.sync(vm, {"op": "read", "path": path})
        assert error_of(r) == (400, "bad_request"), path
    assert error_of(api.sync(vm, {"op": "read", "path": "/home/user/" + "a" * 5000}))[0] == 400


def test_write_errors_are_per_entry(api: Api, vm: str) -> None:
    good = chunk("/home/user/ok.txt", b"ok", 0, 2, 2, new_ulid())
    results = api.write(
        vm,
        chunk("/etc/evil", b"x", 0, 1, 1, new_ulid()),
        good,
        chunk("/home/user/../x", b"x", 0, 1, 1, new_ulid()),
        {**chunk("/home/user/big", b"", 0, 0, 0, new_ulid()), "size": MAX_FILE_BYTES + 1},
        {"path": "/home/user/huge", "size": MAX_FILE_BYTES + 1, "presigned": True},
        {**chunk("/home/user/bad64", b"x", 0, 1, 1, new_ulid()), "content": "!!!"},
        {**chunk("/home/user/range", b"x", 0, 1, 1, new_ulid()), "end": 5},
        {"path": "/home/user/c", "size": 1, "upload_id": "never-started"},
    )
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [
        "bad_request",
        None,
        "bad_request",
        "payload_too_large",
        "payload_too_large",
        "bad_request",
        "bad_request",
        "not_found",
    ]
    assert results[1]["complete"] and results[1]["written"]
    assert read(api, vm, "/home/user/ok.txt") == b"ok"


def test_chunks_out_of_order_and_repeated(api: Api, vm: str) -> None:
    data = b"0123456789abcdefghij"
    path, upload_id = "/home/user/chunked.txt", new_ulid()
    second = api.write(vm, chunk(path, data, 10, 20, 20, upload_id))[0]
    assert second["complete"] is False and second["written"] is False
    assert second["received_bytes"] == 10
    assert error_of(api.sync(vm, {"op": "read", "path": path}))[0] == 404  # not yet visible
    again = api.write(vm, chunk(path, data, 10, 20, 20, upload_id))[0]
    assert again["complete"] is False and again["received_bytes"] == 10
    first = api.write(vm, chunk(path, data, 0, 10, 20, upload_id))[0]
    assert first["complete"] is True and first["written"] is True
    repeat = api.write(vm, chunk(path, data, 0, 10, 20, upload_id))[0]
    assert repeat["complete"] is True and repeat["written"] is True
    assert read(api, vm, path) == data


def test_chunk_sha256_is_verified(api: Api, vm: str) -> None:
    data, path = b"checked", "/home/user/sha.txt"
    wrong = {**chunk(path, data, 0, 7, 7, new_ulid()), "sha256": "0" * 64}
    assert api.write(vm, wrong)[0]["error"]["code"] == "bad_request"
    right = {**chunk(path, data, 0, 7, 7, new_ulid()), "sha256": hashlib.sha256(data).hexdigest()}
    assert api.write(vm, right)[0]["written"] is True
    assert read(api, vm, path) == data


def presigned_put(api: Api, vm: str, path: str, size: int) -> tuple[str, str]:
    result = api.write(vm, {"path": path, "size": size, "presigned": True})[0]
    assert result["presigned_url"].startswith(api.server.base_url)
    assert result["expires_in"] == 900
    return result["presigned_url"], result["upload_id"]


def test_presigned_write_and_read_8mib(api: Api, vm: str) -> None:
    data = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)
    path = "/home/user/eight.bin"
    url, upload_id = presigned_put(api, vm, path, len(data))
    early = api.write(vm, {"path": path, "size": len(data), "upload_id": upload_id})[0]
    assert early["error"]["code"] == "bad_request"  # nothing uploaded yet
    put = requests.put(url, data=data, timeout=120)
    assert put.status_code == 200, put.text
    commit = {"path": path, "size": len(data), "upload_id": upload_id}
    commit["sha256"] = hashlib.sha256(data).hexdigest()
    assert api.write(vm, commit)[0] == {
        "complete": True,
        "written": True,
        "received_bytes": len(data),
    }
    assert api.write(vm, commit)[0]["written"] is True  # committing twice is harmless
    body = api.sync(vm, {"op": "read", "path": path}).json()
    assert body["size"] == len(data) and body["expires_in"] == 900
    got = requests.get(body["presigned_url"], timeout=120)
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-length"] == str(len(data))


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


def test_presigned_urls_reject_alteration_and_expiry(api: Api, vm: str, arker_server: Any) -> None:
    data = b"z" * (5 * 1024 * 1024)
    path = "/home/user/five.bin"
    url, upload_id = presigned_put(api, vm, path, len(data))
    sig = parse_qs(urlsplit(url).query)["signature"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert error_of(requests.put(_with_query(url, signature=flipped), data=b"x", timeout=30)) == (
        403,
        "forbidden",
    )
    other_upload = url.replace(upload_id, new_ulid())
    assert error_of(requests.put(other_upload, data=b"x", timeout=30))[0] == 403
    no_sig = url.split("?")[0]
    assert error_of(requests.put(no_sig, data=b"x", timeout=30)) == (403, "forbidden")
    too_big = requests.put(url, data=data + b"!", timeout=60)
    assert error_of(too_big) == (413, "payload_too_large")
    assert requests.put(url, data=data, timeout=60).status_code == 200
    api.write(vm, {"path": path, "size": len(data), "upload_id": upload_id})
    read_url = api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"]
    assert requests.get(read_url, timeout=60).status_code == 200
    later = str(int(time.time()) + 10_000)
    assert error_of(requests.get(_with_query(read_url, expires=later), timeout=30))[0] == 403
    other_path = _with_query(read_url, path="/home/user/other")
    assert error_of(requests.get(other_path, timeout=30)) == (403, "forbidden")

    # An expired URL carrying a genuine signature (made with the server's own secret).
    secret = (Path(arker_server.data_dir) / "presign.key").read_bytes()
    past = int(time.time()) - 5
    expired = _with_query(
        read_url, expires=str(past), signature=signature(secret, "GET", vm, path, past)
    )
    assert error_of(requests.get(expired, timeout=30)) == (403, "forbidden")
    fresh = int(time.time()) + 60
    forged = _with_query(
        read_url, expires=str(fresh), signature=signature(secret, "GET", vm, path, fresh)
    )
    assert requests.get(forged, timeout=30).content == data  # same secret, valid again


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_100_mib_presigned_upload_is_streamed(api: Api, vm: str, arker_server: Any) -> None:
    size = 100 * 1024 * 1024
    block = hashlib.sha512(b"block").digest() * (1024 * 1024 // 64)
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    path = "/home/user/hundred.bin"
    url, upload_id = presigned_put(api, vm, path, size)
    before = _vm_hwm_kib(arker_server.pid)
    put = requests.put(url, data=body(), timeout=600)  # chunked transfer, never in memory
    assert put.status_code == 200, put.text
    commit = {"path": path, "size": size, "upload_id": upload_id, "sha256": digest.hexdigest()}
    assert api.write(vm, commit)[0]["written"] is True
    grown_mib = (_vm_hwm_kib(arker_server.pid) - before) / 1024
    assert grown_mib < 50, f"server peak RSS grew by {grown_mib:.0f} MiB"
    out = api.run(vm, f"sha256sum {path}")["stdout"]
    assert out.split()[0] == digest.hexdigest()
    over = api.write(vm, {"path": "/home/user/over", "size": size + 1, "presigned": True})[0]
    assert over["error"]["code"] == "payload_too_large"


def test_symlink_escape_on_read_and_write(api: Api, vm: str, tmp_path: Path) -> None:
    api.run(vm, "ln -s /etc/shadow /home/user/x; ln -s /etc/hostname /home/user/h")
    host_shadow = Path("/etc/shadow").read_bytes()
    r = api.sync(vm, {"op": "read", "path": "/home/user/x"})
    if r.status_code == 200:
        assert read(api, vm, "/home/user/x") != host_shadow
    else:
        assert error_of(r)[0] in (403, 404)
    host_hostname = Path("/etc/hostname").read_bytes()
    r = api.sync(vm, {"op": "read", "path": "/home/user/h"})
    if r.status_code == 200 and host_hostname.strip() != b"vm":
        assert read(api, vm, "/home/user/h") != host_hostname

    target = tmp_path / "escape"
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    api.run(vm, f"ln -s {target} /home/user/y; ln -s {outside_dir} /home/user/d")
    for path in ("/home/user/y", "/home/user/d/pwned"):
        api.write(vm, chunk(path, b"owned", 0, 5, 5, new_ulid()))
    assert not target.exists()
    assert list(outside_dir.iterdir()) == []


def test_other_orgs_cannot_touch_a_vm(api: Api, other: Api, vm: str) -> None:
    api.run(vm, "echo secret > /home/user/s.txt")
    assert vm not in [i["vm_id"] for i in other.get("/api/v1/vms/list?limit=100").json()["items"]]
    attempts = [
        other.post(f"/api/v1/vms/{vm}/run", json={"command": "true"}),
        other.sync(vm, {"op": "read", "path": "/home/user/s.txt"}),
        other.sync(vm, {"op": "write", "writes": [chunk("/home/user/w", b"w", 0, 1, 1, "u")]}),
        other.post(f"/api/v1/vms/{vm}/fork", json={"is_public": False}),
        other.post("/api/v1/vms/fork", json={"from": "test-vm", "is_public": False}),
        other.delete(f"/api/v1/vms/{vm}"),
    ]
    for r in attempts:
        assert error_of(r) == (404, "not_found"), r.text
    assert api.run(vm, "cat /home/user/s.txt")["stdout"] == "secret\n"

    public = api.fork(vm, is_public=True, name=f"pub-{new_ulid().lower()}")
    theirs = other.fork(public["vm_id"])["vm_id"]
    assert other.run(theirs, "cat /home/user/s.txt")["stdout"] == "secret\n"
    by_name = other.post("/api/v1/vms/fork", json={"from": public["name"], "is_public": False})
    assert by_name.status_code == 200, by_name.text
    assert (
        error_of(other.post(f"/api/v1/vms/{public['vm_id']}/run", json={"command": "true"}))[0]
        == 404
    )
    assert theirs not in [i["vm_id"] for i in api.get("/api/v1/vms/list?limit=100").json()["items"]]


# --- uploads staged inside the VM (arker/local/sandbox/staging.py) -------------------


def _staged_files(arker_server: Any) -> set[Path]:
    """Staged upload files anywhere in the server's layers (seen from the host).

    Through the server's root: a btrfs volume is mounted in its mount namespace only.
    """
    data_dir = Path(f"/proc/{arker_server.pid}/root{Path(arker_server.data_dir).resolve()}")
    return set(data_dir.glob("engine/**/.arker-uploads/*"))


def test_a_staged_upload_is_out_of_the_vm_users_reach(api: Api, vm: str, arker_server: Any) -> None:
    data = b"secret-in-flight" * 70_000
    before = _staged_files(arker_server)
    url, upload_id = presigned_put(api, vm, "/home/user/later.bin", len(data))
    assert requests.put(url, data=data, timeout=60).status_code == 200
    (staged,) = _staged_files(arker_server) - before
    assert staged.read_bytes() == data
    # Staged, not committed: nothing under the path, and the VM user can neither list,
    # read, replace nor remove the staging directory.
    probe = api.run(
        vm,
        "ls /home/user; ls -A /.arker-uploads; cat /.arker-uploads/*; "
        "rm -rf /.arker-uploads; mv /.arker-uploads /home/user/x; "
        "stat -c '%U %a' /.arker-uploads; grep -rl secret-in-flight /home /tmp",
    )
    assert "later.bin" not in probe["stdout"]
    assert "secret-in-flight" not in probe["stdout"]
    assert "Permission denied" in probe["stderr"]
    assert probe["stdout"].strip().endswith("700")
    commit = {"path": "/home/user/later.bin", "size": len(data), "upload_id": upload_id}
    commit["sha256"] = hashlib.sha256(data).hexdigest()
    assert api.write(vm, {**commit, "mode": 0o640})[0]["written"] is True
    owner = api.run(vm, "stat -c '%u %a %s' /home/user/later.bin")["stdout"].split()
    assert owner == ["1000", "640", str(len(data))]
    assert read(api, vm, "/home/user/later.bin") == data
    assert not staged.exists()  # the commit moved it: nothing left behind


def test_fork_between_put_and_commit(api: Api, vm: str) -> None:
    data = hashlib.sha256(b"fork").digest() * (6 * 1024 * 1024 // 32)
    path = "/home/user/forked.bin"
    url, upload_id = presigned_put(api, vm, path, len(data))
    # The first 2 MiB, then a fork, then the rest resumed from where it stopped.
    head = 2 * 1024 * 1024
    cut = requests.put(
        url,
        data=data[:head],
        headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
        timeout=60,
    )
    assert cut.status_code == 400  # short of the announced size, but the prefix is kept
    assert requests.head(url, timeout=30).headers["Upload-Offset"] == str(head)
    child = api.fork(vm)["vm_id"]
    rest = requests.put(
        url,
        data=data[head:],
        headers={"Content-Range": f"bytes {head}-{len(data) - 1}/{len(data)}"},
        timeout=60,
    )
    assert rest.status_code == 200, rest.text
    child2 = api.fork(vm)["vm_id"]  # a fork after the PUT, before the commit
    commit = {"path": path, "size": len(data), "upload_id": upload_id}
    commit["sha256"] = hashlib.sha256(data).hexdigest()
    assert api.write(vm, commit)[0]["written"] is True
    assert read(api, vm, path) == data
    for other in (child, child2):
        assert api.run(other, f"test -e {path}; echo $?")["stdout"] == "1\n"
        # The parent's upload is not the child's to commit.
        assert api.write(other, commit)[0]["error"]["code"] == "not_found"


def test_commit_needs_write_permission_on_the_target_directory(api: Api, vm: str) -> None:
    api.run(vm, "mkdir /home/user/ro && chmod 555 /home/user/ro")
    data = b"z" * (5 * 1024 * 1024)
    url, upload_id = presigned_put(api, vm, "/home/user/ro/f", len(data))
    assert requests.put(url, data=data, timeout=60).status_code == 200
    commit = {"path": "/home/user/ro/f", "size": len(data), "upload_id": upload_id}
    error = api.write(vm, commit)[0]["error"]
    assert error["code"] == "forbidden" and "permission denied" in error["message"]
    assert api.run(vm, "ls -A /home/user/ro")["stdout"] == ""
    api.run(vm, "chmod 755 /home/user/ro")
    assert api.write(vm, commit)[0]["written"] is True  # still staged: a retry works
    assert read(api, vm, "/home/user/ro/f") == data
