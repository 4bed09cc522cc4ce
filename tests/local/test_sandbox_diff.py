"""Fork diffs read from a VM's own layers: added, modified, deleted, relative to the
parent as of the fork."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, Limits, SandboxError
from arker.local.sandbox.diff import DiffResult
from arker.local.sandbox.layers import FLATTEN_THRESHOLD
from tests.local.test_sandbox_btrfs import open_btrfs

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"
HOME = "/home/user"


def out(engine: Engine, vm: str, cmd: str) -> str:
    r = engine.run(vm, cmd, session="t", timeout=60)
    assert r.exit_code == 0, (cmd, r.stderr)
    return r.stdout.decode()


def paths(d: DiffResult) -> tuple[list[str], list[str], list[str]]:
    return (
        [c.path for c in d.added],
        [c.path for c in d.modified],
        [c.path for c in d.deleted],
    )


@pytest.fixture(params=["dir", "btrfs"])
def engine(request: pytest.FixtureRequest, sandbox_data_dir: Path) -> Iterator[Engine]:
    """Both storages: directories, and btrfs (copy-ups are reflinks there)."""
    if request.param == "btrfs":
        eng = open_btrfs(sandbox_data_dir, 256 << 20)
    else:
        eng = Engine(sandbox_data_dir, network=False, limits=Limits())
        eng.ensure_base(BASE_VM)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def parent(engine: Engine) -> str:
    engine.fork(BASE_VM, "p")
    out(
        engine,
        "p",
        "cd ~ && echo same > keep && echo old > edit && echo bye > gone && echo x > back"
        " && echo m > mode && mkdir -p d/e && echo deep > d/e/f && echo t > d/t"
        " && ln -s keep link && chmod 644 mode",
    )
    return "p"


def test_added_modified_deleted_against_the_parent_as_of_the_fork(
    engine: Engine, parent: str
) -> None:
    engine.fork(parent, "c")
    out(engine, parent, "cd ~ && echo later > parent_only && rm keep")  # not the child's
    out(
        engine,
        "c",
        "cd ~ && echo new > added && echo changed > edit && rm gone && chmod 755 mode"
        " && echo y > back && echo x > back && touch keep && rm -r d && ln -sfn edit link",
    )
    d = engine.diff("c", HOME)
    assert paths(d) == (
        [f"{HOME}/added"],
        [f"{HOME}/edit", f"{HOME}/link", f"{HOME}/mode"],
        [f"{HOME}/d/e/f", f"{HOME}/d/t", f"{HOME}/gone"],
    )
    added = d.added[0]
    assert added.size == 4 and added.sha256 is not None
    assert added.sha256 == hashlib.sha256(b"new\n").hexdigest()
    assert {c.path: c.mode for c in d.modified}[f"{HOME}/mode"] == 0o755
    assert not d.truncated


def test_an_untouched_fork_and_a_copied_up_file_show_nothing(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    assert paths(engine.diff("c", HOME)) == ([], [], [])
    out(engine, "c", "cd ~ && touch keep edit && cat keep >/dev/null && chmod 644 mode")
    assert paths(engine.diff("c", HOME)) == ([], [], [])


def test_a_directory_removed_and_made_again_is_compared_file_by_file(
    engine: Engine, parent: str
) -> None:
    engine.fork(parent, "c")
    out(engine, "c", "cd ~ && rm -r d && mkdir -p d/e && echo deep > d/e/f && echo n > d/n")
    assert paths(engine.diff("c", HOME)) == ([f"{HOME}/d/n"], [], [f"{HOME}/d/t"])


def test_a_file_replacing_a_directory_and_back(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    out(engine, "c", "cd ~ && rm -r d && echo f > d && rm keep && mkdir keep && echo k > keep/in")
    assert paths(engine.diff("c", HOME)) == (
        [f"{HOME}/d", f"{HOME}/keep/in"],
        [],
        [f"{HOME}/d/e/f", f"{HOME}/d/t", f"{HOME}/keep"],
    )


def test_nested_forks_compare_with_the_direct_parent(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    out(engine, "c", "cd ~ && echo c > from_c && echo c > edit")
    engine.fork("c", "g")  # freezes c's writes into a layer both share
    out(engine, "c", "cd ~ && echo c2 > c_after")
    out(engine, "g", "cd ~ && echo g > from_g && rm from_c")
    assert paths(engine.diff("g", HOME)) == ([f"{HOME}/from_g"], [], [f"{HOME}/from_c"])
    # c's own writes span the layer frozen by its fork and its new upper
    assert paths(engine.diff("c", HOME)) == (
        [f"{HOME}/c_after", f"{HOME}/from_c"],
        [f"{HOME}/edit"],
        [],
    )


def test_deep_paths_and_scoping(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    deep = "/".join(["dd"] * 300)
    out(engine, "c", f"cd ~ && mkdir -p {deep} && echo z > {deep}/z && echo t > /tmp/t")
    d = engine.diff("c", HOME)
    assert paths(d) == ([f"{HOME}/{deep}/z"], [], [])
    assert paths(engine.diff("c", f"{HOME}/d")) == ([], [], [])
    assert "/tmp/t" in paths(engine.diff("c", "/"))[0]


def test_names_that_look_like_markers_are_plain_files(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    out(
        engine,
        "c",
        "cd ~ && touch .wh.keep .wh..wh..opq d/.wh..wh..opq && mkdir .wh.d"
        " && setfattr -n user.overlay.opaque -v y d 2>/dev/null; true",
    )
    assert paths(engine.diff("c", HOME)) == (
        [f"{HOME}/.wh..wh..opq", f"{HOME}/.wh.keep", f"{HOME}/d/.wh..wh..opq"],
        [],
        [],
    )


def test_links_in_the_vm_are_never_followed(engine: Engine, parent: str) -> None:
    engine.fork(parent, "c")
    out(engine, "c", "cd ~ && ln -s /etc etc && ln -s / root && rm -r d && ln -s /etc d")
    d = engine.diff("c", HOME)
    assert paths(d)[0] == [f"{HOME}/d", f"{HOME}/etc", f"{HOME}/root"]
    assert all(c.sha256 is None for c in d.added)


def test_a_base_image_has_nothing_to_compare(engine: Engine) -> None:
    with pytest.raises(SandboxError) as ei:
        engine.diff(BASE_VM, HOME)
    assert ei.value.code == "bad_request"
    with pytest.raises(SandboxError) as ei:
        engine.diff("absent", HOME)
    assert ei.value.code == "not_found"


def test_a_vm_whose_layers_were_merged_says_so(engine: Engine, parent: str) -> None:
    engine.fork(parent, "m")
    for i in range(FLATTEN_THRESHOLD + 1):
        out(engine, "m", f"echo {i} > ~/f{i}")
        engine.fork("m", f"k{i}")
    with pytest.raises(SandboxError) as ei:
        engine.diff("m", HOME)
    assert ei.value.code == "bad_request" and "merged" in ei.value.message
    # its children compare with it as it was when they were made
    out(engine, f"k{FLATTEN_THRESHOLD}", "rm ~/f0")
    assert paths(engine.diff(f"k{FLATTEN_THRESHOLD}", HOME)) == ([], [], [f"{HOME}/f0"])
    engine.fork(BASE_VM, "n")  # forked from an untouched base: nothing below it to lose
    for i in range(FLATTEN_THRESHOLD + 1):
        out(engine, "n", f"echo {i} > ~/f{i}")
        engine.fork("n", f"j{i}")
    assert len(engine.diff("n", HOME).added) == FLATTEN_THRESHOLD + 1
