"""Public result models. They are pydantic models so they serialise into logs and pipelines."""

from __future__ import annotations

import base64
import logging
import warnings
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Literal

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
)

from ._exceptions import ResponseValidationError
from ._wire import ForkResponse, ListVmsResponse, RunResponse, VmSummaryWire, decode_content
from ._wire_live import Run, RunState, is_terminal
from ._wire_live import RunSummary as RunSummaryWire
from ._wire_live import Session as SessionWire
from ._wire_platform import PlatformVm
from ._wire_ports import ExposedPortWire

__all__ = [
    "DirSyncResult",
    "ExposedPort",
    "ForkResult",
    "OutputChunk",
    "RunResult",
    "RunStatus",
    "RunSummary",
    "Session",
    "VmDetails",
    "VmList",
    "VmSummary",
]


class _PublicModel(BaseModel):
    # bytes fields load from JSON as base64, so output that is not UTF-8 still
    # round-trips through model_dump_json()/model_validate_json().
    model_config = ConfigDict(extra="ignore", frozen=True, val_json_bytes="base64")


class RunResult(_PublicModel):
    """The outcome of one command.

    Attributes:
        stdout: Raw bytes the command wrote to standard output.
        stderr: Raw bytes the command wrote to standard error.
        exit_code: The command's exit status (124 when it timed out).
        duration_ms: Server-measured wall time of the command.
        session_id: The session the command ran in.
        cwd: The working directory the command ended in.
        timed_out: The server killed the command at its timeout.
        stdout_truncated: Standard output passed the server's cap and was cut.
        stderr_truncated: Standard error passed the server's cap and was cut.
    """

    stdout: bytes
    stderr: bytes
    exit_code: int
    duration_ms: float
    session_id: str
    cwd: str
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @field_serializer("stdout", "stderr", when_used="json")
    def _bytes_as_base64(self, value: bytes) -> str:
        # Standard base64 (pydantic's own choice is the URL-safe alphabet).
        return base64.b64encode(value).decode("ascii")

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    @property
    def stdout_text(self) -> str:
        """Standard output decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """Standard error decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.stderr.decode("utf-8", "replace")

    @classmethod
    def from_wire(cls, wire: RunResponse) -> RunResult:
        return cls(
            stdout=_decode_stream(wire.stdout, wire.stdout_encoding, "stdout"),
            stderr=_decode_stream(wire.stderr, wire.stderr_encoding, "stderr"),
            exit_code=wire.exit_code,
            duration_ms=wire.duration_ms,
            session_id=wire.session_id,
            cwd=wire.cwd,
            timed_out=wire.timed_out,
            stdout_truncated=wire.stdout_truncated,
            stderr_truncated=wire.stderr_truncated,
        )


def _decode_stream(text: str, encoding: str, field: str) -> bytes:
    """Turn a wire output stream into bytes. Unknown encodings are taken as text."""
    try:
        return decode_content(text, encoding)
    except ValueError as exc:
        raise ResponseValidationError(f"{field}: {exc}") from None


class VmSummary(_PublicModel):
    """One VM as listed by `Arker.list` / `client.vms.list`.

    Attributes:
        vm_id: The VM's id.
        name: Its name, if it has one.
        base_image: The id of the image it descends from.
        region: Where it runs.
        created_at: Creation time, timezone-aware (UTC).
        expires_at: When the server deletes it (it has a TTL); None: never.
    """

    vm_id: str
    name: str | None = None
    base_image: str
    region: str
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None

    @classmethod
    def from_wire(cls, wire: VmSummaryWire) -> VmSummary:
        return cls.model_validate(wire.model_dump())


class VmDetails(_PublicModel):
    """One VM as `client.vms.get` and `client.vms.update` describe it (the platform's ``Vm``).

    Attributes:
        vm_id: The VM's id.
        name: Its name, if it has one.
        description: Its description, if it has one.
        owner_org_id: The organisation that owns it.
        public: Whether other organisations may fork it.
        state: ``running`` while one of its runs is live, else ``idle``.
        region: Where it runs.
        created_at: Creation time, timezone-aware (UTC).
        sessions: Its sessions.
    """

    vm_id: str
    name: str | None = None
    description: str | None = None
    owner_org_id: str
    public: bool = False
    state: str = "idle"
    region: str | None = None
    created_at: AwareDatetime
    sessions: list[Session] = Field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: PlatformVm) -> VmDetails:
        data = wire.model_dump()
        data["sessions"] = [Session.from_wire(SessionWire.model_validate(s)) for s in wire.sessions]
        return cls.model_validate(data)


