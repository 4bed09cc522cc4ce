"""Symbolic and hard links inside a VM against a real `arker serve`.

Reads, writes, manifests and deletes through links only ever touch the VM's own
files: host files keep their bytes and mtime.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
from pathlib import Path

import pytest
import requests

from arker.testing import ArkerServer
from tests.kit.server import Api, assert_healthy, chunk, error_of

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


# --- links inside the VM ----------------------------------------------------------------


def _fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).digest(), st.st_mtime_ns, st.st_ino


@pytest.fixture
def host_marker(tmp_path: Path) -> Path:
    marker = tmp_path / "host-secret.txt"
    marker.write_bytes(b"HOST-ONLY-CONTENT-" + os.urandom(8).hex().encode())
    return marker


def test_links_in_the_vm_never_reach_host_files(
    api: Api, vm: str, arker_server: ArkerServer, host_marker: Path
) -> None:
    data_dir = Path(arker_server.data_dir)
    secret_file = data_dir / "presign.key"
    watched = [host_marker, Path("/etc/passwd"), Path("/etc/hostname"), secret_file]
    watched = [p for p in watched if p.exists()]
    before = {p: _fingerprint(p) for p in watched}
    host_dir_listing = sorted(os.listdir(data_dir))
    marker_tail = host_marker.read_bytes()
    marker_sha = hashlib.sha256(marker_tail).hexdigest()
    q = shlex.quote
    setup = "; ".join(
        [
            "cd /home/user",
            "ln -s /etc/passwd x",
            f"ln -s {q(str(host_marker))} m",
            f"ln -s {q(str(data_dir))} dd",
            f"ln -s {q(str(host_marker.parent))} md",
            "ln -s / d",
            "ln -s ../../.. up",
            "mkdir -p real && ln -s ../x real/x2",
            "ln /etc/passwd h 2>/dev/null || true",
            "echo mine > own && ln own hl",
            "ls -la",
        ]
    )
    listing = api.run(vm, setup)["stdout"]
    vm_passwd = api.run(vm, "cat /etc/passwd")["stdout"]
    host_passwd = Path("/etc/passwd").read_bytes()

    # Reads: only ever the VM's own bytes (or a refusal), never a host file.
    read_paths = [
        "/home/user/x",
        "/home/user/m",
        "/home/user/real/x2",
        "/home/user/d/etc/passwd",
        "/home/user/up/etc/passwd",
        f"/home/user/d{host_marker}",
        f"/home/user/dd/{secret_file.name}",
        f"/home/user/md/{host_marker.name}",
        "/home/user/h",
        "/home/user/hl",
    ]
    for path in read_paths:
        r = api.sync(vm, {"op": "read", "path": path})
        assert r.status_code in (200, 400, 403, 404), (path, r.text)
        assert r.status_code < 500
        assert marker_tail.decode() not in r.text, path
        assert base64.b64encode(secret_file.read_bytes()).decode() not in r.text, path
        if r.status_code == 200:
            body = r.json()
            if "content" in body:
                got = body["content"]
                if body["encoding"] == "base64":
                    got = base64.b64decode(got).decode(errors="replace")
                if path in ("/home/user/x", "/home/user/d/etc/passwd", "/home/user/h"):
                    assert got == vm_passwd or host_passwd == vm_passwd.encode(), path
        else:
            error_of(r)

    # Writes through the links: the host files keep their bytes and mtime.
    write_paths = [
        "/home/user/m",
        f"/home/user/d{host_marker}",
        f"/home/user/md/{host_marker.name}",
        f"/home/user/dd/{secret_file.name}",
        "/home/user/dd/evil-new-file",
        "/home/user/md/evil-new-file",
        "/home/user/hl",
    ]
    for path in write_paths:
        results = api.write(vm, chunk(path, b"PWNED"))
        assert len(results) == 1, results
        if results[0].get("error"):
            assert results[0]["error"]["code"] in ("bad_request", "forbidden", "not_found")
    # Presigned upload through a link as well.
    up = api.write(vm, {"path": "/home/user/md/evil-presigned", "size": 5, "presigned": True})[0]
    if "presigned_url" in up:
        assert requests.put(up["presigned_url"], data=b"PWNED", timeout=30).status_code < 500
        api.write(
            vm, {"path": "/home/user/md/evil-presigned", "size": 5, "upload_id": up["upload_id"]}
        )
    # The hard link's sibling keeps its bytes when the link is rewritten: writes replace.
    assert api.run(vm, "cat /home/user/own")["stdout"] == "mine\n"

    # Manifest and delete through the links stay inside the VM.
    for path in ("/home/user", "/home/user/md", "/home/user/dd", "/home/user/m"):
        r = api.sync(vm, {"op": "manifest", "path": path})
        assert r.status_code in (200, 400, 404), (path, r.text)
        # Only the VM's own files (e.g. what the writes above created inside the VM).
        assert marker_sha not in r.text, r.text
        if r.status_code == 200:
            for entry in r.json()["entries"]:
                assert entry["path"].startswith("/home/user/"), entry
    deletes = [
        "/home/user/m",
        f"/home/user/md/{host_marker.name}",
        f"/home/user/dd/{secret_file.name}",
        f"/home/user/d{host_marker}",
        "/home/user/d/etc/passwd",
        "/home/user/h",
    ]
    for path in deletes:
        # Links resolve inside the VM, where the VM user may not delete /etc/passwd.
        r = api.sync(vm, {"op": "delete", "paths": [path]})
        assert r.status_code in (200, 403, 409), (path, r.text)

    after = {p: _fingerprint(p) for p in watched}
    assert after == before, (listing, before, after)
    assert sorted(os.listdir(data_dir)) == host_dir_listing
    assert not (host_marker.parent / "evil-new-file").exists()
    assert not (host_marker.parent / "evil-presigned").exists()
    assert not (data_dir / "evil-new-file").exists()
    # The VM's own /etc/passwd was not changed by anything above either.
    assert api.run(vm, "cat /etc/passwd")["stdout"] == vm_passwd
    assert_healthy(api, vm)


def test_manifest_does_not_follow_a_symlinked_root(api: Api, vm: str) -> None:
    api.run(
        vm,
        "ln -s /etc /home/user/e && ln -s / /home/user/d && mkdir -p /home/user/real "
        "&& echo x > /home/user/real/f && ln -s /home/user/real /home/user/inside",
    )
    for root in ("/home/user/e", "/home/user/d", "/home/user/d/etc", "/home/user/inside"):
        r = api.sync(vm, {"op": "manifest", "path": root})
        assert r.status_code in (200, 400), r.text[:300]
        if r.status_code == 200:
            assert r.json()["entries"] == [], (root, r.text[:300])
    listed = api.sync(vm, {"op": "manifest", "path": "/home/user/real"}).json()["entries"]
    assert [e["path"] for e in listed] == ["/home/user/real/f"]
