"""Shared fixtures for the SDK unit and compatibility tests.

* ``client``: an `Arker` pointed at fake base/control hosts, with a recording fake
  ``sleep`` (``sleeps``) so retries never wait;
* ``rsps``: a `responses.RequestsMock` for the wire layer (unmatched requests fail);
* ``loopback``: a real HTTP/1.1 keep-alive server on 127.0.0.1 (port 0) for the tests
  where real sockets matter (timeouts, connection reuse, resets): `tests.kit.loopback`.

The server and e2e suites get ``arker_server`` and ``arker_client`` from the
`arker.testing` plugin, registered here when the package is not installed (its pytest11
entry point is then absent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from arker import Arker
from tests.kit.loopback import LoopbackServer

API_KEY = "sk-SECRET-123"
BASE = "http://base.arker.test"
CONTROL = "http://control.arker.test"


def pytest_configure(config: pytest.Config) -> None:
    pm = config.pluginmanager
    if not (pm.has_plugin("arker") or pm.has_plugin("arker.testing")):
        pm.import_plugin("arker.testing")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real Arker settings."""
    for name in ("ARKER_API_KEY", "ARKER_BASE_URL", "ARKER_CONTROL_URL", "ARKER_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api_key() -> str:
    """The key every test client uses; it must never show up in logs or errors."""
    return API_KEY


@pytest.fixture
def sleeps() -> list[float]:
    """Every duration the client asked to sleep for, in order."""
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Iterator[Callable[..., Arker]]:
    """Build clients on the fake hosts with the recording sleep; closes them afterwards."""
    made: list[Arker] = []

    def make(**kwargs: Any) -> Arker:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", BASE)
        kwargs.setdefault("control_url", CONTROL)
        kwargs.setdefault("sleep", sleeps.append)
        c = Arker(**kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., Arker]) -> Arker:
    return make_client()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()
