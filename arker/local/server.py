"""Start-up and shutdown of `arker serve`: the order of these steps matters.

1. Raise the soft open-file limit to the hard one (clients' sockets, running
   commands' pipes and the mounted VMs' handles are descriptors). Enter a private
   mount namespace while still single-threaded (before uvicorn, which starts
   threads); VM overlay mounts then vanish with the process, even on kill -9.
2. Probe the sandbox; on failure print one line naming cause and fix.
3. Open the store, make sure a default org and key exist.
4. Start the engine, ensure the base image, GC engine state that no DB row
   references (the DB is the source of truth after a crash), expire stale uploads.
5. Bind the socket (port 0: a free one), print the ``export`` lines, serve.
6. On SIGINT/SIGTERM: stop uvicorn, then ``engine.close()`` and close the store.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import secrets
import signal
import socket
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType

from .config import EXIT_SANDBOX_UNAVAILABLE, ServerConfig, prepare_data_dir
from .private_file import write_private
from .store import Store
from .vm_expiry import TtlReaper

DEFAULT_ORG = "default"

log = logging.getLogger("arker.local")


class _Shutdown(Exception):
    """Raised by our SIGTERM handler so that ``finally`` blocks run."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise _Shutdown(signum)


def default_key_path(data_dir: Path) -> Path:
    """Where the default org's key is kept so restarts can print it again (0600)."""
    return data_dir / "api_key"


def ensure_default_key(store: Store, data_dir: Path, requested: str | None) -> str:
    """The key to print at start: ``requested``, else the saved one, else a new one.

    The database stores only sha256 digests; the default key's plain text is kept in
    a 0600 file in the (0700) data dir so that a restart can print it again.
    """
    org_id = store.ensure_org(DEFAULT_ORG)
    path = default_key_path(data_dir)
    key = requested
    if key is None and path.exists():
        key = path.read_text().strip() or None
    if key is None:
        key = new_api_key()
    store.add_key(org_id, key)
    write_private(path, key.encode())
    return key


def new_api_key() -> str:
    """A fresh random API key."""
    return f"ark_{secrets.token_urlsafe(24)}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ``SO_REUSEADDR`` so a restart can take the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. Without it, a keep-alive client waits ~40 ms per
    # call (Nagle on the response's second segment against the client's delayed ACK):
    # uvicorn leaves TCP_NODELAY unset on sockets it is handed.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def raise_open_file_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the new soft.

    A server's descriptors grow with its clients and running commands; a low soft
    limit (1024 is a common default) must not make them fail while the hard limit
    allows more. An infinite hard limit is capped at the kernel's ``fs.nr_open``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    return soft


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(config: ServerConfig) -> int:
    """Run the server until SIGINT/SIGTERM; return the process exit status."""
    import uvicorn

    from .sandbox import Engine, Limits, SandboxUnavailable
    from .sandbox.mounts import enter_private_mount_namespace
    from .sandbox.probe import probe

    logging.basicConfig(level=logging.INFO, format="arker serve: %(message)s", stream=sys.stderr)
    # Installed first so that a SIGTERM at any later point still runs the cleanup.
    signal.signal(signal.SIGTERM, _raise_shutdown)
    config = dataclasses.replace(config, data_dir=prepare_data_dir(config.data_dir))
    data_dir = config.data_dir
    open_files = raise_open_file_limit()
    try:
        enter_private_mount_namespace()
        probe(config.engine_dir, storage=config.storage, network=config.network)
    except (SandboxUnavailable, OSError) as exc:
        print(f"arker serve: sandbox unavailable: {exc}", file=sys.stderr, flush=True)
        return EXIT_SANDBOX_UNAVAILABLE

    store = Store(config.db_path)
    engine = None
    reaper: TtlReaper | None = None
    try:
        api_key = ensure_default_key(store, data_dir, config.api_key)
        if config.network == "host":
            log.warning(
                "--network host: VMs share this host's network: code in a VM can reach "
                "every service on this host's loopback, its abstract unix sockets and "
                "this API's port"
            )
        try:
            engine = Engine(
                config.engine_dir,
                network=config.network,
                base=config.base,
                limits=Limits(
                    max_timeout_s=config.max_run_timeout, disk_quota_bytes=config.disk_quota
                ),
                storage=config.storage,
                storage_size=config.storage_size,
                vm_uids=(config.vm_uid_base, config.vm_uids),
            )
        except SandboxUnavailable as exc:
            print(f"arker serve: {exc}", file=sys.stderr, flush=True)
            return 1
        from .services import build_services

        services = build_services(config, store, engine)
        services.vms.ensure_base_image()
        engine.gc(store.vm_ids())
        services.uploads.cleanup(config.upload_ttl_s)
        reaper = services.vms.reaper()
        reaper.start()  # VMs whose TTL ran out while the server was stopped go first
        store.expire_idempotent(datetime.now(timezone.utc) - timedelta(seconds=config.upload_ttl_s))

        from .app import create_app
        from .front import ClientCaps, guarded_protocol

        app = create_app(services)
        sock = bind_socket(config.host, config.port)
        port = sock.getsockname()[1]
        url = f"http://{_url_host(config.host)}:{port}"
        print(f"export ARKER_BASE_URL={url}", flush=True)
        print(f"export ARKER_CONTROL_URL={url}", flush=True)
        print(f"export ARKER_API_KEY={api_key}", flush=True)
        limits = config.front
        caps = ClientCaps(limits.per_client, max(16, int(open_files * limits.total_share)))
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # h11, even when httptools is installed: httptools refuses a request
                # with an unknown method in plain text, before the app could answer
                # with an error envelope. The speed comes from uvloop, picked up when
                # installed (benchmarks/http_stack.py). The guarded subclass adds the
                # deadlines and connection caps uvicorn lacks (front.py).
                http=guarded_protocol(limits, caps, services.port_proxy.upgrade),
                timeout_keep_alive=int(limits.keep_alive_s) or 1,
                # Requests that wait (a live run's time_to_background, output
                # followers, long runs) must not hold a stopping server for minutes.
                timeout_graceful_shutdown=5,
            )
        )
        server.run(sockets=[sock])
        return 0
    except (KeyboardInterrupt, _Shutdown):
        return 0
    finally:
        if reaper is not None:
            reaper.stop()
        if engine is not None:
            engine.close()
        store.close()
