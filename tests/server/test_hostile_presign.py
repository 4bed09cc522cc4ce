"""Altered presigned URLs against a real `arker serve`.

A signature binds method, VM, target and expiry: any change is a 403, a forged one
for a path outside ``/home/user`` a 400, and the URL of a deleted VM a 404.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from arker._ids import new_ulid
from arker.local.presign import signature
from arker.testing import ArkerServer
from tests.kit.server import Api, assert_healthy, expect

# Every answer must be an error envelope with the documented code and status, never a
# 5xx: no request of this module may reach the server's 500 handler.
pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


# --- presigned URLs ---------------------------------------------------------------------


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    for k, v in changes.items():
        if v is None:
            query.pop(k, None)
        else:
            query[k] = v
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


def _flip(sig: str) -> str:
    return ("0" if sig[0] != "0" else "1") + sig[1:]


def test_altered_presigned_urls_are_403(api: Api, vm: str, arker_server: ArkerServer) -> None:
    path = "/home/user/big.bin"
    api.run(vm, f"head -c 5000000 /dev/zero > {path}")
    other_vm = api.fork(vm)["vm_id"]
    read_url = api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"]
    assert requests.get(read_url, timeout=60).status_code == 200
    q = {k: v[0] for k, v in parse_qs(urlsplit(read_url).query).items()}
    secret = (Path(arker_server.data_dir) / "presign.key").read_bytes()
    past = int(time.time()) - 10
    future = int(q["expires"]) + 3600
    other_read_route = urlsplit(read_url).path.replace(vm, other_vm)
    base = arker_server.base_url
    bad_reads = [
        _with_query(read_url, signature=_flip(q["signature"])),
        _with_query(read_url, signature=q["signature"].upper()),
        _with_query(read_url, signature=""),
        _with_query(read_url, signature=None),
        _with_query(read_url, signature="z" * 10_000),
        _with_query(read_url, expires=None),
        _with_query(read_url, expires=str(future)),
        _with_query(read_url, expires="x"),
        _with_query(read_url, expires=str(10**30)),
        _with_query(read_url, expires="-1"),
        _with_query(read_url, expires=" " + q["expires"]),
        _with_query(read_url, path="/home/user/other"),
        _with_query(read_url, path="/etc/passwd"),
        _with_query(read_url, path=path + "/../../../etc/passwd"),
        _with_query(read_url, path=None),
        f"{base}{other_read_route}?{urlsplit(read_url).query}",  # vm swapped
        # Genuine signatures with the server's own secret, but expired.
        _with_query(
            read_url, expires=str(past), signature=signature(secret, "GET", vm, path, past)
        ),
        # The PUT signature of the same target is not a GET signature.
        _with_query(
            read_url,
            signature=signature(secret, "PUT", vm, path, int(q["expires"])),
        ),
    ]
    for url in bad_reads:
        r = requests.get(url, timeout=30)
        expect(r, 403, "forbidden", url[-120:])
    # Forged with the real secret for a path outside /home/user (defence in depth: the
    # server only ever signs checked paths, but the route checks them again).
    exp = int(q["expires"])
    for forged in ("/etc/passwd", "/home/user/../../etc/passwd", "/home/user/a\x00b", "x"):
        url = _with_query(
            read_url, path=forged, signature=signature(secret, "GET", vm, forged, exp)
        )
        expect(requests.get(url, timeout=30), 400, "bad_request", forged)
    # Method swapped: PUT and DELETE to a read URL.
    for method in ("PUT", "DELETE", "POST"):
        r = requests.request(method, read_url, data=b"x", timeout=30)
        expect(r, 405, "bad_request", method)

    upload = api.write(vm, {"path": "/home/user/up", "size": 3, "presigned": True})[0]
    put_url, upload_id = upload["presigned_url"], upload["upload_id"]
    uq = {k: v[0] for k, v in parse_qs(urlsplit(put_url).query).items()}
    upath = urlsplit(put_url).path
    bad_puts = [
        _with_query(put_url, signature=_flip(uq["signature"])),
        _with_query(put_url, signature=None),
        _with_query(put_url, expires=str(int(uq["expires"]) + 1)),
        _with_query(put_url, expires=None),
        f"{base}{upath.replace(vm, other_vm)}?{urlsplit(put_url).query}",  # vm swapped
        f"{base}{upath.replace(upload_id, new_ulid())}?{urlsplit(put_url).query}",
        _with_query(
            put_url,
            expires=str(past),
            signature=signature(secret, "PUT", vm, upload_id, past),
        ),
        # A GET signature over the upload id is not a PUT signature.
        _with_query(put_url, signature=signature(secret, "GET", vm, upload_id, int(uq["expires"]))),
    ]
    for url in bad_puts:
        expect(requests.put(url, data=b"abc", timeout=30), 403, "forbidden", url[-120:])
        assert requests.head(url, timeout=30).status_code == 403, url
    for method in ("GET", "POST", "DELETE"):
        expect(requests.request(method, put_url, timeout=30), 405, "bad_request", method)
    # The untouched URL still works, and the read URL of the other VM is not valid here.
    assert requests.put(put_url, data=b"abc", timeout=30).status_code == 200
    done = api.write(vm, {"path": "/home/user/up", "size": 3, "upload_id": upload_id})[0]
    assert done["complete"] and done["written"], done
    assert api.run(vm, "cat /home/user/up")["stdout"] == "abc"
    assert api.run(other_vm, "test -e /home/user/up; echo $?")["stdout"] == "1\n"
    assert_healthy(api, vm)


def test_presigned_url_of_a_deleted_vm_is_404(api: Api, vm: str) -> None:
    path = "/home/user/big.bin"
    api.run(vm, f"head -c 5000000 /dev/zero > {path}")
    read_url = api.sync(vm, {"op": "read", "path": path}).json()["presigned_url"]
    upload = api.write(vm, {"path": "/home/user/up", "size": 3, "presigned": True})[0]
    assert api.delete(f"/api/v1/vms/{vm}").status_code == 200
    expect(requests.get(read_url, timeout=30), 404, "not_found")
    expect(requests.put(upload["presigned_url"], data=b"abc", timeout=30), 404, "not_found")
    head = requests.head(upload["presigned_url"], timeout=30)
    assert head.status_code in (404, 200), head
