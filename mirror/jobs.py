"""Mirror jobs: a source repository (all tags, one tag, or one digest) -> copies -> results.

Owns turning a request like "``diamol/golang`` into ``localhost:5000``" (or a configured
mirror entry) into tag copies run concurrently through one Copier, what a run records in the
state, and the canonical log lines: one per tag copied or failed, one per job run. The stores
a process shares are ``mirror.clients``'. Does not parse arguments, print or schedule.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mirror.airgap import check_import
from mirror.clients import Clients
from mirror.concurrency import PriorityGate
from mirror.config import MirrorEntry
from mirror.copy import Copier
from mirror.errors import MirrorError, NotFound
from mirror.layout import Layout
from mirror.manifest import Platform
from mirror.reference import Namespace, Reference, is_layout, layout_name, resolve_target
from mirror.referrers import ReferrerTags, split_tags
from mirror.report import CopyReport, Progress, TagResult
from mirror.selection import (
    DEFAULT_IMMUTABLE,
    TagRules,
    is_full_version,
    newest_first,
    select,
)
from mirror.state import State, TagRecord

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
    # Left on purpose (schema 1, foreign layers the target refuses): one line a run saying why.
    "unsupported": ("info", "tag not copied"),
}


def tag_records(results: Iterable[TagResult]) -> list[TagRecord]:
    """What a run's results leave in the state: one record per tag checked. A digest copied
    without a tag, a failure to list tags and a dry run's plans are not tags' states."""
    records = []
    for r in results:
        if r.target_tag is None or r.target_registry is None or r.target_repository is None:
            continue
        if r.status == "planned":
            continue
        in_step = r.status in ("copied", "skipped")
        known = in_step or r.status == "unsupported"  # left on purpose: remember what, too
        records.append(
            TagRecord(
                target=r.target_registry,
                repository=r.target_repository,
                tag=r.target_tag,
                source=r.source,
                status=r.status,
                source_digest=(r.source_digest or r.digest) if known else None,
                target_digest=r.digest if in_step else None,
                previous=r.previous,
                bytes=r.bytes_missing if r.status == "copied" else 0,
                pulls=r.pulls,
                error=r.error,
            )
        )
    return records


def outcome_of(
    checked: int, failed: int, error: str | None = None, *, also_failed: int = 0
) -> Outcome:
    """``failed`` when nothing could be checked, ``partial`` when some tags (or
    ``also_failed`` others: referrers) failed; for ``run_entry`` and ``mirror sync REF``."""
    if error is not None or (failed and failed == checked):
        return "failed"
    return "partial" if failed or also_failed else "success"


def counts_of(results: Iterable[TagResult]) -> dict[str, int]:
    """A run's counts (the state's ``runs`` columns) from its tags' results."""
    results = list(results)
    statuses = [r.status for r in results]
    return {
        "tags_checked": len(results),
        "tags_copied": statuses.count("copied"),
        "tags_skipped": statuses.count("skipped"),
        "tags_failed": statuses.count("failed"),
        "tags_deferred": statuses.count("deferred"),
        "blobs_copied": sum(r.blobs_missing for r in results if r.status == "copied"),
        "bytes": sum(r.bytes_missing for r in results if r.status == "copied"),
        "pulls": sum(r.pulls for r in results),
    }


def record_run(
    state: State,
    run: int | None,
    job: str,
    results: Iterable[TagResult],
    counts: Mapping[str, int],
    outcome: Outcome,
    error: str | None,
) -> None:
    """Leave a finished run and its tags in the state (a record only: never raises)."""
    state.record_tags(run, job, tag_records(results))
    state.finish_run(run, outcome, counts, error)


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
    versions, and their pinned variants: see ``is_full_version``) that the target already has
    are not checked upstream; None checks every tag.
    Signature and referrer tags (``sha256-<hex>.sig`` …) are no tags to the rules: when the
    copier carries referrers, they follow the manifests they describe, after them.
    """
    source, target = request.source, request.target
    if source.digest is not None:
        result = await copier.copy(
            source.repository, source.digest, target.repository, source.tag or source.digest
        )
        return [result, *await _referrers(copier, request, None)]
    on_target: set[str] | None = None  # the target's tags, when its tags list was read
    pinned: frozenset[str] = frozenset()  # variants trusted like plain versions (alpine3.20)
    referrer_tags = ReferrerTags()
    if source.tag is not None:
        tags = [source.tag]
    else:
        try:
            listed, on_target = await asyncio.gather(
                copier.source.list_tags(source.repository),
                _target_tags(copier, target.repository),
            )
            listed, referrer_tags = split_tags(listed)  # even when not carried: no tags to copy
            selection = select(listed, rules)
            tags, pinned = newest_first(selection.tags), selection.pinned_variants
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
        fixed = immutable is not None and is_full_version(tag, immutable, pinned)
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

    results = list(await asyncio.gather(*(one(turn, tag) for turn, tag in enumerate(tags))))
    if source.tag is not None:
        return results + await _referrers(copier, request, None)
    return results + await _referrers(copier, request, referrer_tags, on_target)


async def _referrers(
    copier: Copier,
    request: SyncRequest,
    tags: ReferrerTags | None,
    on_target: set[str] | None = None,
) -> list[TagResult]:
    """Carry the signatures and referrers of what was put in step (step 6 of a copy). For one
    tag or digest, the source's tags list is read for them here (one request)."""
    if not copier.referrers:
        return []
    if tags is None:
        try:
            tags = split_tags(await copier.source.list_tags(request.source.repository))[1]
        except MirrorError:
            tags = ReferrerTags()  # found by the referrers API alone, where offered
    return await copier.carry_referrers(
        request.source.repository, request.target.repository, tags, on_target
    )


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


