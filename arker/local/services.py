"""The service objects behind the routes, wired together once at start-up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import ServerConfig
from .engine_api import EngineLike
from .idempotency import Idempotency
from .live_runs import LiveLimits, LiveRuns
from .port_proxy import PortProxy
from .ports import ExposedPorts, PortStore
from .presign import Signer, load_or_create_secret
from .run_slots import RunSlots
from .store import Store
from .sync import Sync
from .terminals import Terminals
from .uploads import Uploads
from .vm_expiry import Expiry
from .vmfiles import VmFiles
from .vms import Vms


@dataclass(frozen=True)
class Services:
    """Everything the routes use, built once at start-up."""

    config: ServerConfig
    store: Store
    vms: Vms
    sync: Sync
    uploads: Uploads
    signer: Signer
    idempotency: Idempotency
    vm_files: VmFiles
    live: LiveRuns
    run_slots: RunSlots
    run_pool: ThreadPoolExecutor
    """The threads that wait on runs (one per slot): never the pool serving requests."""
    terminals: Terminals
    ports: ExposedPorts
    port_proxy: PortProxy


def build_services(config: ServerConfig, store: Store, engine: EngineLike) -> Services:
    """Wire the service objects together around a started engine."""
    secret = load_or_create_secret(config.secret_path)
    signer = Signer(secret)
    uploads = Uploads(store, engine)
    vms = Vms(store, engine, config, Expiry(config.db_path))
    ports = ExposedPorts(PortStore(config.db_path), store, vms, secret)
    ports.records.prune(store.vm_ids())  # ports of VMs deleted before this start
    return Services(
        config=config,
        store=store,
        vms=vms,
        sync=Sync(engine, uploads, signer),
        uploads=uploads,
        signer=signer,
        idempotency=Idempotency(store),
        vm_files=VmFiles(engine),
        live=_live_runs(config, store, engine),
        run_slots=RunSlots(
            per_org=config.runs_per_org, per_vm=config.runs_per_vm, total=config.runs_total
        ),
        run_pool=ThreadPoolExecutor(config.runs_total, thread_name_prefix="arker-run"),
        terminals=Terminals(engine, config.pty),
        ports=ports,
        port_proxy=PortProxy(ports, engine),
    )


def _live_runs(config: ServerConfig, store: Store, engine: EngineLike) -> LiveRuns:
    from .run_store import RunStore
    from .sandbox.live import LiveSink  # the engine's own sink and command check
    from .sandbox.pipeline import check_command

    runs_dir = config.data_dir / "runs"
    records = RunStore(config.db_path)
    runs = LiveRuns(records, engine, LiveSink, check_command, runs_dir, LiveLimits())
    runs.forget_vms(store.vm_ids())  # runs of VMs deleted before this start
    return runs
