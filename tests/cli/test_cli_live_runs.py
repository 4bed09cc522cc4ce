"""``arker run`` streaming, ``start``/``logs -f``/``cancel`` against a server with live
runs (skipped against an ``arker serve`` without them: they are built on another
branch)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from arker import Arker
from arker._ids import new_ulid
from tests.cli.kit import Target, arker_argv, one_error_line, run_arker

pytestmark = pytest.mark.e2e

VM = tuple[str, str]


@pytest.fixture(autouse=True)
def _needs_live_runs(live_runs: bool) -> None:
    if not live_runs:
        pytest.skip("the server has no live runs")


def test_run_passes_output_through_while_the_command_still_runs(
    target: Target, sdk: Arker, vm: VM
) -> None:
    # The command goes on only once the test has read its first line from arker's
    # stdout: output held back to the end would leave it waiting until its timeout.
    gate = f"/tmp/go-{new_ulid()}"
    proc = subprocess.Popen(
        arker_argv(
            "run", vm[0], "--timeout", "60", "--",
            f"echo first; while [ ! -f {gate} ]; do sleep 0.05; done; echo second; exit 6",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=target.env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        sdk.runs.create(vm[0], f"touch {gate}", session_id="opener")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (6, b"second\n", b"")


def test_start_then_logs_follow_to_the_end_with_the_exit_status(target: Target, vm: VM) -> None:
    started = run_arker(
        target, "start", vm[1], "--json", "--", "echo a; sleep 1; echo b >&2; exit 7"
    )
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    followed = run_arker(target, "logs", "-f", vm[1], run_id)
    assert (followed.returncode, followed.stdout, followed.stderr) == (7, b"a\n", b"b\n")
    again = run_arker(target, "logs", vm[0], run_id, "--json")
    status = json.loads(again.stdout)
    assert (status["state"], status["exit_code"], status["stdout_text"]) == ("completed", 7, "a\n")


def test_cancel_stops_a_background_run(target: Target, sdk: Arker, vm: VM) -> None:
    started = run_arker(target, "start", vm[0], "--session", "bg", "--", "sleep 60")
    run_id = started.stdout.decode().strip()
    assert run_arker(target, "cancel", vm[0], run_id, "--json").stdout
    assert sdk.runs.get(vm[0], run_id).state == "cancelled"
    followed = run_arker(target, "logs", "-f", vm[0], run_id)
    assert followed.returncode == 1
    assert one_error_line(followed).startswith("arker: run_cancelled: ")
    second = json.loads(run_arker(target, "cancel", vm[0], run_id, "--json").stdout)
    assert second == {"run_id": run_id, "cancelled": False}


def test_ctrl_c_cancels_the_foreground_run(target: Target, sdk: Arker, vm: VM) -> None:
    proc = subprocess.Popen(
        arker_argv("run", vm[0], "--session", "fg", "--", "echo up; sleep 60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=target.env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err
    runs = list(sdk.runs.list(vm[0]))
    assert [r.state for r in runs if r.session_id == "fg"] == ["cancelled"]
    deadline = time.monotonic() + 30
    # the session is free again: a new run in it starts and ends
    while time.monotonic() < deadline:
        done = run_arker(target, "run", vm[0], "--session", "fg", "--", "echo again")
        if done.returncode == 0:
            assert done.stdout == b"again\n"
            return
        time.sleep(0.2)
    raise AssertionError("the session stayed busy after the cancel")
