"""One organisation's live runs are bounded by its share; another's still start.

Against a real `arker serve` in raw HTTP: the 0.1.0 route's shares (`run_slots`) do
not see live runs, so `…/runs` has a per-organisation bound of its own.
"""

from __future__ import annotations

import pytest

from arker.local.live_runs import LiveLimits
from arker.testing import ArkerServer
from tests.kit.server import Api

pytestmark = pytest.mark.e2e


def test_an_organisations_live_runs_past_its_share_are_refused_and_others_still_start(
    arker_server: ArkerServer,
) -> None:
    greedy = Api(arker_server, arker_server.api_key)
    other = Api(arker_server, arker_server.create_key("org_bystander"))
    limits = LiveLimits()
    per_vm = limits.runs_per_vm
    vms = [str(greedy.fork()["vm_id"]) for _ in range(limits.runs_per_org // per_vm + 1)]
    bystander_vm = str(other.fork()["vm_id"])
    try:
        for n in range(limits.runs_per_org):
            vm, session = vms[n // per_vm], f"s{n % per_vm}"
            r = greedy.post(
                f"/api/v1/vms/{vm}/runs",
                json={"command": "sleep 600", "session_id": session, "time_to_background": 0},
            )
            assert r.status_code == 202, r.text
        r = greedy.post(
            f"/api/v1/vms/{vms[-1]}/runs",
            json={"command": "echo one too many", "session_id": "extra", "time_to_background": 0},
        )
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "quota_exceeded"
        assert r.headers["Retry-After"].isdigit()
        r = other.post(
            f"/api/v1/vms/{bystander_vm}/runs",
            json={"command": "echo fine", "time_to_background": 30},
        )
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "fine\n"
    finally:
        for vm in vms:
            greedy.delete(f"/api/v1/vms/{vm}")
        other.delete(f"/api/v1/vms/{bystander_vm}")
        greedy.close()
        other.close()
