"""The original 0.1.0 client, as published on the package index, runs its smoke demo
against `arker serve`.

The test installs ``arker==0.1.0`` into a throwaway virtual environment (once per test
session) and runs ``reference_smoke.py`` with that environment's interpreter, so the
published client is exercised exactly as a 0.1.0 user has it: its own ``arker``
package, none of this repository's code. It skips only when no package index can be
reached (an offline machine); any other install failure fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from arker.testing import ArkerServer

pytestmark = pytest.mark.e2e

REFERENCE = "arker==0.1.0"
SMOKE = Path(__file__).with_name("reference_smoke.py")
INSTALL_TIMEOUT_S = 300

# pip's words when it could not reach an index at all (as opposed to a bad requirement).
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|Could not fetch URL|ProxyError|ConnectTimeout"
)


@pytest.fixture(scope="session")
def reference_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtualenv holding the published 0.1.0 client."""
    env_dir = tmp_path_factory.mktemp("arker-0.1.0-venv")
    venv.create(env_dir, with_pip=False, clear=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", REFERENCE],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if _OFFLINE.search(output):
            pytest.skip(f"no package index reachable to install {REFERENCE}: {output[-300:]}")
        pytest.fail(f"pip install {REFERENCE} failed:\n{output[-2000:]}")
    return python


def test_published_0_1_0_client_runs_its_smoke_demo(
    reference_python: Path, arker_server: ArkerServer
) -> None:
    """Every 0.1.0 method: list, vm, fork, run, write_file, read_file, error, child, delete."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ARKER_BASE_URL": arker_server.base_url,
        "ARKER_CONTROL_URL": arker_server.control_url,
        "ARKER_API_KEY": arker_server.api_key,
    }
    done = subprocess.run(
        [str(reference_python), str(SMOKE)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=reference_python.parent,  # never this repository: its `arker/` must not shadow 0.1.0
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"reference 0\.1\.0 smoke: \d+ checks passed", done.stdout), done.stdout
