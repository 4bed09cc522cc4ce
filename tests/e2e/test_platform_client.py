"""The official ``arker==1.3.0`` client, as published, works against `arker serve`.

The client is installed into a cached virtualenv of its own (`tests.kit.published_client`)
and ``platform_smoke.py`` runs with that interpreter: fork by name and by id, runs
(synchronous, background, awaited past the sync window, cancelled), sessions, file
writes in several chunks and presigned reads, ``sync_dir`` twice, fork isolation,
get/list/update/delete and the errors it decodes. Skips only without a package index.
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

PUBLISHED = "arker==1.3.0"
SMOKE = Path(__file__).with_name("platform_smoke.py")


@pytest.fixture(scope="session")
def platform_python() -> Path:
    return published_python(PUBLISHED)


def test_published_1_3_0_client_runs_its_whole_api_against_arker_serve(
    platform_python: Path, arker_server: ArkerServer
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ARKER_LOCAL_API": f"{arker_server.base_url}/api",
        "ARKER_API_KEY": arker_server.api_key,
    }
    done = subprocess.run(
        [str(platform_python), str(SMOKE)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=platform_python.parent,  # never this repository: its `arker/` must not shadow 1.3
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"platform 1\.3\.0 smoke: \d+ checks passed", done.stdout), done.stdout
