"""``client.runs``: run shell commands in a VM."""

from __future__ import annotations

from .._exceptions import refused_before_sending
from .._ids import new_ulid
from .._models import RunResult
from .._wire import RunRequest, RunResponse
from ._resource import Resource, build_request, vm_path

__all__ = ["RunsResource"]

# With no timeout given, the server applies its own default; the read timeout must
# outlast any sensible default, or a long command would look like a dead server.
_SERVER_DEFAULT_TIMEOUT_S = 600
_READ_MARGIN_S = 30


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
    ) -> RunResult:
        """Run ``command`` and wait for it to finish.

        Args:
            vm_id: The VM to run in.
            command: A shell command line.
            session_id: Runs in one session share working directory and exported
                environment; distinct sessions are independent.
            timeout: Seconds before the server kills the command (exit code 124).
            idempotency_key: Makes the run exactly-once across retries; one is
                minted per call when omitted.

        Returns:
            The command's output and exit status. A non-zero exit is not an error.

        Raises:
            VmBusyError: Another command is still running in that session.
        """
        if not isinstance(command, str):
            raise refused_before_sending("command must be a string")
        if timeout is not None and (isinstance(timeout, bool) or timeout < 1):
            raise refused_before_sending(f"timeout must be >= 1 s, got {timeout}")
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
