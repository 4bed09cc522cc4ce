"""Unit tests of layer flattening with overlay semantics (no sandbox needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from arker.local.sandbox.flatten import merge_layers

OPAQUE = "user.overlay.opaque"


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, 0)


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of whiteouts needs root")


def test_merge_semantics(tmp_path: Path, root_only: None) -> None:
    base, l1, l2, out = (tmp_path / n for n in ("base", "l1", "l2", "out"))
    for d in (base, l1, l2, out):
        d.mkdir()
    (base / "etc").mkdir()
    (base / "etc" / "keep").write_text("b")
    (base / "etc" / "gone").write_text("b")
    (base / "opq").mkdir()
    (base / "opq" / "hidden").write_text("b")
    # l1 (lower): a new dir, a file, a whiteout of a base file.
    (l1 / "etc").mkdir()
    whiteout(l1 / "etc" / "gone")
    (l1 / "solo").mkdir()
    (l1 / "solo" / "a").write_text("1")
    (l1 / "solo" / "b").write_text("2")
    (l1 / "f").write_text("old")
    # l2 (upper): whiteout inside a dir that exists only in the merged range,
    # an opaque dir replacing a base dir, a file overwritten.
    (l2 / "solo").mkdir()
    whiteout(l2 / "solo" / "a")
    (l2 / "opq").mkdir()
    os.setxattr(l2 / "opq", OPAQUE, b"y")
    (l2 / "opq" / "new").write_text("n")
    whiteout(l2 / "opq" / "whatever")
    (l2 / "f").write_text("new")
    merge_layers([l2, l1], base, out)
    assert sorted(os.listdir(out)) == ["etc", "f", "opq", "solo"]
    assert (out / "f").read_text() == "new"
    assert os.stat(out / "f").st_ino == os.stat(l2 / "f").st_ino  # hard link, no copy
    # The whiteout hiding a base file is kept; the one in a solo dir is dropped.
    assert stat.S_ISCHR(os.lstat(out / "etc" / "gone").st_mode)
    assert os.listdir(out / "solo") == ["b"]
    # Opaque dir keeps hiding the base and drops meaningless whiteouts.
    assert os.getxattr(out / "opq", OPAQUE) == b"y"
    assert os.listdir(out / "opq") == ["new"]
