"""When to retry, and how long to wait. Tenacity is the only retry layer in the SDK.

Each decision is a small named function with a table test in ``tests/unit/test_retry.py``:

* `is_transient_status` — HTTP statuses worth another attempt;
* `is_transient_envelope_error` — an ``internal`` error whose message carries one of the
  throttling hints the protocol lists (`TRANSIENT_HINTS`; sent with HTTP 200 or 500,
  or inside one write result);
* `is_transient` — either of the two, for one server error;
* `parse_retry_after` — the server's ``Retry-After`` header, in seconds;
* `should_retry` — the verdict for one exception under a `RetryPolicy`;
* `outcome_unknown` — whether a call that gave up may have been carried out anyway;
* `transfer_gives_up` — when a resumable transfer stops: attempts that made progress
  are free and refill the budget, only stalled ones spend it, within
  `RetryPolicy.max_transfer_time`.

Safety is decided by the callers, not here: every request the SDK retries is either
read-only, idempotent by construction (DELETE, sync writes keyed by ``upload_id``) or
carries an ``Idempotency-Key`` minted once per call (fork, run). An answer cut by the
transport counts as a connection failure (`arker._response.is_cut_answer`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from ._exceptions import APIConnectionError, APIStatusError, ArkerError, OutcomeUnknownError

__all__ = [
    "TRANSIENT_HINTS",
    "TRANSIENT_STATUSES",
    "RetryPolicy",
    "TransferProgress",
    "build_retrying",
    "build_transfer_retrying",
    "is_transient",
    "is_transient_envelope_error",
    "is_transient_status",
    "outcome_unknown",
    "parse_retry_after",
    "should_retry",
    "transfer_gives_up",
]

log = logging.getLogger("arker")

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
TRANSIENT_HINTS = ("503", "Service Unavailable", "throttle", "SlowDown", "ThrottlingException")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the SDK tries before giving up.

    Attributes:
        max_retries: Attempts after the first one (0 disables retries).
        initial_backoff: First backoff in seconds; it doubles each retry.
        max_backoff: Ceiling of one backoff, in seconds.
        max_retry_after: The longest ``Retry-After`` the SDK will sleep for; a server
            asking for more gets its error raised instead of a minutes-long sleep.
        max_transfer_time: Seconds after its start during which a presigned upload or
            download that keeps making progress is resumed. Only its attempts that moved
            nothing forward count against ``max_retries`` (since the last one that
            did); once this time has passed, the next failure is raised. An attempt
            under way is never cut short.
    """

    max_retries: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    max_transfer_time: float = 3600.0


def is_transient_status(status: int) -> bool:
    """HTTP 429, 502, 503 and 504 are worth retrying; nothing else is."""
    return status in TRANSIENT_STATUSES


def is_transient_envelope_error(code: str, message: str) -> bool:
    """An ``internal`` error is transient when its message names a throttling condition.

    The protocol allows reading message text for this purpose only.
    """
    return code == "internal" and any(hint in message for hint in TRANSIENT_HINTS)


def is_transient(exc: APIStatusError) -> bool:
    """An error a gateway or throttle may have produced: worth another attempt."""
    return is_transient_status(exc.status) or is_transient_envelope_error(exc.code, exc.message)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def should_retry(exc: BaseException, policy: RetryPolicy) -> bool:
    """Whether one failed attempt deserves another.

    Connection failures and timeouts retry; so do transient statuses and transient
    envelope errors, unless the server asked us to wait longer than the policy allows.
    """
    if isinstance(exc, APIConnectionError):
        return True
    if not isinstance(exc, APIStatusError) or not is_transient(exc):
        return False
    return exc.retry_after is None or exc.retry_after <= policy.max_retry_after


def outcome_unknown(exc: BaseException, *, acts: bool, lost_after_send: bool) -> bool:
    """Whether a call that gave up on ``exc`` may have been carried out anyway.

    Only for a request that acts (not a read), after some attempt was lost in transport
    once (possibly) sent, and when the last failure is itself no answer from the server:
    a connection failure, or a transient status a gateway may have produced. An answer
    the server gave (404, 409, a non-transient 500…) is definitive: with a key, a retry
    after a success replays that success.
    """
    if not acts or not lost_after_send or isinstance(exc, OutcomeUnknownError):
        return False
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and is_transient(exc)


