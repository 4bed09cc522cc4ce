"""The routes of live runs and sessions (the platform's shapes, `arker._wire_live`).

``POST/GET …/runs``, ``GET/DELETE …/runs/{run_id}``, the ``…/runs/{run_id}/output``
extension (docs/wire-extensions.md, "Runs: following output") and ``…/sessions``.
Waits (``time_to_background``, an output follower's ``wait``, a cancel settling) are
asyncio waits: a waiting request holds no server thread.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .._ids import new_ulid
from .._wire import Envelope, ErrorEnvelope
from .._wire_live import (
    OUTPUT_LIMIT_DEFAULT,
    OUTPUT_LIMIT_MAX,
    OUTPUT_WAIT_DEFAULT_S,
    OUTPUT_WAIT_MAX_S,
    TIME_TO_BACKGROUND_DEFAULT_S,
    BackgroundRunResponse,
    CancelRunResponse,
    CompletedRunResponse,
    CreateSessionRequest,
    DeleteSessionResponse,
    ListRunsResponse,
    ListSessionsResponse,
    Run,
    RunOutput,
    RunRequest,
    Session,
    is_terminal,
)
from .auth import require_org
from .body_checks import reject_lone_surrogates
from .engine_errors import engine_errors
from .errors import ApiError
from .openapi import API_ERRORS, error_docs
from .run_views import (
    Snapshot,
    background_answer,
    completed_answer,
    run_view,
    session_view,
    snapshot,
    stream_slice,
    summary_view,
)
from .services import Services

__all__ = ["live_router"]

OrgId = Annotated[str, Depends(require_org)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
DEFAULT_SESSION = "0"
"""The session of a run that names none: 0.1.0's ``session_id=0``."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CANCEL_SETTLE_S = 10.0
LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorEnvelope, "description": "rate_limited (a live-run bound)"}
}


def _json(model: Envelope, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True), status_code=status)


def _session_of(selector: str | int | None) -> str:
    session = DEFAULT_SESSION if selector is None else str(selector)
    if not session or "\0" in session:
        raise ApiError("bad_request", "session_id must be a non-empty name without NUL")
    return session


