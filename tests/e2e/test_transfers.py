"""Large, interrupted, corrupted and directory transfers against a real `arker serve`."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from arker import Arker, BadRequestError
from tests.kit.faultproxy import FaultPlan, FaultProxy
from tests.kit.files import sha256_of

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture()
def vm_id(arker_client: Arker) -> Any:
    vm = arker_client.vms.fork("arkuntu")
    yield vm.vm_id
    arker_client.vms.delete(vm.vm_id)


def test_100mib_path_roundtrip(arker_client: Arker, vm_id: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    seen: list[tuple[int, int]] = []
    arker_client.sync.write(
        vm_id, "/home/user/big.bin", src, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (100 * MiB, 100 * MiB)
    assert all(b >= a for (a, _), (b, _) in itertools.pairwise(seen))
    dest = tmp_path / "back.bin"
    size = arker_client.sync.read_to(vm_id, "/home/user/big.bin", dest)
    assert size == 100 * MiB
    assert sha256_of(dest) == sha256_of(src)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_upload_cut_at_60_percent_resumes(
    arker_server: Any, arker_client: Arker, vm_id: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100 * MiB))  # the check: a 100 MiB upload
    plan = FaultPlan(
        rate=0.0,
        cut_fraction=0.6,
        applies=lambda method, path: method == "PUT" and "/presigned/" in path,
    )
    plan.force("reset_mid_upload")
    with FaultProxy(arker_server.base_url, plan) as proxy:
        client = Arker(
            arker_server.api_key,
            base_url=proxy.url,
            control_url=proxy.url,
            sleep=lambda s: None,
        )
        client.sync.write(vm_id, "/home/user/resumed.bin", src)
        client.close()
    assert plan.injected["reset_mid_upload"] == 1
    # The second PUT carried only what the first did not deliver.
    assert proxy.bytes_up < 1.5 * src.stat().st_size
    back = tmp_path / "back.bin"
    arker_client.sync.read_to(vm_id, "/home/user/resumed.bin", back)
    assert sha256_of(back) == sha256_of(src)


def test_corrupt_chunk_refused_and_old_file_intact(
    arker_server: Any, arker_client: Arker, vm_id: str
) -> None:
    arker_client.sync.write(vm_id, "/home/user/keep.txt", b"original")
    bad = {
        "op": "write",
        "writes": [
            {
                "path": "/home/user/keep.txt",
                "size": 8,
                "upload_id": "corrupt-1",
                "start": 0,
                "end": 8,
                "content": base64.b64encode(b"tampered").decode(),
                "sha256": hashlib.sha256(b"original").hexdigest(),
            }
        ],
    }
    response = requests.post(
        f"{arker_server.base_url}/api/v1/vms/{vm_id}/sync",
        json=bad,
        headers={"Authorization": f"Bearer {arker_server.api_key}"},
        timeout=30,
    )
    result = response.json()["results"][0]
    assert result["error"]["code"] == "bad_request"
    assert "sha256" in result["error"]["message"]
    assert arker_client.sync.read(vm_id, "/home/user/keep.txt") == b"original"


def test_push_dir_sends_only_changes(arker_client: Arker, vm_id: str, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(2000):
        f = root / f"d{i % 20}" / f"f{i}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"file {i}\n")
    (root / "d0" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "d0" / "run.sh").chmod(0o755)
    (root / "outside").symlink_to("/etc")
    first = arker_client.sync.push_dir(vm_id, root, "/home/user/tree")
    assert first.files_transferred == 2001 and first.files_skipped == 0
    assert first.symlinks_skipped == ["outside"]
    ran = arker_client.runs.create(vm_id, "/home/user/tree/d0/run.sh")
    assert ran.stdout == b"ran\n"

    for i in (5, 500, 1999):
        (root / f"d{i % 20}" / f"f{i}.txt").write_text(f"changed {i}\n")
    second = arker_client.sync.push_dir(vm_id, root, "/home/user/tree")
    assert sorted(second.transferred) == sorted(["d5/f5.txt", "d0/f500.txt", "d19/f1999.txt"])
    assert second.files_skipped == 1998
    assert arker_client.sync.read(vm_id, "/home/user/tree/d0/f500.txt") == b"changed 500\n"

    (root / "d1" / "f1.txt").unlink()
    third = arker_client.sync.push_dir(vm_id, root, "/home/user/tree", delete=True)
    assert third.deleted == ["d1/f1.txt"] and third.files_transferred == 0

    out = tmp_path / "pulled"
    pulled = arker_client.sync.pull_dir(vm_id, "/home/user/tree", out)
    assert pulled.files_transferred == 2000
    assert (out / "d0" / "run.sh").stat().st_mode & 0o777 == 0o755
    again = arker_client.sync.pull_dir(vm_id, "/home/user/tree", out)
    assert again.files_transferred == 0 and again.files_skipped == 2000


def test_pull_dir_never_writes_through_a_local_symlink(
    arker_client: Arker, vm_id: str, tmp_path: Path
) -> None:
    arker_client.sync.write(vm_id, "/home/user/t/sub/x.txt", b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(BadRequestError):
        arker_client.sync.pull_dir(vm_id, "/home/user/t", dest)
    assert list(outside.iterdir()) == []