def transfer_gives_up(stalled: int, elapsed: float, policy: RetryPolicy) -> bool:
    """Whether a resumable transfer stops after a failed attempt.

    ``stalled`` counts its failed attempts in a row that moved nothing forward (this
    one included): an attempt that made progress spends none of the budget and gives
    back what earlier stalls spent, as tus clients reset their retry count on progress.
    ``elapsed`` is the time since the transfer began: past ``max_transfer_time`` no
    attempt follows, which bounds a transfer that crawls forward one stall at a time.
    """
    return stalled > policy.max_retries or elapsed >= policy.max_transfer_time


class TransferProgress:
    """Where a resumable transfer stands, and how many of its attempts stalled.

    Attributes:
        position: Bytes the receiving side holds, as last measured (0 at first).
        stalled: Failed attempts in a row after which ``position`` had not moved
            past where the attempt started.
        progressed: Whether the last failed attempt moved the transfer forward.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.position = 0
        self.stalled = 0
        self.progressed = False
        self._clock = clock
        self._started = clock()

    def record(self, started_at: int, now_at: int) -> None:
        """One failed attempt began at ``started_at`` and left the transfer at ``now_at``."""
        self.progressed = now_at > started_at
        self.stalled = 0 if self.progressed else self.stalled + 1
        self.position = now_at

    def elapsed(self) -> float:
        return self._clock() - self._started


def backoff_seconds(policy: RetryPolicy, attempt: int, *, jitter: float | None = None) -> float:
    """Sleep after failed attempt ``attempt`` (1-based): exponential, capped, jittered.

    ``initial * 2**(attempt-1)``, at most ``max_backoff``, plus up to ``initial``
    seconds of random jitter so that many clients do not retry in lockstep.
    """
    base = min(policy.max_backoff, policy.initial_backoff * 2 ** (attempt - 1))
    if jitter is None:
        jitter = random.uniform(0, policy.initial_backoff)
    return float(min(policy.max_backoff, base + jitter))


class _Wait:
    """Exponential backoff with jitter, or the server's ``Retry-After`` when it sent one."""

    def __init__(self, policy: RetryPolicy, progress: TransferProgress | None = None) -> None:
        # tenacity's wait_exponential_jitter renamed its arguments across versions; the
        # formula is one line, so it lives here: initial * 2^(n-1), capped, plus jitter.
        self._policy = policy
        self._progress = progress

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, APIStatusError) and exc.retry_after is not None:
            return exc.retry_after
        if self._progress is None:
            return backoff_seconds(self._policy, state.attempt_number)
        # A transfer that just moved forward resumes at once (the network dropped it,
        # not an overloaded server); stalled attempts back off as calls do.
        if self._progress.progressed:
            return 0.0
        return backoff_seconds(self._policy, max(1, self._progress.stalled))


def _log_before_sleep(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    if isinstance(exc, ArkerError):
        log.info(
            "retrying after %s (attempt %d, sleeping %.2fs)",
            exc.code,
            state.attempt_number,
            wait,
            extra={"arker_attempt": state.attempt_number, "arker_retry_in": wait},
        )


def build_retrying(policy: RetryPolicy, sleep: Callable[[float], None]) -> Retrying:
    """A tenacity controller for one SDK call; ``sleep`` is injectable for tests."""
    return Retrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=_Wait(policy),
        retry=retry_if_exception(lambda exc: should_retry(exc, policy)),
        # At exhaustion raise the last real error, not tenacity's RetryError.
        reraise=True,
        sleep=sleep,
        before_sleep=_log_before_sleep,
    )


def build_transfer_retrying(
    policy: RetryPolicy, sleep: Callable[[float], None], progress: TransferProgress
) -> Retrying:
    """A tenacity controller for one resumable transfer whose attempts record their
    progress in ``progress``: it stops by `transfer_gives_up`."""
    return Retrying(
        stop=lambda state: transfer_gives_up(progress.stalled, progress.elapsed(), policy),
        wait=_Wait(policy, progress),
        retry=retry_if_exception(lambda exc: should_retry(exc, policy)),
        reraise=True,
        sleep=sleep,
        before_sleep=_log_before_sleep,
    )
