"""Fixtures for raw-HTTP tests against a real `arker serve` (loopback only).

The ``arker_server`` fixture comes from the `arker.testing` plugin (registered by
``tests/conftest.py`` when the package is not installed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api


@pytest.fixture
def api(arker_server: ArkerServer) -> Iterator[Api]:
    """Raw HTTP client with the server's default key."""
    client = Api(arker_server, arker_server.api_key)
    yield client
    client.close()


@pytest.fixture
def anon(arker_server: ArkerServer) -> Iterator[Api]:
    """Raw HTTP client without any key."""
    client = Api(arker_server, None)
    yield client
    client.close()


@pytest.fixture(scope="session")
def other_key(arker_server: ArkerServer) -> str:
    """A key of a second org, made with ``arker serve keys create``."""
    return arker_server.create_key("other-org")


@pytest.fixture
def other(arker_server: ArkerServer, other_key: str) -> Iterator[Api]:
    """Raw HTTP client of the second org."""
    client = Api(arker_server, other_key)
    yield client
    client.close()


@pytest.fixture
def vm(api: Api) -> str:
    """A fresh VM forked from arkuntu, owned by the default org."""
    vm_id: str = api.fork(name="test-vm")["vm_id"]
    return vm_id


@pytest.fixture(scope="module")
def no_unhandled_errors(arker_server: ArkerServer) -> Iterator[None]:
    """No request of the module using this may reach the server's 500 handler."""
    log = arker_server.log_path
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists():
        with open(log, "rb") as f:
            f.seek(start)
            new = f.read().decode(errors="replace")
        assert "unhandled error" not in new, new[-4000:]
        assert "Traceback" not in new, new[-4000:]
