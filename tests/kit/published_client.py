"""A published ``arker`` client in a virtual environment of its own, for e2e tests.

Published clients share this repository's import name (``arker``), so tests run them
with that environment's interpreter in a subprocess (cwd outside the repository). The
environment is cached under the user's cache directory per requirement: later test
sessions reuse it. Without a reachable package index the test skips with that reason;
any other install failure fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

INSTALL_TIMEOUT_S = 300

# pip's words when it could not reach an index at all (as opposed to a bad requirement).
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|Could not fetch URL|ProxyError|ConnectTimeout"
)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arker-tests" / "venvs"


def _ready(python: Path, requirement: str) -> bool:
    version = requirement.partition("==")[2]
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import arker, importlib.metadata as m; print(m.version('arker'))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=python.parent,
    )
    return probe.returncode == 0 and (not version or probe.stdout.strip() == version)


def published_python(requirement: str) -> Path:
    """The interpreter of a (cached) virtualenv holding ``requirement``, e.g. ``arker==1.3.0``.

    Calls `pytest.skip` when no package index can be reached.
    """
    env_dir = _cache_root() / re.sub(r"[^A-Za-z0-9.=_-]", "_", requirement)
    python = env_dir / "bin" / "python"
    if _ready(python, requirement):
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    venv.create(env_dir, with_pip=False, clear=True)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", requirement],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if install.returncode != 0:
        shutil.rmtree(env_dir, ignore_errors=True)
        output = install.stdout + install.stderr
        if _OFFLINE.search(output):
            pytest.skip(f"no package index reachable to install {requirement}: {output[-300:]}")
        pytest.fail(f"pip install {requirement} failed:\n{output[-2000:]}")
    return python
