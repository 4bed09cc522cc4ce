"""A raw-HTTP client of a real `arker serve`, and assertions on what it answers."""

from __future__ import annotations

import base64
import json
from typing import Any

import requests

from arker._constants import ARKUNTU_ID
from arker._ids import new_ulid
from arker.testing import ArkerServer


class Api:
    """A `requests` session bound to one server and one API key."""

    def __init__(self, server: ArkerServer, key: str | None) -> None:
        self.server = server
        self.session = requests.Session()
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def fresh(self) -> Api:
        """Another client with the same key (a `requests.Session` per thread)."""
        auth = self.session.headers.get("Authorization")
        key = str(auth).removeprefix("Bearer ") if auth else None
        return Api(self.server, key)

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return self.session.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    # --- shortcuts that expect success ---------------------------------------------

    def fork(self, source: str = ARKUNTU_ID, **body: Any) -> dict[str, Any]:
        body.setdefault("is_public", False)
        r = self.post(f"/api/v1/vms/{source}/fork", json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def run(self, vm_id: str, command: str, **body: Any) -> dict[str, Any]:
        r = self.post(f"/api/v1/vms/{vm_id}/run", json={"command": command, **body})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def sync(self, vm_id: str, body: dict[str, Any]) -> requests.Response:
        return self.post(f"/api/v1/vms/{vm_id}/sync", json=body)

    def write(self, vm_id: str, *entries: dict[str, Any]) -> list[dict[str, Any]]:
        r = self.sync(vm_id, {"op": "write", "writes": list(entries)})
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    def close(self) -> None:
        self.session.close()


def error_of(r: requests.Response) -> tuple[int, str]:
    """(status, code) of an error envelope; asserts the envelope's shape."""
    body = json.loads(r.text)
    assert body["ok"] is False, r.text
    assert isinstance(body["error"]["message"], str)
    return r.status_code, body["error"]["code"]


def expect(r: requests.Response, status: int, code: str, what: object = "") -> None:
    """Assert that ``r`` is an error envelope with this status and code."""
    assert error_of(r) == (status, code), f"{what!r}: {r.status_code} {r.text[:300]}"


def assert_healthy(api: Api, vm: str) -> None:
    """Health answers and a normal run still works."""
    h = api.get("/api/v1/health")
    assert h.status_code == 200 and h.json()["ok"] is True, h.text
    out = api.run(vm, "echo alive")
    assert out["stdout"] == "alive\n" and out["exit_code"] == 0, out


def chunk(path: str, data: bytes, upload_id: str | None = None) -> dict[str, Any]:
    """A write entry carrying the whole of ``data`` as one inline chunk."""
    return {
        "path": path,
        "size": len(data),
        "upload_id": upload_id or new_ulid(),
        "start": 0,
        "end": len(data),
        "content": base64.b64encode(data).decode(),
    }
