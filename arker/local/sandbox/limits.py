"""Resource limits of the sandbox engine, per VM and per command."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Resource limits applied per VM and per command.

    Attributes:
        max_output_bytes: Cap per stream; the rest is drained and discarded.
        max_timeout_s: Upper bound for any timeout.
        pids_max: cgroup v1 ``pids.max`` per VM (RLIMIT_NPROC fallback).
        memory_max_bytes: cgroup v1 memory limit per VM (RLIMIT_AS fallback).
        max_file_bytes: Largest file `Engine.check_room` lets a VM take in (one upload).
        disk_quota_bytes: Disk budget per VM (its layer chain, base excluded);
            0 disables the quota. See `arker.local.sandbox.quota`.
        nofile: ``RLIMIT_NOFILE`` (soft, hard) of a command's processes: their own,
            not the server's raised limit.
        net_files_max: Open descriptors of a VM's pasta (``--network private``):
            about one per outbound TCP connection or UDP flow, so it caps them.
        net_idle_s: A VM's namespace (and pasta) ends once no run has started in it
            for this long and nothing is in flight in the VM (it is evicted).
    """

    max_output_bytes: int = 4 * 1024 * 1024
    max_timeout_s: float = 3600.0
    pids_max: int = 256
    memory_max_bytes: int = 1 << 30
    max_file_bytes: int = 100 * 1024 * 1024
    disk_quota_bytes: int = 10 << 30
    nofile: tuple[int, int] = (1024, 65536)
    net_files_max: int = 4096
    net_idle_s: float = 300.0