def live_router(s: Services) -> APIRouter:
    """The live-run and session routes, bound to the server's services."""
    router = APIRouter(prefix="/api/v1/vms/{vm_id}")
    runs = s.live
    found = error_docs(*API_ERRORS, 404)

    async def owned(org_id: str, vm_id: str) -> str:
        return (await run_in_threadpool(s.vms.owned, org_id, vm_id)).id

    async def find(org_id: str, vm_id: str, run_id: str) -> Snapshot:
        vm = await owned(org_id, vm_id)
        snap = await run_in_threadpool(snapshot, runs, vm, run_id)
        if snap is None or snap.row.org_id != org_id:
            raise ApiError("not_found", f"run not found: {run_id}")
        return snap

    @router.post(
        "/runs",
        dependencies=[Depends(reject_lone_surrogates)],
        response_model=CompletedRunResponse,
        responses={
            202: {"model": BackgroundRunResponse},
            **error_docs(*API_ERRORS, 404),
            **LIMITED,
        },
    )
    async def start_run(
        vm_id: str, org_id: OrgId, body: RunRequest, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        vm = await owned(org_id, vm_id)
        session = _session_of(body.session_id)
        limit = float(body.timeout) if body.timeout else s.config.max_run_timeout
        timeout = min(limit, s.config.max_run_timeout)

        def create() -> dict[str, Any]:
            run_id = runs.start(org_id, vm, body.command, session, timeout)
            runs.store.ensure_session(org_id, vm, session)
            return {"run_id": run_id}

        request_body = body.model_dump(mode="json")
        started = await run_in_threadpool(
            s.idempotency.execute, org_id, f"runs:{vm}", idempotency_key, request_body, create
        )
        run_id = str(started["run_id"])
        wait = body.time_to_background
        await runs.wait_ended_async(run_id, TIME_TO_BACKGROUND_DEFAULT_S if wait is None else wait)
        snap = await find(org_id, vm, run_id)
        if is_terminal(snap.row.state):
            return _json(await run_in_threadpool(completed_answer, runs, snap))
        return _json(background_answer(snap), status=202)

    @router.get("/runs", response_model=ListRunsResponse, responses=found)
    async def list_runs(
        vm_id: str,
        org_id: OrgId,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        vm = await owned(org_id, vm_id)
        rows = await run_in_threadpool(runs.store.list_runs, vm, limit=limit + 1, before=cursor)
        page = [summary_view(r) for r in rows[:limit]]
        more = len(rows) > limit
        return _json(ListRunsResponse(runs=page, next_cursor=page[-1].run_id if more else None))

    @router.get("/runs/{run_id}", response_model=Run, responses=found)
    async def get_run(vm_id: str, run_id: str, org_id: OrgId) -> JSONResponse:
        snap = await find(org_id, vm_id, run_id)
        return _json(await run_in_threadpool(run_view, runs, snap))

    @router.delete("/runs/{run_id}", response_model=CancelRunResponse, responses=found)
    async def cancel_run(vm_id: str, run_id: str, org_id: OrgId) -> JSONResponse:
        await find(org_id, vm_id, run_id)
        cancelled = runs.cancel(run_id)
        if cancelled:  # answer once it is over: a GET right after shows it cancelled
            await runs.wait_ended_async(run_id, _CANCEL_SETTLE_S)
        return _json(CancelRunResponse(cancelled=cancelled))

    @router.get("/runs/{run_id}/output", response_model=RunOutput, responses={**found, **LIMITED})
    async def run_output(
        vm_id: str,
        run_id: str,
        org_id: OrgId,
        stdout_offset: Annotated[int, Query(ge=0)] = 0,
        stderr_offset: Annotated[int, Query(ge=0)] = 0,
        wait: Annotated[float, Query(ge=0, le=OUTPUT_WAIT_MAX_S)] = OUTPUT_WAIT_DEFAULT_S,
        limit: Annotated[int, Query(ge=1, le=OUTPUT_LIMIT_MAX)] = OUTPUT_LIMIT_DEFAULT,
    ) -> JSONResponse:
        snap = await find(org_id, vm_id, run_id)
        offsets = {"out": stdout_offset, "err": stderr_offset}
        live = snap.live
        if live is not None:
            version = live.version  # read before the sizes: no change slips in between
            snap = Snapshot(live.row, live)
        _check_offsets(snap, offsets)
        if live is not None and not _has_news(snap, offsets):
            with runs.following(live):
                await runs.wait_change(live, version, wait)
            snap = await find(org_id, vm_id, run_id)
        out = await run_in_threadpool(stream_slice, runs, snap, "out", stdout_offset, limit)
        err = await run_in_threadpool(stream_slice, runs, snap, "err", stderr_offset, limit)
        done = is_terminal(snap.row.state) and (
            out.next_offset == snap.sizes["out"] and err.next_offset == snap.sizes["err"]
        )
        answer = RunOutput(
            run_id=run_id,
            state=snap.row.state,
            exit_code=snap.row.exit_code,
            fail_reason=snap.row.fail_reason,
            stdout=out,
            stderr=err,
            done=done,
        )
        return _json(answer)

    # --- sessions -----------------------------------------------------------------------

    def busy(vm: str, session: str) -> bool:
        return bool(runs.sessions_in_use(vm) & {session})

    @router.post(
        "/sessions",
        dependencies=[Depends(reject_lone_surrogates)],
        response_model=Session,
        responses=error_docs(*API_ERRORS, 404),
    )
    def create_session(vm_id: str, org_id: OrgId, body: CreateSessionRequest) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id).id
        session = new_ulid()
        steps = []
        if body.cwd is not None:
            steps.append(f"cd -- {shlex.quote(body.cwd)} || exit 3")
        for name, value in (body.env or {}).items():
            if not _ENV_NAME.match(name) or "\0" in value:
                raise ApiError("bad_request", f"invalid environment variable name: {name!r}")
            steps.append(f"export {name}={shlex.quote(value)}")
        cwd = ""
        if steps:
            with engine_errors():
                outcome = runs.engine.run(vm, "\n".join(steps), session=session, timeout=30)
            if outcome.exit_code != 0:
                raise ApiError("bad_request", f"cannot start the session in {body.cwd!r}")
            cwd = outcome.cwd
        row, _ = runs.store.ensure_session(org_id, vm, session, cwd, body.env)
        return _json(session_view(row, False))

    @router.get("/sessions", response_model=ListSessionsResponse, responses=found)
    def list_sessions(vm_id: str, org_id: OrgId) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id).id
        in_use = runs.sessions_in_use(vm)
        rows = runs.store.list_sessions(vm)
        views = [session_view(r, r.session_id in in_use) for r in rows]
        return _json(ListSessionsResponse(sessions=views))

    @router.get("/sessions/{session_id}", response_model=Session, responses=found)
    def get_session(vm_id: str, session_id: str, org_id: OrgId) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id).id
        row = runs.store.get_session(vm, session_id)
        if row is None:
            raise ApiError("not_found", f"session not found: {session_id}")
        return _json(session_view(row, busy(vm, session_id)))

    @router.delete("/sessions/{session_id}", response_model=DeleteSessionResponse, responses=found)
    def delete_session(vm_id: str, session_id: str, org_id: OrgId) -> JSONResponse:
        vm = s.vms.owned(org_id, vm_id).id
        if runs.store.get_session(vm, session_id) is None:
            raise ApiError("not_found", f"session not found: {session_id}")
        ended = runs.cancel_where(vm, session_id, reason="its session was deleted")
        s.terminals.end_session(vm, session_id)
        runs.wait_ended(ended, _CANCEL_SETTLE_S)
        return _json(DeleteSessionResponse(deleted=runs.store.delete_session(vm, session_id)))

    return router


def _has_news(snap: Snapshot, offsets: dict[str, int]) -> bool:
    return is_terminal(snap.row.state) or any(snap.sizes[k] > offsets[k] for k in offsets)


def _check_offsets(snap: Snapshot, offsets: dict[str, int]) -> None:
    for stream, name in (("out", "stdout"), ("err", "stderr")):
        if offsets[stream] > snap.sizes[stream]:
            raise ApiError(
                "bad_request",
                f"{name}_offset {offsets[stream]} is past the {name} stream's "
                f"{snap.sizes[stream]} bytes",
            )
