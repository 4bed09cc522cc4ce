"""Following a run's output as it is written, until the run ends.

The follower asks ``GET …/runs/{run_id}/output`` (the long-poll extension,
``docs/wire-extensions.md``) for the bytes past the offsets it holds, and moves each
offset on only by the bytes it hands out: a request that fails is retried (by the
client's policy) with the same offsets, and a new follower can start where an old one
stopped, so output is never skipped nor repeated. No request stays open longer than
one long poll.

A server without the extension answers 404 on that route while ``GET …/runs/{run_id}``
works: the follower then polls the run itself and hands out what its output gained
since the last poll.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Literal

from .._base_client import BaseClient
from .._exceptions import NotFoundError, ResponseValidationError
from .._models import OutputChunk, RunStatus
from .._wire_live import OUTPUT_WAIT_DEFAULT_S, OutputQuery, Run, RunOutput, is_terminal
from ._run_routes import get_run, read_output

__all__ = ["POLL_INTERVAL_S", "Follower"]

log = logging.getLogger("arker")

POLL_INTERVAL_S = 0.5
"""Seconds between two reads of a run when the server lacks the output extension."""
_EMPTY_ANSWER_PAUSE_S = 0.2
"""A pause after an empty answer that came back well before the wait it asked for (a
server that does not hold the request): the follower never spins on such a server."""

StreamName = Literal["stdout", "stderr"]
_STREAMS: tuple[StreamName, ...] = ("stdout", "stderr")


class Follower:
    """Follows one run from given offsets; `chunks` yields its new output.

    Attributes:
        offsets: Bytes of each stream handed out so far (plus the starting offsets).
        state: The run's last known state (``None`` before the first answer).
        extension: Whether the server has the output route (``None``: not asked yet).
        truncated: Streams the server reported cut at its per-run output cap.
    """

    def __init__(
        self,
        client: BaseClient,
        vm_id: str,
        run_id: str,
        *,
        sleep: Callable[[float], None],
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._vm_id = vm_id
        self._run_id = run_id
        self._sleep = sleep
        self._deadline = deadline
        self._clock = clock
        self.offsets: dict[StreamName, int] = {"stdout": stdout_offset, "stderr": stderr_offset}
        self.state: str | None = None
        self.extension: bool | None = None
        self.truncated: set[StreamName] = set()

    def chunks(self) -> Iterator[OutputChunk]:
        """The run's output past the offsets, as it is written; ends when the run has
        ended and every byte was handed out.

        Raises:
            TimeoutError: The deadline passed first (the run goes on).
            NotFoundError: The run (or its VM) does not exist.
        """
        while True:
            if self.extension is not False:
                try:
                    answer = self._long_poll()
                except NotFoundError:
                    if self.extension:
                        raise  # the route answered before: the run or its VM is gone
                    run = get_run(self._client, self._vm_id, self._run_id)
                    log.debug("run %s: no output route on the server, polling", self._run_id)
                    self.extension = False
                    yield from self._diff(run)
                    if is_terminal(run.state):
                        return
                    self._pause(POLL_INTERVAL_S)
                    continue
                self.extension = True
                yield from self._take(answer)
                if answer.done:
                    return
            else:
                run = get_run(self._client, self._vm_id, self._run_id)
                yield from self._diff(run)
                if is_terminal(run.state):
                    return
                self._pause(POLL_INTERVAL_S)

    # -- the extension -----------------------------------------------------------------

    def _long_poll(self) -> RunOutput:
        wait = OUTPUT_WAIT_DEFAULT_S
        remaining = self._remaining()
        if remaining is not None:
            # Whole seconds on the wire; the last poll may end up to a second late.
            wait = min(wait, math.ceil(remaining))
        query = OutputQuery(
            stdout_offset=self.offsets["stdout"],
            stderr_offset=self.offsets["stderr"],
            wait=wait,
        )
        asked = self._clock()
        answer = read_output(self._client, self._vm_id, self._run_id, query)
        empty = not answer.stdout.data and not answer.stderr.data
        if empty and not answer.done and self._clock() - asked < wait / 2:
            self._pause(_EMPTY_ANSWER_PAUSE_S)
        return answer

    def _take(self, answer: RunOutput) -> Iterator[OutputChunk]:
        self.state = answer.state
        for name in _STREAMS:
            part = answer.stdout if name == "stdout" else answer.stderr
            if part.offset != self.offsets[name]:
                # Taking it would skip or repeat bytes.
                raise ResponseValidationError(
                    f"run {self._run_id}: {name} answered from offset {part.offset}, "
                    f"asked from {self.offsets[name]}"
                )
            if part.truncated:
                self.truncated.add(name)
            if part.data:
                self.offsets[name] = part.next_offset
                yield OutputChunk(stream=name, data=part.data)

    # -- the fallback ------------------------------------------------------------------

    def _diff(self, run: Run) -> Iterator[OutputChunk]:
        status = RunStatus.from_run(run, self._vm_id)
        self.state = status.state
        for name in _STREAMS:
            data = status.stdout if name == "stdout" else status.stderr
            if status.stdout_truncated if name == "stdout" else status.stderr_truncated:
                self.truncated.add(name)
            if len(data) > self.offsets[name]:
                new = data[self.offsets[name] :]
                self.offsets[name] = len(data)
                yield OutputChunk(stream=name, data=new)

    # -- time --------------------------------------------------------------------------

    def _remaining(self) -> float | None:
        """Seconds left before the deadline; raises once it has passed."""
        if self._deadline is None:
            return None
        left = self._deadline - self._clock()
        if left <= 0:
            raise TimeoutError(f"run {self._run_id} still {self.state or 'running'}")
        return left

    def _pause(self, seconds: float) -> None:
        remaining = self._remaining()
        self._sleep(seconds if remaining is None else min(seconds, remaining))
