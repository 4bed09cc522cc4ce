"""The debian image is debootstrapped once per machine and then linked into each data dir.

A stand-in ``debootstrap`` on ``PATH`` records its calls and writes a tiny rootfs, so
these tests need no network; the real build is covered by ``tests/e2e/test_bases.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from arker.local.sandbox.baseimage import (
    DEBIAN_PACKAGES,
    build_debian_rootfs,
    missing_packages,
    recipe_stamp,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns the VM home: needs root")

SANDBOX_UID = 60999

_FAKE_DEBOOTSTRAP = """#!/bin/sh
echo "$@" >> {calls}
eval target=\\${{$(($# - 1))}}
mkdir -p "$target/debootstrap"
[ -n "$FAIL" ] && {{ echo "E: Failed getting release file" >&2; exit 1; }}
mkdir -p "$target/etc" "$target/usr/bin" "$target/var/lib/dpkg" "$target/var/cache/apt/archives"
echo "root:x:0:0:root:/root:/bin/sh" > "$target/etc/passwd"
echo "root:x:0:" > "$target/etc/group"
echo "#!/bin/sh" > "$target/usr/bin/tool"
touch "$target/var/cache/apt/archives/big.deb"
for p in {packages}; do
  printf 'Package: %s\\nStatus: install ok installed\\nVersion: 1.0\\n\\n' "$p"
done > "$target/var/lib/dpkg/status"
"""


@pytest.fixture()
def debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in on PATH; returns the file its calls are appended to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    exe = bindir / "debootstrap"
    exe.write_text(_FAKE_DEBOOTSTRAP.format(calls=calls, packages=" ".join(DEBIAN_PACKAGES)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_second_build_reuses_the_cached_image_by_links(debootstrap: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "debian", tmp_path / "b" / "debian"
    assert build_debian_rootfs(first, sandbox_uid=SANDBOX_UID, cache_dir=cache) is True
    assert build_debian_rootfs(second, sandbox_uid=SANDBOX_UID, cache_dir=cache) is False

    calls = debootstrap.read_text().splitlines()
    assert len(calls) == 1
    assert f"--include={','.join(DEBIAN_PACKAGES)}" in calls[0].split()
    tool = "usr/bin/tool"
    assert (first / tool).stat().st_ino == (second / tool).stat().st_ino
    for root in (first, second):
        assert (root / "home/user").stat().st_uid == SANDBOX_UID
        assert (root / "var/lib/arker/sessions").stat().st_mode & 0o777 == 0o700
        assert "user:x:1000:1000:user:/home/user:/bin/sh" in (root / "etc/passwd").read_text()
        assert list((root / "var/cache/apt/archives").iterdir()) == [
            root / "var/cache/apt/archives/partial"
        ]
        assert missing_packages(root) == []
        stamp = json.loads(recipe_stamp(root).read_text())
        assert stamp["packages"] == list(DEBIAN_PACKAGES)
        assert stamp["installed"]["nodejs"] == "1.0"
    assert not list(cache.glob("*.tmp")) and not list(tmp_path.glob("*/debian.tmp"))


def test_a_failed_debootstrap_caches_nothing(
    debootstrap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "a" / "debian"
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(RuntimeError, match="debootstrap failed: E: Failed getting release file"):
        build_debian_rootfs(dest, sandbox_uid=SANDBOX_UID, cache_dir=cache)
    assert not dest.exists() and [p.suffix for p in cache.iterdir()] == [".lock"]
    monkeypatch.delenv("FAIL")
    assert build_debian_rootfs(dest, sandbox_uid=SANDBOX_UID, cache_dir=cache) is True


def test_an_image_without_node_is_reported_as_missing_it(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: python3\nStatus: install ok installed\nVersion: 3.11\n\n"
        "Package: nodejs\nStatus: deinstall ok config-files\nVersion: 18\n"
    )
    assert missing_packages(tmp_path) == [p for p in DEBIAN_PACKAGES if p != "python3"]
    assert missing_packages(tmp_path / "nowhere") == list(DEBIAN_PACKAGES)
