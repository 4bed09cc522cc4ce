"""Streaming sources and sinks, integrity checks, expired URLs, progress (wire: responses)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import responses

from arker import Arker, BadRequestError, ResponseValidationError
from arker._streams import open_source
from arker.progress import ProgressBar

VM = "01KQBYKEV5WJ7YB010603T1DCT_abc1"
BIG = 5 * 1024 * 1024  # over the inline limit: the presigned path


def _sync_url(client: Arker) -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/sync"


class PresignedServer:
    """A scripted sync endpoint plus a presigned store, tracking what it received."""

    def __init__(self, rsps: responses.RequestsMock, client: Arker) -> None:
        self.files: dict[str, bytes] = {}
        self.puts: list[bytes] = []
        self.grants = 0
        self.put_statuses: list[int] = []
        self.read_sha: str | None = None
        rsps.add_callback("POST", _sync_url(client), callback=self.sync)
        rsps.add_callback("PUT", "http://store.test/put", callback=self.put)
        rsps.add_callback("GET", "http://store.test/get", callback=self.get)

    def sync(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        if body["op"] == "read":
            data = self.files[body["path"]]
            self.serving = data
            answer = {"ok": True, "presigned_url": "http://store.test/get", "size": len(data)}
            if self.read_sha is not None:
                answer["sha256"] = self.read_sha
            return 200, {}, json.dumps(answer)
        entry = body["writes"][0]
        if entry.get("presigned"):
            self.grants += 1
            result = {"presigned_url": f"http://store.test/put?g={self.grants}", "upload_id": "U"}
            return 200, {}, json.dumps({"ok": True, "results": [result]})
        if "content" in entry:
            self.files[entry["path"]] = base64.b64decode(entry["content"])
        else:
            data = self.puts[-1]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            self.files[entry["path"]] = data
        return 200, {}, json.dumps({"ok": True, "results": [{"complete": True, "written": True}]})

    def put(self, request: Any) -> tuple[int, dict[str, str], str]:
        status = self.put_statuses.pop(0) if self.put_statuses else 200
        body = request.body
        data = body.read() if hasattr(body, "read") else bytes(body)
        if status == 200:
            self.puts.append(data)
            return 200, {}, ""
        return (
            status,
            {},
            json.dumps({"ok": False, "error": {"code": "forbidden", "message": "expired"}}),
        )

    def get(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, self.serving


@pytest.fixture
def server(rsps: responses.RequestsMock, client: Arker) -> PresignedServer:
    return PresignedServer(rsps, client)


def test_write_from_path_file_and_pipe(
    client: Arker, server: PresignedServer, tmp_path: Path
) -> None:
    data = os.urandom(BIG)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    client.sync.write(VM, "/home/user/a", src)
    with src.open("rb") as f:
        f.seek(10)
        client.sync.write(VM, "/home/user/b", f)
    r, w = os.pipe()
    with os.fdopen(w, "wb") as wf:
        wf.write(data[:1000])
    with os.fdopen(r, "rb") as rf:
        client.sync.write(VM, "/home/user/c", rf)
    assert server.files["/home/user/a"] == data
    assert server.files["/home/user/b"] == data[10:]
    assert server.files["/home/user/c"] == data[:1000]


def test_source_sha256_learned_while_streaming(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "x"
    path.write_bytes(data)
    source = open_source(path, 1 << 30)
    assert source._sha256 is None  # nothing read ahead of the upload
    reader = source.reader(0)
    while reader.read(64 * 1024):
        pass
    reader.close()
    assert source._sha256 == hashlib.sha256(data).hexdigest()
    # A resumed reader (not from 0) never claims to know the digest of the whole body.
    resumed = open_source(path, 1 << 30)
    part = resumed.reader(100)
    assert len(part) == len(data) - 100 and part.read() == data[100:]
    assert resumed._sha256 is None and resumed.sha256 == hashlib.sha256(data).hexdigest()


def test_text_mode_file_is_refused_without_a_request(client: Arker, tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    with (tmp_path / "t").open() as f, pytest.raises(BadRequestError):
        client.sync.write(VM, "/home/user/t", f)  # type: ignore[arg-type]


def test_expired_presigned_url_is_requested_again(client: Arker, server: PresignedServer) -> None:
    server.put_statuses = [403]
    data = os.urandom(BIG)
    client.sync.write(VM, "/home/user/e", data)
    assert server.grants == 2
    assert server.files["/home/user/e"] == data


def test_read_sha256_mismatch_raises_and_leaves_no_file(
    client: Arker, server: PresignedServer, tmp_path: Path
) -> None:
    server.files["/home/user/r"] = os.urandom(BIG)
    server.read_sha = "0" * 64
    dest = tmp_path / "out.bin"
    with pytest.raises(ResponseValidationError, match="sha256"):
        client.sync.read_to(VM, "/home/user/r", dest)
    assert list(tmp_path.iterdir()) == []
    server.read_sha = hashlib.sha256(server.files["/home/user/r"]).hexdigest()
    assert client.sync.read_to(VM, "/home/user/r", dest) == BIG
    assert dest.read_bytes() == server.files["/home/user/r"]


def test_read_to_an_existing_path_is_replaced_only_on_success(
    client: Arker, server: PresignedServer, tmp_path: Path
) -> None:
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"previous")
    server.files["/home/user/r"] = os.urandom(BIG)
    server.read_sha = "f" * 64
    with pytest.raises(ResponseValidationError):
        client.sync.read_to(VM, "/home/user/r", dest)
    assert dest.read_bytes() == b"previous"


@pytest.mark.parametrize("durable", [False, True])
def test_read_to_fsyncs_file_and_directory_only_when_durable(
    client: Arker,
    server: PresignedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    durable: bool,
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    server.files["/home/user/r"] = os.urandom(BIG)
    dest = tmp_path / "out.bin"
    assert client.sync.read_to(VM, "/home/user/r", dest, durable=durable) == BIG
    assert dest.read_bytes() == server.files["/home/user/r"]
    if durable:
        # The temp file before the rename, then the directory holding the new name.
        assert len(synced) == 2 and synced[0].endswith(".part")
        assert synced[1] == str(tmp_path)
    else:
        assert synced == []
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_progress_callbacks_and_bar(client: Arker, server: PresignedServer) -> None:
    seen: list[tuple[int, int]] = []
    client.sync.write(
        VM, "/home/user/p", os.urandom(BIG), progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (BIG, BIG) and all(t == BIG for _, t in seen)
    out = io.StringIO()
    with ProgressBar("read", file=out, mininterval=0) as bar:
        client.sync.read(VM, "/home/user/p", progress=bar)
        assert bar._bar.n == BIG and bar._bar.total == BIG
    assert "read" in out.getvalue()
