"""Settings of one `arker serve` instance, with their defaults in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REGION = "local"
"""The only region this server serves."""

REGION_SUFFIX = "loc0"
"""Suffix of the VM ids it mints (``<ULID>_loc0``), shaped like the hosted ones."""

BACKEND = "bwrap-overlayfs"
"""What the health route reports as the backend."""

EXIT_SANDBOX_UNAVAILABLE = 3
"""Exit status of `arker serve` when the sandbox probe fails (the pytest fixture skips
on it)."""


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/arker``, else ``~/.local/share/arker``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "arker"


@dataclass(frozen=True)
class FrontLimits:
    """What the HTTP front allows one connection and one client (see ``front.py``).

    Attributes:
        head_timeout_s: From a connection's start (or its last answer) to a complete
            request head; a client dripping header bytes is cut off at this.
        body_idle_s: Longest wait for the next byte of a request body.
        keep_alive_s: An idle keep-alive connection is closed after this.
        per_client: Open connections per client (an address; on loopback, an address
            and the peer's uid, so each VM is a client of its own).
        total_share: At most this share of the open-file limit goes to connections.
    """

    head_timeout_s: float = 10.0
    body_idle_s: float = 30.0
    keep_alive_s: float = 5.0
    per_client: int = 64
    total_share: float = 0.5


@dataclass(frozen=True)
class PtyLimits:
    """Bounds of interactive terminals (``routes_pty``).

    Attributes:
        per_vm: Terminals open at once on one VM (429 ``quota_exceeded`` beyond).
        idle_s: A terminal with no input or output for this long is closed.
        ticket_ttl_s: Lifetime of a PTY ticket.
        max_tickets: Unredeemed tickets kept; the oldest is dropped beyond.
    """

    per_vm: int = 8
    idle_s: float = 3600.0
    ticket_ttl_s: float = 60.0
    max_tickets: int = 10_000


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` and the start-up sequence need to know.

    Attributes:
        data_dir: Root of all state (SQLite, VM layers, uploads, the signing secret).
        host: Interface to listen on; loopback by default.
        port: TCP port; 0 picks a free one.
        network: The VMs' network: ``private`` (a namespace per VM with outbound
            access and nothing of the host), ``none`` (only ``lo``) or ``host`` (the
            host's own network); see the sandbox's network.py.
        base: Base image flavour for the engine: ``host`` or ``debian``.
        api_key: Key to register for the default org at start (None: keep or mint).
        default_run_timeout: Timeout of a run that names none, in seconds.
        max_run_timeout: Longest timeout a run may ask for; larger ones are clamped.
        max_body_bytes: Largest JSON request body accepted (413 beyond).
        upload_ttl_s: Unfinished uploads older than this are dropped at start.
        disk_quota: Disk budget per VM in bytes (0: none); see the sandbox engine.
        storage: Where VM layers live: ``auto`` (btrfs where the host can, else
            directories), ``dir`` (directories in the data dir) or ``btrfs`` (a
            loop-mounted image in the data dir, kernel-enforced quota).
        storage_size: The most the btrfs image file may grow to (sparse, starts small).
        front: Deadlines and connection caps of the HTTP front.
        runs_per_org: Commands one organisation may run at once (429 beyond).
        runs_per_vm: Commands one VM may run at once, across its sessions (429 beyond).
        runs_total: Commands the server may run at once (503 beyond); also the number
            of threads that wait on runs, apart from the pool serving other requests.
        vm_uid_base: First host uid of the range whose uids the VMs run as.
        vm_uids: How many uids that range holds (0: every VM runs as one uid).
        pty: Bounds of interactive terminals.
        default_ttl: Seconds a fork that names no TTL lives (None: until deleted).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    network: str = "private"
    base: str = "host"
    api_key: str | None = None
    default_run_timeout: float = 300.0
    max_run_timeout: float = 3600.0
    # Room for a 4 MiB inline chunk in base64 times a few entries, far from 100 MiB.
    max_body_bytes: int = 32 * 1024 * 1024
    upload_ttl_s: float = 24 * 3600.0
    disk_quota: int = 10 << 30
    storage: str = "auto"
    storage_size: int = 32 << 30
    front: FrontLimits = FrontLimits()
    # A 2-core laptop: a share is mostly waiting (sleeps, network, builds queue on the
    # CPU cgroups anyway); three organisations at their share still fit in the total.
    runs_per_org: int = 16
    runs_per_vm: int = 8
    runs_total: int = 48
    # Above systemd's container uids (to 0x6FFFFFFF), below its foreign range
    # (0x7FFE0000), far from any login account.
    vm_uid_base: int = 2_000_000_000
    vm_uids: int = 65536
    pty: PtyLimits = PtyLimits()
    default_ttl: int | None = None

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "arker.db"

    @property
    def engine_dir(self) -> Path:
        """Directory handed to the sandbox engine (it keeps its state in ``engine/``)."""
        return self.data_dir

    @property
    def secret_path(self) -> Path:
        """HMAC key of presigned URLs (mode 0600)."""
        return self.data_dir / "presign.key"


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and tighten an existing one to 0700.

    The data dir holds VM filesystems written by sandboxed code, setuid executables
    included: no other host user may traverse it and run them.
    """
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
