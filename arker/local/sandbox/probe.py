"""Start-up probe: can this host run the bubblewrap + overlayfs sandbox?"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from . import files, mounts
from .errors import SandboxUnavailable
from .network import missing_tools
from .volume import btrfs_unavailable

__all__ = ["find_bwrap", "probe"]

_USERNS_FIX = (
    "user namespaces are disabled ({detail}): enable them with "
    "`sysctl -w user.max_user_namespaces=15000` "
    "(and `sysctl -w kernel.unprivileged_userns_clone=1` on Debian kernels)"
)


def find_bwrap() -> str | None:
    """Path of the bwrap executable, or None."""
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def probe(
    data_dir: Path, sandbox_uid: int = 60999, storage: str = "auto", network: str = "host"
) -> None:
    """Check root, bwrap, unprivileged user namespaces, overlayfs, openat2, networking.

    Args:
        data_dir: The engine's data directory (a scratch mount is tried inside it).
        sandbox_uid: Host uid the sandboxes will run as.
        storage: The engine's storage; an explicit ``btrfs`` also needs btrfs-progs,
            loop devices and the btrfs module (the message names the fallback:
            ``--storage dir``); ``auto`` falls back by itself (storage.py).
        network: The VMs' network mode: ``private`` needs pasta (the message names
            the package); it never falls back to another mode.

    Raises:
        SandboxUnavailable: With one line naming the cause and the fix.
    """
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the sandbox engine must run as root (it mounts overlayfs and manages cgroups): "
            "run `arker serve` as root"
        )
    bwrap = find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) not found: install it: apt-get install -y bubblewrap"
        )
    try:
        proc = subprocess.run(
            [bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            user=sandbox_uid,
            group=sandbox_uid,
            extra_groups=[],
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run bwrap ({exc}): reinstall bubblewrap") from None
    if proc.returncode != 0:
        detail = _one_line(proc.stderr)
        if "namespace" in detail.lower() or "No space left" in detail:
            raise SandboxUnavailable(_USERNS_FIX.format(detail=detail))
        raise SandboxUnavailable(
            f"bwrap cannot create a sandbox ({detail}): check user namespaces and seccomp policy"
        )
    why = missing_tools(network)
    if why is not None:
        raise SandboxUnavailable(why)
    why = btrfs_unavailable() if storage == "btrfs" else None
    if why is not None:
        raise SandboxUnavailable(f"--storage btrfs: {why}")
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = data_dir / f".probe-{secrets.token_hex(4)}"
    try:
        for sub in ("l", "u", "w", "m"):
            (scratch / sub).mkdir(parents=True)
        try:
            mounts.mount_overlay(
                str(scratch / "m"), [str(scratch / "l")], str(scratch / "u"), str(scratch / "w")
            )
        except OSError as exc:
            raise SandboxUnavailable(
                f"overlayfs mount with userxattr failed in {data_dir} ({exc.strerror}): "
                "use Linux >= 5.11 with the overlay module loaded (modprobe overlay) and a "
                "data dir on a local filesystem such as ext4 or xfs"
            ) from None
        try:
            fd = os.open(scratch / "m", os.O_PATH | os.O_DIRECTORY)
            try:
                os.close(files.openat2(fd, "/", os.O_PATH))
            except OSError as exc:
                raise SandboxUnavailable(
                    f"openat2 is unavailable ({exc.strerror}): use Linux >= 5.6"
                ) from None
            finally:
                os.close(fd)
        finally:
            mounts.umount(str(scratch / "m"))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
