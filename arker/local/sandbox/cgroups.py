"""Per-VM cgroups (v1 ``pids``, ``memory``, ``freezer``), when the host allows them.

Every process of a VM's commands is accounted to the VM's groups from its first
instruction (the spawn wrapper moves itself in before exec'ing bwrap), so the limits
hold whatever the command forks. Without cgroups the wrapper falls back to rlimits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["VmCgroup"]

_CG_ROOT = Path("/sys/fs/cgroup")
_CONTROLLERS = ("pids", "memory", "freezer")


class VmCgroup:
    """Per-VM cgroup v1 ``pids`` and ``memory`` groups, when the host allows them.

    Groups are created below this process's own cgroup in each hierarchy (falling
    back to the hierarchy root). ``cgroup.procs`` is chowned to the sandbox uid so the
    unprivileged spawn wrapper can move itself in before exec'ing bwrap.

    Args:
        tag: Engine-instance tag (distinguishes engines on one host).
        vm_id: The VM.
        uid: Sandbox host uid.
        pids_max: ``pids.max``.
        memory_max: ``memory.limit_in_bytes``.
    """

    def __init__(self, tag: str, vm_id: str, uid: int, pids_max: int, memory_max: int) -> None:
        self.procs_files: list[str] = []
        self.dirs: list[Path] = []
        for ctrl, settings in (
            ("pids", {"pids.max": str(pids_max)}),
            ("memory", {"memory.limit_in_bytes": str(memory_max)}),
            ("freezer", {}),  # holds the VM still while a fork copies it (freeze.py)
        ):
            d = self._create(ctrl, f"arker-{tag}", vm_id, uid, settings)
            if d is not None:
                self.dirs.append(d)
                self.procs_files.append(str(d / "cgroup.procs"))

    @staticmethod
    def _own_path(ctrl: str) -> str:
        try:
            with open("/proc/self/cgroup", encoding="utf-8") as fh:
                for line in fh:
                    _, ctrls, path = line.rstrip("\n").split(":", 2)
                    if ctrl in ctrls.split(","):
                        return path
        except OSError:
            pass
        return "/"

    @classmethod
    def _create(
        cls, ctrl: str, group: str, vm_id: str, uid: int, settings: dict[str, str]
    ) -> Path | None:
        hier = _CG_ROOT / ctrl
        if not hier.is_dir():
            return None
        for parent in (hier / cls._own_path(ctrl).lstrip("/"), hier):
            d = parent / group / vm_id
            try:
                d.mkdir(parents=True, exist_ok=True)
                for key, value in settings.items():
                    (d / key).write_text(value)
                if ctrl == "memory" and (d / "memory.memsw.limit_in_bytes").exists():
                    # With swap accounting on, cap memory+swap too or the limit leaks.
                    (d / "memory.memsw.limit_in_bytes").write_text(
                        settings["memory.limit_in_bytes"]
                    )
                for f in ("cgroup.procs", "tasks"):
                    os.chown(d / f, uid, uid)
                return d
            except OSError:
                with contextlib.suppress(OSError):
                    d.rmdir()
                continue
        return None

    @classmethod
    def kill_stale(cls, tag: str) -> None:
        """Kill processes left in this engine's cgroups by a previous (crashed) engine.

        ``--die-with-parent`` cannot cover a server killed between fork and bwrap's
        ``prctl``; the per-VM cgroups still name every such process.
        """
        for ctrl in _CONTROLLERS:
            hier = _CG_ROOT / ctrl
            for parent in {hier / cls._own_path(ctrl).lstrip("/"), hier}:
                group = parent / f"arker-{tag}"
                if not group.is_dir():
                    continue
                for d in group.iterdir():
                    if not d.is_dir():
                        continue
                    with contextlib.suppress(OSError):  # frozen tasks die only once thawed
                        (d / "freezer.state").write_text("THAWED")
                    for _ in range(50):
                        try:
                            pids = (d / "cgroup.procs").read_text().split()
                        except OSError:
                            break
                        if not pids:
                            break
                        for pid in pids:
                            with contextlib.suppress(OSError, ValueError):
                                os.kill(int(pid), signal.SIGKILL)
                        time.sleep(0.02)
                    with contextlib.suppress(OSError):
                        d.rmdir()

    @classmethod
    def remove_groups(cls, tag: str) -> None:
        """Remove this engine's (empty) parent groups; used when the engine closes."""
        for ctrl in _CONTROLLERS:
            hier = _CG_ROOT / ctrl
            for parent in {hier / cls._own_path(ctrl).lstrip("/"), hier}:
                with contextlib.suppress(OSError):
                    (parent / f"arker-{tag}").rmdir()

    def has(self, ctrl: str) -> bool:
        """Whether the given controller's group exists."""
        return any(f"/{ctrl}/" in f for f in self.procs_files)

    def group(self, ctrl: str) -> Path | None:
        """The VM's group directory of controller ``ctrl``, if it has one."""
        return next((d for d in self.dirs if f"/{ctrl}/" in str(d)), None)

    def remove(self) -> None:
        """Remove the groups (best effort; they must be empty)."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # processes of a killed tree still exiting
