"""``arker shell`` against a fake PTY WebSocket route on loopback (no `arker serve` has
one yet): the upgrade, keys in, output out, the end of piped input, refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.fake_pty import FakePty
from tests.cli.kit import Target, one_error_line, run_arker

KEY = "ark_test_key"
VM_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV_loc0"


@pytest.fixture
def pty() -> Iterator[FakePty]:
    fake = FakePty(KEY)
    yield fake
    fake.close()


def _target(fake: FakePty) -> Target:
    return Target(fake.url, fake.url, KEY)


def test_shell_sends_keys_and_prints_the_terminal_until_it_closes(pty: FakePty) -> None:
    done = run_arker(_target(pty), "shell", VM_ID, "--session", "s 1", input=b"ls -l\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"$ LS -L\n"
    assert pty.received == b"ls -l\n\x04"  # piped input ends with Ctrl-D
    method, path, _ = pty.requests[0].split(" ")
    assert method == "GET"
    assert path.startswith(f"/api/v1/vms/{VM_ID}/sessions/s%201/pty?cols=")


@pytest.mark.parametrize(
    ("status", "error", "line"),
    [
        (404, {"code": "not_found", "message": "Not Found"}, "arker: unsupported_operation: "),
        (409, {"code": "vm_busy", "message": "too many terminals"}, "arker: vm_busy: too many"),
        (404, {"code": "not_found", "message": "vm not found"}, "arker: not_found: vm not"),
    ],
)
def test_a_refused_terminal_is_one_line(status: int, error: dict[str, str], line: str) -> None:
    fake = FakePty(KEY, refuse=(status, error))
    try:
        done = run_arker(_target(fake), "shell", VM_ID)
    finally:
        fake.close()
    assert done.returncode == 1
    assert one_error_line(done).startswith(line)
