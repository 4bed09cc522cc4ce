"""The real ``arker`` command, as a subprocess, against a real ``arker serve``: exit
statuses, stdout, ``--json``, errors as one line, copies byte-exact both ways."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from arker import Arker, NotFoundError
from arker._ids import new_ulid
from tests.cli.kit import Target, arker_argv, one_error_line, run_arker
from tests.kit.files import MiB, sha256_of

pytestmark = pytest.mark.e2e

VM = tuple[str, str]


def _json(done: subprocess.CompletedProcess[bytes]) -> object:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


# --- VMs ------------------------------------------------------------------------------


def test_fork_json_prints_the_new_vm_for_jq(target: Target, sdk: Arker) -> None:
    name = f"cli-fork-{new_ulid().lower()}"
    made = _json(run_arker(target, "fork", "arkuntu", "--name", name, "--json"))
    assert isinstance(made, dict) and made["name"] == name
    try:
        assert [vm.vm_id for vm in sdk.vms.list(q=name)] == [made["vm_id"]]
    finally:
        sdk.vms.delete(made["vm_id"])


def test_fork_prints_the_new_id_for_people(target: Target, sdk: Arker) -> None:
    done = run_arker(target, "fork", "arkuntu")
    assert done.returncode == 0, done.stderr
    vm_id = done.stdout.decode().split()[0]
    sdk.vms.delete(vm_id)  # it exists


def test_ls_filters_by_name_and_aligns_its_table(target: Target, vm: VM) -> None:
    vm_id, name = vm
    done = run_arker(target, "ls", "--name", name)
    assert done.returncode == 0, done.stderr
    header, row, *rest = done.stdout.decode().splitlines()
    assert rest == []
    assert header.split() == ["ID", "NAME", "REGION", "CREATED"]
    assert row.split()[:2] == [vm_id, name]
    assert row.index(name) == header.index("NAME")  # columns line up
    assert row.rstrip().endswith("just now") or "ago" in row


def test_ls_json_limit_and_sort(target: Target, sdk: Arker) -> None:
    stem = f"cli-ls-{new_ulid().lower()}"
    made = [sdk.vms.fork("arkuntu", name=f"{stem}-{i}").vm_id for i in range(3)]
    try:
        oldest_first = _json(run_arker(target, "ls", "-q", stem, "--sort", "created_at", "--json"))
        assert [v["vm_id"] for v in oldest_first] == made  # type: ignore[union-attr, index]
        newest = _json(run_arker(target, "ls", "-q", stem, "--limit", "1", "--json"))
        assert [v["vm_id"] for v in newest] == made[-1:]  # type: ignore[union-attr, index]
    finally:
        for vm_id in made:
            sdk.vms.delete(vm_id)


def test_rm_deletes_vms_named_by_id_or_name(target: Target, sdk: Arker) -> None:
    a = sdk.vms.fork("arkuntu", name=f"cli-rm-{new_ulid().lower()}")
    b = sdk.vms.fork("arkuntu", name=f"cli-rm-{new_ulid().lower()}")
    done = run_arker(target, "rm", a.vm_id, str(b.name), "--json")
    assert _json(done) == {"deleted": [a.vm_id, b.vm_id]}
    for vm_id in (a.vm_id, b.vm_id):
        with pytest.raises(NotFoundError):
            sdk.runs.create(vm_id, "true")


def test_rm_by_pattern_asks_first_and_a_no_keeps_the_vms(target: Target, sdk: Arker) -> None:
    stem = f"cli-rmp-{new_ulid().lower()}"
    made = [sdk.vms.fork("arkuntu", name=f"{stem}-{i}").vm_id for i in range(2)]
    kept = sdk.vms.fork("arkuntu", name=f"other-{stem}").vm_id
    try:
        no = run_arker(target, "rm", "--name", f"{stem}-*", input=b"n\n")
        assert no.returncode == 1
        assert "delete these 2 VMs?" in no.stderr.decode()
        assert {v.vm_id for v in sdk.vms.list(q=stem)} == {*made, kept}

        yes = run_arker(target, "rm", "--name", f"{stem}-*", input=b"y\n")
        assert yes.returncode == 0, yes.stderr
        assert [v.vm_id for v in sdk.vms.list(q=stem)] == [kept]
    finally:
        for vm_id in [*made, kept]:
            with contextlib.suppress(NotFoundError):
                sdk.vms.delete(vm_id)


def test_rm_by_pattern_with_yes_does_not_ask(target: Target, sdk: Arker) -> None:
    stem = f"cli-rmy-{new_ulid().lower()}"
    made = sdk.vms.fork("arkuntu", name=f"{stem}-0").vm_id
    done = run_arker(target, "rm", "--name", f"{stem}-*", "--yes", "--json")
    assert _json(done) == {"deleted": [made]}
    assert "?" not in done.stderr.decode()


# --- runs -----------------------------------------------------------------------------


def test_run_exits_with_the_commands_status_and_keeps_the_streams_apart(
    target: Target, vm: VM
) -> None:
    done = run_arker(target, "run", vm[1], "--", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert (done.stdout, done.stderr) == (b"out\n", b"err\n")


def test_run_quotes_several_words_as_one_commands_arguments(target: Target, vm: VM) -> None:
    done = run_arker(target, "run", vm[0], "--", "printf", "%s|", "a b", "$HOME", "--x")
    assert (done.returncode, done.stdout) == (0, b"a b|$HOME|--x|")


def test_run_keeps_a_sessions_directory(target: Target, vm: VM) -> None:
    run_arker(target, "run", vm[0], "--session", "s", "--", "mkdir -p d && cd d")
    done = run_arker(target, "run", vm[0], "--session", "s", "--", "pwd")
    assert done.stdout == b"/home/user/d\n"


def test_run_json_gives_the_result(target: Target, vm: VM) -> None:
    done = run_arker(target, "run", vm[0], "--json", "--", "echo hi; exit 2")
    assert done.returncode == 2
    result = json.loads(done.stdout)
    assert (result["exit_code"], result["stdout_text"]) == (2, "hi\n")


def test_run_timeout_is_exit_124(target: Target, vm: VM) -> None:
    done = run_arker(target, "run", vm[0], "--timeout", "1", "--", "sleep 30")
    assert done.returncode == 124
    assert "timed out" in done.stderr.decode()


def test_ctrl_c_stops_a_run_with_status_130_and_no_traceback(
    target: Target, sdk: Arker, vm: VM
) -> None:
    proc = subprocess.Popen(
        arker_argv("run", vm[0], "--session", "ctrlc", "--", "touch started; sleep 60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=target.env(),
    )
    try:
        while sdk.runs.create(vm[0], "test -f started", session_id="probe").exit_code:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err.decode()
    assert err.decode().strip().splitlines()[-1] == "arker: interrupted"


# --- copies ---------------------------------------------------------------------------


def test_cp_100_mib_both_ways_byte_exact(target: Target, vm: VM, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    up = _json(run_arker(target, "cp", str(src), f"{vm[1]}:/home/user/big.bin", "--json"))
    assert up == {
        "path": f"{vm[1]}:/home/user/big.bin",
        "bytes": 100 * MiB,
        "sha256": sha256_of(src),
    }
    inside = run_arker(target, "run", vm[0], "--", "sha256sum /home/user/big.bin")
    assert inside.stdout.split()[0].decode() == sha256_of(src)

    back = tmp_path / "back"
    back.mkdir()
    down = _json(run_arker(target, "cp", f"{vm[0]}:/home/user/big.bin", f"{back}/", "--json"))
    assert down == {"path": str(back / "big.bin"), "bytes": 100 * MiB, "sha256": sha256_of(src)}
    assert sha256_of(back / "big.bin") == sha256_of(src)


def test_cp_keeps_the_mode_and_names_the_file_into_a_directory(
    target: Target, vm: VM, tmp_path: Path
) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    done = run_arker(target, "cp", str(tool), f"{vm[1]}:/home/user/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"{vm[1]}:/home/user/tool.sh")
    ran = run_arker(target, "run", vm[0], "--", "./tool.sh")
    assert ran.stdout == b"tool ran\n"


def test_cp_to_stdout(target: Target, vm: VM, tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    (tmp_path / "f").write_bytes(data)
    run_arker(target, "cp", str(tmp_path / "f"), f"{vm[0]}:/home/user/f")
    done = run_arker(target, "cp", f"{vm[0]}:/home/user/f", "-")
    assert (done.returncode, done.stdout) == (0, data)


def test_cp_r_copies_a_directory_both_ways(target: Target, vm: VM, tmp_path: Path) -> None:
    src = tmp_path / "project"
    (src / "pkg" / "deep").mkdir(parents=True)
    files = {
        "README": b"readme\n",
        "pkg/mod.py": b"x = 1\n",
        "pkg/deep/data.bin": os.urandom(5 * MiB),
        "empty": b"",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    (src / "pkg" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (src / "pkg" / "run.sh").chmod(0o755)
    files["pkg/run.sh"] = b"#!/bin/sh\n"

    up = _json(run_arker(target, "cp", "-r", str(src), f"{vm[1]}:/home/user/p", "--json"))
    assert sorted(up["transferred"]) == sorted(files)  # type: ignore[index]
    again = run_arker(target, "cp", "-r", str(src), f"{vm[1]}:/home/user/p")
    assert again.returncode == 0
    assert "0 copied" in again.stdout.decode() and "5 unchanged" in again.stdout.decode()

    back = tmp_path / "back"
    done = run_arker(target, "cp", "-r", f"{vm[0]}:/home/user/p", str(back))
    assert done.returncode == 0, done.stderr
    got = {str(p.relative_to(back)): p.read_bytes() for p in back.rglob("*") if p.is_file()}
    assert got == files
    assert (back / "pkg" / "run.sh").stat().st_mode & 0o777 == 0o755


# --- errors ---------------------------------------------------------------------------


def test_an_unknown_vm_is_one_line_and_status_1(target: Target) -> None:
    done = run_arker(target, "run", "no-such-vm", "--", "true")
    assert done.returncode == 1
    assert one_error_line(done) == "arker: not_found: no VM has the id or name 'no-such-vm'"


def test_a_server_error_is_its_code_and_message(target: Target) -> None:
    done = run_arker(target, "rm", "01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0")
    assert done.returncode == 1
    assert one_error_line(done).startswith("arker: not_found: 01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0")


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "--limit", "zero"),
        ("ls", "--sort", "size"),
        ("run",),
        ("fork",),
        ("nosuchcommand",),
        ("cp", "a", "b"),
        ("cp", "vm:/home/user/a", "vm:/home/user/b"),
        ("rm",),
    ],
)
def test_bad_usage_is_one_line_and_status_2(target: Target, args: tuple[str, ...]) -> None:
    done = run_arker(target, *args)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done).startswith("arker: usage: ")


def test_a_missing_local_file_is_one_line(target: Target, vm: VM, tmp_path: Path) -> None:
    done = run_arker(target, "cp", str(tmp_path / "missing"), f"{vm[0]}:/home/user/x")
    assert done.returncode == 1
    assert one_error_line(done) == (
        f"arker: local_error: No such file or directory: {tmp_path / 'missing'}"
    )


def test_a_path_outside_home_is_refused_in_one_line(target: Target, vm: VM, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    done = run_arker(target, "cp", str(tmp_path / "f"), f"{vm[0]}:/etc/passwd")
    assert done.returncode == 1
    assert one_error_line(done).startswith("arker: bad_request: ")


def test_no_api_key_is_a_configuration_error(target: Target) -> None:
    env = target.env()
    del env["ARKER_API_KEY"]
    done = run_arker(None, "ls", env=env)
    assert done.returncode == 1
    assert one_error_line(done).startswith("arker: configuration: no API key")


def test_a_wrong_key_is_unauthorized(target: Target) -> None:
    done = run_arker(target, "ls", "--api-key", "ark_wrong")
    assert done.returncode == 1
    assert one_error_line(done).startswith("arker: unauthorized: ")


def test_debug_logs_the_requests(target: Target) -> None:
    done = run_arker(target, "--debug", "ls", "--limit", "1")
    assert done.returncode == 0
    assert "/api/v1/vms/list" in done.stderr.decode()
    assert target.api_key not in done.stderr.decode()


def test_every_command_has_help_with_an_example(target: Target) -> None:
    for name in ("ls", "fork", "rm", "diff", "run", "start", "logs", "cancel", "cp", "shell"):
        done = run_arker(target, name, "--help")
        assert done.returncode == 0, name
        assert f"example:\n  arker {name} " in done.stdout.decode() or (
            name == "start" and "arker start" in done.stdout.decode()
        ), name


def test_serve_keeps_its_own_flags(target: Target) -> None:
    done = run_arker(target, "serve", "--help")
    assert done.returncode == 0
    for flag in ("--storage", "--disk-quota", "--network", "--base", "--data-dir"):
        assert flag in done.stdout.decode()


def test_cp_of_a_directory_without_r_says_to_use_r(target: Target, vm: VM, tmp_path: Path) -> None:
    run_arker(target, "run", vm[0], "--", "mkdir -p d && echo x > d/f")
    down = run_arker(target, "cp", f"{vm[0]}:/home/user/d", str(tmp_path / "d"))
    assert down.returncode == 1
    assert one_error_line(down).endswith("(use cp -r)")
    up = run_arker(target, "cp", str(tmp_path), f"{vm[0]}:/home/user/x")
    assert up.returncode == 2
    assert one_error_line(up).endswith("is a directory: use cp -r")


def test_cp_r_of_a_file_or_of_nothing_is_an_error(target: Target, vm: VM, tmp_path: Path) -> None:
    run_arker(target, "run", vm[0], "--", "echo x > f")
    a_file = run_arker(target, "cp", "-r", f"{vm[0]}:/home/user/f", str(tmp_path / "a"))
    assert a_file.returncode == 2
    assert one_error_line(a_file).endswith("is a file: copy it without -r")
    missing = run_arker(target, "cp", "-r", f"{vm[0]}:/home/user/none", str(tmp_path / "b"))
    assert missing.returncode == 1
    assert one_error_line(missing).startswith("arker: not_found: ")


def test_cp_into_a_missing_local_directory_names_it(target: Target, vm: VM, tmp_path: Path) -> None:
    run_arker(target, "run", vm[0], "--", "echo x > f")
    done = run_arker(target, "cp", f"{vm[0]}:/home/user/f", str(tmp_path / "no" / "f"))
    assert done.returncode == 1
    assert one_error_line(done) == f"arker: local_error: no such directory: {tmp_path / 'no'}"
