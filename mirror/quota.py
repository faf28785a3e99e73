"""A registry's limits as mirror knows them: Docker Hub's ``ratelimit-*`` headers and 429s.

Owns the arithmetic (what the registry last said was left, what is reserved for GETs in
flight, the reserve never to touch, a block after a pull-limit 429) and what a 429 does to
later requests (``Quota.refused``: a pull limit stops GETs, the abuse limit pauses every
request for a while). One ``Quota`` per registry, shared by every job of a process; the
registry client tells it every answer in one place. No I/O; single event loop, no locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mirror.errors import RateLimited, RegistryError
from mirror.retry import ABUSE_PAUSE_S, MAX_RETRY_WAIT_S, Sleep

DEFAULT_BLOCK_S = 60.0  # after a pull-limit 429 that names neither Retry-After nor a window
MAX_BLOCK_S = 3600.0  # re-read the headers (HEADs are free) at least this often


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What a registry says of its pull limit: ``ratelimit-limit: 100;w=21600`` and
    ``ratelimit-remaining: 76;w=21600``. Absent headers mean no limit."""

    limit: int
    remaining: int
    window_s: int | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        """Read the quota from a response's headers; None when they are absent or garbled."""
        limit, window = _quota_value(headers.get("ratelimit-limit"))
        remaining, _ = _quota_value(headers.get("ratelimit-remaining"))
        if limit is None or remaining is None:
            return None
        return cls(limit, remaining, window)


def _quota_value(text: str | None) -> tuple[int | None, int | None]:
    """``100;w=21600`` -> (100, 21600). The window is parsed, never assumed."""
    if not text:
        return None, None
    value, _, rest = text.partition(";")
    window = None
    for part in rest.split(";"):
        key, _, val = part.strip().partition("=")
        if key == "w" and val.isdigit():
            window = int(val)
    try:
        return int(value.strip()), window
    except ValueError:
        return None, None


class PullBudget:
    """Decides whether a manifest GET (a pull, on Docker Hub) may go out now.

    ``remaining`` is the registry's own figure from its last answer; GETs granted since then
    and not yet answered count against it (``in_flight``), so concurrent jobs cannot overspend
    between two answers. ``reserve`` pulls are always left for people. Without headers the
    registry is taken as unlimited, as Docker documents.
    """

    def __init__(self, reserve: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.reserve = max(0, reserve)
        self._clock = clock
        self.rate_limit: RateLimit | None = None
        self.in_flight = 0
        self.blocked_until = 0.0

    @property
    def available(self) -> int | None:
        """Pulls that may still go out (None: no limit known)."""
        if self.blocked:
            return 0
        if self.rate_limit is None:
            return None
        return max(0, self.rate_limit.remaining - self.in_flight - self.reserve)

    @property
    def blocked(self) -> bool:
        """Whether a pull-limit 429 has stopped GETs for now."""
        return self._clock() < self.blocked_until

    def observe(self, quota: RateLimit) -> None:
        """Take the registry's latest figures (from any answer that carried them)."""
        self.rate_limit = quota
        if quota.remaining > self.reserve:
            self.blocked_until = 0.0  # the window has freed some pulls: stop waiting

    def take(self, pulls: int = 1) -> bool:
        """Grant ``pulls`` GETs now (counted in flight until ``settle``), or refuse them all."""
        available = self.available
        if available is not None and available < pulls:
            return False
        self.in_flight += pulls
        return True

    def settle(self, pulls: int = 1) -> None:
        """GETs granted by ``take`` have been answered (or were not needed after all)."""
        self.in_flight = max(0, self.in_flight - pulls)

    def block(self, retry_after_s: float | None) -> None:
        """The registry refused a pull (pull-limit 429): send no GETs until it has room.

        Waits ``Retry-After`` when given, else until a HEAD shows room again, re-checking
        within the window (or a minute when none is known).
        """
        window = self.rate_limit.window_s if self.rate_limit else None
        wait = retry_after_s or min(float(window or DEFAULT_BLOCK_S), MAX_BLOCK_S)
        self.blocked_until = max(self.blocked_until, self._clock() + wait)

    def describe(self) -> str:
        """``12 of 100 left (6h window), reserve 10`` for messages."""
        if self.blocked:
            return f"blocked for {self.blocked_until - self._clock():.0f} s after a pull-limit 429"
        if self.rate_limit is None:
            return "no limit announced"
        window = f" per {self.rate_limit.window_s} s" if self.rate_limit.window_s else ""
        return (
            f"{self.rate_limit.remaining} of {self.rate_limit.limit}{window} left, "
            f"{self.in_flight} in flight, reserve {self.reserve}"
        )


class Quota:
    """One registry's limits as they bear on requests: the pull ``budget``, and the pause an
    abuse-limit 429 imposes on every request to it."""

    def __init__(
        self, registry: str, reserve: int = 0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.budget = PullBudget(reserve, clock=clock)
        self._clock = clock
        self.paused_until = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        """An answer came: take the quota it states (GETs and HEADs both carry it on Hub)."""
        quota = RateLimit.from_headers(headers)
        if quota is not None:
            self.budget.observe(quota)

    def refused(self, error: RegistryError) -> None:
        """An error answer came: a pull-limit 429 stops GETs to this registry for every job
        (until Retry-After, or a HEAD shows room); the abuse limit pauses every request for its
        Retry-After (capped), or ABUSE_PAUSE_S."""
        if not isinstance(error, RateLimited):
            return
        if error.pull_limit:
            self.budget.block(error.retry_after)
        else:
            pause = min(error.retry_after or ABUSE_PAUSE_S, MAX_RETRY_WAIT_S)
            self.paused_until = max(self.paused_until, self._clock() + pause)

    async def wait_out_pause(self, sleep: Sleep) -> None:
        """Before a request: wait while an abuse-limit pause lasts."""
        wait = self.paused_until - self._clock()
        if wait > 0:
            await sleep(wait)

    def check_pull(self, what: str) -> None:
        """Before a manifest GET that may have waited for its turn: refuse it if the pull limit
        was met meanwhile (Docker Hub counts every try, refused or not)."""
        if self.budget.blocked:
            raise RateLimited(
                f"registry {self.registry}: pull rate limit reached earlier in this run; "
                f"{what} not sent ({self.budget.describe()})",
                method="GET",
                status=429,
                quota_spent=True,
            )
