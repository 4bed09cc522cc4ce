"""Base images: the zero-download host skeleton and an optional debootstrap rootfs.

The host base is a small skeleton lower layer (directories, a synthesized
``passwd``/``group`` and ~20 selected ``/etc`` files) plus read-only binds of the
host's ``/usr`` (and ``/lib*``, ``/bin``, ``/sbin`` when they are real directories).
All of host ``/etc`` is never exposed: it holds secrets and host identity.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import SandboxError, SandboxUnavailable

__all__ = [
    "DEBIAN_BASE",
    "HOST_BASE",
    "SESSIONS_DIR",
    "VM_HOME",
    "VM_UID",
    "BaseImages",
    "build_debian_rootfs",
    "build_host_skeleton",
    "default_debian_rootfs",
    "host_binds",
]

HOST_BASE = "host"
DEBIAN_BASE = "debian"
VM_UID = 1000
VM_HOME = "/home/user"
SESSIONS_DIR = "/var/lib/arker/sessions"

_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Copied (not bound) so each VM gets a copy-on-write view and no bind per command.
_ETC_FILES = (
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates.conf",
    "alternatives",
    "profile",
    "environment",
    "inputrc",
    "mime.types",
    "protocols",
    "services",
    "networks",
    "shells",
    "os-release",
    "debian_version",
    "bash.bashrc",
    "python3",
    "python3.11",
)

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"user:x:{VM_UID}:{VM_UID}:user:{VM_HOME}:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\nuser:x:{VM_UID}:\nusers:x:100:user\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1\tlocalhost vm\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def host_binds() -> list[str]:
    """Host directories to bind read-only at the same path in every host-base VM."""
    binds = ["/usr"]
    for name in _TOP_LINKS:
        path = f"/{name}"
        if os.path.isdir(path) and not os.path.islink(path):
            binds.append(path)
    return binds


def _copy_etc(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    elif src.is_file():
        shutil.copy2(src, dst)


def build_host_skeleton(dest: Path, sandbox_uid: int) -> None:
    """Build the host-base skeleton layer atomically at ``dest``.

    Args:
        dest: Final directory (must not exist); built in a sibling temp dir and renamed.
        sandbox_uid: Host uid/gid the VM user maps to; owns ``/home/user``.
    """
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    for d in (
        "usr", "etc", "proc", "dev", "sys", "run", "mnt", "opt", "srv", "media",
        "var", "var/lib", "var/cache", "var/log", "var/lib/arker", "home",
    ):  # fmt: skip
        (tmp / d).mkdir(mode=0o755, exist_ok=True)
    for name in _TOP_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            os.symlink(os.readlink(host), tmp / name)
        elif host.is_dir():
            (tmp / name).mkdir(mode=0o755)  # bind-mount target
    for d in ("tmp", "var/tmp"):
        (tmp / d).mkdir()
        os.chmod(tmp / d, 0o1777)
    (tmp / "root").mkdir(mode=0o700)
    for d in (VM_HOME, SESSIONS_DIR):
        p = tmp / d.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, sandbox_uid, sandbox_uid)
    os.chmod(tmp / SESSIONS_DIR.lstrip("/"), 0o700)
    etc = tmp / "etc"
    for name in _ETC_FILES:
        src = Path("/etc") / name
        if src.exists() or src.is_symlink():
            _copy_etc(src, etc / name)
    (etc / "passwd").write_text(_PASSWD)
    (etc / "group").write_text(_GROUP)
    (etc / "hostname").write_text("vm\n")
    (etc / "hosts").write_text(_HOSTS)
    os.rename(tmp, dest)


def default_debian_rootfs(data_dir: Path) -> Path:
    """Where ``Engine(base="debian")`` looks for the rootfs built by ``build_debian_rootfs``."""
    return Path(data_dir) / "engine" / "base" / DEBIAN_BASE


def build_debian_rootfs(
    dest: Path,
    *,
    sandbox_uid: int = 60999,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
) -> None:
    """Build a full Debian rootfs with debootstrap (about a minute, ~180 MB).

    Everything in it is copy-on-write per VM. The VM user ``user`` (uid 1000 inside,
    host ``sandbox_uid``) owns ``/home/user``.

    Args:
        dest: Final directory (must not exist); built beside it and renamed.
        sandbox_uid: Host uid the VM user maps to.
        suite: Debian suite.
        mirror: Debian mirror URL.

    Raises:
        RuntimeError: debootstrap is missing or failed.
    """
    exe = shutil.which("debootstrap")
    if exe is None:
        raise RuntimeError("debootstrap not found: install it: apt-get install -y debootstrap")
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [exe, "--variant=minbase", "--include=python3,ca-certificates", suite, str(tmp), mirror],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"debootstrap failed: {' '.join(tail)}")
    shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
    (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
    (tmp / "var/lib/apt/lists").mkdir(parents=True, exist_ok=True)
    with open(tmp / "etc/passwd", "a", encoding="utf-8") as fh:
        fh.write(f"user:x:{VM_UID}:{VM_UID}:user:{VM_HOME}:/bin/sh\n")
    with open(tmp / "etc/group", "a", encoding="utf-8") as fh:
        fh.write(f"user:x:{VM_UID}:\n")
    (tmp / "etc/hostname").write_text("vm\n")
    for d in (VM_HOME, SESSIONS_DIR):
        p = tmp / d.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, sandbox_uid, sandbox_uid)
    os.chmod(tmp / SESSIONS_DIR.lstrip("/"), 0o700)
    os.rename(tmp, dest)


class BaseImages:
    """Where each base image of an engine lives; the host skeleton is built on first use.

    Args:
        data_dir: The engine's data dir.
        sandbox_uid: Host uid the VM user maps to (owns the skeleton's home).
    """

    def __init__(self, data_dir: Path, sandbox_uid: int) -> None:
        self._dirs = {
            HOST_BASE: Path(data_dir) / "engine" / "base" / HOST_BASE,
            DEBIAN_BASE: default_debian_rootfs(data_dir),
        }
        self._sandbox_uid = sandbox_uid

    def path(self, name: str) -> Path:
        """The base image's directory (the lowest layer of every VM on it).

        Raises:
            SandboxError: ``internal`` for an unknown name.
            SandboxUnavailable: The debian rootfs was never built.
        """
        path = self._dirs.get(name)
        if path is None:
            raise SandboxError("internal", f"unknown base image {name!r}")
        if name == HOST_BASE and not path.is_dir():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            build_host_skeleton(path, self._sandbox_uid)
        if not path.is_dir():
            raise SandboxUnavailable(
                f"base image {name!r} not found at {path}: build it with "
                "arker.local.sandbox.build_debian_rootfs(default_debian_rootfs(data_dir))"
            )
        return path
