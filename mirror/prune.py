"""Retention: deleting from the target the tags upstream removed (or no longer selects), safely.

Owns the decision for each tag an entry's runs recorded and the DELETEs that carry it out,
for ``mirror prune`` and the end of a daemon's run. A tag goes only when all of these hold:
the entry asks for it (``prune = "deleted"`` or ``"unselected"``); upstream has not selected
it for ``prune_after`` since that was first seen (the state keeps when); the state shows mirror
itself wrote it; a HEAD right before deleting finds the target tag still on the digest mirror
wrote (never a tag someone pushed or re-pointed); and no tag that stays shares that digest,
nor lists it in an index (distribution deletes by digest, taking every tag on it along). Every
other tag is reported as kept, with why; signature and referrer tags (``sha256-<hex>.sig``) are
never candidates: they are no tags to the rules. Does not copy, schedule, or free disk: the
registry's garbage collection does that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mirror.clients import Clients
from mirror.config import MirrorEntry, config_path, format_duration, load_config
from mirror.errors import ConfigError, MirrorError
from mirror.manifest import INDEX_TYPES
from mirror.output import error, utc, warning
from mirror.reference import Digest, parse_reference
from mirror.referrers import is_referrer_tag
from mirror.selection import select
from mirror.state import State
from mirror.store import Store

HEADS_IN_FLIGHT = 8  # HEADs of the target's other tags, before a delete
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DELETE_DISABLED = (
    "refuses deletes: deletes are off in its configuration; set storage.delete.enabled: true "
    "(REGISTRY_STORAGE_DELETE_ENABLED=true) and restart it"
)

Action = Literal["deleted", "would delete", "kept", "gone", "failed"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What prune did (or, in a dry run, would do) with one tag, and why."""

    registry: str
    repository: str
    tag: str
    digest: str | None
    action: Action
    reason: str

    @property
    def target(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


@dataclass(slots=True)
class PruneResult:
    """One entry's prune: a decision per tag considered, and what stopped it, if anything."""

    job: str
    mode: str
    after: float
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)
    error: str | None = None

    def count(self, *actions: Action) -> int:
        return sum(d.action in actions for d in self.decisions)


async def prune_entry(
    entry: MirrorEntry, clients: Clients, *, dry_run: bool = False, now: float | None = None
) -> PruneResult:
    """Prune what ``entry``'s runs wrote and upstream no longer selects; never raises for what
    a registry does (that is the result's ``error`` or a decision's ``failed``). A dry run
    writes nothing: no DELETE, and no note in the state."""
    config = clients.config
    job = entry.job_id(config.target)
    result = PruneResult(job, entry.prune or "off", entry.prune_after, dry_run)
    if entry.prune is None or _names_one_image(entry):
        return result
    state = clients.state
    if not state.available:
        result.error = "no state to tell which tags mirror wrote, so none is pruned"
        return result
    now = time.time() if now is None else now
    rows = state.tags(job)
    if not rows:
        return result
    try:
        source_registry, target_registry, upstream = await _upstream_repositories(entry, clients)
    except MirrorError as exc:
        result.error = f"cannot list upstream: {exc}"
        return result
    source, target = clients.get(source_registry), clients.get(target_registry)
    rules = entry.tags.rules()
    by_repository: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["target"] == target_registry:
            by_repository.setdefault(row["repository"], []).append(row)
    for repository, repo_rows in sorted(by_repository.items()):
        source_repository = upstream.get(repository)
        try:
            listed = await source.list_tags(source_repository) if source_repository else []
        except MirrorError as exc:
            for row in repo_rows:
                result.decisions.append(
                    _decision(row, "kept", f"upstream tags could not be listed: {exc}")
                )
            continue
        selected = set(select(listed, rules).tags)
        listed_set = set(listed)
        candidates = []
        for row in repo_rows:
            if is_referrer_tag(row["tag"]):
                continue  # a signature or referrer follows its subject, never the tag rules
            if row["tag"] in selected:
                if row["missing_since"] is not None and not dry_run:
                    state.clear_missing(target_registry, repository, row["tag"])
                continue
            reason = "deleted" if row["tag"] not in listed_set else "unselected"
            since = row["missing_since"]
            if not dry_run:
                since = state.mark_missing(target_registry, repository, row["tag"], reason)
            since = since if since is not None else now
            why = _why_missing(reason, since, source_repository)
            if not row["written_digest"]:
                result.decisions.append(
                    _decision(row, "kept", f"{why}; mirror did not write it (it was there)")
                )
            elif entry.prune == "deleted" and reason == "unselected":
                result.decisions.append(
                    _decision(row, "kept", f'{why}; prune = "deleted" keeps tags upstream has')
                )
            elif max(0.0, now - since) < entry.prune_after:
                until = utc(since + entry.prune_after)
                result.decisions.append(
                    _decision(row, "kept", f"{why}; kept until {until} (prune_after)")
                )
            else:
                candidates.append((row, why))
        if candidates:
            await _prune_repository(target, state, repository, candidates, result)
            if result.error:
                break
    return result


