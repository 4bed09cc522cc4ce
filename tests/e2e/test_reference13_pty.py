"""The published ``arker==1.3.0`` client's `connect_pty` against `arker serve`.

Installed (with its ``pty`` extra, ``websocket-client``) into a throwaway virtual
environment and run in a subprocess: it has the same import name as this repository's
package. Skips only when no package index can be reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api

pytestmark = pytest.mark.e2e

REFERENCE = "arker[pty]==1.3.0"
SCRIPT = Path(__file__).with_name("reference13_pty.py")
INSTALL_TIMEOUT_S = 300
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|Could not fetch URL|ProxyError|ConnectTimeout"
)


@pytest.fixture(scope="session")
def reference13_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtualenv holding the published 1.3.0 client."""
    env_dir = tmp_path_factory.mktemp("arker-1.3.0-venv")
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


@pytest.fixture
def vm(arker_server: ArkerServer) -> Iterator[str]:
    api = Api(arker_server, arker_server.api_key)
    try:
        vm_id = str(api.fork()["vm_id"])
        yield vm_id
        api.delete(f"/api/v1/vms/{vm_id}")
    finally:
        api.close()


def test_published_1_3_0_client_opens_a_terminal_runs_a_command_and_resizes(
    reference13_python: Path, arker_server: ArkerServer, vm: str
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ARKER_BASE_URL": arker_server.base_url,
        "ARKER_API_KEY": arker_server.api_key,
        "VM_ID": vm,
    }
    done = subprocess.run(
        [str(reference13_python), str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=reference13_python.parent,  # never this repository: its `arker/` would shadow 1.3.0
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reference 1.3.0 pty: ok" in done.stdout, done.stdout