class VmList(_PublicModel):
    """One page of VMs. Iterable and ``len()``-able over this page's items.

    Attributes:
        items: The VMs on this page.
        total: How many VMs match the query, ignoring limit and offset.
    """

    items: list[VmSummary] = Field(default_factory=list)
    total: int = 0

    def __iter__(self) -> Iterator[VmSummary]:  # type: ignore[override]
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> VmSummary:
        return self.items[index]

    @classmethod
    def from_wire(cls, wire: ListVmsResponse) -> VmList:
        return cls(items=[VmSummary.from_wire(i) for i in wire.items], total=wire.total)


class ForkResult(_PublicModel):
    """The VM a fork created. Fields other than ``vm_id`` are set when the server sends them.

    Usable as a context manager: the VM is deleted when the block ends (a failed clean-up
    after an error in the block is logged, never masks that error).

    Attributes:
        vm_id: The new VM's id.
        name: Its name, if any.
        base_image: The image it descends from.
        region: Where it runs.
        created_at: Creation time, timezone-aware.
        expires_at: When the server deletes it (forked with a TTL); None: never.
    """

    vm_id: str
    name: str | None = None
    base_image: str | None = None
    region: str | None = None
    created_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    _delete: Callable[[str], None] | None = PrivateAttr(default=None)

    @classmethod
    def from_wire(
        cls, wire: ForkResponse, delete: Callable[[str], None] | None = None
    ) -> ForkResult:
        result = cls.model_validate(wire.model_dump())
        result._delete = delete
        return result

    def __enter__(self) -> ForkResult:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._delete is None:
            return
        if exc is None:
            self._delete(self.vm_id)
            return
        try:
            self._delete(self.vm_id)
        except Exception:
            logging.getLogger("arker").warning(
                "could not delete VM %s after an error", self.vm_id, exc_info=True
            )


class DirSyncResult(_PublicModel):
    """What `SyncResource.push_dir` or `SyncResource.pull_dir` did.

    The fields name no direction: for ``push_dir`` the files went to the VM, for
    ``pull_dir`` they came from it.

    Attributes:
        transferred: Relative paths of the files copied to the other side, in order.
        skipped: Relative paths already identical on the other side (same sha256 and mode).
        deleted: Relative paths removed from the other side (``delete=True``).
        bytes_transferred: Bytes of file content copied.
        symlinks_skipped: Symbolic links found and left alone (never followed).
    """

    # The 0.2 names (``sent``, ``bytes_sent``) still load from serialised results.
    transferred: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("transferred", "sent")
    )
    skipped: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    bytes_transferred: int = Field(
        default=0, validation_alias=AliasChoices("bytes_transferred", "bytes_sent")
    )
    symlinks_skipped: list[str] = Field(default_factory=list)

    @property
    def files_transferred(self) -> int:
        """How many files were copied."""
        return len(self.transferred)

    @property
    def files_skipped(self) -> int:
        """How many files were already up to date."""
        return len(self.skipped)

    # -- deprecated names: they said "sent" even for the downloads of pull_dir ---------

    @property
    def sent(self) -> list[str]:
        """Deprecated: `transferred`."""
        _renamed("sent", "transferred")
        return self.transferred

    @property
    def bytes_sent(self) -> int:
        """Deprecated: `bytes_transferred`."""
        _renamed("bytes_sent", "bytes_transferred")
        return self.bytes_transferred

    @property
    def files_sent(self) -> int:
        """Deprecated: `files_transferred`."""
        _renamed("files_sent", "files_transferred")
        return self.files_transferred


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"DirSyncResult.{old} is deprecated; use DirSyncResult.{new}",
        DeprecationWarning,
        stacklevel=3,
    )


# --- live runs --------------------------------------------------------------------------


class OutputChunk(_PublicModel):
    """Bytes a running command wrote, in the order it wrote them to that stream.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        data: The bytes (never empty). A chunk may end inside a UTF-8 character or a
            line: join a stream's chunks before decoding them.
    """

    stream: Literal["stdout", "stderr"]
    data: bytes

    @field_serializer("data", when_used="json")
    def _bytes_as_base64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")


