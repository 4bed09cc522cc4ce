"""The original 0.1.0 client, as published on the package index, runs its smoke demo
against `arker serve`.

The test installs ``arker==0.1.0`` into a cached virtual environment of its own
(`tests.kit.published_client`) and runs ``reference_smoke.py`` with that environment's
interpreter, so the published client is exercised exactly as a 0.1.0 user has it: its own ``arker``
package, none of this repository's code. It skips only when no package index can be
reached (an offline machine); any other install failure fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from arker.testing import ArkerServer
from tests.kit.published_client import published_python

pytestmark = pytest.mark.e2e

REFERENCE = "arker==0.1.0"
SMOKE = Path(__file__).with_name("reference_smoke.py")


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """The interpreter of a (cached) virtualenv holding the published 0.1.0 client."""
    return published_python(REFERENCE)


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