async def check_bundle(
    copier: Copier, requests: list[SyncRequest], rules: TagRules, platforms: list[Platform]
) -> list[str]:
    """Before an import from a layout moves any tag: what its tags need that is neither in
    the layout nor in the target, one line each (none: go ahead; the blobs to mount from
    other repositories are told to ``copier``)."""
    assert isinstance(copier.source, Layout)
    check = await check_import(
        copier.source,
        copier.target,
        [(r.source, r.target) for r in requests],
        rules=rules,
        platforms=platforms,
    )
    for repository, digest in check.mounts:
        copier.holds_blob(repository, digest)
    return check.missing


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
    to: str | None = None,
) -> JobResult:
    """Run one configured mirror entry once; log one line per tag moved or failed, and one for
    the run. Never raises for what a registry does: that is the result's outcome.

    ``to`` (a registry or ``oci:DIR``) replaces the registry of the entry's target, its
    repository paths kept: the same copy, written elsewhere (a disk to carry inside)."""
    job = entry.job_id(clients.config.target)
    if entry.is_namespace:
        source_ns, target_ns = entry.namespaces(clients.config.target)
        if to is not None:
            target_ns = Namespace(layout_name(to) if is_layout(to) else to, target_ns.path)
        source_registry, target_registry = source_ns.registry, target_ns.registry
    else:
        source, target = entry.endpoints(clients.config.target)
        if to is not None:
            target = resolve_target(target, to)
        source_registry, target_registry = source.registry, target.registry
    report = CopyReport(dry_run=dry_run)
    run = None if dry_run else clients.state.start_run(job)
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
            referrers=entry.referrers,
            artifact_types=entry.artifact_types,
            unsupported=(
                clients.unsupported if dry_run or recheck else clients.remembered_unsupported()
            ),
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
        if isinstance(copier.source, Layout):  # an import: all of it is there, or nothing moves
            rules, platforms = entry.tags.rules(), entry.platform_list()
            if missing := await check_bundle(copier, requests, rules, platforms):
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                requests, error = [], f"bundle incomplete, no tag moved: {missing[0]}{more}"
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
        if tag.referrer_of:
            fields["referrer_of"] = tag.referrer_of
        if tag.note:
            fields["note"] = tag.note
        getattr(log, level)(event, **fields)
    outcome = outcome_of(
        report.tags_checked, report.tags_failed, error, also_failed=report.referrers_failed
    )
    if not dry_run:
        counts = {
            "tags_checked": report.tags_checked,
            "tags_copied": report.tags_copied,
            "tags_skipped": report.tags_skipped,
            "tags_failed": report.tags_failed,
            "tags_deferred": report.tags_deferred,
            "blobs_copied": report.blobs_copied,
            "bytes": report.bytes_copied,
            "pulls": report.upstream_manifest_gets,
        }
        record_run(clients.state, run, job, report.tags, counts, outcome, error)
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
        tags_unsupported=report.tags_unsupported,
        blobs_copied=report.blobs_copied,
        blobs_mounted=report.blobs_mounted,
        bytes=report.bytes_copied,
        upstream_manifest_gets=report.upstream_manifest_gets,
        referrers_copied=report.referrers_copied,
        **({"bytes_resumed": report.bytes_resumed} if report.bytes_resumed else {}),
        seconds=round(seconds, 3),
        **({"error": error} if error else {}),
    )
    return result