class RunSummary(_PublicModel):
    """A run without its output, as `RunsResource.list` lists it.

    Attributes:
        run_id: The run's id: pass it to ``client.runs.get``/``cancel`` from any process.
        session_id: The session it runs in.
        command: The command line, when the server reports it.
        state: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``
            (a plain string: a newer server may add states).
        exit_code: The command's exit status once it exited; ``None`` before, and
            for failed or cancelled runs.
        fail_reason: Why the service could not start or finish it (``failed`` runs).
        started_at: When it started (UTC), if the server says.
        completed_at: When it ended (UTC), if it has.
    """

    run_id: str
    session_id: str | None = None
    command: str | None = None
    state: RunState
    exit_code: int | None = None
    fail_reason: str | None = None
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None

    @property
    def done(self) -> bool:
        """True once the run has ended (``completed``, ``failed`` or ``cancelled``)."""
        return is_terminal(self.state)

    @classmethod
    def from_wire(cls, wire: RunSummaryWire) -> RunSummary:
        return cls.model_validate(wire.model_dump(include=set(cls.model_fields)))


class RunStatus(RunSummary):
    """A run with all its output so far (it grows while the run runs).

    Attributes:
        vm_id: The VM it runs in.
        stdout: Standard output so far.
        stderr: Standard error so far.
        timed_out: The server killed it at its ``timeout``.
        stdout_truncated: Standard output passed the server's per-run cap; bytes past
            it were discarded.
        stderr_truncated: The same for standard error.
        duration_ms: Server-measured wall time, once it ended (if the server says).
        cwd: The working directory it ended in (if the server says).
    """

    vm_id: str
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: float | None = None
    cwd: str | None = None

    @field_serializer("stdout", "stderr", when_used="json")
    def _bytes_as_base64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @classmethod
    def from_run(cls, wire: Run, vm_id: str) -> RunStatus:
        fields = wire.model_dump(include=set(cls.model_fields) - {"stdout", "stderr"})
        return cls(
            **{**fields, "vm_id": wire.vm_id or vm_id},
            stdout=_decode_stream(wire.stdout, wire.stdout_encoding, "stdout"),
            stderr=_decode_stream(wire.stderr, wire.stderr_encoding, "stderr"),
        )

    def to_result(self) -> RunResult:
        """The `RunResult` of a run that ended ``completed`` (or was killed at its
        ``timeout``: exit code 124, as in 0.1.0)."""
        exit_code = self.exit_code
        if exit_code is None and self.timed_out:
            exit_code = 124
        if exit_code is None:
            raise ResponseValidationError(f"run {self.run_id}: {self.state} without an exit_code")
        duration = self.duration_ms
        if duration is None and self.started_at is not None and self.completed_at is not None:
            duration = (self.completed_at - self.started_at).total_seconds() * 1000
        return RunResult(
            stdout=self.stdout,
            stderr=self.stderr,
            exit_code=exit_code,
            duration_ms=duration or 0.0,
            session_id=self.session_id or "",
            cwd=self.cwd or "",
            timed_out=self.timed_out,
            stdout_truncated=self.stdout_truncated,
            stderr_truncated=self.stderr_truncated,
        )


class Session(_PublicModel):
    """A session: a shell of its own (working directory, environment) in one VM.

    Attributes:
        session_id: Its name: pass it as ``session_id`` to runs.
        state: ``idle``, ``running`` (a run holds it) or ``pending``.
        cwd: Its working directory as last reported (empty before its first run when
            created without one).
        env: Environment overrides it was created with.
        started_at: When it started (UTC), if the server says.
    """

    session_id: str
    state: str = "idle"
    cwd: str = ""
    env: dict[str, str] | None = None
    started_at: AwareDatetime | None = None

    @classmethod
    def from_wire(cls, wire: SessionWire) -> Session:
        return cls.model_validate(wire.model_dump(include=set(cls.model_fields)))


class ExposedPort(_PublicModel):
    """A TCP port inside a VM, reachable from outside at `url`.

    Attributes:
        port: The port inside the VM (on its ``127.0.0.1``).
        url: Where to reach it: requests (and WebSocket upgrades) to this URL, and to
            paths under it, go to the port. It carries a secret: whoever holds the URL
            reaches the port, so share it as you would a password.
        created_at: When it was exposed (UTC).
    """

    port: int
    url: str
    created_at: AwareDatetime

    @classmethod
    def from_wire(cls, wire: ExposedPortWire) -> ExposedPort:
        return cls.model_validate(wire.model_dump(include=set(cls.model_fields)))
