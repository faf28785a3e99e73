"""The one retry policy: what is worth another try, how long to wait, when to give up.

Owns the predicate (``is_retryable``), the back-off curve (a registry's ``Retry-After``
honoured up to a cap, else exponential), the limits of each kind of operation (tries, and
``MAX_RETRY_TIME_S`` whatever the tries), and running an operation under them with tenacity.
Registry requests, whole blob transfers and the resumes of a broken download all wait by
this curve. Knows nothing of HTTP: errors arrive already mapped to ``mirror.errors``. Waits
go through an injectable ``sleep``, so tests never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mirror.errors import RateLimited, RegistryError, Unavailable

MAX_RETRY_WAIT_S = 60.0  # never sleep longer than this on one Retry-After
MAX_RETRY_TIME_S = 120.0  # an operation stops retrying after this long, whatever its tries
FIRST_WAIT_S = 0.25  # the first back-off; each next one doubles...
LONGEST_WAIT_S = 8.0  # ...up to this (without a Retry-After)
ABUSE_PAUSE_S = 2.0  # an abuse-limit 429 without Retry-After pauses its registry this long

Sleep = Callable[[float], Awaitable[Any]]
_T = TypeVar("_T")


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same operation again may succeed.

    Server trouble (5xx, resets, timeouts, bodies that break or will not decode) and the
    abuse limit pass with time; a spent pull quota does not pass within a retry budget, and
    neither does anything the caller got wrong.
    """
    if isinstance(exc, Unavailable):
        return True
    if isinstance(exc, RateLimited):
        return not exc.pull_limit
    return False


def backoff(exc: BaseException | None, retry: int) -> float:
    """How long to wait before retry number ``retry`` (1 = the first): the registry's
    Retry-After when it sent one (capped at MAX_RETRY_WAIT_S), else 0.25 s doubling up to 8 s."""
    if isinstance(exc, RegistryError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_WAIT_S)
    return float(min(FIRST_WAIT_S * 2 ** (retry - 1), LONGEST_WAIT_S))


def resume_wait(exc: BaseException | None, resume: int) -> float:
    """How long to wait before resuming a broken download the ``resume``-th time: at once the
    first time (most breaks are one-offs, and the bytes that came are kept), then ``backoff``."""
    if resume <= 1 and not (isinstance(exc, RegistryError) and exc.retry_after is not None):
        return 0.0
    return backoff(exc, max(1, resume - 1))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often one kind of operation is tried: ``attempts`` tries in all, within
    ``max_time_s`` from the first."""

    attempts: int
    max_time_s: float = MAX_RETRY_TIME_S

    async def run(self, attempt: Callable[[], Awaitable[_T]], *, sleep: Sleep) -> _T:
        """``attempt()``, tried again while ``is_retryable`` says so, waiting ``backoff``.

        The first try runs bare: almost every request succeeds at once, and building
        tenacity's machinery for each one cost 3 % of a no-op run's CPU (and its import,
        start-up time). Only a failure brings tenacity in, for the tries that remain.
        """
        started = time.monotonic()
        try:
            return await attempt()
        except Exception as exc:
            if not is_retryable(exc) or self.attempts < 2:
                raise
            await sleep(backoff(exc, 1))
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts - 1)
            | stop_after_delay(self.max_time_s - (time.monotonic() - started)),
            retry=retry_if_exception(is_retryable),
            wait=_after_the_first,
            sleep=sleep,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                result = await attempt()
        return result


def _after_the_first(retry_state: Any) -> float:
    """tenacity's wait: ``backoff`` for the retry about to happen (tenacity counts from the
    second try, the first having run before it)."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    return backoff(exc, retry_state.attempt_number + 1)


REQUEST = RetryPolicy(attempts=4)  # one registry request (idempotent, or a spare session)
# A whole blob transfer, started again from nothing: no time limit, a large layer may take
# minutes to cross before it breaks.
TRANSFER = RetryPolicy(attempts=3, max_time_s=float("inf"))
RESUMES = 5  # a large blob's download is resumed this many times within one transfer
