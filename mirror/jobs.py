"""Mirror jobs: a source repository (all tags, one tag, or one digest) -> copies -> results.

Owns turning a request like "``diamol/golang`` into ``localhost:5000``" (or a configured
mirror entry) into tag copies run concurrently through one Copier, the registry clients a
process shares (one connection pool per registry), and the canonical log lines: one per tag
copied or failed, one per job run. Does not parse arguments, print or schedule.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from mirror.config import Config, MirrorEntry
from mirror.copy import Copier
from mirror.credentials import Credentials, docker_credentials
from mirror.errors import MirrorError, NotFound
from mirror.plan import PriorityGate
from mirror.reference import Reference
from mirror.registry import Registry
from mirror.report import CopyReport, Progress, TagResult
from mirror.selection import (
    DEFAULT_IMMUTABLE,
    TagRules,
    is_full_version,
    newest_first,
    select,
)
from mirror.state import PendingUpload, State, default_path
from mirror.upload import UploadJournal

REPOSITORIES_IN_FLIGHT = 4  # a namespace entry syncs this many repositories at once
EVERY_TAG = TagRules()

Outcome = Literal["success", "partial", "failed"]
# One log line per tag that moved, would move, failed or was deferred: (level, event).
_TAG_EVENTS = {
    "copied": ("info", "tag synced"),
    "planned": ("info", "tag would sync"),
    "failed": ("error", "tag failed"),
    # Not a failure: the tag arrives when the pull window frees (journalctl -p warning shows
    # failures only).
    "deferred": ("info", "tag deferred"),
}


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
        self.flattened: dict[Any, Any] = {}  # index digest -> the image a flatten took
        self._state: State | None = None

    @property
    def state(self) -> State:
        """The state database the config names (or the default one), opened at first use, so
        commands that record nothing never create it. Problems are one warning line each."""
        if self._state is None:
            setting = self.config.state
            path = Path(setting).expanduser() if setting else default_path()
            self._state = State(path, warn=_warn_state)
        return self._state

    @property
    def journal(self) -> UploadJournal:
        """The state as the copy engine's upload journal, opened only when a large blob
        needs it (a run of small blobs never creates the database)."""
        return _LazyJournal(self)

    def get(self, name: str) -> Registry:
        client = self._clients.get(name)
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

    def peek(self, name: str) -> Registry | None:
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


def _warn_state(line: str) -> None:
    import structlog

    structlog.get_logger("mirror").warning("state unavailable", problem=line)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Copy ``source`` into repository ``target`` (a Reference without tag or digest).

    ``source`` without tag or digest means every tag; with a tag, that tag; with a digest,
    that manifest (tagged on the target when the source also named a tag).
    """

    source: Reference
    target: Reference


async def sync(
    copier: Copier,
    request: SyncRequest,
    *,
    rules: TagRules = EVERY_TAG,
    immutable: str | None = DEFAULT_IMMUTABLE,
) -> list[TagResult]:
    """Copy what ``request`` selects through ``copier``; one result per tag, never raises
    for a single tag's failure (a failure to list tags is one failed result).

    A repository's tags are filtered by ``rules``. Tags matching ``immutable`` (full
    versions) that the target already has are not checked upstream; None checks every tag.
    """
    source, target = request.source, request.target
    if source.digest is not None:
        result = await copier.copy(
            source.repository, source.digest, target.repository, source.tag or source.digest
        )
        return [result]
    on_target: set[str] | None = None  # the target's tags, when its tags list was read
    if source.tag is not None:
        tags = [source.tag]
    else:
        try:
            listed, on_target = await asyncio.gather(
                copier.source.list_tags(source.repository),
                _target_tags(copier, target.repository),
            )
            tags = newest_first(select(listed, rules).tags)
            if on_target is not None and not on_target:
                copier.tagless(target.repository)
        except MirrorError as exc:
            result = TagResult(
                source=str(source), target=str(target), status="failed", error=str(exc)
            )
            copier.report.add(result)
            return [result]
    gate = PriorityGate()  # a tight pull budget goes to the newest versions first

    async def one(turn: int, tag: str) -> TagResult:
        fixed = immutable is not None and is_full_version(tag, immutable)
        async with copier.tag_slots:  # one bound for every repository of the run
            return await copier.copy(
                source.repository,
                tag,
                target.repository,
                tag,
                immutable=fixed,
                absent=on_target is not None and tag not in on_target,
                priority=(gate, turn),
            )

    return list(await asyncio.gather(*(one(turn, tag) for turn, tag in enumerate(tags))))


