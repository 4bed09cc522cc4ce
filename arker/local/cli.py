"""Command line of `arker serve` (argument parsing only; the work is elsewhere).

Usage::

    arker serve [--host H] [--port N] [--data-dir DIR] [--api-key KEY]
                [--network private|none|host] [--base host|debian] [--disk-quota BYTES]
    arker serve keys create --org NAME [--data-dir DIR]
    arker serve build-image debian [--data-dir DIR] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .._wire import MAX_TTL_S
from .config import ServerConfig, default_data_dir, prepare_data_dir

MISSING_EXTRA = "arker serve needs the local extra: pip install 'arker[local]'"


def build_parser() -> argparse.ArgumentParser:
    """The ``arker serve`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="arker serve", description="Run a local Arker server with sandboxed VMs."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8733, help="TCP port (default: %(default)s; 0: a free port)"
    )
    _add_data_dir(parser, None)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ARKER_API_KEY") or None,
        help="key of the default org (default: $ARKER_API_KEY, else kept from last start)",
    )
    parser.add_argument(
        "--network",
        choices=("private", "none", "host"),
        default=None,
        help="the VMs' network: private (each VM its own, with outbound access and "
        "nothing of the host; needs pasta from the passt package), none (only loopback) "
        "or host (the host's network, all of it) (default: private)",
    )
    parser.add_argument(
        "--no-network",
        action="store_true",
        help=argparse.SUPPRESS,  # deprecated: the same as --network none
    )
    parser.add_argument(
        "--base",
        choices=("host", "debian"),
        default="host",
        help="base image: the host's /usr read-only, or a Debian rootfs built by "
        "'arker serve build-image debian' (default: %(default)s)",
    )
    parser.add_argument(
        "--disk-quota",
        type=parse_bytes,
        default=10 << 30,
        metavar="BYTES",
        help="disk budget per VM: bytes, or with a K/M/G/T suffix (default: 10G; 0: none)",
    )
    parser.add_argument(
        "--storage",
        choices=("auto", "dir", "btrfs"),
        default=ServerConfig.storage,
        help="where VM layers live: a btrfs image in the data dir (block-level "
        "copy-on-write, quota enforced by the kernel; needs root, btrfs-progs and loop "
        "devices), or directories in the data dir; auto picks btrfs when the host can and "
        "the data dir has no VMs on directories (default: %(default)s)",
    )
    parser.add_argument(
        "--default-ttl",
        type=_ttl,
        default=None,
        metavar="SECONDS",
        help="delete forks that name no TTL after SECONDS (default: keep them)",
    )
    parser.add_argument(
        "--storage-size",
        type=parse_bytes,
        default=ServerConfig.storage_size,
        metavar="BYTES",
        help="the most the btrfs image may grow to; it is sparse, starts at 4G and grows "
        "as it fills (default: 32G)",
    )
    for flag, default, what in (
        ("--runs-per-org", ServerConfig.runs_per_org, "one organisation (429 beyond)"),
        ("--runs-per-vm", ServerConfig.runs_per_vm, "one VM, across its sessions (429 beyond)"),
        ("--runs-total", ServerConfig.runs_total, "the whole server (503 beyond)"),
    ):
        parser.add_argument(
            flag,
            type=_positive_int,
            default=default,
            metavar="N",
            help=f"commands {what} may run at once (default: %(default)s)",
        )
    parser.add_argument(
        "--vm-uid-base",
        type=_positive_int,
        default=ServerConfig.vm_uid_base,
        metavar="UID",
        help="each VM runs as its own host uid from this one up (default: %(default)s)",
    )
    parser.add_argument(
        "--vm-uids",
        type=int,
        default=ServerConfig.vm_uids,
        metavar="N",
        help="how many host uids the VMs may use (default: %(default)s; 0: all VMs run as one uid)",
    )
    actions = parser.add_subparsers(dest="action")

    keys = actions.add_parser("keys", help="manage API keys")
    key_actions = keys.add_subparsers(dest="keys_action", required=True)
    create = key_actions.add_parser("create", help="create an org's key and print it")
    create.add_argument("--org", required=True, help="organisation name (created if new)")
    _add_data_dir(create, argparse.SUPPRESS)

    image = actions.add_parser("build-image", help="build a base image")
    image.add_argument("flavour", choices=("debian",))
    _add_data_dir(image, argparse.SUPPRESS)
    image.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="machine-wide image cache, built once and reused by every data dir "
        "(default: $ARKER_IMAGE_CACHE, else /var/cache/arker/images as root)",
    )
    return parser


def _ttl(text: str) -> int:
    """A TTL in whole seconds, 1 to one year and a day."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_TTL_S} seconds, got {value}")
    return value


def parse_bytes(text: str) -> int:
    """``"1048576"``, ``"512K"``, ``"10G"``… as bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(raw[-1:], 1)
    if scale != 1:
        raw = raw[:-1]
    try:
        value = int(float(raw) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _add_data_dir(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        help="state directory (default: $XDG_DATA_HOME/arker or ~/.local/share/arker)",
    )


def serve_main(argv: Sequence[str]) -> int:
    """Entry point of ``arker serve …``; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    data_dir: Path = args.data_dir or default_data_dir()
    if args.action == "keys":
        return _create_key(data_dir, args.org)
    if args.action == "build-image":
        return _build_image(data_dir, args.flavour, args.cache_dir)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from .server import serve

    network = args.network or ServerConfig.network
    if args.no_network:
        if args.network not in (None, "none"):
            print(
                f"arker serve: --no-network contradicts --network {args.network}", file=sys.stderr
            )
            return 2
        print("arker serve: --no-network is deprecated: use --network none", file=sys.stderr)
        network = "none"
    config = ServerConfig(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        network=network,
        base=args.base,
        api_key=args.api_key,
        disk_quota=args.disk_quota,
        storage=args.storage,
        storage_size=args.storage_size,
        runs_per_org=args.runs_per_org,
        runs_per_vm=args.runs_per_vm,
        runs_total=args.runs_total,
        vm_uid_base=args.vm_uid_base,
        vm_uids=args.vm_uids,
        default_ttl=args.default_ttl,
    )
    return serve(config)


def _create_key(data_dir: Path, org: str) -> int:
    from .server import new_api_key
    from .store import Store

    config = ServerConfig(data_dir=prepare_data_dir(data_dir))
    store = Store(config.db_path)
    try:
        key = new_api_key()
        store.add_key(store.ensure_org(org), key)
    finally:
        store.close()
    print(key, flush=True)
    return 0


def _build_image(data_dir: Path, flavour: str, cache_dir: Path | None) -> int:
    from .sandbox.baseimage import (
        build_debian_rootfs,
        default_debian_rootfs,
        missing_packages,
    )

    data_dir = prepare_data_dir(data_dir)
    dest = default_debian_rootfs(data_dir)
    if dest.exists():
        print(f"arker serve: the {flavour} image is already built: {dest}", file=sys.stderr)
        missing = missing_packages(dest)
        if missing:
            print(
                f"arker serve: it lacks {', '.join(missing)} (built by an older arker); "
                f"the VMs on it keep it as it is: to rebuild, delete {dest} and those VMs",
                file=sys.stderr,
            )
        return 0
    print(f"arker serve: installing the {flavour} image...", file=sys.stderr)
    try:
        built = build_debian_rootfs(dest, cache_dir=cache_dir)
    except RuntimeError as exc:
        print(f"arker serve: {exc}", file=sys.stderr)
        return 1
    how = "built with debootstrap" if built else "reused from the image cache"
    print(f"arker serve: {how}: {dest}; start with: arker serve --base {flavour}", file=sys.stderr)
    return 0
