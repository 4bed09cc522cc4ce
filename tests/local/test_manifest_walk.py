"""The host-side manifest walk (`arker.local.sandbox.manifest`) on a plain directory tree
standing in for a VM's merged root: no link is followed, modes are permission bits,
work is capped, and every entry path is built from the requested directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import manifest


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    home = tmp_path / "vm" / "home" / "user"
    home.mkdir(parents=True)
    fd = os.open(tmp_path / "vm", os.O_PATH | os.O_DIRECTORY)
    yield fd, home
    os.close(fd)


def test_lists_regular_files_with_their_real_digest_and_permission_bits(
    root: tuple[int, Path],
) -> None:
    fd, home = root
    (home / "proj" / "sub").mkdir(parents=True)
    (home / "proj" / "a.txt").write_bytes(b"abc")
    (home / "proj" / "sub" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(home / "proj" / "sub" / "tool", 0o4755)
    entries, truncated = manifest.walk(fd, "/home/user/proj", 100)
    assert not truncated
    assert entries == [
        ("/home/user/proj/a.txt", 3, 0o644 & ~_umask(), hashlib.sha256(b"abc").hexdigest()),
        (
            "/home/user/proj/sub/tool",
            10,
            0o755,
            hashlib.sha256(b"#!/bin/sh\n").hexdigest(),
        ),
    ]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_never_follows_a_link_anywhere(root: tuple[int, Path], tmp_path: Path) -> None:
    fd, home = root
    secret = tmp_path / "host-secret"
    secret.write_text("host")
    (home / "etc").mkdir()
    (home / "etc" / "shadow").write_text("vm")
    (home / "file-link").symlink_to(secret)
    (home / "dir-link").symlink_to(tmp_path)
    (home / "rel-link").symlink_to("../../../../..")
    (home / "linked-root").symlink_to("/home/user/etc")
    os.mkfifo(home / "fifo")
    entries, _ = manifest.walk(fd, "/home/user", 100)
    assert [e[0] for e in entries] == ["/home/user/etc/shadow"]
    # A requested path that is (or passes through) a link lists nothing.
    assert manifest.walk(fd, "/home/user/linked-root", 100) == ([], False)
    assert manifest.walk(fd, "/home/user/dir-link/host-secret", 100) == ([], False)
    assert manifest.walk(fd, "/home/user/missing", 100) == ([], False)


def test_a_single_file_lists_itself(root: tuple[int, Path]) -> None:
    fd, home = root
    (home / "one").write_bytes(b"1")
    entries, _ = manifest.walk(fd, "/home/user/one", 100)
    assert [e[0] for e in entries] == ["/home/user/one"]


def test_names_the_sync_rules_refuse_are_left_out(root: tuple[int, Path]) -> None:
    fd, home = root
    os.close(os.open(bytes(home) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o644))
    (home / "good").write_bytes(b"")
    entries, _ = manifest.walk(fd, "/home/user", 100)
    assert [e[0] for e in entries] == ["/home/user/good"]


def test_the_file_cap_truncates(root: tuple[int, Path]) -> None:
    fd, home = root
    for i in range(5):
        (home / f"f{i}").write_bytes(b"")
    entries, truncated = manifest.walk(fd, "/home/user", 3)
    assert truncated and len(entries) == 3
    assert manifest.walk(fd, "/home/user", 5)[1] is False


def test_the_walk_cap_bounds_work_on_a_tree_of_empty_directories(
    root: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, home = root
    monkeypatch.setattr(manifest, "WALK_CAP", 50)
    for i in range(60):
        (home / f"d{i}").mkdir()
    assert manifest.walk(fd, "/home/user", 100) == ([], True)


def test_a_deep_tree_holds_one_directory_handle_at_a_time(root: tuple[int, Path]) -> None:
    fd, home = root
    deep = home
    for _ in range(200):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    entries, _ = manifest.walk(fd, "/home/user", 100)
    assert len(entries) == 1 and entries[0][0].endswith("/d/leaf")
    assert len(os.listdir("/proc/self/fd")) == before
