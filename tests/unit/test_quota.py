"""The pull budget's arithmetic: headers, reservations in flight, the reserve, blocks."""

from __future__ import annotations

from mirror.quota import PullBudget, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_headers_are_read_with_their_window() -> None:
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
    assert RateLimit.from_headers(headers) == RateLimit(100, 76, 21600)
    assert RateLimit.from_headers({}) is None  # no headers: no limit
    assert RateLimit.from_headers({"ratelimit-limit": "lots", "ratelimit-remaining": "1"}) is None


def test_an_unannounced_limit_is_no_limit() -> None:
    budget = PullBudget()
    assert budget.available is None and budget.take(1000)


def test_grants_stop_at_the_reserve_counting_pulls_in_flight() -> None:
    budget = PullBudget(reserve=2)
    budget.observe(RateLimit(100, 5, 21600))
    assert budget.available == 3
    assert budget.take(2) and budget.available == 1
    assert not budget.take(2)  # all or nothing
    assert budget.take(1) and budget.available == 0
    budget.settle(3)
    budget.observe(RateLimit(100, 2, 21600))  # the registry counted them
    assert budget.available == 0 and not budget.take(1)


def test_a_pull_limit_429_blocks_until_retry_after_or_a_head_shows_room() -> None:
    clock = Clock()
    budget = PullBudget(clock=clock)
    budget.observe(RateLimit(100, 0, 21600))
    budget.block(retry_after_s=30)
    assert budget.available == 0 and "blocked" in budget.describe()
    clock.now += 31
    assert budget.available == 0  # the last figure still says nothing is left
    budget.observe(RateLimit(100, 10, 21600))  # a free HEAD shows the window moved on
    assert budget.available == 10


def test_a_block_without_retry_after_lasts_at_most_an_hour() -> None:
    clock = Clock()
    budget = PullBudget(clock=clock)
    budget.observe(RateLimit(100, 5, 21600))
    budget.block(None)
    assert budget.blocked_until == clock.now + 3600
