"""Base images: the zero-download host skeleton and an optional debootstrap rootfs.

The host base is a small skeleton lower layer (directories, a synthesized
``passwd``/``group`` and ~20 selected ``/etc`` files) plus read-only binds of the
host's ``/usr`` (and ``/lib*``, ``/bin``, ``/sbin`` when they are real directories).
All of host ``/etc`` is never exposed: it holds secrets and host identity. A VM on
it has the host's programs: Node only where the host has ``nodejs`` installed.

The debian base is a debootstrap rootfs with a shell, Python and Node, built once per
machine into an image cache and hard-linked into each data dir that asks for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from .errors import SandboxError, SandboxUnavailable

__all__ = [
    "DEBIAN_BASE",
    "DEBIAN_MIRROR",
    "DEBIAN_PACKAGES",
    "DEBIAN_SUITE",
    "HOST_BASE",
    "SESSIONS_DIR",
    "VM_HOME",
    "VM_UID",
    "BaseImages",
    "build_debian_rootfs",
    "build_host_skeleton",
    "debian_recipe",
    "default_debian_rootfs",
    "default_image_cache",
    "host_binds",
    "missing_packages",
    "recipe_stamp",
]

HOST_BASE = "host"
DEBIAN_BASE = "debian"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Arker VMs promise a shell, Python and Node; CA roots for TLS. debootstrap adds
# their dependencies (Depends only: no npm, no Recommends).
DEBIAN_PACKAGES = ("python3", "ca-certificates", "nodejs")
_DEBIAN_RECIPE_VERSION = 2  # bump when a build step of `_debootstrap` changes
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


def default_image_cache() -> Path:
    """The machine-wide cache of built images, shared by every data dir.

    ``$ARKER_IMAGE_CACHE`` when set; else ``/var/cache/arker/images`` for root, and
    ``$XDG_CACHE_HOME/arker/images`` (``~/.cache/arker/images``) for anyone else.
    """
    env = os.environ.get("ARKER_IMAGE_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/arker/images")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "arker" / "images"


def debian_recipe(suite: str = DEBIAN_SUITE, mirror: str = DEBIAN_MIRROR) -> dict[str, object]:
    """Everything the debian image is built from; it names the cached image."""
    return {
        "version": _DEBIAN_RECIPE_VERSION,
        "suite": suite,
        "mirror": mirror,
        "variant": "minbase",
        "packages": list(DEBIAN_PACKAGES),
    }


def _recipe_key(recipe: dict[str, object]) -> str:
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def recipe_stamp(dest: Path) -> Path:
    """The file beside a built rootfs that records its recipe and package versions."""
    return dest.with_name(dest.name + ".recipe.json")


def build_debian_rootfs(
    dest: Path,
    *,
    sandbox_uid: int = 60999,
    suite: str = DEBIAN_SUITE,
    mirror: str = DEBIAN_MIRROR,
    cache_dir: Path | None = None,
) -> bool:
    """Install a Debian rootfs (shell, Python, Node) at ``dest``, debootstrapping it once.

    The image is built by debootstrap from ``mirror`` into the machine-wide
    ``cache_dir`` (named by a hash of its recipe, built once even by concurrent
    callers), then hard-linked into ``dest`` (copied across filesystems). Everything
    in it is copy-on-write per VM, so the links are never written through. The VM
    user ``user`` (uid 1000 inside, host ``sandbox_uid``) owns ``/home/user``.

    Args:
        dest: Final directory (must not exist); assembled beside it and renamed.
        sandbox_uid: Host uid the VM user maps to.
        suite: Debian suite.
        mirror: Debian mirror URL.
        cache_dir: The image cache (default: `default_image_cache`).

    Returns:
        ``True`` when debootstrap ran, ``False`` when the cached image was reused.

    Raises:
        RuntimeError: debootstrap is missing or failed, or the copy failed.
    """
    dest = Path(dest)
    recipe = debian_recipe(suite, mirror)
    cache = Path(cache_dir) if cache_dir is not None else default_image_cache()
    cached = cache / f"{DEBIAN_BASE}-{suite}-{_recipe_key(recipe)}"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cache / f"{cached.name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = not cached.is_dir()
        if built:
            _debootstrap(cached, recipe)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        _link_tree(cached, tmp)
    except RuntimeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for d in (VM_HOME, SESSIONS_DIR):
        os.chown(tmp / d.lstrip("/"), sandbox_uid, sandbox_uid)
    shutil.copy2(recipe_stamp(cached), recipe_stamp(dest))
    os.rename(tmp, dest)
    return built


def _debootstrap(dest: Path, recipe: dict[str, object]) -> None:
    """Build the uid-independent image at ``dest`` (atomically) and its recipe stamp."""
    exe = shutil.which("debootstrap")
    if exe is None:
        raise RuntimeError("debootstrap not found: install it: apt-get install -y debootstrap")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    include = ",".join(DEBIAN_PACKAGES)
    proc = subprocess.run(
        [exe, f"--variant={recipe['variant']}", f"--include={include}",
         str(recipe["suite"]), str(tmp), str(recipe["mirror"])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"debootstrap failed: {' '.join(tail)}")
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(tmp / d, ignore_errors=True)
        (tmp / d / "partial").mkdir(parents=True, exist_ok=True)
    with open(tmp / "etc/passwd", "a", encoding="utf-8") as fh:
        fh.write(f"user:x:{VM_UID}:{VM_UID}:user:{VM_HOME}:/bin/sh\n")
    with open(tmp / "etc/group", "a", encoding="utf-8") as fh:
        fh.write(f"user:x:{VM_UID}:\n")
    (tmp / "etc/hostname").write_text("vm\n")
    for d in (VM_HOME, SESSIONS_DIR):
        (tmp / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    os.chmod(tmp / SESSIONS_DIR.lstrip("/"), 0o700)
    stamp = dict(recipe, installed=_installed_packages(tmp))
    recipe_stamp(dest).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.rename(tmp, dest)


def _installed_packages(root: Path) -> dict[str, str]:
    """``{package: version}`` of a rootfs, read from its dpkg status file."""
    packages: dict[str, str] = {}
    for para in (root / "var/lib/dpkg/status").read_text(errors="replace").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def missing_packages(rootfs: Path) -> list[str]:
    """The packages of today's recipe (`DEBIAN_PACKAGES`) that a built rootfs lacks."""
    try:
        installed = _installed_packages(Path(rootfs))
    except OSError:
        return list(DEBIAN_PACKAGES)
    return [name for name in DEBIAN_PACKAGES if name not in installed]


def _link_tree(src: Path, dst: Path) -> None:
    """``cp -a`` of ``src`` to ``dst`` with hard links for files, copies across filesystems."""
    for args in (("--link",), ("--reflink=auto",)):
        shutil.rmtree(dst, ignore_errors=True)
        proc = subprocess.run(
            ["cp", "-a", *args, "--", str(src), str(dst)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            return
    raise RuntimeError(f"copying the image {src} failed: {proc.stderr.strip()[-300:]}")


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
                f"base image {name!r} not found at {path}: build it with 'arker serve "
                "build-image debian --data-dir DIR' (or arker.local.sandbox."
                "build_debian_rootfs(default_debian_rootfs(data_dir)))"
            )
        return path
