"""VM lifecycle on behalf of one org: list, fork, delete, run.

Visibility rule of the wire protocol: an org sees, runs on, reads and deletes only its own VMs;
it may fork its own and any public one. Anything else answers 404 as if absent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from .._constants import ARKUNTU_ID
from .._ids import looks_like_vm_id, new_ulid
from .._wire import (
    ForkRequest,
    ForkResponse,
    ListVmsResponse,
    RunRequest,
    RunResponse,
    VmSummaryWire,
    encode_content,
)
from .._wire_diff import DiffEntryWire, ForkDiffResponse, TouchResponse
from .config import REGION, REGION_SUFFIX, ServerConfig
from .engine_api import DiffChangeLike, EngineLike
from .engine_errors import engine_errors
from .errors import ApiError
from .idempotency import FinalError
from .names import BASE_IMAGE_NAME, Names
from .store import SYSTEM_ORG, Store, VmRow, utc_now_iso
from .vm_expiry import Expiry, TtlReaper

log = logging.getLogger("arker.local")


def summary(vm: VmRow, expires_at: datetime | None = None) -> VmSummaryWire:
    """The wire summary of a VM row (and its expiry, when it has a TTL)."""
    return VmSummaryWire(
        vm_id=vm.id,
        name=vm.name,
        base_image=vm.base_image,
        region=vm.region,
        created_at=datetime.fromisoformat(vm.created_at),
        expires_at=expires_at,
    )


def diff_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be the directory a diff compares, or None: absolute, no
    ``..``, no NUL, at most 4096 bytes."""
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        return f"path must be absolute, without '..' or NUL: {path!r}"
    if len(path.encode("utf-8", "surrogatepass")) > 4096:
        return "path is longer than 4096 bytes"
    return None


def may_use(vm: VmRow | None, org_id: str, *, fork: bool = False) -> bool:
    """The visibility rule: an org uses only its own VMs, and may fork a public one."""
    return vm is not None and (vm.org_id == org_id or (fork and vm.is_public))


