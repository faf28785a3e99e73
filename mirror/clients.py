"""The stores a process shares, built from config: one ``Registry`` client (one connection pool)
per registry name, one ``Layout`` per ``oci:DIR``, and the state database, opened at first use.

Owns building them (timeouts, TLS, credentials from the config or Docker's ``config.json``) and
closing them. Does not copy, select or record: ``mirror.jobs`` does, with what is built here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mirror.config import Config
from mirror.credentials import Credentials, docker_credentials
from mirror.layout import Layout
from mirror.reference import is_layout
from mirror.registry import Registry
from mirror.state import PendingUpload, State, resolve_path
from mirror.upload import UploadJournal


class Clients:
    """One ``Registry`` client per registry name for the whole process, built from config
    (and one ``Layout`` per ``oci:DIR``).

    Credentials come from the config when it names any for the registry, else from Docker's
    own ``config.json`` (what ``docker login`` left), looked up at the registry's first 401.
    """

    def __init__(
        self,
        config: Config,
        *,
        state_warning: Callable[[str], None] | None = None,
        **registry_options: Any,
    ) -> None:
        """``registry_options`` go to every ``Registry`` (tests pass ``transport``, ``sleep``);
        ``state_warning`` tells of a state problem (default: a log line)."""
        self.config = config
        self._state_warning = state_warning or _warn_state
        self._options = registry_options
        self._clients: dict[str, Registry | Layout] = {}
        self.flattened: dict[Any, Any] = {}  # index digest -> the image a flatten took
        self._state: State | None = None
        # Source digests left on purpose (foreign layers the target refused) -> why: known
        # from the state at the first real run, so a cron run does not pull them again.
        self.unsupported: dict[Any, str] = {}
        self._remembered = False

    @property
    def state(self) -> State:
        """The state database the config names (or the default one), opened at first use, so
        commands that record nothing never create it. Problems are one warning line each."""
        if self._state is None:
            path = resolve_path(self.config.state)
            self._state = State(path, warn=self._state_warning)
        return self._state

    def remembered_unsupported(self) -> dict[Any, str]:
        """``unsupported``, with what earlier processes' runs left on purpose (read once)."""
        if not self._remembered:
            self._remembered = True
            for digest, why in self.state.unsupported_digests().items():
                self.unsupported.setdefault(digest, why)
        return self.unsupported

    @property
    def journal(self) -> UploadJournal:
        """The state as the copy engine's upload journal, opened only when a large blob
        needs it (a run of small blobs never creates the database)."""
        return _LazyJournal(self)

    def get(self, name: str) -> Registry | Layout:
        client = self._clients.get(name)
        if client is None and is_layout(name):
            client = self._clients[name] = Layout(name)
        if client is None:
            settings = self.config.registry(name)
            configured = self.config.credentials(name)  # raises ConfigError early, not at a 401

            async def credentials(name: str = name) -> Credentials | None:
                return configured or await docker_credentials(name)

            client = Registry(
                name,
                pull_reserve=settings.pull_reserve,
                timeout=httpx.Timeout(
                    connect=settings.connect_timeout,
                    read=settings.read_timeout,
                    write=settings.read_timeout,
                    pool=None,
                ),
                endpoint=settings.endpoint,
                credentials=credentials,
                insecure=settings.insecure,
                ca_file=settings.ca_file,
                **self._options,
            )
            self._clients[name] = client
        return client

    def peek(self, name: str) -> Registry | Layout | None:
        """The client for ``name`` if one was made; never builds one (nor raises)."""
        return self._clients.get(name)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))
        self._clients.clear()
        if self._state is not None:
            self._state.close()


class _LazyJournal:
    """``Clients.state`` as an ``UploadJournal``, opened at its first use."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients

    def save_upload(
        self, target: str, repository: str, digest: str, url: str, offset: int, size: int
    ) -> None:
        self._clients.state.save_upload(target, repository, digest, url, offset, size)

    def pending_upload(self, target: str, repository: str, digest: str) -> PendingUpload | None:
        return self._clients.state.pending_upload(target, repository, digest)

    def forget_upload(self, target: str, repository: str, digest: str) -> None:
        self._clients.state.forget_upload(target, repository, digest)

    def spool_directory(self) -> Path | None:
        return self._clients.state.spool_directory()


def _warn_state(line: str) -> None:
    import structlog

    structlog.get_logger("mirror").warning("state problem", problem=line)
