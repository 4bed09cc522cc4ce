"""The 0.1.0 smoke demo, run by the *published* ``arker==0.1.0`` in its own virtualenv.

Not a test module (pytest does not collect it): `test_reference_client.py` runs it with
the throwaway environment's interpreter, where ``import arker`` is the published 0.1.0
client and nothing of this repository is importable. Reads ``ARKER_BASE_URL``,
``ARKER_CONTROL_URL`` and ``ARKER_API_KEY``; exits non-zero on the first failed check.

0.1.0 hard-codes the global host for ``list`` and fork-by-name (``LIST_BASE_URL``); the
only change of environment is pointing that module constant at the local server, which
serves every route on one address.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import arker.computer

import arker

CHECKS: list[str] = []


def check(what: str, ok: bool, detail: object = "") -> None:
    if not ok:
        raise SystemExit(f"FAILED: {what} {detail!r}")
    CHECKS.append(what)


def raises(what: str, call: Callable[[], Any]) -> Any:
    try:
        call()
    except arker.ArkerError as err:
        CHECKS.append(what)
        return err
    raise SystemExit(f"FAILED: {what}: no ArkerError raised")


def main() -> None:
    check("imports the published client", "site-packages" in (arker.__file__ or ""), arker.__file__)
    arker.computer.LIST_BASE_URL = os.environ["ARKER_CONTROL_URL"]
    client = arker.Arker(os.environ["ARKER_API_KEY"], base_url=os.environ["ARKER_BASE_URL"])

    before = client.list(limit=100)
    check("list has an int total", isinstance(before.total, int), before.total)

    vm = client.vm("arkuntu").fork(name="ref-demo")
    check("fork by name gives a new VM", vm.id != "01KQBYKEV5WJ7YB010603T1DCT_d8c0", vm.id)

    result = vm.run("python3 -c 'print(2+2)'")
    check("run stdout", result.stdout.decode() == "4\n", result.stdout)
    check("run exit code", result.exit_code == 0, result.exit_code)
    check("run duration is a float", isinstance(result.duration_ms, float), result.duration_ms)

    session = vm.run("cd /tmp && pwd", session_id="s1")
    check("session cwd", session.cwd == "/tmp", session.cwd)
    check("session keeps cwd", vm.run("pwd", session_id="s1").stdout == b"/tmp\n")

    failed = vm.run("echo oops >&2; exit 3")
    check("failing run exit code", failed.exit_code == 3, failed.exit_code)
    check("failing run stderr", failed.stderr == b"oops\n", failed.stderr)

    vm.sync.write_file("/home/user/data.csv", b"a,b\n1,2\n")
    check("bytes round trip", vm.sync.read_file("/home/user/data.csv") == b"a,b\n1,2\n")
    vm.sync.write_file("/home/user/text.txt", "héllo")
    check("str round trip", vm.sync.read_file("/home/user/text.txt") == "héllo".encode())

    big = bytes(range(256)) * (5 * 4096 + 7)  # > 4 MiB: the presigned path
    vm.sync.write_file("/home/user/big.bin", big)
    check("presigned round trip", vm.sync.read_file("/home/user/big.bin") == big)

    err = raises("missing file raises", lambda: vm.sync.read_file("/home/user/missing"))
    check("missing file code", err.code == "not_found", err.code)
    check("missing file status", err.status == 404, err.status)
    check("missing file message", "/home/user/missing" in err.message, err.message)

    page = client.list(limit=100, q="ref-demo")
    check("list finds the VM", vm.id in [s.vm_id for s in page], [s.vm_id for s in page])
    check("page length", len(page) == len(page.items) <= page.total, page.total)

    child = vm.fork(name="ref-branch")
    child.sync.write_file("/home/user/only-child.txt", b"child")
    raises(
        "parent cannot see the child's file", lambda: vm.sync.read_file("/home/user/only-child.txt")
    )
    check("child inherits files", child.sync.read_file("/home/user/data.csv") == b"a,b\n1,2\n")

    child.delete()
    vm.delete()
    gone = raises("deleted VM refuses runs", lambda: vm.run("true"))
    check("deleted VM is 404", gone.status == 404, gone.status)
    print(f"reference 0.1.0 smoke: {len(CHECKS)} checks passed")


if __name__ == "__main__":
    main()
    sys.exit(0)
