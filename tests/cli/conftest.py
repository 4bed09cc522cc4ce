"""Fixtures of the command-line tests: the server the real ``arker`` command talks to,
and a VM made for each test.

``ARKER_CLI_E2E_EXPORTS`` names a file holding an ``arker serve``'s exports (what it
prints at start): the tests then drive that server instead of starting one (to run
them against a server built elsewhere).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker import Arker, NotFoundError
from arker._ids import new_ulid
from tests.cli.kit import Target


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    exports = os.environ.get("ARKER_CLI_E2E_EXPORTS")
    if exports:
        values = {}
        for line in Path(exports).read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            values[name.strip()] = value.strip()
        return Target(
            values["ARKER_BASE_URL"], values["ARKER_CONTROL_URL"], values["ARKER_API_KEY"]
        )
    server = request.getfixturevalue("arker_server")
    return Target(server.base_url, server.control_url, server.api_key)


@pytest.fixture
def sdk(target: Target) -> Iterator[Arker]:
    client = Arker(target.api_key, base_url=target.base_url, control_url=target.control_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def vm(sdk: Arker) -> Iterator[tuple[str, str]]:
    """A fresh VM: (its id, its unique name)."""
    name = f"cli-{new_ulid().lower()}"
    made = sdk.vms.fork("arkuntu", name=name)
    yield made.vm_id, name
    with contextlib.suppress(NotFoundError):  # the test may have deleted it
        sdk.vms.delete(made.vm_id)


@pytest.fixture(scope="session")
def live_runs(target: Target) -> bool:
    """Whether the server offers live runs (`arker serve` gains them on another branch)."""
    with Arker(target.api_key, base_url=target.base_url, control_url=target.control_url) as c:
        made = c.vms.fork("arkuntu")
        try:
            c.runs.start(made.vm_id, "true").wait()
        except NotFoundError as exc:
            if exc.message.strip().lower() != "not found":
                raise
            return False
        finally:
            c.vms.delete(made.vm_id)
    return True
