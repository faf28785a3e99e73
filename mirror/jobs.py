"""Mirror jobs: a source repository (all tags, one tag, or one digest) -> copies -> results.

Owns turning a request like "``diamol/golang`` into ``localhost:5000``" into tag copies run
concurrently through one Copier, and the registry clients a process shares (one connection
pool per registry). Does not parse arguments or print; ``cli`` and ``daemon`` do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from mirror.auth import Credentials, docker_credentials
from mirror.config import Config
from mirror.copy import Copier, TagResult
from mirror.errors import MirrorError
from mirror.reference import Reference
from mirror.registry import Registry

TAGS_IN_FLIGHT = 8  # tags planned at once; blob transfers have their own, smaller bound


class Clients:
    """One ``Registry`` client per registry name for the whole process, built from config.

    Credentials come from the config when it names any for the registry, else from Docker's
    own ``config.json`` (what ``docker login`` left), looked up at the registry's first 401.
    """

    def __init__(self, config: Config, **registry_options: Any) -> None:
        """``registry_options`` go to every ``Registry`` (tests pass ``transport``, ``sleep``)."""
        self.config = config
        self._options = registry_options
        self._clients: dict[str, Registry] = {}

    def get(self, name: str) -> Registry:
        client = self._clients.get(name)
        if client is None:
            settings = self.config.registry(name)
            configured = self.config.credentials(name)  # raises ConfigError early, not at a 401

            def credentials(name: str = name) -> Credentials | None:
                return configured or docker_credentials(name)

            client = Registry(
                name,
                endpoint=settings.endpoint,
                credentials=credentials,
                insecure=settings.insecure,
                ca_file=settings.ca_file,
                **self._options,
            )
            self._clients[name] = client
        return client

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))
        self._clients.clear()


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Copy ``source`` into repository ``target`` (a Reference without tag or digest).

    ``source`` without tag or digest means every tag; with a tag, that tag; with a digest,
    that manifest (tagged on the target when the source also named a tag).
    """

    source: Reference
    target: Reference


async def sync(copier: Copier, request: SyncRequest) -> list[TagResult]:
    """Copy what ``request`` selects through ``copier``; one result per tag, never raises
    for a single tag's failure (a failure to list tags is one failed result)."""
    source, target = request.source, request.target
    if source.digest is not None:
        result = await copier.copy(
            source.repository, source.digest, target.repository, source.tag or source.digest
        )
        return [result]
    if source.tag is not None:
        tags = [source.tag]
    else:
        try:
            tags = await copier.source.list_tags(source.repository)
        except MirrorError as exc:
            result = TagResult(
                source=str(source), target=str(target), status="failed", error=str(exc)
            )
            copier.report.add(result)
            return [result]
    bound = asyncio.Semaphore(TAGS_IN_FLIGHT)

    async def one(tag: str) -> TagResult:
        async with bound:
            return await copier.copy(source.repository, tag, target.repository, tag)

    return list(await asyncio.gather(*(one(tag) for tag in tags)))
