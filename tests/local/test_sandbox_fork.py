"""Fork isolation, deletion, deep chains across the flatten threshold, GC."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from arker.local.sandbox import Engine, SandboxError
from arker.local.sandbox.layers import FLATTEN_THRESHOLD
from tests.kit.sandbox import put_file

BASE_VM = "01KQBYKEV5WJ7YB010603T1DCT_d8c0"


def out(engine: Engine, vm: str, cmd: str) -> str:
    r = engine.run(vm, cmd, session="t", timeout=60)
    assert r.exit_code == 0, (cmd, r.stderr)
    return r.stdout.decode()


def test_fork_isolation_both_ways(engine: Engine) -> None:
    engine.fork(BASE_VM, "p")
    out(engine, "p", "echo one > a; mkdir d; echo in > d/x")
    engine.fork("p", "c")
    out(engine, "p", "echo parent > a; echo p > onlyp; rm d/x")
    out(engine, "c", "echo child > a; echo c > onlyc; rm -r d")
    assert out(engine, "p", "cat a; ls") == "parent\na\nd\nonlyp\n"
    assert out(engine, "c", "cat a; ls") == "child\na\nonlyc\n"
    engine.fork("c", "g")
    assert out(engine, "g", "cat a onlyc") == "child\nc\n"
    # Forking an untouched VM (empty upper) shares its lowers without freezing.
    engine.fork(BASE_VM, "fresh")
    assert out(engine, "fresh", "ls -A ~") == ""
    with pytest.raises(SandboxError) as ei:
        engine.fork("p", "c")
    assert ei.value.code == "bad_request"
    with pytest.raises(SandboxError) as ei:
        engine.fork("missing", "zz")
    assert ei.value.code == "not_found"


def test_children_survive_parent_deletion(engine: Engine, sandbox_data_dir: Path) -> None:
    engine.fork(BASE_VM, "p")
    out(engine, "p", "echo keep > k")
    engine.fork("p", "c1")
    engine.fork("p", "c2")
    engine.delete("p")
    assert not engine.exists("p")
    assert out(engine, "c1", "cat k") == "keep\n"
    engine.delete("c1")
    assert out(engine, "c2", "cat k; echo more >> k; cat k") == "keep\nkeep\nmore\n"
    with pytest.raises(SandboxError) as ei:
        engine.delete("p")
    assert ei.value.code == "not_found"
    with pytest.raises(SandboxError) as ei:
        engine.run("p", "true", session="0", timeout=5)
    assert ei.value.code == "not_found"


def test_deep_chain_past_flatten_threshold(engine: Engine, sandbox_data_dir: Path) -> None:
    depth = FLATTEN_THRESHOLD + 8
    prev = BASE_VM
    for g in range(1, depth + 1):
        vm = f"gen{g}"
        engine.fork(prev, vm)
        cmds = [f"echo {g} > ~/gen{g}"]
        if g > 2:
            cmds.append(f"rm ~/gen{g - 2}")
        if g == 3:
            cmds.append("mkdir -p ~/d/sub && echo old > ~/d/sub/f && echo o > ~/d/keep")
        if g == 9:
            cmds.append("rm -r ~/d && echo now-a-file > ~/d")
        if g == 15:
            cmds.append("rm ~/d && mkdir -p ~/d/new && echo fresh > ~/d/new/f")
        if g == 20:
            # A directory that exists only in middle layers, with a file deleted in it.
            cmds.append("mkdir ~/solo && echo 1 > ~/solo/a && echo 2 > ~/solo/b")
        if g == 21:
            cmds.append("rm ~/solo/a")
        if g == 25:
            cmds.append("mkdir -p ~/x/y && echo z > ~/x/y/z")
        if g == 26:
            cmds.append("rm -r ~/x && mkdir -p ~/x/y && echo w > ~/x/y/w")
        out(engine, vm, " && ".join(cmds))
        prev = vm
    final = out(engine, prev, "ls -A ~ | sort; ls -A ~/d ~/d/new ~/solo ~/x/y; cat ~/d/new/f")
    expected_gens = sorted(f"gen{g}" for g in (depth - 1, depth))
    lines = final.split("\n")
    assert sorted(ln for ln in lines if ln.startswith("gen")) == expected_gens
    assert "d" in lines and "solo" in lines and "x" in lines
    assert "?" not in out(engine, prev, "ls -la ~ ~/d ~/solo ~/x ~/x/y")
    assert out(engine, prev, "ls ~/d; ls ~/solo; ls ~/x/y; cat ~/d/new/f") == "new\nb\nw\nfresh\n"
    # Every generation still sees exactly its own state.
    assert out(engine, "gen4", "ls ~ | sort; cat ~/d/sub/f") == "d\ngen3\ngen4\nold\n"
    assert out(engine, "gen10", "cat ~/d") == "now-a-file\n"
    assert out(engine, "gen20", "ls ~/solo") == "a\nb\n"
    assert out(engine, "gen25", "ls ~/x/y") == "z\n"
    # The chain was flattened: the metadata stays short.
    meta = json.loads((sandbox_data_dir / "engine" / "vms" / f"{prev}.json").read_text())
    assert len(meta["layers"]) <= FLATTEN_THRESHOLD
    # Deleting the middle of the chain leaves the rest intact.
    for g in range(1, depth):
        engine.delete(f"gen{g}")
    assert out(engine, prev, "cat ~/d/new/f ~/solo/b") == "fresh\n2\n"


def test_fork_waits_for_or_rejects_running_commands(engine: Engine) -> None:
    engine.fork(BASE_VM, "p")
    out(engine, "p", "echo data > f")
    engine.busy_wait_s = 0.3
    t = threading.Thread(
        target=engine.run, args=("p", "sleep 3"), kwargs={"session": "long", "timeout": 10}
    )
    t.start()
    try:
        busy = None
        for _ in range(200):
            try:
                engine.fork("p", "c")
                engine.delete("c")  # the long run had not started yet; retry
            except SandboxError as exc:
                busy = exc
                break
            time.sleep(0.01)
        assert busy is not None and busy.code == "vm_busy"
    finally:
        t.join()
    engine.busy_wait_s = 2.0
    engine.fork("p", "c")
    assert out(engine, "c", "cat f") == "data\n"


def test_gc_drops_unlisted_vms_and_layers(engine: Engine, sandbox_data_dir: Path) -> None:
    engine.fork(BASE_VM, "keep")
    out(engine, "keep", "echo k > k")
    engine.fork("keep", "drop")
    out(engine, "drop", "head -c 100000 /dev/zero > big")
    layers = sandbox_data_dir / "engine" / "layers"
    before = set(p.name for p in layers.iterdir())
    (layers / "tmp-deadbeef").mkdir()  # a crashed flatten
    engine.gc({"keep"})
    assert engine.vm_ids() == {BASE_VM, "keep"}
    after = set(p.name for p in layers.iterdir())
    assert after < before and "tmp-deadbeef" not in after
    assert out(engine, "keep", "cat k") == "k\n"


def test_concurrent_forks_runs_and_writes(engine: Engine) -> None:
    engine.fork(BASE_VM, "root")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            vm = f"w{i}"
            engine.fork("root", vm)
            put_file(engine, vm, f"/home/user/f{i}", b"%d" % i)
            assert out(engine, vm, f"cat f{i}") == str(i)
            engine.fork(vm, f"w{i}c")
            assert out(engine, f"w{i}c", "ls") == f"f{i}\n"
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_hundreds_of_successive_forks(engine: Engine) -> None:
    prev = BASE_VM
    for g in range(300):
        vm = f"s{g}"
        engine.fork(prev, vm)
        put_file(engine, vm, f"/home/user/g{g}", b"x")
        if g % 50 == 49:
            engine.delete(prev)  # parents vanish along the way; the chain keeps working
        prev = vm
    assert out(engine, prev, "ls ~ | wc -l") == "300\n"
