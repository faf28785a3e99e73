"""How the concurrent copies of one run share work and take turns.

Owns ``once`` (a task run once per key per run, its result shared by every caller),
``resolved`` (an answer the run already has) and the ``PriorityGate`` that makes tags take a
tight pull budget in priority order. Knows nothing of registries or manifests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


async def once(
    tasks: dict[Any, asyncio.Future[_T]],
    key: Any,
    fn: Callable[..., Awaitable[_T]],
    *args: Any,
) -> _T:
    """Run ``fn(*args)`` once per key per run; concurrent callers share the one task.

    A failed task is forgotten so that a later tag may try again. Not shielded: a caller is
    cancelled only when the whole run is (SIGTERM), and then the shared work must stop too,
    not outlive the clients it uses.
    """
    task = tasks.get(key)
    if task is None:
        task = asyncio.ensure_future(fn(*args))
        tasks[key] = task
    try:
        return await task
    except Exception:
        if tasks.get(key) is task and task.done():
            del tasks[key]
        raise


def resolved(value: _T) -> asyncio.Future[_T]:
    """A future that already holds ``value``: something this run knows without asking."""
    future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class PriorityGate:
    """Makes tags that compete for a tight pull budget take it in priority order.

    Each tag of a repository gets a turn (0 = highest priority). A tag waits for its turn only
    when it is about to pull *and* the source announces a limit; it gives its turn up once it
    has taken what it pulls (or learnt it pulls nothing). HEADs never wait.
    """

    def __init__(self) -> None:
        self._done: set[int] = set()
        self._lowest_open = 0
        self._changed = asyncio.Condition()

    async def wait(self, turn: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._lowest_open >= turn)

    async def release(self, turn: int) -> None:
        async with self._changed:
            self._done.add(turn)
            while self._lowest_open in self._done:
                self._done.discard(self._lowest_open)
                self._lowest_open += 1
            self._changed.notify_all()


Priority = tuple[PriorityGate, int]
