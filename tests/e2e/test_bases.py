"""Both base images through the SDK and a real `arker serve`: shell, Python, Node, files, forks.

One server per base: the session's ``arker_server`` (``--base host``) and one started
here with ``--base debian``. Its image comes from ``arker serve build-image debian``,
which debootstraps once per machine into the image cache (``/var/cache/arker/images``
as root) and after that only links the cached image into the data dir (seconds). The
debian cases skip only when the build fails because the Debian mirror cannot be
reached (an offline machine); any other build failure, debootstrap missing included,
fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from arker import Arker, Computer
from arker.local.sandbox.baseimage import DEBIAN_MIRROR, DEBIAN_SUITE
from arker.testing import ArkerServer, start_server

pytestmark = pytest.mark.e2e

BUILD_TIMEOUT_S = 900
_ROOT = Path(__file__).resolve().parents[2]


def _mirror_unreachable() -> str | None:
    """Why the Debian mirror cannot be reached from here, or ``None`` when it can."""
    url = f"{DEBIAN_MIRROR}/dists/{DEBIAN_SUITE}/Release"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            resp.read(1)
    except OSError as exc:
        return f"{url}: {exc}"
    return None


def _build_debian_image(data_dir: Path) -> None:
    """``arker serve build-image debian`` into ``data_dir``: cached after the first build."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "arker", "serve", "build-image", "debian", "--data-dir", data_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode == 0:
        return
    offline = _mirror_unreachable()
    if offline is not None:
        pytest.skip(f"the debian base cannot be built: the Debian mirror is unreachable: {offline}")
    pytest.fail(f"arker serve build-image debian failed: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def debian_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArkerServer]:
    """An ``arker serve --base debian`` for this module."""
    data_dir = tmp_path_factory.mktemp("debian-base") / "data"
    _build_debian_image(data_dir)
    server = start_server(data_dir, extra_args=("--base", "debian"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["host", "debian"])
def base(request: pytest.FixtureRequest) -> Iterator[tuple[str, Arker]]:
    """``(base name, client)`` of a server on each base."""
    name = str(request.param)
    fixture = "arker_server" if name == "host" else "debian_server"
    server: ArkerServer = request.getfixturevalue(fixture)
    client = Arker(server.api_key, base_url=server.base_url, control_url=server.control_url)
    try:
        yield name, client
    finally:
        client.close()


@pytest.fixture()
def vm(base: tuple[str, Arker]) -> Iterator[Computer]:
    with base[1].vm("arkuntu").fork() as made:
        yield made


def test_shell_runs_on_each_base(vm: Computer) -> None:
    result = vm.run('echo "$HOME" "$(id -u)"; cd /tmp && pwd; echo err >&2; exit 7')
    assert (result.stdout, result.stderr, result.exit_code) == (
        b"/home/user 1000\n/tmp\n",
        b"err\n",
        7,
    )


def test_python_runs_on_each_base(vm: Computer) -> None:
    result = vm.run("python3 -c 'import json, sys; print(json.dumps([sys.version_info[0], 6*7]))'")
    assert (result.stdout, result.exit_code) == (b"[3, 42]\n", 0)


def test_node_runs_on_each_base(base: tuple[str, Arker], vm: Computer) -> None:
    if base[0] == "host" and shutil.which("node") is None:
        pytest.skip(
            "the host base offers the host's /usr, and this host has no node: "
            "apt-get install -y nodejs"
        )
    result = vm.run("node -e 'console.log(JSON.stringify({n: 6*7}), process.version)'")
    assert result.exit_code == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith('{"n":42} v') and out.endswith("\n")


def test_files_written_either_way_read_back_on_each_base(vm: Computer) -> None:
    vm.sync.write_file("/home/user/in.txt", "from the SDK\n")
    assert vm.run("cat /home/user/in.txt").stdout == b"from the SDK\n"
    assert vm.run("printf 'from the VM\\n' > /home/user/out.txt").exit_code == 0
    assert vm.sync.read_file("/home/user/out.txt") == b"from the VM\n"


def test_forks_are_isolated_on_each_base(vm: Computer) -> None:
    vm.run("echo parent > /home/user/f; echo parent > /tmp/arker-probe")
    with vm.fork() as child:
        assert child.run("cat /home/user/f /tmp/arker-probe").stdout == b"parent\nparent\n"
        child.run("echo child > /home/user/f; echo child > /tmp/arker-probe; touch /home/user/c")
        assert vm.run("cat /home/user/f /tmp/arker-probe").stdout == b"parent\nparent\n"
        assert vm.run("test -e /home/user/c").exit_code == 1
        vm.run("echo parent2 > /home/user/f")
        assert child.run("cat /home/user/f /tmp/arker-probe").stdout == b"child\nchild\n"
