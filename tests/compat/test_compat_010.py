"""0.1.0 compatibility: code written for arker 0.1.0 runs unchanged.

A scripted server (``responses`` callbacks over a tiny in-memory state) plays the hosted
platform on its real default hosts, so the 0.1.0 README runs exactly as printed.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import shlex
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

import arker as arker_pkg
from arker import Arker, ArkerError, Computer, RunResult, Sync, VmList, VmSummary

BASE = "https://aws-us-west-2.burst.arker.ai"
CONTROL = "https://arker.ai"
UPLOADS = "https://uploads.arker.test"
ARKUNTU = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
KEY = "ark_live_..."


class FakeArker:
    """Just enough of the platform for the 0.1.0 surface."""

    def __init__(self, rsps: responses.RequestsMock, key: str = KEY) -> None:
        self.key = key
        self.counter = itertools.count(1)
        self.vms: dict[str, dict] = {
            ARKUNTU: {"vm_id": ARKUNTU, "name": "arkuntu", "public": True, "files": {}}
        }
        self.sessions: dict[tuple[str, str], str] = {}
        self.uploads: dict[str, tuple[str, str, int, bytes | None]] = {}
        self.requests: list[tuple[str, str]] = []
        vm = r"/api/v1/vms/([^/]+)"
        add = rsps.add_callback
        add("GET", re.compile(re.escape(CONTROL) + r"/api/v1/vms/list(\?.*)?$"), self.list)
        add("POST", re.compile(re.escape(CONTROL) + r"/api/v1/vms/fork$"), self.fork_by_name)
        add("POST", re.compile(re.escape(BASE) + vm + "/fork$"), self.fork)
        add("POST", re.compile(re.escape(BASE) + vm + "/run$"), self.run)
        add("POST", re.compile(re.escape(BASE) + vm + "/sync$"), self.sync)
        add("DELETE", re.compile(re.escape(BASE) + vm + "$"), self.delete)
        add("PUT", re.compile(re.escape(UPLOADS) + r"/u/.*"), self.put)
        add("HEAD", re.compile(re.escape(UPLOADS) + r"/u/.*"), lambda r: (200, {}, ""))
        add("GET", re.compile(re.escape(UPLOADS) + r"/d/.*"), self.get)

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def ok(obj: dict) -> tuple[int, dict, str]:
        return 200, {"Content-Type": "application/json"}, json.dumps({"ok": True, **obj})

    @staticmethod
    def fail(status: int, code: str, message: str) -> tuple[int, dict, str]:
        body = {"ok": False, "error": {"code": code, "message": message}}
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    def _auth(self, request) -> tuple[int, dict, str] | None:
        self.requests.append((request.method, request.url))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return self.fail(401, "unauthorized", "missing or unknown API key")
        return None

    def _vm(self, request) -> dict | None:
        vm_id = urlsplit(request.url).path.split("/")[4]
        return self.vms.get(vm_id)

    def _new_vm(self, source: dict, body: dict) -> tuple[int, dict, str]:
        vm_id = f"01J{next(self.counter):023d}_d8c0"
        self.vms[vm_id] = {
            "vm_id": vm_id,
            "name": body.get("name"),
            "public": body.get("is_public", False),
            "region": body.get("region") or "us-west-2",
            "files": dict(source["files"]),
            "created_at": f"2025-01-01T00:00:{len(self.vms):02d}Z",
        }
        return self.ok({"vm_id": vm_id})

    # -- routes --------------------------------------------------------------------

    def list(self, request):
        if denied := self._auth(request):
            return denied
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        mine = [v for v in self.vms.values() if v["vm_id"] != ARKUNTU]
        if "q" in query:
            mine = [v for v in mine if query["q"] in (v["name"] or "")]
        sort = query.get("sort", "-created_at")
        mine.sort(key=lambda v: v[sort.lstrip("-")], reverse=sort.startswith("-"))
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 25))
        items = [
            {k: v[k] for k in ("vm_id", "name", "region", "created_at")} | {"base_image": ARKUNTU}
            for v in mine[offset : offset + limit]
        ]
        return self.ok({"items": items, "total": len(mine)})

    def fork(self, request):
        if denied := self._auth(request):
            return denied
        source = self._vm(request)
        if source is None:
            return self.fail(404, "not_found", "vm not found")
        return self._new_vm(source, json.loads(request.body))

    def fork_by_name(self, request):
        if denied := self._auth(request):
            return denied
        body = json.loads(request.body)
        for v in self.vms.values():
            if v["name"] == body["from"]:
                return self._new_vm(v, body)
        return self.fail(404, "not_found", f"no VM named {body['from']}")

    def delete(self, request):
        if denied := self._auth(request):
            return denied
        vm_id = urlsplit(request.url).path.split("/")[4]
        if self.vms.pop(vm_id, None) is None:
            return self.fail(404, "not_found", "vm not found")
        return self.ok({})

    def run(self, request):
        if denied := self._auth(request):
            return denied
        vm = self._vm(request)
        if vm is None:
            return self.fail(404, "not_found", "vm not found")
        body = json.loads(request.body)
        session = str(body.get("session_id", 0))
        cwd = self.sessions.get((vm["vm_id"], session), "/home/user")
        argv = shlex.split(body["command"])
        out, err, code, enc = "", "", 0, "utf-8"
        if argv[:2] == ["python3", "-c"] and argv[2] == "print(2+2)":
            out = "4\n"
        elif argv[0] == "echo":
            out = " ".join(argv[1:]) + "\n"
        elif argv[0] == "cd":
            cwd = argv[1]
        elif argv[0] == "pwd":
            out = cwd + "\n"
        elif argv[0] == "exit":
            code = int(argv[1])
        elif argv[0] == "binary":
            out, enc = base64.b64encode(b"\xff\xfe\x00").decode(), "base64"
        else:
            err, code = f"sh: 1: {argv[0]}: not found\n", 127
        self.sessions[(vm["vm_id"], session)] = cwd
        return self.ok(
            {
                "stdout": out,
                "stdout_encoding": enc,
                "stderr": err,
                "stderr_encoding": "utf-8",
                "exit_code": code,
                "duration_ms": 1.5,
                "session_id": session,
                "cwd": cwd,
            }
        )

    def sync(self, request):
        if denied := self._auth(request):
            return denied
        vm = self._vm(request)
        if vm is None:
            return self.fail(404, "not_found", "vm not found")
        body = json.loads(request.body)
        files = vm["files"]
        if body["op"] == "read":
            data = files.get(body["path"])
            if data is None:
                return self.fail(404, "not_found", f"file not found: {body['path']}")
            if len(data) > 1024:
                token = f"{vm['vm_id']}:{body['path']}"
                return self.ok({"presigned_url": f"{UPLOADS}/d/{token}?sig=s", "size": len(data)})
            try:
                return self.ok({"content": data.decode("utf-8"), "encoding": "utf-8"})
            except UnicodeDecodeError:
                return self.ok({"content": base64.b64encode(data).decode(), "encoding": "base64"})
        results = []
        for entry in body["writes"]:
            if entry.get("presigned"):
                upload_id = f"up{next(self.counter)}"
                self.uploads[upload_id] = (vm["vm_id"], entry["path"], entry["size"], None)
                results.append(
                    {"presigned_url": f"{UPLOADS}/u/{upload_id}?sig=s", "upload_id": upload_id}
                )
            elif "content" in entry:
                data = base64.b64decode(entry["content"])
                assert entry["start"] == 0 and entry["end"] == entry["size"] == len(data)
                files[entry["path"]] = data
                results.append({"complete": True, "written": True})
            else:
                _, path, size, data = self.uploads[entry["upload_id"]]
                assert data is not None and len(data) == size and path == entry["path"]
                files[path] = data
                results.append({"complete": True, "written": True})
        return self.ok({"results": results})

    def put(self, request):
        self.requests.append((request.method, request.url))
        assert "Authorization" not in request.headers
        upload_id = urlsplit(request.url).path.rsplit("/", 1)[1]
        vm_id, path, size, _ = self.uploads[upload_id]
        body = request.body
        data = body.read() if hasattr(body, "read") else bytes(body)
        self.uploads[upload_id] = (vm_id, path, size, data)
        return 200, {}, ""

    def get(self, request):
        self.requests.append((request.method, request.url))
        assert "Authorization" not in request.headers
        vm_id, path = urlsplit(request.url).path.split("/", 2)[2].split(":", 1)
        return 200, {"Content-Type": "application/octet-stream"}, self.vms[vm_id]["files"][path]


@pytest.fixture
def platform(rsps) -> FakeArker:
    return FakeArker(rsps)


def test_010_public_names_still_importable() -> None:
    for name in ("Arker", "Computer", "Sync", "RunResult", "VmSummary", "VmList", "ArkerError"):
        assert name in arker_pkg.__all__
        assert getattr(arker_pkg, name) is not None


def test_readme_quickstart_runs_unchanged(platform, capsys) -> None:
    from arker import Arker, ArkerError  # noqa: F401 - as the README writes it

    arker = Arker(api_key="ark_live_...")
    vm = arker.vm("arkuntu").fork(name="hello")  # fresh VM from base image
    result = vm.run("python3 -c 'print(2+2)'")
    print(result.stdout.decode())  # → "4\n"

    vm.sync.write_file("/home/user/data.csv", b"a,b\n1,2\n")
    data = vm.sync.read_file("/home/user/data.csv")  # → b"a,b\n1,2\n"

    child = vm.fork(name="branch")  # constant-time copy-on-write
    child.delete()
    vm.delete()

    assert capsys.readouterr().out == "4\n\n"
    assert data == b"a,b\n1,2\n"
    assert set(platform.vms) == {ARKUNTU}  # both VMs are gone again
    fork_call = platform.requests[0]
    assert fork_call == ("POST", f"{BASE}/api/v1/vms/{ARKUNTU}/fork")


def test_readme_list_and_errors_snippets(platform, capsys) -> None:
    arker = Arker(api_key="ark_live_...")
    for name in ("alpha", "beta", "gamma"):
        arker.vm("arkuntu").fork(name=name)

    page = arker.list(limit=10, sort="-created_at")
    print(f"{page.total} total")
    for summary in page:  # iterable; also page.items
        print(summary.vm_id, summary.name, summary.region, summary.created_at)

    vm = arker.vm(page.items[0].vm_id)
    try:
        vm.sync.read_file("/home/user/missing")
    except ArkerError as err:
        print(err.code)  # "not_found"
        print(err.message)  # "file not found: /home/user/missing"
        print(err.status)  # 404

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 total"
    assert [line.split()[1] for line in lines[1:4]] == ["gamma", "beta", "alpha"]
    assert lines[4:] == ["not_found", "file not found: /home/user/missing", "404"]


def test_every_010_method_and_attribute(platform) -> None:
    client = Arker("ark_live_...", None)  # positional (api_key, base_url) as in 0.1.0
    base = client.vm("arkuntu")
    assert isinstance(base, Computer) and base.id == "arkuntu"
    assert platform.requests == []  # .vm() makes no request

    vm = base.fork(name="work", is_public=False, region="us-west-2")
    assert isinstance(vm, Computer) and vm.id != base.id
    assert isinstance(vm.sync, Sync)

    # run: every RunResult field, sessions, non-zero exit, binary output
    r = vm.run("echo hello world")
    assert isinstance(r, RunResult)
    assert (r.stdout, r.stderr, r.exit_code) == (b"hello world\n", b"", 0)
    assert isinstance(r.duration_ms, float) and r.session_id == "0" and r.cwd == "/home/user"
    vm.run("cd /tmp", session_id="s1", timeout=30)
    assert vm.run("pwd", session_id="s1").stdout == b"/tmp\n"
    assert vm.run("pwd", session_id=2).stdout == b"/home/user\n"
    assert vm.run("exit 3").exit_code == 3
    missing = vm.run("nosuchcmd")
    assert missing.exit_code == 127 and b"not found" in missing.stderr
    assert vm.run("binary").stdout == b"\xff\xfe\x00"

    # sync: bytes and str, small and large (presigned both ways), binary
    vm.sync.write_file("/home/user/a.txt", "héllo")
    assert vm.sync.read_file("/home/user/a.txt") == "héllo".encode()
    vm.sync.write_file("/home/user/b.bin", b"\x00\xff")
    assert vm.sync.read_file("/home/user/b.bin") == b"\x00\xff"
    big = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)  # 5 MiB
    vm.sync.write_file("/home/user/big.bin", big)
    assert vm.sync.read_file("/home/user/big.bin") == big
    assert any(method == "PUT" for method, _ in platform.requests)

    # fork by name goes to the control host; the child sees the parent's files
    child = client.vm("work").fork(name="child", is_public=True)
    assert child.sync.read_file("/home/user/a.txt") == "héllo".encode()
    assert ("POST", f"{CONTROL}/api/v1/vms/fork") in platform.requests

    # list: VmList and VmSummary fields, filters and paging
    page = client.list(limit=1, offset=0, q="work", sort="created_at")
    assert isinstance(page, VmList)
    assert len(page) == 1 and page.total == 1
    (summary,) = list(page)
    assert isinstance(summary, VmSummary) and page.items == [summary]
    assert (summary.vm_id, summary.name, summary.base_image, summary.region) == (
        vm.id,
        "work",
        ARKUNTU,
        "us-west-2",
    )
    assert summary.created_at is not None
    assert client.list().total == 2

    # errors: one except for everything, with code/message/status
    child.delete()
    with pytest.raises(ArkerError) as info:
        child.run("echo gone")
    assert (info.value.code, info.value.status) == ("not_found", 404)
    try:
        Arker(api_key="wrong-key").vm(vm.id).run("echo hi")
    except ArkerError as err:
        assert (err.code, err.status) == ("unauthorized", 401)
    else:
        pytest.fail("a wrong key must raise")
    vm.delete()
    assert set(platform.vms) == {ARKUNTU}


def test_arker_error_constructor_is_010_compatible() -> None:
    err = ArkerError("not_found", "gone", 404)
    assert (err.code, err.message, err.status) == ("not_found", "gone", 404)
    assert str(err) == "not_found: gone"


def test_missing_key_is_still_a_value_error() -> None:
    with pytest.raises(ValueError):
        Arker(api_key="")


def test_computer_context_manager_deletes_on_exit(platform) -> None:
    client = Arker(api_key=KEY)
    with client.vm("arkuntu").fork(name="scoped") as vm:
        assert vm.id in platform.vms
    assert vm.id not in platform.vms
    assert platform.requests[-1] == ("DELETE", f"{BASE}/api/v1/vms/{vm.id}")


def test_computer_context_manager_deletes_when_body_raises(platform) -> None:
    client = Arker(api_key=KEY)

    class Boom(Exception):
        pass

    with pytest.raises(Boom, match="original"), client.vm("arkuntu").fork() as vm:
        raise Boom("original")
    assert vm.id not in platform.vms
    assert platform.requests[-1] == ("DELETE", f"{BASE}/api/v1/vms/{vm.id}")


def test_failed_cleanup_never_masks_the_original_error(platform, caplog) -> None:
    client = Arker(api_key=KEY)
    vm = client.vm("arkuntu").fork()
    del platform.vms[vm.id]  # the DELETE on exit will 404
    with pytest.raises(KeyError, match="original"), vm:
        raise KeyError("original")
    assert ("DELETE", f"{BASE}/api/v1/vms/{vm.id}") in platform.requests


def test_explicit_delete_inside_block_is_not_repeated(platform) -> None:
    client = Arker(api_key=KEY)
    with client.vm("arkuntu").fork() as vm:
        vm.delete()
    deletes = [r for r in platform.requests if r[0] == "DELETE"]
    assert len(deletes) == 1
