"""Uploads staged inside VMs (sandbox/staging.py, uploads.py) on a real engine."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from arker._ids import new_ulid
from arker._wire import ChunkEntry
from arker.local.sandbox import Engine, SandboxError
from arker.local.store import Store
from arker.local.uploads import Uploads, staging_name

MiB = 1024 * 1024
BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"  # tests/local/conftest.py makes it


def _staged_on_host(data_dir: Path) -> set[Path]:
    return set(data_dir.glob("engine/**/.arker-uploads/*"))


def _chunk(path: str, data: bytes, start: int, end: int, upload_id: str) -> ChunkEntry:
    return ChunkEntry(
        path=path,
        size=len(data),
        upload_id=upload_id,
        start=start,
        end=end,
        content=base64.b64encode(data[start:end]).decode(),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_half_sent_upload_is_staged_then_removed_when_it_expires(
    engine: Engine, sandbox_data_dir: Path, tmp_path: Path
) -> None:
    engine.fork(BASE_VM, "vm1")
    uploads = Uploads(Store(tmp_path / "arker.db"), engine)
    data = bytes(range(256)) * 4096  # 1 MiB
    upload_id = new_ulid()
    half = uploads.chunk("vm1", _chunk("/home/user/f", data, 0, len(data) // 2, upload_id))
    assert half.complete is False and half.received_bytes == len(data) // 2
    (staged,) = _staged_on_host(sandbox_data_dir)
    assert staged.read_bytes() == data[: len(data) // 2]
    assert staged.stat().st_uid == 0 and (staged.stat().st_mode & 0o777) == 0o600
    uploads.cleanup(max_age_s=-60)  # everything counts as expired
    assert _staged_on_host(sandbox_data_dir) == set()
    # The row went too: the rest of the upload now starts a new one, from nothing.
    rest = uploads.chunk("vm1", _chunk("/home/user/f", data, len(data) // 2, len(data), upload_id))
    assert rest.complete is False and rest.received_bytes == len(data) // 2


def test_a_fork_never_sees_writes_made_after_it(engine: Engine) -> None:
    engine.fork(BASE_VM, "parent")
    name = staging_name("parent", new_ulid())
    first, second = b"a" * MiB, b"b" * MiB
    with engine.staged_file("parent", name) as staged:
        staged.pwrite([first], 0)
        engine.fork("parent", "child")  # freezes the layer holding the first block
        staged.pwrite([second], MiB)  # must reopen through the new mount, not write on
        staged.fsync()
    with engine.staged_file("parent", name) as staged:
        assert b"".join(staged.read_blocks(4 * MiB)) == first + second
    # The child shares the frozen layer: it holds the file as it was at the fork.
    with engine.staged_file("child", name) as staged:
        assert b"".join(staged.read_blocks(4 * MiB)) == first
    engine.commit_staged("parent", name, "/home/user/both.bin", 2 * MiB, 0o600)
    out = engine.run("parent", "stat -c '%u %a %s' /home/user/both.bin", session="s", timeout=30)
    assert out.stdout.split() == [b"1000", b"600", str(2 * MiB).encode()]
    child = engine.run("child", "test -e /home/user/both.bin; echo $?", session="s", timeout=30)
    assert child.stdout == b"1\n"


def test_committing_a_staged_file_short_of_its_size_is_refused_and_writes_nothing(
    engine: Engine, sandbox_data_dir: Path
) -> None:
    engine.fork(BASE_VM, "short")
    name = staging_name("short", new_ulid())
    with engine.staged_file("short", name) as staged:
        staged.pwrite([b"12345"], 0)
        staged.fsync()
    with pytest.raises(SandboxError) as err:
        engine.commit_staged("short", name, "/home/user/f", 10)
    assert err.value.code == "bad_request" and "10 were announced" in err.value.message
    out = engine.run("short", "test -e /home/user/f; echo $?", session="s", timeout=30)
    assert out.stdout == b"1\n"
    engine.discard_staged("short", name)
    assert _staged_on_host(sandbox_data_dir) == set()
