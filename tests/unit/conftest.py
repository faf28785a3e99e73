"""Unit-test guard rails: no network, and a sleep that records instead of sleeping.

Every unit test runs with outbound connections and name lookups disabled, so a test that
forgets its ``MockTransport`` fails loudly instead of reaching a real registry. (Local
socket pairs stay allowed: asyncio's event loop needs one.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest


class NetworkBlocked(RuntimeError):
    """Raised by any attempt to open a network connection from a unit test."""


def _blocked(*args: Any, **kwargs: Any) -> Any:
    raise NetworkBlocked(f"unit tests must not touch the network (attempted with {args[:2]!r})")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", _blocked)
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    yield


@pytest.fixture(autouse=True)
def _clean_mirror_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the developer's shell (MIRROR_*, DOCKER_CONFIG) must not leak in."""
    for name in list(os.environ):
        if name.startswith("MIRROR_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)


@pytest.fixture(autouse=True)
def _state_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A run records into the state database: never the machine's own (as root, in
    /var/lib/mirror), always one of this test's."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


class RecordingSleep:
    """An async ``sleep`` replacement: records each requested wait and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()
