"""A fake live run for the wire tests: its output grows one write per request, and it
answers ``GET …/runs/{id}/output`` (the extension) and ``GET …/runs/{id}`` from the
same bytes, so a follower's chunks can be checked against what the command wrote."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import requests
import responses

VM = "01HZZZZZZZZZZZZZZZZZZZZZZZ_abc1"
RUN = "run_01J0000000000000000000000"


def runs_url(client, suffix: str = "") -> str:
    return f"{client.base_url}/api/v1/vms/{VM}/runs{suffix}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class FakeRun:
    """``writes``: (stream, bytes) the command writes, one more per request; it ends
    ``final_state`` once all are written. ``faults``: request numbers (1-based, per
    route) answered with a dropped connection instead."""

    writes: list[tuple[str, bytes]]
    final_state: str = "completed"
    exit_code: int | None = 0
    fail_reason: str | None = None
    limit: int = 1 << 20
    faults: set[int] = field(default_factory=set)
    output_requests: list[dict[str, str]] = field(default_factory=list)
    run_requests: int = 0
    written: int = 0

    def _advance(self) -> None:
        if self.written < len(self.writes):
            self.written += 1

    def data(self, stream: str) -> bytes:
        return b"".join(d for s, d in self.writes[: self.written] if s == stream)

    @property
    def state(self) -> str:
        return self.final_state if self.written == len(self.writes) else "running"

    def output(self, request: requests.PreparedRequest):
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        self.output_requests.append(query)
        if len(self.output_requests) in self.faults:
            raise requests.ConnectionError("Connection reset by peer")
        self._advance()
        answer: dict = {"run_id": RUN, "state": self.state, "exit_code": None}
        done = self.state != "running"
        for stream in ("stdout", "stderr"):
            offset = int(query[f"{stream}_offset"])
            data = self.data(stream)
            if offset > len(data):
                return (400, {}, json.dumps({"ok": False, "error": {"code": "bad_request"}}))
            part = data[offset : offset + self.limit]
            answer[stream] = {
                "offset": offset,
                "data": b64(part),
                "next_offset": offset + len(part),
                "truncated": False,
            }
            done = done and offset + len(part) == len(data)
        if self.state != "running":
            answer.update(exit_code=self.exit_code, fail_reason=self.fail_reason)
        answer["done"] = done
        return (200, {}, json.dumps(answer))

    def run(self, request: requests.PreparedRequest):
        self.run_requests += 1
        if self.run_requests in self.faults:
            raise requests.ConnectionError("Connection reset by peer")
        self._advance()
        return (200, {}, json.dumps(self.run_json()))

    def run_json(self) -> dict:
        ended = self.state != "running"
        return {
            "run_id": RUN,
            "session_id": "default",
            "command": "make",
            "state": self.state,
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:00:02Z" if ended else None,
            "exit_code": self.exit_code if ended else None,
            "fail_reason": self.fail_reason if ended else None,
            "stdout": b64(self.data("stdout")),
            "stdout_encoding": "base64",
            "stderr": self.data("stderr").decode(),
            "stderr_encoding": "utf-8",
        }

    def serve(self, rsps: responses.RequestsMock, client, *, extension: bool = True) -> None:
        base = re.escape(runs_url(client, f"/{RUN}"))
        if extension:
            rsps.add_callback(responses.GET, re.compile(base + r"/output\?.*"), self.output)
        else:
            rsps.add(
                responses.GET,
                re.compile(base + r"/output\?.*"),
                status=404,
                json={"detail": "Not Found"},
            )
        rsps.add_callback(responses.GET, re.compile(base + "$"), self.run)
