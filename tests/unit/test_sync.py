"""Sync: client-side path and size checks, inline and presigned writes, all read kinds."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import responses

from arker import (
    Arker,
    BadRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
MiB = 1024 * 1024
UPLOAD_URL = "http://uploads.arker.test/put/up-1?sig=abc&exp=900"
DOWNLOAD_URL = "http://uploads.arker.test/get/f-1?sig=def&exp=900"


def _sync_url(client: Arker) -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/sync"


def _body_bytes(request) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        return body.read()
    return b"".join(body)


def _sync_calls(rsps, client: Arker) -> list[dict]:
    return [json.loads(c.request.body) for c in rsps.calls if c.request.url == _sync_url(client)]


# --- refused before any request -----------------------------------------------------------

BAD_PATHS = [
    pytest.param("data.csv", id="relative"),
    pytest.param("home/user/data.csv", id="relative-home"),
    pytest.param("/etc/passwd", id="outside-home"),
    pytest.param("/home/username/x", id="prefix-trick"),
    pytest.param("/home/user", id="home-without-slash"),
    pytest.param("/home/user/../root/x", id="dotdot"),
    pytest.param("/home/user/a/../../etc/x", id="dotdot-deep"),
    pytest.param("/home/user/a\x00b", id="nul"),
    pytest.param("/home/user/" + "a" * 4086, id="4097-bytes"),
    pytest.param("/home/user/" + "é" * 2043, id="4097-bytes-utf8"),
    pytest.param("/home/user/", id="home-dir"),
    pytest.param("/home/user/dir/", id="directory"),
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_write_path_makes_no_request(client: Arker, rsps, path) -> None:
    with pytest.raises(BadRequestError) as info:
        client.vm(VM).sync.write_file(path, b"x")
    # status 0: no server answered; the class and code are the ones a server would send.
    assert info.value.status == 0 and info.value.code == "bad_request"
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_read_path_makes_no_request(client: Arker, rsps, path) -> None:
    with pytest.raises(BadRequestError):
        client.vm(VM).sync.read_file(path)
    assert len(rsps.calls) == 0


def test_longest_allowed_path_is_sent(client: Arker, rsps) -> None:
    path = "/home/user/" + "a" * (4096 - len("/home/user/"))
    assert len(path.encode()) == 4096
    rsps.post(_sync_url(client), json={"ok": True, "content": "", "encoding": "utf-8"})
    assert client.vm(VM).sync.read_file(path) == b""
    assert _sync_calls(rsps, client)[0]["path"] == path


def test_over_100_mib_makes_no_request(client: Arker, rsps) -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        client.vm(VM).sync.write_file("/home/user/big", bytes(100 * MiB + 1))
    assert info.value.status == 0 and info.value.code == "payload_too_large"
    assert len(rsps.calls) == 0


def test_non_bytes_data_is_refused(client: Arker, rsps) -> None:
    with pytest.raises(BadRequestError):
        client.sync.write(VM, "/home/user/x", 12345)  # type: ignore[arg-type]
    assert len(rsps.calls) == 0


# --- inline writes -----------------------------------------------------------------------------


def test_empty_file_is_one_chunk_of_size_zero(client: Arker, rsps) -> None:
    rsps.post(
        _sync_url(client), json={"ok": True, "results": [{"complete": True, "written": True}]}
    )
    client.vm(VM).sync.write_file("/home/user/empty", b"")
    ((entry,),) = (b["writes"] for b in _sync_calls(rsps, client))
    assert (entry["size"], entry["start"], entry["end"], entry["content"]) == (0, 0, 0, "")
    assert entry["sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("size", [1, 4 * MiB])
def test_up_to_4_mib_is_one_inline_chunk(client: Arker, rsps, size) -> None:
    data = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    rsps.post(
        _sync_url(client), json={"ok": True, "results": [{"complete": True, "written": True}]}
    )
    client.vm(VM).sync.write_file("/home/user/blob", data)
    (body,) = _sync_calls(rsps, client)
    (entry,) = body["writes"]
    assert "presigned" not in entry
    assert base64.b64decode(entry["content"]) == data
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (entry["size"], entry["start"], entry["end"]) == (size, 0, size)


def test_str_is_written_as_utf8(client: Arker, rsps) -> None:
    rsps.post(
        _sync_url(client), json={"ok": True, "results": [{"complete": True, "written": True}]}
    )
    client.vm(VM).sync.write_file("/home/user/t.txt", "héllo ✓")
    (entry,) = _sync_calls(rsps, client)[0]["writes"]
    assert base64.b64decode(entry["content"]) == "héllo ✓".encode()


def test_inline_retry_keeps_upload_id(client: Arker, rsps, sleeps) -> None:
    url = _sync_url(client)
    rsps.post(url, status=503, body="")
    rsps.post(
        url, json={"ok": True, "results": [{"error": {"code": "internal", "message": "SlowDown"}}]}
    )
    rsps.post(url, json={"ok": True, "results": [{"complete": True, "written": True}]})
    client.vm(VM).sync.write_file("/home/user/a", b"abc")
    entries = [b["writes"][0] for b in _sync_calls(rsps, client)]
    assert len(entries) == 3
    assert len({e["upload_id"] for e in entries}) == 1
    assert all(e == entries[0] for e in entries)
    assert len(sleeps) == 2


def test_two_writes_use_different_upload_ids(client: Arker, rsps) -> None:
    rsps.post(
        _sync_url(client), json={"ok": True, "results": [{"complete": True, "written": True}]}
    )
    client.vm(VM).sync.write_file("/home/user/a", b"abc")
    client.vm(VM).sync.write_file("/home/user/a", b"abc")
    ids = [b["writes"][0]["upload_id"] for b in _sync_calls(rsps, client)]
    assert ids[0] != ids[1]


def test_permanent_entry_error_is_raised_not_retried(client: Arker, rsps, sleeps) -> None:
    rsps.post(
        _sync_url(client),
        json={"ok": True, "results": [{"error": {"code": "forbidden", "message": "read-only"}}]},
    )
    with pytest.raises(PermissionDeniedError) as info:
        client.vm(VM).sync.write_file("/home/user/a", b"abc")
    assert (info.value.code, info.value.status) == ("forbidden", 403)
    assert "read-only" in info.value.message
    assert len(rsps.calls) == 1 and sleeps == []


def test_unconfirmed_write_is_an_error(client: Arker, rsps) -> None:
    from arker import ResponseValidationError

    rsps.post(
        _sync_url(client), json={"ok": True, "results": [{"complete": False, "written": False}]}
    )
    with pytest.raises(ResponseValidationError):
        client.vm(VM).sync.write_file("/home/user/a", b"abc")


# --- presigned writes ------------------------------------------------------------------------


class PresignServer:
    """Scripts the three steps of a large write; PUT answers come from ``put_statuses``."""

    def __init__(self, client: Arker, rsps: responses.RequestsMock, put_statuses=(200,)) -> None:
        self.client = client
        self.entries: list[dict] = []
        self.puts: list[tuple[dict, bytes]] = []
        self._put_statuses = list(put_statuses)
        rsps.add_callback("POST", _sync_url(client), callback=self._sync)
        rsps.add_callback("PUT", UPLOAD_URL, callback=self._put)
        rsps.add("HEAD", UPLOAD_URL, status=200)

    def _sync(self, request):
        (entry,) = json.loads(request.body)["writes"]
        self.entries.append(entry)
        if entry.get("presigned"):
            result = {"presigned_url": UPLOAD_URL, "upload_id": "srv-upload-1"}
        else:
            result = {"complete": True, "written": True}
        return 200, {}, json.dumps({"ok": True, "results": [result]})

    def _put(self, request):
        self.puts.append((dict(request.headers), _body_bytes(request)))
        status = self._put_statuses.pop(0) if len(self._put_statuses) > 1 else self._put_statuses[0]
        return status, {}, "" if status < 400 else "unavailable"


def test_over_4_mib_goes_presigned(client: Arker, rsps, api_key) -> None:
    data = b"\xab\xcd" * (2 * MiB) + b"!"  # 4 MiB + 1
    server = PresignServer(client, rsps)
    client.vm(VM).sync.write_file("/home/user/big.bin", data)
    presign, commit = server.entries
    assert presign == {"path": "/home/user/big.bin", "size": len(data), "presigned": True}
    assert "content" not in commit
    assert commit["upload_id"] == "srv-upload-1"
    assert (commit["path"], commit["size"]) == ("/home/user/big.bin", len(data))
    assert commit["sha256"] == hashlib.sha256(data).hexdigest()
    ((headers, body),) = server.puts
    assert body == data
    assert "Authorization" not in headers
    assert all(api_key not in v for v in headers.values())


def test_put_retried_on_503_with_same_upload(client: Arker, rsps, sleeps, api_key) -> None:
    data = b"z" * (4 * MiB + 10)
    server = PresignServer(client, rsps, put_statuses=(503, 200))
    client.vm(VM).sync.write_file("/home/user/big.bin", data)
    assert len(server.puts) == 2
    assert [b for _, b in server.puts] == [data, data]
    assert all("Authorization" not in h for h, _ in server.puts)
    assert [e.get("presigned", False) for e in server.entries] == [True, False]
    assert server.entries[1]["upload_id"] == "srv-upload-1"
    assert len(sleeps) == 1
    # Nothing the client sent anywhere outside the API carried the key.
    for call in rsps.calls:
        if not call.request.url.startswith(client.base_url):
            assert "Authorization" not in call.request.headers


def test_put_failing_for_good_raises_and_does_not_commit(make_client, rsps) -> None:
    client = make_client(max_retries=1)
    server = PresignServer(client, rsps, put_statuses=(503,))
    with pytest.raises(ServiceUnavailableError):
        client.vm(VM).sync.write_file("/home/user/big.bin", b"q" * (4 * MiB + 1))
    assert len(server.puts) == 2
    assert [e.get("presigned", False) for e in server.entries] == [True]


# --- reads ------------------------------------------------------------------------------


def test_read_inline_utf8(client: Arker, rsps) -> None:
    rsps.post(_sync_url(client), json={"ok": True, "content": "héllo\n", "encoding": "utf-8"})
    assert client.vm(VM).sync.read_file("/home/user/t") == "héllo\n".encode()


def test_read_inline_base64(client: Arker, rsps) -> None:
    raw = b"\xff\x00\xfe binary"
    rsps.post(
        _sync_url(client),
        json={"ok": True, "content": base64.b64encode(raw).decode(), "encoding": "base64"},
    )
    assert client.vm(VM).sync.read_file("/home/user/b") == raw


def test_read_presigned_get_without_api_key(client: Arker, rsps, api_key) -> None:
    raw = bytes(range(256)) * 1000
    rsps.post(_sync_url(client), json={"ok": True, "presigned_url": DOWNLOAD_URL, "size": len(raw)})
    rsps.get(DOWNLOAD_URL, body=raw)
    assert client.vm(VM).sync.read_file("/home/user/big") == raw
    get = rsps.calls[1]
    assert get.request.method == "GET"
    assert "Authorization" not in get.request.headers


def test_read_presigned_retried_on_502(client: Arker, rsps, sleeps) -> None:
    rsps.post(_sync_url(client), json={"ok": True, "presigned_url": DOWNLOAD_URL})
    rsps.get(DOWNLOAD_URL, status=502, body="")
    rsps.get(DOWNLOAD_URL, body=b"payload")
    assert client.vm(VM).sync.read_file("/home/user/big") == b"payload"
    assert len(sleeps) == 1


def test_read_unknown_encoding_does_not_break(client: Arker, rsps) -> None:
    rsps.post(_sync_url(client), json={"ok": True, "content": "plain", "encoding": "zstd+future"})
    assert isinstance(client.vm(VM).sync.read_file("/home/user/t"), bytes)


def test_read_size_mismatch_is_detected(client: Arker, rsps) -> None:
    from arker import ResponseValidationError

    rsps.post(
        _sync_url(client), json={"ok": True, "content": "abc", "encoding": "utf-8", "size": 4}
    )
    with pytest.raises(ResponseValidationError):
        client.vm(VM).sync.read_file("/home/user/t")


def test_read_missing_file_is_not_found(client: Arker, rsps) -> None:
    from arker import NotFoundError

    rsps.post(
        _sync_url(client),
        status=404,
        json={
            "ok": False,
            "error": {"code": "not_found", "message": "file not found: /home/user/m"},
        },
    )
    with pytest.raises(NotFoundError) as info:
        client.vm(VM).sync.read_file("/home/user/m")
    assert info.value.message == "file not found: /home/user/m"
