"""Fixtures for integration tests: real registries, a token server, pushers, a proxy.

Owns the wiring and the scopes:

* ``token_server`` and ``hub`` (token-auth registry, Docker-Hub-like) live for the
  whole session, so tests on the hub use ``unique_repo`` names; the token server's
  options and request records are reset before every test;
* ``local`` is a fresh plain registry per test (a start takes well under 0.1 s);
* ``hub_pusher`` / ``local_pusher`` push fixture images; ``redirect_proxy`` puts the
  hub behind a proxy that redirects blob GETs to a fake CDN; ``make_proxy`` and
  ``make_registry`` build more of them with automatic cleanup.

Every test under ``tests/integration`` is marked ``integration``.  A missing
``docker-registry`` binary is an error, never a skip.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration import faultkit as kit
from tests.integration.helpers import Daemon
from tests.support.images import Pusher
from tests.support.proxy import RegistryProxy
from tests.support.registry import DEFAULT_BINARY, RegistryProcess, http_client
from tests.support.tokenserver import HubRegistry, TokenServer

_HERE = Path(__file__).parent
_started_token_servers: list[TokenServer] = []
_repo_counter = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def registry_binary() -> Path:
    if not DEFAULT_BINARY.exists():
        pytest.fail(
            f"{DEFAULT_BINARY} is missing: integration tests need Debian's docker-registry "
            "package (apt-get install docker-registry; the project's test script installs it)",
            pytrace=False,
        )
    return DEFAULT_BINARY


@pytest.fixture(autouse=True)
def _reset_shared_token_servers() -> None:
    """Session-wide token servers start every test with default options and no records."""
    for server in _started_token_servers:
        server.reset()


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    with TokenServer() as server:
        _started_token_servers.append(server)
        yield server
        _started_token_servers.remove(server)


@pytest.fixture(scope="session")
def hub(registry_binary: Path, token_server: TokenServer) -> Iterator[HubRegistry]:
    """The Docker-Hub-like registry: token auth via ``hub.token_server``."""
    with HubRegistry(token_server, binary=registry_binary) as registry:
        yield registry


@pytest.fixture
def local(registry_binary: Path) -> Iterator[RegistryProcess]:
    """A fresh, empty registry without auth (the mirror target)."""
    with RegistryProcess(binary=registry_binary) as registry:
        yield registry


@pytest.fixture
def make_registry(registry_binary: Path) -> Iterator[Callable[..., RegistryProcess]]:
    """Start extra plain registries (kwargs go to ``RegistryProcess``); stopped after the test."""
    started: list[RegistryProcess] = []

    def make(**kwargs: Any) -> RegistryProcess:
        registry = RegistryProcess(binary=registry_binary, **kwargs).start()
        started.append(registry)
        return registry

    yield make
    for registry in started:
        registry.close()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses (the hub is shared by the session)."""
    words = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:48].strip("-")
    return f"t{next(_repo_counter)}/{words or 'repo'}"


@pytest.fixture
def hub_pusher(hub: HubRegistry) -> Iterator[Pusher]:
    with Pusher(hub.url, hub.token_getter("tester")) as pusher:
        yield pusher


@pytest.fixture
def local_pusher(local: RegistryProcess) -> Iterator[Pusher]:
    with Pusher(local.url) as pusher:
        yield pusher


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., RegistryProxy]]:
    """Start proxies (args go to ``RegistryProxy``); stopped after the test."""
    started: list[RegistryProxy] = []

    def make(upstream_url: str, **kwargs: Any) -> RegistryProxy:
        proxy = RegistryProxy(upstream_url, **kwargs).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def source(hub: HubRegistry, make_proxy: Callable[..., RegistryProxy]) -> RegistryProxy:
    """The Hub-like registry behind a fault proxy (no faults until a test adds rules)."""
    return make_proxy(hub.url)


@pytest.fixture
def secrets(hub: HubRegistry) -> kit.Secrets:
    """What must never show in mirror's output: the Hub password and the tokens issued."""
    return kit.Secrets(hub.token_server)


@pytest.fixture
def redirect_proxy(hub: HubRegistry, make_proxy: Callable[..., RegistryProxy]) -> RegistryProxy:
    """The hub behind a proxy that sends blob GETs to a fake CDN (another origin)."""
    return make_proxy(hub.url, redirect_blobs=True, cdn_token_getter=hub.token_getter("cdn"))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """A plain HTTP client for poking at the test servers directly."""
    with http_client(timeout=30.0) as client:
        yield client


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, port: int, *extra: str) -> Daemon:
        daemon = Daemon(config, tmp_path, port, *extra)
        started.append(daemon)
        daemon.wait_for("the daemon to start", lambda: daemon.events("daemon started"))
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