def _names_one_image(entry: MirrorEntry) -> bool:
    """A tag or digest entry: the one image it names is not pruned (prune is for repositories
    and namespaces, whose tags come and go)."""
    if entry.is_namespace:
        return False
    source = parse_reference(entry.source)
    return source.tag is not None or source.digest is not None


async def _upstream_repositories(
    entry: MirrorEntry, clients: Clients
) -> tuple[str, str, dict[str, str]]:
    """The source and target registries, and each target repository's source repository (for
    a namespace, those upstream lists now: a repository it lists no more has no tags)."""
    default = clients.config.target
    if not entry.is_namespace:
        source, target = entry.endpoints(default)
        return source.registry, target.registry, {target.repository: source.repository}
    source_ns, target_ns = entry.namespaces(default)
    repositories = await clients.get(source_ns.registry).list_repositories(source_ns.path)
    mapping = {target_ns.repository(source_ns.relative(r)).repository: r for r in repositories}
    return source_ns.registry, target_ns.registry, mapping


async def _prune_repository(
    target: Store,
    state: State,
    repository: str,
    candidates: list[tuple[dict[str, Any], str]],
    result: PruneResult,
) -> None:
    """Delete the candidates' digests that nothing kept shares, after HEADing each tag."""
    deletable: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for row, why in candidates:
        try:
            head = await target.head_manifest(repository, row["tag"])
        except MirrorError as exc:
            result.decisions.append(_decision(row, "failed", str(exc)))
            continue
        if head is None:
            if not result.dry_run:
                state.forget_tag(row["target"], repository, row["tag"])
            result.decisions.append(_decision(row, "gone", f"{why}; not on the target any more"))
        elif head.digest != row["written_digest"]:
            result.decisions.append(
                _decision(
                    row,
                    "kept",
                    f"re-pointed on the target since mirror wrote it (now {head.digest}, "
                    f"mirror wrote {row['written_digest']})",
                    digest=head.digest,
                )
            )
        else:
            deletable.setdefault(row["written_digest"], []).append((row, why))
    if not deletable:
        return
    try:
        shared = await _kept_references(target, repository, deletable)
    except MirrorError as exc:
        for rows in deletable.values():
            for row, _ in rows:
                result.decisions.append(
                    _decision(row, "kept", f"the target's other tags could not be read: {exc}")
                )
        return
    for digest, rows in deletable.items():
        if digest in shared:
            for row, why in rows:
                result.decisions.append(
                    _decision(
                        row,
                        "kept",
                        f"{why}; {shared[digest]} (distribution deletes by digest, every tag "
                        "on it at once)",
                    )
                )
            continue
        if result.dry_run:
            for row, why in rows:
                result.decisions.append(_decision(row, "would delete", why))
            continue
        if result.error:  # the registry refused a delete already: do not ask again
            for row, why in rows:
                result.decisions.append(_decision(row, "kept", f"{why}; {result.error}"))
            continue
        await _delete(target, state, repository, Digest(digest), rows, result)


async def _kept_references(
    target: Store, repository: str, deletable: dict[str, list[tuple[dict[str, Any], str]]]
) -> dict[str, str]:
    """Of the digests in ``deletable``, those a tag that stays points at or lists in its index,
    with a sentence saying which tag. Reads the target's tags list and HEADs every other tag
    (and GETs the indexes among them: from the target, no pull is counted)."""
    going = {row["tag"] for rows in deletable.values() for row, _ in rows}
    others = [t for t in await target.list_tags(repository) if t not in going]
    bound = asyncio.Semaphore(HEADS_IN_FLIGHT)

    async def head(tag: str) -> tuple[str, Any]:
        async with bound:
            return tag, await target.head_manifest(repository, tag)

    shared: dict[str, str] = {}
    for tag, found in await asyncio.gather(*(head(t) for t in others)):
        if found is None or found.digest is None:
            continue
        if found.digest in deletable:
            shared.setdefault(found.digest, f"tag {tag}, which stays, is on the same digest")
        if found.media_type in INDEX_TYPES:
            async with bound:
                index = await target.get_manifest(repository, found.digest)
            for child in index.children:
                if child.digest in deletable:
                    shared.setdefault(
                        child.digest, f"the index under tag {tag}, which stays, lists it"
                    )
    return shared


