"""Drive the published ``arker==1.3.0`` client against ``arker serve``.

Run by ``test_platform_client.py`` with the interpreter of a virtualenv that holds the
published client (never this repository's ``arker``). Reads ``ARKER_API_KEY`` and
``ARKER_LOCAL_API`` (``http://127.0.0.1:PORT/api``); prints one line per check and a
final ``platform 1.3.0 smoke: N checks passed``. Any failure raises.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time

import arker
from arker import Arker, ArkerError

checks = 0


def check(label: str, ok: object) -> None:
    global checks
    if not ok:
        raise AssertionError(f"check failed: {label}")
    checks += 1
    print(f"ok {label}", flush=True)


def expect_error(label: str, status: int, code: str, call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except ArkerError as exc:
        check(f"{label} -> {exc.status} {exc.code}", (exc.status, exc.code) == (status, code))
        return
    raise AssertionError(f"{label}: no ArkerError")


def wait_state(vm: arker.VM, run_id: str, states: set[str]) -> arker.RunRecord:
    deadline = time.monotonic() + 60
    while True:
        run = vm.get_run(run_id)
        if run.state in states or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def main() -> None:
    api = os.environ["ARKER_LOCAL_API"]
    client = Arker(api_key=os.environ["ARKER_API_KEY"], base_url=api, control_base_url=api)
    check("version", arker.__version__ == "1.3.0" if hasattr(arker, "__version__") else True)

    me = client.whoami()
    check("whoami", bool(me.org_id and me.org_name))
    regions = client.list_regions().regions
    check("regions", [(r.provider, r.region) for r in regions] == [("local", "local")])

    vm = client.fork(source_vm_name="arkuntu", name="plat-smoke", description="e2e")
    check("fork by name", vm.id and vm.name == "plat-smoke" and vm.description == "e2e")

    done = vm.run("echo hello; echo oops >&2; exit 3")
    check("run sync", (done.stdout, done.stderr, done.exit_code) == ("hello\n", "oops\n", 3))

    started = vm.run("sleep 1; echo bg", time_to_background=0)
    check("run background ack", isinstance(started, arker.BackgroundRunResult))
    finished = wait_state(vm, started.run_id, {"completed", "failed"})
    check("background run completes", finished.state == "completed" and finished.stdout == "bg\n")

    late = vm.run("sleep 3; echo late", time_to_background=1)
    check("run awaited past the sync window", late.stdout == "late\n" and late.exit_code == 0)

    long = vm.run("sleep 60", time_to_background=0)
    vm.cancel_run(long.run_id)
    cancelled = wait_state(vm, long.run_id, {"cancelled", "failed", "completed"})
    check("cancel", cancelled.state == "cancelled")

    session = vm.create_session(cwd="/home/user", env={"GREETING": "hi"})
    vm.run("mkdir -p /home/user/work && cd /home/user/work", session_id=session.session_id)
    where = vm.run("pwd; echo $GREETING", session_id=session.session_id)
    check("session keeps cwd and env", where.stdout == "/home/user/work\nhi\n")
    listed = {s.session_id for s in vm.list_sessions().sessions}
    check("list sessions", session.session_id in listed)
    vm.delete_session(session.session_id)
    check(
        "delete session",
        session.session_id not in {s.session_id for s in vm.list_sessions().sessions},
    )

    vm.sync("/home/user/small.txt", "hello file")
    check("small write/read", vm.sync("/home/user/small.txt") == b"hello file")
    big = os.urandom(9 * 1024 * 1024 + 123)  # three 4 MiB chunks of one upload_id
    vm.sync("/home/user/big.bin", big)
    back = vm.sync("/home/user/big.bin")  # larger than inline: a presigned read
    check("multi-chunk write, presigned read", back == big)
    digest = vm.run("sha256sum /home/user/big.bin").stdout.split()[0]
    check("bytes in the VM", digest == hashlib.sha256(big).hexdigest())

    with tempfile.TemporaryDirectory() as local:
        for rel, text in {"a.txt": "A", "sub/b.txt": "B", "sub/deep/c.txt": "C"}.items():
            os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
            with open(os.path.join(local, rel), "w") as f:
                f.write(text)
        first = vm.sync_dir(local, "/home/user/proj")
        check("sync_dir sends all", (first.sent, first.skipped) == (3, 0))
        with open(os.path.join(local, "sub/b.txt"), "w") as f:
            f.write("B2")
        second = vm.sync_dir(local, "/home/user/proj")
        check("sync_dir re-sends only changes", (second.sent, second.skipped) == (1, 2))
        got = vm.run(
            "cat /home/user/proj/a.txt /home/user/proj/sub/b.txt /home/user/proj/sub/deep/c.txt"
        )
        check("sync_dir content", got.stdout == "AB2C")

    child = vm.fork(name="plat-child")
    child.run("echo child-only > /home/user/small.txt")
    check("fork by id keeps files", child.run("cat /home/user/proj/a.txt").stdout == "A")
    check("fork isolation", vm.sync("/home/user/small.txt") == b"hello file")

    activity = client.list_runs(vm=vm.id)
    check("org runs list", any(row.command == "sleep 3; echo late" for row in activity.rows))

    fetched = client.get_vm(vm.id)
    check("get_vm", fetched.id == vm.id and fetched.name == "plat-smoke")
    updated = vm.update(description="changed")
    check("update description", updated.description == "changed")
    check("refresh", vm.refresh().description == "changed")
    cleared = vm.update(description=None)
    check("clear description", cleared.description is None)
    ids: list[str] = []
    page = client.list_vms(limit=1)
    while True:
        ids += [v.id for v in page.vms]
        if not page.next_cursor:
            break
        page = client.list_vms(limit=1, cursor=page.next_cursor)
    check("list_vms pages", {vm.id, child.id} <= set(ids) and len(ids) == len(set(ids)))
    check(
        "listed vms route here", all(v.base_url == client.base_url for v in client.list_vms().vms)
    )

    expect_error(
        "get missing vm", 404, "not_found", lambda: client.get_vm("01NOPE0000000000000000000_loc0")
    )
    expect_error(
        "fork an image", 422, "unsupported_operation", lambda: client.fork(image="ubuntu:24.04")
    )
    expect_error("resize", 422, "unsupported_operation", lambda: vm.update(vcpu=4))
    expect_error("filesystems", 422, "unsupported_operation", lambda: client.list_filesystems())
    expect_error("policies", 422, "unsupported_operation", lambda: vm.get_policies())
    expect_error("read missing file", 404, "not_found", lambda: vm.sync("/home/user/nope"))
    expect_error(
        "run missing run", 404, "not_found", lambda: vm.get_run("01NOPE000000000000000000RN")
    )

    check("delete child", child.delete().deleted is True)
    check("delete", vm.delete().deleted is True)
    expect_error("deleted vm", 404, "not_found", lambda: client.get_vm(vm.id))
    print(f"platform 1.3.0 smoke: {checks} checks passed")


if __name__ == "__main__":
    sys.exit(main())
