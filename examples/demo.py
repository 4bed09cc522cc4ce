#!/usr/bin/env python3
"""Smoke demo: every call of the 0.1.0 API and of the resources, against a live server.

Usage::

    python examples/demo.py            # server from ARKER_BASE_URL/ARKER_CONTROL_URL/ARKER_API_KEY
    python examples/demo.py --serve    # start `python -m arker serve` on a free port first

Every HTTP attempt the SDK makes is printed as it happens (from the ``arker`` logger's
structured records), followed by a ✓ or ✗ line per check. The exit status is 0 only when
every check passed.

``--serve`` starts ``python -m arker serve --port 0 --data-dir <temporary dir>`` in the
background, reads the ``export`` lines it prints, waits for ``GET /api/v1/health``, runs
the demo against it and stops it with SIGTERM afterwards, also when the demo fails. The
server needs Linux, root and bubblewrap (``apt-get install -y bubblewrap``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import arker
from arker import (
    Arker,
    ArkerError,
    Computer,
    ForkResult,
    NotFoundError,
    RunResult,
    VmList,
    VmSummary,
)

LARGE_SIZE = 5 * 1024 * 1024  # > 4 MiB: goes through a presigned upload and download
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 30.0
EXPORTS = ("ARKER_BASE_URL", "ARKER_CONTROL_URL", "ARKER_API_KEY")


# -- printing -------------------------------------------------------------------------------


class WireLog(logging.Handler):
    """Prints one line per HTTP attempt from the ``extra`` fields of ``arker`` records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: list[tuple[str, str, int | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        if "arker_method" in fields:
            method, url = fields["arker_method"], fields["arker_url"]
            status = fields["arker_status"]
            self.calls.append((method, url, status))
            shown = status if status is not None else "no response"
            print(
                f"    wire: {method:6} {url} -> {shown}  "
                f"{fields['arker_duration_ms']:.0f} ms  attempt {fields['arker_attempt']}",
                flush=True,
            )
        elif "arker_retry_in" in fields:
            print(f"    wire: {record.getMessage()}", flush=True)


class Checks:
    """Counts ✓ and ✗ lines."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"  ✓ {what}", flush=True)
        else:
            self.failed += 1
            print(f"  ✗ {what}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


# -- the demo -------------------------------------------------------------------------------


def run_demo(checks: Checks, wire: WireLog) -> None:
    """Exercise the whole SDK surface. Raises on an unexpected error."""
    base_url = os.environ.get("ARKER_BASE_URL")
    control_url = os.environ.get("ARKER_CONTROL_URL")
    api_key = os.environ.get("ARKER_API_KEY", "")
    check = checks.check
    tag = f"demo-{secrets.token_hex(3)}"  # names of this run's VMs all contain it
    created: list[str] = []  # VM ids to delete if the demo stops half-way

    print(f"arker {arker.__version__}; VM names contain {tag!r}")
    # The 0.1.0 constructor: Arker(api_key, base_url); control_url is new (env by default).
    client = Arker(api_key, base_url, control_url=control_url)
    print(f"base_url={client.base_url} control_url={client.control_url}")

    try:
        step("list (0.1.0: client.list) and vms.list")
        page = client.list(limit=5, sort="-created_at")
        check("client.list returns a VmList", isinstance(page, VmList), type(page).__name__)
        check(
            "VmList is iterable and len()-able; total counts every match",
            list(page) == page.items and len(page) == len(page.items) <= 5
            and page.total >= len(page),
            f"len={len(page)} total={page.total}",
        )  # fmt: skip
        page2 = client.with_options(max_retries=0, timeout=30).vms.list(limit=1, offset=0)
        check("with_options(...).vms.list(limit=1) returns at most one VM", len(page2) <= 1)

        step("fork from arkuntu (0.1.0: client.vm('arkuntu').fork)")
        parent = client.vm("arkuntu").fork(name=f"{tag}-parent")
        created.append(parent.id)
        check(f"parent is a Computer with an id: {parent.id}", isinstance(parent, Computer))

        step("fork from arkuntu (resource: client.vms.fork)")
        extra = client.vms.fork("arkuntu", name=f"{tag}-extra")
        created.append(extra.vm_id)
        check(
            f"vms.fork returns a ForkResult: {extra.vm_id}",
            isinstance(extra, ForkResult) and bool(extra.vm_id),
        )

        step("run (0.1.0: vm.run)")
        r = parent.run("echo hello from arker")
        check("run returns a RunResult", isinstance(r, RunResult), type(r).__name__)
        check(
            "stdout is bytes and exit_code 0",
            r.stdout == b"hello from arker\n" and r.exit_code == 0,
            f"stdout={r.stdout!r} exit={r.exit_code}",
        )
        print(f"    duration_ms={r.duration_ms:.1f} session_id={r.session_id!r} cwd={r.cwd!r}")

        step("run: a session keeps its cwd and exported environment")
        parent.run("mkdir -p work && cd work && export DEMO_VAR=42", session_id="s1")
        r = parent.run('pwd; echo "$DEMO_VAR"', session_id="s1")
        check(
            "cd and export carry over to the next run of session s1",
            r.stdout_text == "/home/user/work\n42\n" and r.cwd == "/home/user/work",
            f"stdout={r.stdout_text!r} cwd={r.cwd!r}",
        )
        r = client.runs.create(parent.id, 'pwd; echo "[$DEMO_VAR]"', session_id="s2")
        check(
            "another session (client.runs.create, session s2) starts fresh",
            r.stdout_text == "/home/user\n[]\n",
            f"stdout={r.stdout_text!r}",
        )

        step("run: a non-zero exit is a result, not an exception")
        r = client.runs.create(parent.id, "echo oops >&2; exit 3")
        check(
            "exit_code 3, stderr captured, ok is False",
            r.exit_code == 3 and r.stderr_text == "oops\n" and not r.ok,
            f"exit={r.exit_code} stderr={r.stderr_text!r}",
        )
        r = parent.run("sleep 10", timeout=1)
        check("run(timeout=1) of `sleep 10` ends with exit code 124", r.exit_code == 124,
              f"exit={r.exit_code} timed_out={r.timed_out}")  # fmt: skip

        step("sync: small files (0.1.0: vm.sync.write_file / read_file)")
        parent.sync.write_file("/home/user/hello.txt", "hi there\n")
        data = parent.sync.read_file("/home/user/hello.txt")
        check("str written, bytes read back", data == b"hi there\n", repr(data))
        blob = bytes(range(256)) * 4
        client.sync.write(parent.id, "/home/user/bin/blob.bin", blob)
        check(
            "binary bytes round-trip (client.sync.write / read)",
            client.sync.read(parent.id, "/home/user/bin/blob.bin") == blob,
        )
        client.sync.write(parent.id, "/home/user/empty", b"")
        check("an empty file is allowed", client.sync.read(parent.id, "/home/user/empty") == b"")
        r = parent.run("cat hello.txt")
        check("the VM sees the written file", r.stdout == b"hi there\n", repr(r.stdout))

        step(f"sync: a {LARGE_SIZE // (1024 * 1024)} MiB file goes through a presigned URL")
        big = os.urandom(LARGE_SIZE)
        before = len(wire.calls)
        parent.sync.write_file("/home/user/big.bin", big)
        puts = [c for c in wire.calls[before:] if c[0] == "PUT"]
        check("the upload was a PUT to a presigned URL", bool(puts), "no PUT seen")
        before = len(wire.calls)
        back = parent.sync.read_file("/home/user/big.bin")
        check(f"{len(big)} bytes read back intact", back == big, f"got {len(back)} bytes")
        gets = [c for c in wire.calls[before:] if c[0] == "GET"]
        print(f"    (the read was {'a presigned GET' if gets else 'inline'})")
        r = parent.run("wc -c < big.bin")
        check("the VM sees the whole file", r.stdout_text.strip() == str(LARGE_SIZE),
              r.stdout_text.strip())  # fmt: skip

        step("error path: reading a missing file")
        try:
            parent.sync.read_file("/home/user/does-not-exist.txt")
        except ArkerError as err:
            print(f"    code={err.code!r} message={err.message!r} status={err.status}")
            check("raised NotFoundError (caught as ArkerError)", isinstance(err, NotFoundError),
                  type(err).__name__)  # fmt: skip
            check("code not_found, status 404", err.code == "not_found" and err.status == 404)
        else:
            check("reading a missing file raises", False, "no exception")

        step("child fork isolation (0.1.0: vm.fork)")
        child = parent.fork(name=f"{tag}-child")
        created.append(child.id)
        check(f"child {child.id} differs from parent", child.id != parent.id)
        check(
            "child inherits the parent's files",
            child.sync.read_file("/home/user/hello.txt") == b"hi there\n",
        )
        child.sync.write_file("/home/user/child-only.txt", "only in the child")
        try:
            parent.sync.read_file("/home/user/child-only.txt")
        except NotFoundError:
            check("a write in the child is not visible in the parent", True)
        else:
            check("a write in the child is not visible in the parent", False, "parent sees it")
        parent.sync.write_file("/home/user/hello.txt", "changed in parent\n")
        check(
            "a later write in the parent is not visible in the child",
            child.sync.read_file("/home/user/hello.txt") == b"hi there\n",
        )

        step("list this run's VMs (client.list(q=...), vms.list_all)")
        page = client.list(q=tag, sort="created_at")
        check("client.list(q=tag) finds the 3 VMs of this run", page.total == 3,
              f"total={page.total}")  # fmt: skip
        for s in page:
            print(f"    {s.vm_id} {s.name} base_image={s.base_image} region={s.region} "
                  f"created_at={s.created_at.isoformat()}")  # fmt: skip
        check(
            "items are VmSummary with a datetime created_at",
            all(isinstance(s, VmSummary) and isinstance(s.created_at, datetime) for s in page),
        )
        ids = {s.vm_id for s in client.vms.list_all(q=tag, page_size=1)}
        check(
            "vms.list_all(page_size=1) walks every page",
            ids == {parent.id, child.id, extra.vm_id},
            f"got {sorted(ids)}",
        )

        step("delete")
        with client.vm(extra.vm_id) as vm:  # a Computer deletes its VM when the block ends
            vm.run("true")
        created.remove(extra.vm_id)
        parent.delete()
        created.remove(parent.id)
        check(
            "forks of a deleted VM keep working",
            child.sync.read_file("/home/user/child-only.txt") == b"only in the child",
        )
        client.vms.delete(child.id)
        created.remove(child.id)
        left = [s.vm_id for s in client.vms.list_all(q=tag)]
        check("no VM of this run is left", not left, f"left: {left}")
    finally:
        for vm_id in created:  # best effort, only after a failure
            try:
                client.vms.delete(vm_id)
            except ArkerError as exc:
                print(f"    (cleanup of {vm_id} failed: {exc})")
        client.close()


def demo_main() -> int:
    if not os.environ.get("ARKER_API_KEY"):
        print("demo: set ARKER_API_KEY (and ARKER_BASE_URL, ARKER_CONTROL_URL), "
              "or pass --serve to start a local server", file=sys.stderr)  # fmt: skip
        return 2
    wire = WireLog()
    log = logging.getLogger("arker")
    log.addHandler(wire)
    log.setLevel(logging.INFO)
    checks = Checks()
    started = time.monotonic()
    try:
        run_demo(checks, wire)
    except Exception:
        checks.failed += 1
        print("\n  ✗ the demo stopped on an unexpected error:", flush=True)
        traceback.print_exc()
    finally:
        log.removeHandler(wire)
    print(
        f"\n{checks.passed} passed, {checks.failed} failed "
        f"({len(wire.calls)} HTTP attempts, {time.monotonic() - started:.1f} s)"
    )
    return 0 if checks.failed == 0 else 1


# -- --serve: a local server around the demo ---------------------------------------------


def _parse_exports(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            found[name.strip()] = value.strip().strip("'\"")
    return found


def _wait_until(what: str, ready: Callable[[], Any], proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"arker serve exited with status {proc.returncode} before {what}")
        time.sleep(0.1)
    raise RuntimeError(f"arker serve: no {what} after {SERVER_START_TIMEOUT_S:.0f} s")


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/api/v1/health", timeout=5) as resp:
            return bool(json.loads(resp.read()).get("ok"))
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("serve: no exit after SIGTERM; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()
    print(f"serve: stopped (exit status {proc.returncode})", flush=True)


@contextmanager
def local_server(data_dir: Path | None) -> Iterator[dict[str, str]]:
    """Run ``python -m arker serve`` for the duration of the block; yield its exports."""
    tmp = Path(tempfile.mkdtemp(prefix="arker-demo-"))
    data = data_dir or tmp / "data"
    out_path, log_path = tmp / "serve.out", tmp / "serve.log"
    env = dict(os.environ)
    env.pop("ARKER_API_KEY", None)  # let the server mint the key for its fresh data dir
    cmd = [sys.executable, "-m", "arker", "serve", "--port", "0", "--data-dir", str(data)]
    print(f"serve: {' '.join(cmd)}  (log: {log_path})", flush=True)
    with open(out_path, "wb") as out, open(log_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    ok = False
    try:

        def exports_ready() -> dict[str, str] | None:
            found = _parse_exports(out_path.read_text(errors="replace"))
            return found if all(k in found for k in EXPORTS) else None

        exports = {k: v for k, v in _wait_until("export lines", exports_ready, proc).items()
                   if k in EXPORTS}  # fmt: skip
        for name, value in exports.items():
            shown = "<redacted>" if name == "ARKER_API_KEY" else value
            print(f"serve: export {name}={shown}", flush=True)
        _wait_until("healthy GET /api/v1/health", lambda: _healthy(exports["ARKER_BASE_URL"]), proc)
        print("serve: healthy", flush=True)
        yield exports
        ok = True
    except RuntimeError as exc:
        print(f"serve: {exc}\n--- server log (last lines) ---\n{_tail(log_path)}", file=sys.stderr)
        raise
    finally:
        _stop(proc)
        if not ok and proc.returncode not in (0, None):
            print(f"--- server log (last lines) ---\n{_tail(log_path)}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve", action="store_true", help="start a local `arker serve` for the demo"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="with --serve: server state dir (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if not args.serve:
        return demo_main()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with local_server(args.data_dir) as exports:
            os.environ.update(exports)
            return demo_main()
    except RuntimeError:
        return 2


if __name__ == "__main__":
    sys.exit(main())
