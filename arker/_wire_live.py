"""Live runs and sessions on the wire: one definition for client and server.

The platform's routes under ``/api/v1/vms/{id}``: ``POST …/runs`` (a run that may
outlive its request), ``GET``/``DELETE …/runs/{run_id}``, ``GET …/runs``, and the
session routes ``…/sessions[/{sid}]``; plus this code base's extension for following a
run's output, ``GET …/runs/{run_id}/output`` (``docs/wire-extensions.md``, "Runs:
following output").

The rules of `arker._wire` hold here too: responses ignore unknown fields, enum-like
strings (a run's ``state``, an output ``encoding``) are plain ``str`` so an unknown
value reaches the caller, extension fields are optional, and request bodies are strict.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    RootModel,
    Tag,
    model_validator,
)

from ._wire import Envelope, RequestModel, UtcDatetime, WireModel

__all__ = [
    "OUTPUT_LIMIT_DEFAULT",
    "OUTPUT_LIMIT_MAX",
    "OUTPUT_WAIT_DEFAULT_S",
    "OUTPUT_WAIT_MAX_S",
    "RUN_STATES",
    "TERMINAL_RUN_STATES",
    "TIME_TO_BACKGROUND_DEFAULT_S",
    "TIME_TO_BACKGROUND_MAX_S",
    "BackgroundRunResponse",
    "CancelRunResponse",
    "CompletedRunResponse",
    "CreateSessionRequest",
    "DeleteSessionResponse",
    "KnownRunState",
    "ListRunsResponse",
    "ListSessionsResponse",
    "OutputQuery",
    "Run",
    "RunOutput",
    "RunRequest",
    "RunState",
    "RunSummary",
    "Session",
    "StartRunResponse",
    "StreamOutput",
    "is_terminal",
]

# --- states -----------------------------------------------------------------------------

KnownRunState = Literal["pending", "running", "completed", "failed", "cancelled"]
"""The run states the platform defines: ``pending`` (accepted, waiting for its session),
``running``, and the terminal ``completed`` (it exited: see ``exit_code``), ``failed``
(the service could not start or finish it: see ``fail_reason``), ``cancelled``."""

RunState = str
"""A run's state as it arrives: one of `KnownRunState`, or a value a newer server
invented (kept, never a validation error)."""

RUN_STATES: tuple[KnownRunState, ...] = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL_RUN_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def is_terminal(state: str) -> bool:
    """Whether a run in ``state`` has ended (its output will not grow any more)."""
    return state in TERMINAL_RUN_STATES


# --- start a run ------------------------------------------------------------------------

TIME_TO_BACKGROUND_DEFAULT_S = 300
"""Seconds ``POST …/runs`` waits for the run to end when the request does not say."""
TIME_TO_BACKGROUND_MAX_S = 300

SessionSelector = Annotated[str, Field(max_length=128)] | int
"""A session as callers name it: any string (created on first use) or an index."""


class RunRequest(RequestModel):
    """Body of ``POST …/runs``.

    ``session_id`` omitted is the VM's default session (the one 0.1.0's ``session_id=0``
    names). ``time_to_background`` is how long the request waits for the run to end
    before answering ``202`` with the running run (``0``: answer at once).
    """

    command: str
    session_id: SessionSelector | None = None
    timeout: Annotated[int, Field(ge=1)] | None = None
    time_to_background: Annotated[int, Field(ge=0, le=TIME_TO_BACKGROUND_MAX_S)] | None = None


class CompletedRunResponse(Envelope):
    """``200`` from ``POST …/runs``: the run ended within ``time_to_background``."""

    run_id: str | None = None
    session_id: str | None = None
    state: RunState = "completed"
    stdout: str
    stdout_encoding: str = "utf-8"
    stderr: str
    stderr_encoding: str = "utf-8"
    exit_code: int | None = None
    # (ext) the same facts 0.1.0's ``…/run`` answer carries
    duration_ms: float | None = None
    cwd: str | None = None
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class BackgroundRunResponse(Envelope):
    """``202`` from ``POST …/runs``: the run is under way; follow it by ``run_id``."""

    run_id: str = Field(min_length=1)
    session_id: str | None = None
    state: RunState = "running"


def _start_answer_kind(value: Any) -> str:
    """A completed answer carries output; a background one does not (no shared tag)."""
    if isinstance(value, dict):
        return "completed" if "stdout" in value else "background"
    return "completed" if isinstance(value, CompletedRunResponse) else "background"


class StartRunResponse(
    RootModel[
        Annotated[
            Union[
                Annotated[CompletedRunResponse, Tag("completed")],
                Annotated[BackgroundRunResponse, Tag("background")],
            ],
            Discriminator(_start_answer_kind),
        ]
    ]
):
    """Either answer of ``POST …/runs``, told apart by its fields (the HTTP status,
    ``200`` or ``202``, says the same)."""


# --- a run ------------------------------------------------------------------------------


class RunSummary(Envelope):
    """One run as ``GET …/runs`` lists it (no output)."""

    run_id: str = Field(min_length=1)
    session_id: str | None = None
    command: str | None = None
    state: RunState
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None
    exit_code: int | None = None
    fail_reason: str | None = None
    vm_id: str | None = None


class Run(RunSummary):
    """``GET …/runs/{run_id}``: the run with its output so far (it grows while the run
    runs). ``exit_code`` is null until the command exits, and for a cancelled run."""

    stdout: str = ""
    stdout_encoding: str = "utf-8"
    stderr: str = ""
    stderr_encoding: str = "utf-8"
    # (ext)
    duration_ms: float | None = None
    cwd: str | None = None
    timed_out: bool = False
    stdout_truncated: bool = False  # the server's per-run output cap was hit
    stderr_truncated: bool = False


class ListRunsResponse(Envelope):
    """A page of runs, newest first; ``next_cursor`` is null on the last page."""

    runs: list[RunSummary] = Field(default_factory=list)
    next_cursor: str | None = None


class CancelRunResponse(Envelope):
    """``DELETE …/runs/{run_id}``: ``cancelled`` is false when the run had already ended."""

    cancelled: bool


# --- following output (ext) -------------------------------------------------------------

OUTPUT_WAIT_DEFAULT_S = 20
"""Seconds ``…/output`` holds a request open for new bytes when it does not say."""
OUTPUT_WAIT_MAX_S = 30
OUTPUT_LIMIT_DEFAULT = 1 << 20
"""Bytes of each stream one ``…/output`` answer carries at most, when it does not say."""
OUTPUT_LIMIT_MAX = 4 << 20


class OutputQuery(WireModel):
    """The query of ``GET …/runs/{run_id}/output``: where the follower is in each
    stream, how long to wait for news, how many bytes per stream to take."""

    stdout_offset: int = Field(default=0, ge=0)
    stderr_offset: int = Field(default=0, ge=0)
    wait: float = Field(default=OUTPUT_WAIT_DEFAULT_S, ge=0, le=OUTPUT_WAIT_MAX_S)
    limit: int = Field(default=OUTPUT_LIMIT_DEFAULT, ge=1, le=OUTPUT_LIMIT_MAX)

    def params(self) -> dict[str, str]:
        """The query string's parameters."""
        return {name: str(value) for name, value in self.model_dump().items()}