async def _target_tags(copier: Copier, repository: str) -> set[str] | None:
    """The tags the target repository has, from one tags list: a tag not there needs no HEAD
    (a first sync of 10 tags makes 9 requests fewer). An empty set for a repository that does
    not exist yet; None when the target will not list them (then every tag is asked)."""
    try:
        return set(await copier.target.list_tags(repository))
    except NotFound:
        return set()
    except MirrorError:
        return None


@dataclass(slots=True)
class JobResult:
    """One run of one mirror entry: its outcome, the copy report and how long it took.

    ``failed`` means nothing could be checked (e.g. the source was unreachable, or every tag
    failed); ``partial`` that some tags failed while others are in sync.
    """

    job: str
    source_registry: str
    outcome: Outcome
    report: CopyReport
    seconds: float
    finished_at: float = field(default_factory=time.time)
    error: str | None = None


async def run_entry(
    entry: MirrorEntry,
    clients: Clients,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    recheck: bool = False,
) -> JobResult:
    """Run one configured mirror entry once; log one line per tag moved or failed, and one for
    the run. Never raises for what a registry does: that is the result's outcome."""
    job = entry.job_id(clients.config.target)
    if entry.is_namespace:
        source_ns, target_ns = entry.namespaces(clients.config.target)
        source_registry, target_registry = source_ns.registry, target_ns.registry
    else:
        source, target = entry.endpoints(clients.config.target)
        source_registry, target_registry = source.registry, target.registry
    report = CopyReport(dry_run=dry_run)
    started = time.monotonic()
    error = None
    try:
        copier = Copier(
            clients.get(source_registry),
            clients.get(target_registry),
            concurrency=entry.concurrency,
            dry_run=dry_run,
            progress=progress,
            report=report,
            platforms=entry.platform_list(),
            flatten=entry.flatten,
            flattened=clients.flattened,
            backup=entry.backup,
            journal=None if dry_run else clients.journal,
        )
        if entry.is_namespace:
            repositories = await clients.get(source_registry).list_repositories(source_ns.path)
            requests = [
                SyncRequest(
                    Reference(source_ns.registry, repo),
                    target_ns.repository(source_ns.relative(repo)),
                )
                for repo in repositories
            ]
        else:
            requests = [SyncRequest(source, target)]
        bound = asyncio.Semaphore(REPOSITORIES_IN_FLIGHT)

        async def one(request: SyncRequest) -> None:
            async with bound:
                await sync(
                    copier,
                    request,
                    rules=entry.tags.rules(),
                    immutable=None if recheck else entry.tags.immutable,
                )

        await asyncio.gather(*(one(r) for r in requests))
    except MirrorError as exc:  # config trouble found late, e.g. a password_env not set
        error = str(exc)
    seconds = time.monotonic() - started

    import structlog  # here, not at the top: `mirror sync REF` never logs, and starts faster

    log = structlog.get_logger("mirror")
    for tag in report.tags:
        if tag.status == "skipped":
            continue  # in step: no line, or a no-op run over 2,000 tags writes 2,000 of them
        level, event = _TAG_EVENTS[tag.status]
        fields: dict[str, Any] = {"job": job, "source": tag.source, "target": tag.target}
        if tag.status in ("copied", "planned"):
            fields |= {"digest": tag.digest, "blobs": tag.blobs_missing, "bytes": tag.bytes_missing}
            if tag.source_digest:
                fields["source_digest"] = tag.source_digest
            if tag.backup:
                fields |= {"previous": tag.previous, "backup": tag.backup}
        else:
            fields["error" if tag.status == "failed" else "reason"] = tag.error
        getattr(log, level)(event, **fields)
    if error is not None or (report.tags_failed and report.tags_failed == report.tags_checked):
        outcome: Outcome = "failed"
    elif report.tags_failed:
        outcome = "partial"
    else:
        outcome = "success"
    result = JobResult(job, source_registry, outcome, report, seconds, error=error)
    log_method = {"success": log.info, "partial": log.warning, "failed": log.error}[outcome]
    log_method(
        "job run",
        job=job,
        outcome=outcome,
        tags_checked=report.tags_checked,
        tags_copied=report.tags_copied,
        tags_skipped=report.tags_skipped,
        tags_failed=report.tags_failed,
        tags_deferred=report.tags_deferred,
        blobs_copied=report.blobs_copied,
        blobs_mounted=report.blobs_mounted,
        bytes=report.bytes_copied,
        upstream_manifest_gets=report.upstream_manifest_gets,
        **({"bytes_resumed": report.bytes_resumed} if report.bytes_resumed else {}),
        seconds=round(seconds, 3),
        **({"error": error} if error else {}),
    )
    return result