async def _delete(
    target: Store,
    state: State,
    repository: str,
    digest: Digest,
    rows: list[tuple[dict[str, Any], str]],
    result: PruneResult,
) -> None:
    """HEAD each tag once more, then DELETE the digest and record each tag as pruned."""
    for row, _ in rows:
        try:
            head = await target.head_manifest(repository, row["tag"])
            moved = "" if head is not None and head.digest == digest else "it changed just now"
        except MirrorError as exc:
            moved = f"it could not be checked once more: {exc}"
        if moved:
            for other, why in rows:
                result.decisions.append(_decision(other, "kept", f"{why}; {moved}"))
            return
    try:
        await target.delete_manifest(repository, digest)
    except MirrorError as exc:
        status = getattr(exc, "status", None)
        codes = getattr(exc, "codes", ()) or ()
        if status == 405 or "UNSUPPORTED" in codes:
            result.error = f"registry {target.name} {DELETE_DISABLED}"
            for row, why in rows:
                result.decisions.append(_decision(row, "kept", f"{why}; the registry refuses"))
        else:
            for row, _ in rows:
                result.decisions.append(_decision(row, "failed", str(exc)))
        return
    for row, why in rows:
        state.record_pruned(row["target"], repository, row["tag"], digest)
        result.decisions.append(_decision(row, "deleted", why))


def _decision(
    row: dict[str, Any], action: Action, reason: str, *, digest: str | None = None
) -> Decision:
    return Decision(
        row["target"],
        row["repository"],
        row["tag"],
        digest or row["written_digest"] or row["target_digest"],
        action,
        reason,
    )


def _why_missing(reason: str, since: float, source_repository: str | None) -> str:
    if source_repository is None:
        return f"its repository is gone upstream (seen {utc(since)})"
    if reason == "deleted":
        return f"deleted upstream (seen {utc(since)})"
    return f"not selected by the rules any more (seen {utc(since)})"


# --- reporting --------------------------------------------------------------------------------


def as_dict(result: PruneResult) -> dict[str, Any]:
    return {
        "entry": result.job,
        "prune": result.mode,
        "prune_after": format_duration(result.after),
        "error": result.error,
        "tags": [
            {
                "target": d.target,
                "digest": d.digest,
                "action": d.action,
                "reason": d.reason,
            }
            for d in result.decisions
        ],
    }


def log_result(result: PruneResult) -> None:
    """The daemon's lines: one per tag deleted or failed, one for the entry's prune."""
    import structlog

    log = structlog.get_logger("mirror")
    for d in result.decisions:
        if d.action == "deleted":
            log.info(
                "tag pruned", job=result.job, target=d.target, digest=d.digest, reason=d.reason
            )
        elif d.action == "failed":
            log.error("prune failed", job=result.job, target=d.target, error=d.reason)
    if result.error:
        log.error("prune stopped", job=result.job, error=result.error)
    elif result.decisions:
        log.info(
            "prune",
            job=result.job,
            deleted=result.count("deleted"),
            kept=result.count("kept"),
            gone=result.count("gone"),
            failed=result.count("failed"),
        )


def print_results(results: Iterable[PruneResult], *, dry_run: bool) -> None:
    results = list(results)
    for r in results:
        print(f'{r.job}  (prune = "{r.mode}", after {format_duration(r.after)})')
        for d in r.decisions:
            print(f"  {d.action:<13} {d.target}  {d.reason}")
        if not r.decisions:
            print("  nothing to prune")
    deleted = sum(r.count("deleted", "would delete") for r in results)
    kept = sum(r.count("kept") for r in results)
    verb = "would be deleted" if dry_run else "deleted"
    line = f"{deleted} tags {verb}, {kept} kept"
    if deleted and not dry_run:
        line += "; the registry frees their disk at its next garbage collection"
    print(line)


async def prune_command(args: argparse.Namespace) -> int:
    """``mirror prune``: every entry with ``prune`` set, once. 0 when nothing failed; 1 when
    a delete failed or was refused; 2 when no entry asks for pruning."""
    path = config_path(args.config)
    config = load_config(path)
    entries = [e for e in config.mirrors if e.prune is not None and not _names_one_image(e)]
    if not entries:
        raise ConfigError(
            f"config {path or 'environment'}: no [[mirrors]] entry of a repository or "
            'namespace sets prune = "deleted" or "unselected"'
        )
    clients = Clients(config, state_warning=warning)
    try:
        results = [await prune_entry(e, clients, dry_run=args.dry_run) for e in entries]
    finally:
        await clients.aclose()
    if args.json:
        document = {
            "dry_run": args.dry_run,
            "entries": [as_dict(r) for r in results],
            "deleted": sum(r.count("deleted") for r in results),
            "would_delete": sum(r.count("would delete") for r in results),
            "kept": sum(r.count("kept") for r in results),
        }
        print(json.dumps(document))
    else:
        print_results(results, dry_run=args.dry_run)
    for r in results:
        if r.error:
            error(f"prune {r.job}: {r.error}")
        for d in r.decisions:
            if d.action == "failed":
                error(f"prune {d.target}: {d.reason}")
    failed = any(r.error or r.count("failed") for r in results)
    return EXIT_FAILED if failed else EXIT_OK