def _base64_bytes(value: Any) -> Any:
    """Wire text is strict standard base64; bytes given in Python are taken as they are."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"invalid base64 ({exc})") from None
    return value


Base64Bytes = Annotated[
    bytes,
    BeforeValidator(_base64_bytes),
    PlainSerializer(lambda data: base64.b64encode(data).decode("ascii"), return_type=str),
]
"""Bytes that travel as standard base64 text (no line breaks)."""


class StreamOutput(WireModel):
    """Bytes ``[offset, next_offset)`` of one stream. ``truncated``: the server's
    per-run output cap was hit, and bytes past it were discarded."""

    offset: int = Field(ge=0)
    data: Base64Bytes = b""
    next_offset: int = Field(ge=0)
    truncated: bool = False

    @model_validator(mode="after")
    def _contiguous(self) -> StreamOutput:
        # A follower resumes from next_offset: a value that does not count exactly the
        # bytes carried would make it skip or repeat output.
        if self.next_offset != self.offset + len(self.data):
            raise ValueError(
                f"next_offset {self.next_offset} != offset {self.offset} "
                f"+ {len(self.data)} bytes of data"
            )
        return self


class RunOutput(Envelope):
    """``GET …/runs/{run_id}/output``: what is new in each stream since the offsets
    asked for, and the run's state. ``done``: the run has ended and both streams were
    read to their final size: the follower stops."""

    run_id: str
    state: RunState
    exit_code: int | None = None
    fail_reason: str | None = None
    stdout: StreamOutput
    stderr: StreamOutput
    done: bool = False


# --- sessions ---------------------------------------------------------------------------


class CreateSessionRequest(RequestModel):
    """Body of ``POST …/sessions``: where its shell starts, and environment overrides."""

    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    env: dict[str, str] | None = None


class Session(Envelope):
    """A session: a terminal tab keeping its own working directory and environment.

    ``state``: ``idle``, ``running`` (a run holds it) or ``pending`` (plain ``str``).
    """

    session_id: str = Field(min_length=1)
    session_idx: int | None = None
    state: str = "idle"
    cwd: str = ""
    env: dict[str, str] | None = None
    started_at: UtcDatetime | None = None
    vm_id: str | None = None


class ListSessionsResponse(Envelope):
    sessions: list[Session] = Field(default_factory=list)
    next_cursor: str | None = None


class DeleteSessionResponse(Envelope):
    deleted: bool
