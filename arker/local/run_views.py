"""A run as the wire shows it: `Run`, the completed answer, and ``…/output`` slices.

Output is read from the run's files: inline fields carry at most
`LiveLimits.inline_cap` bytes per stream (flagged truncated past it); ``…/output``
carries any byte range up to its ``limit``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from .._wire import encode_content
from .._wire_live import (
    BackgroundRunResponse,
    CompletedRunResponse,
    Run,
    RunSummary,
    Session,
    StreamOutput,
    is_terminal,
)
from .live_runs import LiveRun, LiveRuns
from .run_store import RunRow, SessionRow

__all__ = [
    "Snapshot",
    "background_answer",
    "completed_answer",
    "read_range",
    "run_view",
    "session_view",
    "snapshot",
    "stream_slice",
    "summary_view",
]


class Snapshot:
    """A run's record with its stream sizes and truncation flags at one moment."""

    def __init__(self, row: RunRow, live: LiveRun | None) -> None:
        self.row = row
        self.live = live
        if live is not None and not is_terminal(row.state):
            self.sizes = dict(live.sizes)
            self.truncated = dict(live.truncated)
        else:
            self.sizes = {"out": row.stdout_size, "err": row.stderr_size}
            self.truncated = {"out": row.stdout_truncated, "err": row.stderr_truncated}


def snapshot(runs: LiveRuns, vm_id: str, run_id: str) -> Snapshot | None:
    """The run ``run_id`` of the VM now (live state first, else its record)."""
    live = runs.live(run_id)
    if live is not None and live.row.vm_id == vm_id:
        return Snapshot(live.row, live)
    row = runs.store.get_run(vm_id, run_id)
    return None if row is None else Snapshot(row, None)


def read_range(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of ``path`` from ``offset`` (fewer at its end; none if absent)."""
    if length <= 0:
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def stream_slice(
    runs: LiveRuns, snap: Snapshot, stream: str, offset: int, limit: int
) -> StreamOutput:
    """Bytes ``[offset, offset + limit)`` of a stream, within its size at ``snap``."""
    size = snap.sizes[stream]
    data = read_range(runs.output_path(snap.row.run_id, stream), offset, min(limit, size - offset))
    return StreamOutput(
        offset=offset,
        data=data,
        next_offset=offset + len(data),
        truncated=snap.truncated[stream],
    )


def _inline(runs: LiveRuns, snap: Snapshot, stream: str) -> tuple[str, str, bool]:
    cap = runs.limits.inline_cap
    size = snap.sizes[stream]
    data = read_range(runs.output_path(snap.row.run_id, stream), 0, min(size, cap))
    text, encoding = encode_content(data)
    return text, encoding, snap.truncated[stream] or size > cap


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def summary_view(row: RunRow) -> RunSummary:
    """A run as ``GET …/runs`` lists it."""
    return RunSummary(
        run_id=row.run_id,
        session_id=row.session_id,
        command=row.command,
        state=row.state,
        started_at=_when(row.started_at or row.created_at),
        completed_at=_when(row.completed_at),
        exit_code=row.exit_code,
        fail_reason=row.fail_reason,
        vm_id=row.vm_id,
    )


def run_view(runs: LiveRuns, snap: Snapshot) -> Run:
    """``GET …/runs/{run_id}``: the run with its output so far."""
    out, out_enc, out_trunc = _inline(runs, snap, "out")
    err, err_enc, err_trunc = _inline(runs, snap, "err")
    base = summary_view(snap.row).model_dump()
    return Run(
        **base,
        stdout=out,
        stdout_encoding=out_enc,
        stderr=err,
        stderr_encoding=err_enc,
        duration_ms=snap.row.duration_ms,
        cwd=snap.row.cwd,
        timed_out=snap.row.timed_out,
        stdout_truncated=out_trunc,
        stderr_truncated=err_trunc,
    )


def completed_answer(runs: LiveRuns, snap: Snapshot) -> CompletedRunResponse:
    """``200`` from ``POST …/runs``: the run ended within ``time_to_background``."""
    out, out_enc, out_trunc = _inline(runs, snap, "out")
    err, err_enc, err_trunc = _inline(runs, snap, "err")
    return CompletedRunResponse(
        run_id=snap.row.run_id,
        session_id=snap.row.session_id,
        state=snap.row.state,
        stdout=out,
        stdout_encoding=out_enc,
        stderr=err,
        stderr_encoding=err_enc,
        exit_code=snap.row.exit_code,
        duration_ms=snap.row.duration_ms,
        cwd=snap.row.cwd,
        timed_out=snap.row.timed_out,
        stdout_truncated=out_trunc,
        stderr_truncated=err_trunc,
    )


def background_answer(snap: Snapshot) -> BackgroundRunResponse:
    """``202`` from ``POST …/runs``: the run goes on."""
    return BackgroundRunResponse(
        run_id=snap.row.run_id, session_id=snap.row.session_id, state=snap.row.state
    )


def session_view(row: SessionRow, busy: bool) -> Session:
    """A session record on the wire (``running`` while a run of it is live)."""
    return Session(
        session_id=row.session_id,
        state="running" if busy else "idle",
        cwd=row.cwd,
        env=row.env,
        started_at=_when(row.created_at),
        vm_id=row.vm_id,
    )
