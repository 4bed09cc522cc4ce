"""`RunHandle`: a run that goes on by itself, to follow, wait for, inspect or cancel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from .._base_client import BaseClient
from .._exceptions import RunCancelledError, RunError, RunFailedError
from .._models import OutputChunk, RunResult, RunStatus
from ._run_follow import Follower
from ._run_routes import cancel_run, get_run

__all__ = ["RunHandle", "result_or_error"]

ChunkCallback = Callable[[bytes], None]


def result_or_error(status: RunStatus) -> RunResult:
    """The `RunResult` of a run that has ended, or the `RunError` its end stands for.

    A ``completed`` run (any exit code) and a run killed at its ``timeout`` (exit code
    124, ``timed_out``) are results; ``failed`` and ``cancelled`` runs raise.
    """
    if status.state == "completed" or status.timed_out:
        return status.to_result()
    cls: type[RunError] = RunError
    if status.state == "failed":
        cls = RunFailedError
    elif status.state == "cancelled":
        cls = RunCancelledError
    reason = f": {status.fail_reason}" if status.fail_reason else ""
    raise cls(
        f"run {status.run_id} ended {status.state}{reason}",
        run_id=status.run_id,
        state=status.state,
        fail_reason=status.fail_reason,
        stdout=status.stdout,
        stderr=status.stderr,
    )


class RunHandle:
    """A run started with `RunsResource.start` (or found again with
    `RunsResource.attach`). It makes no request until you call a method, and any
    number of handles, in any processes, may follow the same run.

    Attributes:
        run_id: The run's id: keep it to reattach later (``client.runs.attach``).
        vm_id: The VM it runs in.
        session_id: The session it runs in (``None`` when not known).
    """

    def __init__(
        self,
        client: BaseClient,
        vm_id: str,
        run_id: str,
        session_id: str | None,
        *,
        sleep: Callable[[float], None],
    ) -> None:
        self._client = client
        self._sleep = sleep
        self.vm_id = vm_id
        self.run_id = run_id
        self.session_id = session_id
        # Bytes of each stream some stream() of this handle has yielded: wait() need
        # not fetch them again to see the run end.
        self._reached = {"stdout": 0, "stderr": 0}

    def stream(self, *, stdout_offset: int = 0, stderr_offset: int = 0) -> Iterator[OutputChunk]:
        """The run's output, chunk by chunk as the command writes it; the iteration
        ends when the run has ended and all its output was yielded.

        Each chunk is bytes of one stream, in order within that stream (the order
        between stdout and stderr is not kept). Memory stays bounded by one answer
        whatever the run prints. The server keeps a run's output, so a stream started
        late, or again, begins at the first byte; pass the byte counts already seen
        of each stream as offsets to start after them.

        Raises:
            NotFoundError: No such run (or VM).
            APIConnectionError: The server stayed unreachable through the retries;
                start a new stream at the offsets you reached.
        """
        follower = Follower(
            self._client,
            self.vm_id,
            self.run_id,
            sleep=self._sleep,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
        )
        return self._tracked(follower)

    def _tracked(self, follower: Follower) -> Iterator[OutputChunk]:
        for chunk in follower.chunks():
            reached = follower.offsets[chunk.stream]
            self._reached[chunk.stream] = max(self._reached[chunk.stream], reached)
            yield chunk

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run ends; its result.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it runs). This is
                not the run's own ``timeout``: the run goes on after this one expires.

        Returns:
            The result of a ``completed`` run, whatever its exit code (124 and
            ``timed_out`` for one the server killed at its ``timeout``).

        Raises:
            RunFailedError: The service could not start or finish it (``fail_reason``).
            RunCancelledError: It was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        return self._follow_to_end(None, None, timeout, skip=self._reached)

    def status(self) -> RunStatus:
        """Its state and all its output so far (one request)."""
        return RunStatus.from_run(get_run(self._client, self.vm_id, self.run_id), self.vm_id)

    def cancel(self) -> bool:
        """Stop it: its whole process tree ends. ``False`` when it had already ended."""
        return cancel_run(self._client, self.vm_id, self.run_id)

    def _follow_to_end(
        self,
        on_stdout: ChunkCallback | None,
        on_stderr: ChunkCallback | None,
        timeout: float | None,
        skip: dict[str, int] | None = None,
    ) -> RunResult:
        """Follow the run to its end (from the ``skip`` offsets), handing each chunk
        to its callback, then read the final run for its result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = Follower(
            self._client,
            self.vm_id,
            self.run_id,
            sleep=self._sleep,
            stdout_offset=(skip or {}).get("stdout", 0),
            stderr_offset=(skip or {}).get("stderr", 0),
            deadline=deadline,
        )
        for chunk in follower.chunks():
            callback = on_stdout if chunk.stream == "stdout" else on_stderr
            if callback is not None:
                callback(chunk.data)
        return result_or_error(self.status())

    def __repr__(self) -> str:
        return f"RunHandle(vm_id={self.vm_id!r}, run_id={self.run_id!r})"