class Vms:
    """VM operations; every method is blocking (routes run them in the thread pool).

    Args:
        store: VM rows.
        engine: The sandbox engine.
        config: Timeout defaults and limits.
        expiry: The VMs' TTLs (None: forks with a TTL are refused).
    """

    def __init__(
        self, store: Store, engine: EngineLike, config: ServerConfig, expiry: Expiry | None = None
    ) -> None:
        self._store = store
        self._engine = engine
        self._config = config
        self._names = Names(store)
        self._expiry = expiry

    def ensure_base_image(self) -> None:
        """Create the public ``arkuntu`` image (engine layer and DB row) if missing."""
        with engine_errors():
            self._engine.ensure_base(ARKUNTU_ID)
        if self._store.get_vm(ARKUNTU_ID) is None:
            self._store.ensure_org(SYSTEM_ORG)
            self._store.insert_vm(
                VmRow(
                    id=ARKUNTU_ID,
                    org_id=SYSTEM_ORG,
                    name=BASE_IMAGE_NAME,
                    is_public=True,
                    base_image=ARKUNTU_ID,
                    region=REGION,
                    created_at=utc_now_iso(),
                    parent=None,
                )
            )

    def owned(self, org_id: str, vm_id: str) -> VmRow:
        """The VM ``vm_id`` when ``org_id`` owns it.

        Raises:
            ApiError: 404 ``not_found`` when absent or owned by someone else.
        """
        vm = self._store.get_vm(vm_id)
        if vm is None or not may_use(vm, org_id):
            raise ApiError("not_found", f"vm not found: {vm_id}")
        return vm

    def list(
        self, org_id: str, *, limit: int, offset: int, q: str | None, sort: str
    ) -> ListVmsResponse:
        """One page of the org's VMs; ``total`` ignores ``limit`` and ``offset``."""
        rows, total = self._store.list_vms(org_id, limit=limit, offset=offset, q=q, sort=sort)
        expiries = self._expiry.of(r.id for r in rows) if self._expiry else {}
        return ListVmsResponse(items=[summary(r, expiries.get(r.id)) for r in rows], total=total)

    def fork_by_id(self, org_id: str, source_id: str, req: ForkRequest) -> ForkResponse:
        """Fork ``source_id`` (own or public) into a new VM of ``org_id``."""
        source = self._store.get_vm(source_id)
        if source is None or not may_use(source, org_id, fork=True):
            raise ApiError("not_found", f"vm not found: {source_id}")
        return self._fork(org_id, source, req)

    def fork_by_name(self, org_id: str, req: ForkRequest) -> ForkResponse:
        """Fork the VM named ``req.from_``, resolved by the rule of `arker.local.names`."""
        if not req.from_:
            raise ApiError("bad_request", "'from' is required: the name of the VM to fork")
        pinned = req.source_org_id is not None or req.source_org_name is not None
        source = self._names.resolve(org_id, req.from_, req.source_org_id, req.source_org_name)
        if source is None and not pinned and looks_like_vm_id(req.from_):
            # Be lenient with clients that send an id where a name is expected.
            return self.fork_by_id(org_id, req.from_, req)
        if source is None:
            raise ApiError("not_found", f"vm not found: {req.from_}")
        return self._fork(org_id, source, req)

    def delete(self, org_id: str, vm_id: str) -> None:
        """Delete a VM the org owns; its forks keep working."""
        vm = self.owned(org_id, vm_id)
        # The DB row is the commit point: once it is gone the VM is gone, and a crash
        # before the engine cleanup leaves only garbage that start-up GC removes.
        self._store.delete_vm(vm.id)
        self.drop(vm.id)

    def drop(self, vm_id: str) -> None:
        """Tear down the engine state of a VM whose row is gone (deleted, expired)."""
        try:
            with engine_errors():
                self._engine.delete(vm_id)
        except ApiError as exc:
            log.warning("engine delete of %s failed (GC will retry): %s", vm_id, exc)

    def reaper(self, interval_s: float = 1.0) -> TtlReaper:
        """The thread deleting this server's expired VMs (not started)."""
        if self._expiry is None:
            raise RuntimeError("no expiry store: nothing to reap")
        return TtlReaper(self._expiry, self.drop, interval_s)

    def touch(self, org_id: str, vm_id: str, ttl: int) -> TouchResponse:
        """Expire the VM ``ttl`` seconds from now (an extension)."""
        vm = self.owned(org_id, vm_id)
        when = self._expiry.set(vm.id, ttl) if self._expiry else None
        if when is None:  # reaped (or deleted) since the lookup
            raise ApiError("not_found", f"vm not found: {vm_id}")
        return TouchResponse(vm_id=vm.id, expires_at=when)

    def diff(self, org_id: str, vm_id: str, path: str) -> ForkDiffResponse:
        """What the VM changed under ``path`` since it was forked (an extension)."""
        problem = diff_path_problem(path)
        if problem:
            raise ApiError("bad_request", problem)
        vm = self.owned(org_id, vm_id)
        with engine_errors():
            got = self._engine.diff(vm.id, path)

        def entries(changes: Sequence[DiffChangeLike]) -> list[DiffEntryWire]:
            return [
                DiffEntryWire(path=c.path, size=c.size, mode=c.mode, sha256=c.sha256)
                for c in changes
            ]

        return ForkDiffResponse(
            path=path,
            added=entries(got.added),
            modified=entries(got.modified),
            deleted=entries(got.deleted),
            truncated=got.truncated,
        )

    def run(self, org_id: str, vm_id: str, req: RunRequest) -> RunResponse:
        """Run ``req.command`` in the VM's session and describe the outcome."""
        vm = self.owned(org_id, vm_id)
        timeout = float(req.timeout) if req.timeout else self._config.default_run_timeout
        timeout = min(timeout, self._config.max_run_timeout)
        session = str(req.session_id)
        try:
            with engine_errors():
                outcome = self._engine.run(vm.id, req.command, session=session, timeout=timeout)
        except ApiError as exc:
            if exc.code == "vm_busy":
                raise  # the command never started: a later retry may run it
            # The command may have run (e.g. it broke the disk quota): this error is the
            # run's outcome, replayed to a retry with the same Idempotency-Key instead
            # of running the command again.
            raise FinalError(exc.code, exc.message, exc.status) from exc
        stdout, stdout_encoding = encode_content(outcome.stdout)
        stderr, stderr_encoding = encode_content(outcome.stderr)
        return RunResponse(
            stdout=stdout,
            stdout_encoding=stdout_encoding,
            stderr=stderr,
            stderr_encoding=stderr_encoding,
            exit_code=124 if outcome.timed_out else outcome.exit_code,
            duration_ms=float(outcome.duration_ms),
            session_id=session,
            cwd=outcome.cwd,
            timed_out=outcome.timed_out,
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
        )

    def _fork(self, org_id: str, source: VmRow, req: ForkRequest) -> ForkResponse:
        if req.region is not None and req.region != REGION:
            raise ApiError(
                "unsupported_region",
                f"region {req.region!r} is not served here; this server serves {REGION!r}",
            )
        self._names.check_new_name(org_id, req.name)
        ttl = req.ttl if req.ttl is not None else self._config.default_ttl
        if ttl is not None and self._expiry is None:
            raise ApiError("unsupported_operation", "this server keeps no VM TTLs")
        child_id = f"{new_ulid()}_{REGION_SUFFIX}"
        # Engine first, DB row second: the row is the commit point, and an engine
        # layer without a row is garbage that start-up GC removes.
        with engine_errors():
            self._engine.fork(source.id, child_id)
        child = VmRow(
            id=child_id,
            org_id=org_id,
            name=req.name,
            is_public=req.is_public,
            base_image=source.base_image,
            region=REGION,
            created_at=utc_now_iso(),
            parent=source.id,
        )
        self._store.insert_vm(child)
        expires_at = self._expiry.set(child.id, ttl) if ttl is not None and self._expiry else None
        s = summary(child)
        return ForkResponse(
            vm_id=child.id,
            name=s.name,
            base_image=s.base_image,
            region=s.region,
            created_at=s.created_at,
            expires_at=expires_at,
        )
