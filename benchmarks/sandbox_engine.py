"""Measure the sandbox engine: fork latency and per-command overhead.

Run as root on the target machine::

    python benchmarks/sandbox_engine.py [--data-dir /var/tmp/arker-bench] [--runs 30]

Prints medians (ms) and ratios:
  * fork with an empty upper (nothing to freeze), with one small file, and with an
    upper holding 1 GiB in 2,000 files (frozen by rename-free metadata; no copy);
  * a chain of successive forks (flattening included), slowest and median;
  * ``echo hi`` through ``Engine.run`` (session wrapper, cgroups) versus a bare
    bwrap spawn with the same namespaces and versus a plain host subprocess.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arker.local.sandbox import Engine
from arker.local.sandbox.probe import find_bwrap, probe

BASE = "base"


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def timed(fn: object, *args: object) -> float:
    t = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t


def put(eng: Engine, vm_id: str, path: str, data: bytes) -> None:
    """Write a file the way the server does an upload: staged in the VM, then committed."""
    eng.check_room(vm_id, len(data))
    name = secrets.token_hex(20)
    with eng.staged_file(vm_id, name) as staged:
        staged.pwrite([data], 0)
        staged.fsync()
    eng.commit_staged(vm_id, name, path, len(data))


def bench_fork(eng: Engine, runs: int, big_samples: int) -> dict[str, float]:
    res: dict[str, float] = {}
    eng.fork(BASE, "src")
    res["fork_empty_upper"] = ms([timed(eng.fork, "src", f"e{i}") for i in range(runs)])
    small = []
    for i in range(runs):
        put(eng, "src", "/home/user/small", b"x" * 1024)
        small.append(timed(eng.fork, "src", f"s{i}"))
    res["fork_small_upper"] = ms(small)
    fill = (
        "mkdir -p ~/data && cd ~/data && for i in $(seq 1 2000); do "
        "head -c 536871 /dev/zero > f$i; done"
    )
    clean, dirty = [], []
    for i in range(big_samples):
        vm = f"big{i}"
        eng.fork(BASE, vm)
        # Clean: the 1 GiB is already on disk (os.sync) when the fork happens.
        assert eng.run(vm, fill, session="0", timeout=600).exit_code == 0
        os.sync()
        clean.append(timed(eng.fork, vm, f"{vm}c"))
        # Dirty: fork right after writing; ext4's ordered-mode journal commit for the
        # metadata fsyncs then waits for part of that data to be written back.
        assert eng.run(vm, fill.replace("data", "data2"), session="0", timeout=600).exit_code == 0
        dirty.append(timed(eng.fork, vm, f"{vm}d"))
        for v in (f"{vm}c", f"{vm}d", vm):
            eng.delete(v)
    res["fork_1gib_2000_files_clean"] = ms(clean)
    res["fork_1gib_2000_files_dirty"] = ms(dirty)
    return res


def bench_chain(eng: Engine, depth: int) -> dict[str, float]:
    prev = BASE
    times = []
    for g in range(depth):
        vm = f"chain{g}"
        times.append(timed(eng.fork, prev, vm))
        put(eng, vm, f"/home/user/g{g}", b"%d" % g)
        prev = vm
    r = eng.run(prev, "ls ~ | wc -l", session="0", timeout=60)
    assert r.stdout.strip() == str(depth).encode(), r
    return {
        f"chain_{depth}_fork_median": ms(times),
        f"chain_{depth}_fork_max": max(times) * 1000.0,
        f"chain_{depth}_echo_at_end": eng.run(prev, "echo hi", session="x", timeout=60).duration_ms,
    }


def bench_run(eng: Engine, runs: int) -> dict[str, float]:
    eng.fork(BASE, "runner")
    eng.run("runner", "true", session="0", timeout=60)  # mount + cgroup setup
    engine_runs = []
    for _ in range(runs):
        t = time.perf_counter()
        r = eng.run("runner", "echo hi", session="0", timeout=60)
        engine_runs.append(time.perf_counter() - t)
        assert r.stdout == b"hi\n"
    bwrap = find_bwrap() or "bwrap"
    bare_argv = [
        bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--proc", "/proc", "--dev", "/dev", "--unshare-all", "--unshare-user",
        "--die-with-parent", "--new-session", "--uid", "1000", "--gid", "1000",
        "--", "/bin/sh", "-c", "echo hi",
    ]  # fmt: skip
    bare = []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(
            bare_argv, capture_output=True, user=eng.sandbox_uid, group=eng.sandbox_uid,
            extra_groups=[], check=True,
        )  # fmt: skip
        bare.append(time.perf_counter() - t)
        assert out.stdout == b"hi\n", out
    host = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, check=True)
        host.append(time.perf_counter() - t)
    return {
        "run_echo_engine": ms(engine_runs),
        "run_echo_bare_bwrap": ms(bare),
        "run_echo_host_subprocess": ms(host),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default="/var/tmp/arker-bench")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--big-samples", type=int, default=5)
    ap.add_argument("--chain", type=int, default=500)
    args = ap.parse_args()
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    probe(data)
    eng = Engine(data, network=False)
    try:
        eng.ensure_base(BASE)
        res = {}
        res.update(bench_run(eng, args.runs))
        res.update(bench_fork(eng, args.runs, args.big_samples))
        res.update(bench_chain(eng, args.chain))
    finally:
        eng.close()
        shutil.rmtree(data, ignore_errors=True)
    for k, v in res.items():
        print(f"{k:32s} {v:9.2f} ms")
    print(
        f"{'ratio fork 1GiB clean / empty':32s} "
        f"{res['fork_1gib_2000_files_clean'] / res['fork_empty_upper']:9.2f}x"
    )
    print(
        f"{'ratio fork 1GiB clean / small':32s} "
        f"{res['fork_1gib_2000_files_clean'] / res['fork_small_upper']:9.2f}x"
    )
    print(
        f"{'ratio engine echo / bare bwrap':32s} "
        f"{res['run_echo_engine'] / res['run_echo_bare_bwrap']:9.2f}x"
    )
    print(
        f"{'ratio bare bwrap / host':32s} "
        f"{res['run_echo_bare_bwrap'] / res['run_echo_host_subprocess']:9.2f}x"
    )


if __name__ == "__main__":
    main()
