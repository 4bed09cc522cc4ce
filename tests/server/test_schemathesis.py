"""Property-based fuzzing of a real `arker serve` from its own OpenAPI document.

Schemathesis reads ``/openapi.json`` from the live server (loopback) and, for every
operation, sends generated requests (valid and invalid bodies, query strings, path
parameters and headers) with the server's API key. Every answer must be no 5xx,
declared for that operation, and match the declared schema (the success model or
the wire's error envelope).

Bounded and deterministic: few examples per operation, derandomized generation.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from arker.testing import ArkerServer  # noqa: E402

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="session")
def openapi_schema(arker_server: ArkerServer) -> Any:
    return schemathesis.openapi.from_url(f"{arker_server.base_url}/openapi.json")


def _fuzz(operation: Any, arker_server: ArkerServer) -> None:
    """Send `MAX_EXAMPLES` generated requests to one operation and validate each answer."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            base_url=arker_server.base_url,
            headers={"Authorization": f"Bearer {arker_server.api_key}"},
            checks=CHECKS,
            timeout=60,
        )

    fuzz()


def test_openapi_operations(openapi_schema: Any, arker_server: ArkerServer) -> None:
    """Every operation of the live document, fuzzed; failures of all operations reported.

    The operations are enumerated here rather than by schemathesis' pytest plugin
    (``schemathesis.pytest.from_fixture``): that plugin renames pytest's private
    ``Function._nodeid`` and breaks on pytest 9.2, while this uses only schemathesis'
    public Python API and hypothesis.
    """
    failures: list[str] = []
    operations = [result.ok() for result in openapi_schema.get_all_operations()]
    assert len(operations) >= 10, [f"{op.method} {op.path}" for op in operations]
    for operation in operations:
        try:
            _fuzz(operation, arker_server)
        except Exception as exc:  # one operation's failure must not hide the others'
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_openapi_document_is_served_but_not_the_docs_ui(arker_server: ArkerServer) -> None:
    import requests

    doc = requests.get(f"{arker_server.base_url}/openapi.json", timeout=30)
    assert doc.status_code == 200
    paths = doc.json()["paths"]
    run = paths["/api/v1/vms/{vm_id}/run"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "500"} <= set(run)
    assert "422" not in run
    assert run["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
    for ui in ("/docs", "/redoc"):
        assert requests.get(f"{arker_server.base_url}{ui}", timeout=30).status_code == 404
