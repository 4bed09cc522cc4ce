"""The command line's formatting and parsing, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from arker._models import ForkResult
from arker.cli.context import CliError
from arker.cli.files import Location, parse_location
from arker.cli.output import error_line, human_size, relative_time, table, to_jsonable
from arker.cli.runs import command_line
from arker.cli.vms import diff_lines

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=3), "just now"),
        (timedelta(seconds=50), "50 seconds ago"),
        (timedelta(minutes=1, seconds=10), "1 minute ago"),
        (timedelta(minutes=59), "59 minutes ago"),
        (timedelta(hours=2, minutes=59), "2 hours ago"),
        (timedelta(days=1), "1 day ago"),
        (timedelta(days=45), "1 month ago"),
        (timedelta(days=800), "2 years ago"),
        (-timedelta(minutes=5), "in 5 minutes"),
        (-timedelta(seconds=10), "in a few seconds"),
    ],
)
def test_relative_time_names_the_largest_whole_unit(delta: timedelta, text: str) -> None:
    assert relative_time(NOW - delta, NOW) == text


def test_relative_time_of_nothing_is_a_dash_and_naive_times_are_utc() -> None:
    assert relative_time(None, NOW) == "-"
    assert relative_time(datetime(2026, 12, 2, 11, 0), NOW) == "1 hour ago"


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (100 << 20, "100.0 MiB")],
)
def test_human_size_uses_binary_units(size: int | None, text: str) -> None:
    assert human_size(size) == text


def test_table_aligns_columns_on_the_widest_cell_without_trailing_blanks() -> None:
    out = table(["ID", "NAME", "AGE"], [["a", "longer-name", "1"], ["bbbb", "-", "22"]])
    assert out.splitlines() == [
        "ID    NAME         AGE",
        "a     longer-name  1",
        "bbbb  -            22",
    ]


def test_error_line_is_one_line_whatever_the_message() -> None:
    assert error_line("bad_request", "path\n  must be\tabsolute") == (
        "arker: bad_request: path must be absolute"
    )


def test_models_become_json_data() -> None:
    made = ForkResult(vm_id="v", created_at=NOW)
    assert to_jsonable([made]) == [
        {"vm_id": "v", "name": None, "base_image": None, "region": None,
         "created_at": "2026-12-02T12:00:00Z", "expires_at": None}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("vm:/home/user/a", Location("/home/user/a", "vm")),
        ("vm:a/b", Location("/home/user/a/b", "vm")),
        ("vm:", Location("/home/user/", "vm")),
        ("./a:b", Location("./a:b")),
        ("/tmp/a:b", Location("/tmp/a:b")),
        ("plain", Location("plain")),
        (":x", Location(":x")),
    ],
)
def test_cp_locations(text: str, where: Location) -> None:
    assert parse_location(text) == where


def test_one_word_is_a_shell_line_and_several_are_quoted_arguments() -> None:
    assert command_line(["cd src && make"]) == "cd src && make"
    assert command_line(["echo", "a b", "$HOME"]) == "echo 'a b' '$HOME'"
    with pytest.raises(CliError):
        command_line([])


def test_a_fork_diff_prints_like_git_status_short() -> None:
    def entry(path: str, size: int | None) -> SimpleNamespace:
        return SimpleNamespace(path=path, size=size, sha256=None)

    changes = SimpleNamespace(
        added=[entry("/home/user/new.txt", 12)],
        modified=[entry("/home/user/a/conf", 2048)],
        deleted=[entry("/home/user/gone", 5)],
    )
    assert diff_lines(changes) == [
        "M  /home/user/a/conf  (2.0 KiB)",
        "D  /home/user/gone",
        "A  /home/user/new.txt  (12 B)",
    ]
