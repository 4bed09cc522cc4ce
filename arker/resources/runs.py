"""``client.runs``: run shell commands in a VM, to wait for or to follow live."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from .._exceptions import ResponseValidationError, RunError, refused_before_sending
from .._ids import new_ulid
from .._models import RunResult, RunStatus, RunSummary
from .._wire import RunRequest, RunResponse
from .._wire_live import RUN_STATES, ListRunsResponse, StartRunResponse
from .._wire_live import RunRequest as StartRunRequest
from ._cursor_pages import iterate_pages
from ._resource import Resource, build_request, vm_path
from ._run_handle import ChunkCallback, RunHandle
from ._run_routes import cancel_run, get_run

__all__ = ["RunHandle", "RunsResource"]

log = logging.getLogger("arker")

# With no timeout given, the server applies its own default; the read timeout must
# outlast any sensible default, or a long command would look like a dead server.
_SERVER_DEFAULT_TIMEOUT_S = 600
_READ_MARGIN_S = 30


def _check_run_args(command: str, timeout: int | None) -> None:
    if not isinstance(command, str):
        raise refused_before_sending("command must be a string")
    if timeout is not None and (isinstance(timeout, bool) or timeout < 1):
        raise refused_before_sending(f"timeout must be >= 1 s, got {timeout}")


class RunsResource(Resource):
    """Commands run under ``/bin/sh -c`` as the VM's user, in ``/home/user``."""

    def create(
        self,
        vm_id: str,
        command: str,
        *,
        session_id: str | int = 0,
        timeout: int | None = None,
        idempotency_key: str | None = None,
        on_stdout: ChunkCallback | None = None,
        on_stderr: ChunkCallback | None = None,
    ) -> RunResult:
        """Run ``command`` and wait for it to finish.

        Args:
            vm_id: The VM to run in.
            command: A shell command line.
            session_id: Runs in one session share working directory and exported
                environment; distinct sessions are independent. Any name: an unknown
                one starts a fresh session.
            timeout: Seconds before the server kills the command (exit code 124).
            idempotency_key: Makes the run exactly-once across retries; one is
                minted per call when omitted.
            on_stdout: Called with each chunk of standard output as the command
                writes it. With either callback the run is started on the live-runs
                route and followed (`start`, then `RunHandle.stream`); without, the
                request is the 0.1.0 one.
            on_stderr: The same for standard error.

        Returns:
            The command's output and exit status. A non-zero exit is not an error.

        Raises:
            VmBusyError: Another command is still running in that session.
            RunFailedError: (with callbacks) The service could not run the command.
            RunCancelledError: (with callbacks) Another client cancelled the run.
        """
        if on_stdout is not None or on_stderr is not None:
            return self._create_following(
                vm_id, command, session_id, timeout, idempotency_key, on_stdout, on_stderr
            )
        _check_run_args(command, timeout)
        body = build_request(RunRequest, command=command, session_id=session_id, timeout=timeout)
        wait = (timeout or _SERVER_DEFAULT_TIMEOUT_S) + _READ_MARGIN_S
        wire = self._client.call(
            "POST",
            vm_path(vm_id, "/run"),
            RunResponse,
            body=body,
            idempotency_key=idempotency_key or new_ulid(),
            read_timeout_at_least=wait,
        )
        return RunResult.from_wire(wire)

    def _create_following(
        self,
        vm_id: str,
        command: str,
        session_id: str | int,
        timeout: int | None,
        idempotency_key: str | None,
        on_stdout: ChunkCallback | None,
        on_stderr: ChunkCallback | None,
    ) -> RunResult:
        handle = self.start(
            vm_id,
            command,
            session_id=None if session_id == 0 else session_id,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )
        try:
            return handle._follow_to_end(on_stdout, on_stderr, None)
        except RunError:
            raise  # it ended by itself
        except BaseException:
            # The caller stops waiting (a callback raised, Ctrl-C…): a blocking call
            # leaves no command running behind it.
            try:
                handle.cancel()
            except Exception:
                log.warning("could not cancel run %s", handle.run_id, exc_info=True)
            raise

    def start(
        self,
        vm_id: str,
        command: str,
        *,
        session_id: str | int | None = None,
        timeout: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle:
        """Start ``command`` and return at once, while it runs.

        Args:
            vm_id: The VM to run in.
            command: A shell command line.
            session_id: The session to run in (any name: an unknown one starts a
                fresh session; ``None``: the VM's default session, as 0.1.0's ``0``).
                A session runs one command at a time; use one per background run.
            timeout: Seconds before the server kills the command and every process
                it started; ``None``: it runs until it exits or is cancelled.
            idempotency_key: Makes the start exactly-once across retries (and across
                calls that pass the same key); one is minted per call when omitted.

        Returns:
            A handle to follow (`RunHandle.stream`), wait for, inspect or cancel it.

        Raises:
            VmBusyError: Another command is still running in that session (on servers
                that refuse rather than queue).
            OutcomeUnknownError: Every attempt was lost after it may have reached
                the server: retry with the error's ``idempotency_key``, which starts
                no second run.
        """
        _check_run_args(command, timeout)
        body = build_request(
            StartRunRequest,
            command=command,
            session_id=session_id,
            timeout=timeout,
            time_to_background=0,
        )
        answer = self._client.call(
            "POST",
            vm_path(vm_id, "/runs"),
            StartRunResponse,
            body=body,
            idempotency_key=idempotency_key or new_ulid(),
        ).root
        if not answer.run_id:
            raise ResponseValidationError("the started run has no run_id", 200)
        given = None if session_id is None else str(session_id)
        return self.attach(vm_id, answer.run_id, session_id=answer.session_id or given)

    def attach(self, vm_id: str, run_id: str, *, session_id: str | None = None) -> RunHandle:
        """A handle on a run started earlier, by this process or another (after a
        crash, say). Makes no request."""
        return RunHandle(
            self._client,
            vm_id,
            run_id,
            session_id,
            sleep=self._client._sleep,  # the client's (injectable) sleep
        )

    def get(self, vm_id: str, run_id: str) -> RunStatus:
        """A run's state and all its output so far."""
        return RunStatus.from_run(get_run(self._client, vm_id, run_id), vm_id)

    def cancel(self, vm_id: str, run_id: str) -> bool:
        """Cancel a run: its whole process tree ends. ``False`` when it had already
        ended (or a retry found it cancelled by an attempt whose answer was lost)."""
        return cancel_run(self._client, vm_id, run_id)

    def list(
        self, vm_id: str, *, state: str | None = None, page_size: int | None = None
    ) -> Iterator[RunSummary]:
        """Every run of a VM, newest first, without output; pages are fetched as the
        iteration reaches them.

        Args:
            vm_id: The VM.
            state: Only runs in this state (``running``, ``completed``…).
            page_size: Runs per request (1-1000; the server's default when ``None``).
        """
        path = vm_path(vm_id, "/runs")
        if state is not None and state not in RUN_STATES:
            raise refused_before_sending(f"state must be one of {RUN_STATES}, got {state!r}")
        if page_size is not None and not 1 <= page_size <= 1000:
            raise refused_before_sending(f"page_size must be 1-1000, got {page_size}")

        def fetch(cursor: str | None) -> tuple[list[RunSummary], str | None]:
            params = {"cursor": cursor, "limit": page_size, "state": state}
            query = {k: str(v) for k, v in params.items() if v is not None}
            page = self._client.call("GET", path, ListRunsResponse, params=query)
            return [RunSummary.from_wire(r) for r in page.runs], page.next_cursor

        return iterate_pages(fetch)
