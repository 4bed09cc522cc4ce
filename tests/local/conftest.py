"""Fixtures for the sandbox engine tests (real bwrap sandboxes; need root)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


def _sandbox_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "sandbox engine tests need root"
    if shutil.which("bwrap") is None and not os.path.exists("/usr/bin/bwrap"):
        return "bwrap not installed (apt-get install -y bubblewrap)"
    return None


@pytest.fixture
def sandbox_data_dir(tmp_path: Path) -> Path:
    """A fresh engine data dir."""
    reason = _sandbox_skip_reason()
    if reason:
        pytest.skip(reason)
    return tmp_path / "data"


@pytest.fixture
def sandbox_limits() -> Limits:
    """Small limits so cap/bomb tests are quick."""
    return Limits(max_output_bytes=64 * 1024, pids_max=128, memory_max_bytes=512 << 20)


@pytest.fixture
def engine(sandbox_data_dir: Path, sandbox_limits: Limits) -> Iterator[Engine]:
    """An engine (host namespace mode, no network) with the base VM."""
    eng = Engine(sandbox_data_dir, network=False, limits=sandbox_limits)
    eng.ensure_base(BASE_VM)
    try:
        yield eng
    finally:
        eng.close()
