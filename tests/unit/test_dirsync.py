"""Directory sync against a scripted sync route: what is sent, skipped, deleted, refused."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from arker import Arker, BadRequestError, DirSyncResult, ResponseValidationError

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
ROOT = "/home/user/proj"


class FakeSync:
    """The sync route's manifest, write, delete and read over an in-memory tree."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.modes: dict[str, int] = dict.fromkeys(self.files, 0o644)
        self.ops: list[str] = []
        self.manifest_override: list[dict] | None = None

    def __call__(self, request) -> tuple[int, dict, str]:
        body = json.loads(request.body)
        self.ops.append(body["op"])
        answer: dict
        if body["op"] == "manifest":
            entries = self.manifest_override
            if entries is None:
                entries = [
                    {
                        "path": p,
                        "size": len(d),
                        "mode": self.modes[p],
                        "sha256": hashlib.sha256(d).hexdigest(),
                    }
                    for p, d in sorted(self.files.items())
                    if p.startswith(body["path"] + "/")
                ]
            answer = {"entries": entries, "truncated": False}
        elif body["op"] == "write":
            for w in body["writes"]:
                self.files[w["path"]] = base64.b64decode(w["content"])
                self.modes[w["path"]] = w.get("mode") or 0o644
            answer = {"results": [{"complete": True, "written": True}] * len(body["writes"])}
        elif body["op"] == "delete":
            for p in body["paths"]:
                self.files.pop(p, None)
            answer = {"deleted": body["paths"]}
        else:
            data = self.files[body["path"]]
            answer = {"content": base64.b64encode(data).decode(), "encoding": "base64"}
        return 200, {"Content-Type": "application/json"}, json.dumps({"ok": True, **answer})


@pytest.fixture
def fake(client: Arker, rsps) -> FakeSync:
    fake = FakeSync()
    rsps.add_callback("POST", f"{client.base_url}/api/v1/vms/{VM}/sync", callback=fake)
    return fake


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        (root / rel).chmod(0o644)
    return root


def test_push_sends_what_differs_and_deletes_what_is_gone(client, fake, tmp_path) -> None:
    fake.files = {f"{ROOT}/same.txt": b"same", f"{ROOT}/old.txt": b"old", f"{ROOT}/b": b"x"}
    fake.modes = dict.fromkeys(fake.files, 0o644)
    local = _tree(tmp_path, {"same.txt": b"same", "b": b"changed", "sub/new.txt": b"new"})
    result = client.sync.push_dir(VM, local, ROOT, delete=True)
    assert result.transferred == ["b", "sub/new.txt"]
    assert result.bytes_transferred == len(b"changed") + len(b"new")
    assert (result.skipped, result.deleted) == (["same.txt"], ["old.txt"])
    assert fake.files == {
        f"{ROOT}/same.txt": b"same",
        f"{ROOT}/b": b"changed",
        f"{ROOT}/sub/new.txt": b"new",
    }


def test_pull_reports_downloads_as_transferred(client, fake, tmp_path) -> None:
    fake.files = {f"{ROOT}/a.txt": b"aa", f"{ROOT}/d/b.txt": b"bbb"}
    fake.modes = dict.fromkeys(fake.files, 0o600)
    result = client.sync.pull_dir(VM, ROOT, tmp_path / "out")
    assert result.transferred == ["a.txt", "d/b.txt"] and result.bytes_transferred == 5
    assert result.files_transferred == 2
    assert (tmp_path / "out/d/b.txt").read_bytes() == b"bbb"
    assert (tmp_path / "out/a.txt").stat().st_mode & 0o777 == 0o600


def test_old_result_names_still_work_but_warn() -> None:
    result = DirSyncResult(transferred=["a"], bytes_transferred=3)
    with pytest.deprecated_call():
        assert result.sent == ["a"]
    with pytest.deprecated_call():
        assert result.bytes_sent == 3
    with pytest.deprecated_call():
        assert result.files_sent == 1
    old_dump = json.dumps({"sent": ["a"], "bytes_sent": 3})
    assert DirSyncResult.model_validate_json(old_dump) == result


@pytest.mark.parametrize(
    "path",
    [f"{ROOT}x/a.txt", "/home/user/other/a.txt", f"{ROOT}/../x", f"{ROOT}//x", f"{ROOT}/./x"],
)
def test_manifest_entry_outside_or_unsafe_is_response_validation_error(
    client, fake, tmp_path, path
) -> None:
    fake.manifest_override = [{"path": path, "size": 1, "mode": 0o644, "sha256": "0" * 64}]
    with pytest.raises(ResponseValidationError) as info:
        client.sync.pull_dir(VM, ROOT, tmp_path / "out")
    assert info.value.code == "invalid_response"
    assert not (tmp_path / "x").exists()


def test_pull_never_writes_through_a_local_symlink(client, fake, tmp_path) -> None:
    fake.files = {f"{ROOT}/d/a.txt": b"a"}
    fake.modes = {f"{ROOT}/d/a.txt": 0o644}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/d").symlink_to(elsewhere)
    with pytest.raises(BadRequestError) as info:
        client.sync.pull_dir(VM, ROOT, tmp_path / "out")
    assert info.value.status == 0  # refused here, not by a server
    assert list(elsewhere.iterdir()) == []
    assert fake.ops == ["manifest"]


def test_push_of_a_missing_directory_sends_nothing(client, fake, tmp_path) -> None:
    with pytest.raises(BadRequestError):
        client.sync.push_dir(VM, tmp_path / "missing", ROOT)
    assert fake.ops == []
