"""Names across organisations: base image names are reserved, and a name one org
publishes later never shadows the VM another org published first under it."""

from __future__ import annotations

import pytest

from arker.testing import ArkerServer
from tests.kit.server import Api, expect

pytestmark = pytest.mark.usefixtures("no_unhandled_errors")


@pytest.fixture(scope="module")
def vendor_key(arker_server: ArkerServer) -> str:
    return arker_server.create_key("vendor-org")


@pytest.fixture(scope="module")
def attacker_key(arker_server: ArkerServer) -> str:
    return arker_server.create_key("attacker-org")


def _publish(api: Api, name: str, marker: str) -> str:
    """A public VM called ``name`` whose /home/user/marker holds ``marker``."""
    draft = api.fork()["vm_id"]
    api.run(draft, f"echo {marker} > /home/user/marker")
    r = api.post(f"/api/v1/vms/{draft}/fork", json={"name": name, "is_public": True})
    assert r.status_code == 200, r.text
    vm_id: str = r.json()["vm_id"]
    return vm_id


def _marker_of_fork_by_name(api: Api, **body: object) -> str:
    r = api.post("/api/v1/vms/fork", json=body)
    assert r.status_code == 200, r.text
    out = api.run(r.json()["vm_id"], "cat /home/user/marker 2>/dev/null || echo none")
    return str(out["stdout"]).strip()


@pytest.mark.parametrize("name", ["arkuntu", "ARKUNTU", " Arkuntu"])
def test_no_org_can_give_a_vm_a_base_image_name(
    arker_server: ArkerServer, attacker_key: str, name: str
) -> None:
    attacker = Api(arker_server, attacker_key)
    draft = attacker.fork()["vm_id"]
    for public in (True, False):
        r = attacker.post(f"/api/v1/vms/{draft}/fork", json={"name": name, "is_public": public})
        expect(r, 409, "conflict", name)
        r = attacker.post("/api/v1/vms/fork", json={"from": "arkuntu", "name": name})
        expect(r, 409, "conflict", name)


def test_fork_by_base_image_name_is_the_base_image_whatever_another_org_tries(
    arker_server: ArkerServer, api: Api, attacker_key: str
) -> None:
    attacker = Api(arker_server, attacker_key)
    draft = attacker.fork()["vm_id"]
    attacker.run(draft, "echo pwned > /home/user/marker")
    attacker.post(f"/api/v1/vms/{draft}/fork", json={"name": "arkuntu", "is_public": True})
    assert _marker_of_fork_by_name(api, **{"from": "arkuntu"}) == "none"


def test_a_later_publisher_never_shadows_the_earliest_public_name(
    arker_server: ArkerServer, api: Api, vendor_key: str, attacker_key: str
) -> None:
    vendor = Api(arker_server, vendor_key)
    attacker = Api(arker_server, attacker_key)
    _publish(vendor, "vendor-tool", "vendor")
    _publish(attacker, "vendor-tool", "evil")
    assert _marker_of_fork_by_name(api, **{"from": "vendor-tool"}) == "vendor"
    # The vendor's newer version of its own name is what callers get.
    _publish(vendor, "vendor-tool", "vendor-v2")
    assert _marker_of_fork_by_name(api, **{"from": "vendor-tool"}) == "vendor-v2"


def test_a_pinned_publisher_gets_that_orgs_public_vm(
    arker_server: ArkerServer, api: Api, vendor_key: str, attacker_key: str
) -> None:
    _publish(Api(arker_server, vendor_key), "pinned-tool", "vendor")
    _publish(Api(arker_server, attacker_key), "pinned-tool", "other")
    body = {"from": "pinned-tool", "source_org_name": "attacker-org"}
    assert _marker_of_fork_by_name(api, **body) == "other"
    body = {"from": "pinned-tool", "source_org_name": "vendor-org"}
    assert _marker_of_fork_by_name(api, **body) == "vendor"
    for pin in ({"source_org_name": "no-such-org"}, {"source_org_id": "org_nope"}):
        r = api.post("/api/v1/vms/fork", json={"from": "pinned-tool", **pin})
        expect(r, 404, "not_found", pin)


def test_a_pin_never_reaches_another_orgs_private_vm(
    arker_server: ArkerServer, api: Api, vendor_key: str
) -> None:
    vendor = Api(arker_server, vendor_key)
    vendor.fork(name="vendor-secret", is_public=False)
    r = api.post(
        "/api/v1/vms/fork", json={"from": "vendor-secret", "source_org_name": "vendor-org"}
    )
    expect(r, 404, "not_found")


def test_the_callers_own_name_comes_before_any_public_one(
    arker_server: ArkerServer, api: Api, vendor_key: str
) -> None:
    _publish(Api(arker_server, vendor_key), "mine-first", "vendor")
    _publish(api, "mine-first", "own")
    assert _marker_of_fork_by_name(api, **{"from": "mine-first"}) == "own"
