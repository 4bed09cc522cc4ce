"""The sandbox engine of ``arker serve``: forkable VMs as bwrap sandboxes over overlayfs.

Import :class:`Engine` and friends from here; the submodules are implementation.
"""

from __future__ import annotations

from .baseimage import build_debian_rootfs, default_debian_rootfs
from .engine import Engine
from .errors import SandboxError, SandboxUnavailable
from .limits import Limits
from .mounts import enter_private_mount_namespace
from .pipeline import RunOutcome

__all__ = [
    "Engine",
    "Limits",
    "RunOutcome",
    "SandboxError",
    "SandboxUnavailable",
    "build_debian_rootfs",
    "default_debian_rootfs",
    "enter_private_mount_namespace",
]
