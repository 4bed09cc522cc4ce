"""Private mount namespace and crash (SIGKILL) recovery, with the engine in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from arker.local.sandbox import Engine

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from arker.local.sandbox import Engine, enter_private_mount_namespace
    enter_private_mount_namespace()
    e = Engine(Path(sys.argv[1]), network=False)
    e.ensure_base("base")
    e.fork("base", "v")
    r = e.run(
        "v", "echo hello > f && echo more >> f && cd /tmp && export K=v", session="s", timeout=30
    )
    assert r.exit_code == 0, r.stderr
    print("READY", flush=True)
    e.run("v", "sleep " + sys.argv[2], session="other", timeout=3000)
    """
)


def _overlays(tag_dir: str) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [ln for ln in fh if tag_dir in ln]


# Unique per run: other runs of this test on the same host must not count.
_SLEEP = f"1000.{os.getpid()}{time.monotonic_ns() % 1000:03d}"


def _sleepers() -> list[str]:
    ps = subprocess.run(["pgrep", "-f", f"sleep {_SLEEP}"], capture_output=True, check=False)
    return ps.stdout.decode().split()


def test_private_namespace_and_sigkill_recovery(sandbox_data_dir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(sandbox_data_dir), _SLEEP],
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"READY\n"
        # The child's overlays live in its own namespace: invisible here.
        mine = _overlays(f"{sandbox_data_dir}/")
        assert [ln for ln in mine if " - overlay " in ln] == []
        for _ in range(200):  # kill while the command is really running
            if _sleepers():
                break
            time.sleep(0.02)
        assert _sleepers()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # --die-with-parent: the running command died with the engine.
    for _ in range(100):
        if not _sleepers():
            break
        time.sleep(0.05)
    assert _sleepers() == []
    eng = Engine(sandbox_data_dir, network=False)
    try:
        assert eng.vm_ids() == {"base", "v"}
        r = eng.run("v", "cat ~/f; pwd; echo $K", session="s", timeout=30)
        assert r.stdout == b"hello\nmore\n/tmp\nv\n"
    finally:
        eng.close()
