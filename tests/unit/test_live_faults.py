"""Live runs through the fault proxy: starts and long polls suffer resets, gateway
errors, throttling and answers cut after the server acted. Every start makes exactly
one run (one ``Idempotency-Key`` per call, reused on its retries), and every stream
yields each byte once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from tests.kit.faultproxy import ALL_FAULTS, CUT_FAULTS, FaultPlan, FaultProxy
from tests.kit.loopback import LoopbackServer, send_json
from tests.unit.live_fakes import VM, FakeRun

WRITES = [("stdout", b"line %d\n" % i) for i in range(6)] + [("stderr", b"\xffend\n")]


@dataclass
class _Request:
    url: str


class LiveUpstream:
    """Starts one `FakeRun` per Idempotency-Key and serves its output route."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, str] = {}
        self.runs: dict[str, FakeRun] = {}

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        if h.command == "POST" and path.endswith("/runs"):
            key = h.headers["Idempotency-Key"]
            with self.lock:
                if key not in self.by_key:
                    run_id = f"run{len(self.runs) + 1}"
                    self.by_key[key] = run_id
                    self.runs[run_id] = FakeRun(list(WRITES))
                run_id = self.by_key[key]
            send_json(h, 202, {"run_id": run_id, "state": "running"})
            return
        if path.endswith("/output"):
            run = self.runs[path.split("/")[-2]]
            with self.lock:
                status, _, body = run.output(_Request("http://upstream" + h.path))  # type: ignore[arg-type]
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body.encode())
            return
        send_json(h, 404, {"ok": False, "error": {"code": "not_found", "message": path}})


@pytest.fixture
def upstream() -> Iterator[tuple[LoopbackServer, LiveUpstream]]:
    server = LoopbackServer()
    live = LiveUpstream()
    server.behaviour = live
    yield server, live
    server.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_starts_and_streams_through_faults_make_one_run_each_and_lose_no_byte(
    upstream, make_client, seed
) -> None:
    server, live = upstream
    faults = [f for f in (*ALL_FAULTS, *CUT_FAULTS) if f != "delay"]
    plan = FaultPlan(seed=seed, rate=0.35, faults=faults)
    plan.force("reset_after_send", "cut_mid_body")  # the first start acted on, twice
    with FaultProxy(server.url, plan) as proxy:
        client = make_client(base_url=proxy.url, control_url=proxy.url, max_retries=10)
        handles = [client.runs.start(VM, f"job {n}") for n in range(4)]
        outputs = []
        for handle in handles:
            got = {"stdout": b"", "stderr": b""}
            for chunk in handle.stream():
                got[chunk.stream] += chunk.data
            outputs.append(got)
    assert plan.log[0][:2] == ("POST", f"/api/v1/vms/{VM}/runs")
    assert len(live.runs) == 4  # one run per start, whatever the faults
    assert sorted(h.run_id for h in handles) == sorted(live.runs)
    expected = {s: b"".join(d for t, d in WRITES if t == s) for s in ("stdout", "stderr")}
    assert outputs == [expected] * 4
