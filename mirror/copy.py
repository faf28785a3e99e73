"""The copy engine's face: make a tag (or digest) on the target match the source, moving only
what is missing. ``Copier`` composes the steps for a whole run; each step lives in its module.
Does not list tags, select them, read config or log: callers do.

The copy, step by step:

1. HEAD the tag on the source and on the target, with the full Accept set on both sides.
   Equal digests: done, no GET (Docker Hub counts manifest GETs as pulls, not HEADs).
   (``mirror.plan``)
2. Otherwise GET the source manifest as raw bytes; its digest is the sha256 of those bytes.
   For an index, walk each child manifest (by digest) the same way. A manifest the target
   already holds is read from the target, and one read earlier in the run is not read again.
   (``mirror.plan``, charging the source's pull budget, ``mirror.quota``)
3. Collect the blobs (config and layers) of everything that will be pushed; HEAD each on the
   target; keep only the missing ones. In a repository without tags the HEAD and the
   upload's POST are one request: a mount from the repository itself (see ``tagless``).
   (``mirror.plan``)
4. Stream each missing blob from a GET into an upload, hashing as it flows; never hold a blob
   in memory. A blob another repository of the target holds is mounted instead. A wrong hash
   aborts that blob and nothing that refers to it is pushed. Bounded concurrency.
   (``mirror.transfer``)
5. Push child manifests by digest, then the index (or image manifest) under the tag, always
   the original bytes with the original media type. The tag is written last, so the target
   never holds a tag that points at missing content, and read back. (``mirror.transfer``)

6. Once a repository's tags are in step, carry what refers to each manifest written or found
   in step (the tag's, an index's and its images'): cosign's signature tags, and the referrers
   the source lists, each after its subject. (``mirror.referrers``)

A dry run stops after step 3 and reports what it would move (``mirror.report``). Source and
target are any ``mirror.store.Store``: the registry client, ``mirror.registry``, or a
directory of OCI image layouts, ``mirror.layout``.
"""

from __future__ import annotations

import asyncio
import datetime
import string
from collections import defaultdict
from collections.abc import Callable, Sequence

from mirror.concurrency import Priority
from mirror.errors import MirrorError, NotFound, QuotaExhausted, RegistryError, Unsupported
from mirror.manifest import INDEX_TYPES, Descriptor, Platform
from mirror.plan import Plan, Planner, TargetState
from mirror.reference import Digest, is_tag
from mirror.referrers import IN_STEP, Referrers, ReferrerTags, Subject
from mirror.report import CopyReport, Progress, TagResult, display
from mirror.retry import TRANSFER, RetryPolicy, Sleep
from mirror.store import Store
from mirror.transfer import Transfer
from mirror.upload import UploadJournal

DEFAULT_CONCURRENCY = 4  # blob transfers in flight at once, across every tag of a run
# Tags planned at once, across every repository of a run: a bound per repository made a
# 200-repository run juggle 1,600 tags for 8 connections (more memory, slower); 16 rather
# than 8 keeps both registries busy while one waits on its disk (2,000 tags: ~12 % faster).
TAGS_IN_FLIGHT = 16

BackupName = Callable[[str], str]  # a tag -> the tag its old manifest is kept under


def backup_namer(template: str | BackupName) -> BackupName:
    """The backup tag for each tag: ``template`` formatted with ``tag`` and ``date`` (now, in
    UTC: ``"{tag}-{date:%Y%m%d}"``), or ``template`` itself when it is a function.

    A template is checked here, on a sample tag: it must use ``{tag}`` (else every tag would
    share one backup) and give a valid tag. Raises ValueError saying what is wrong.
    """
    if callable(template):
        return template
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None
    if "tag" not in fields:
        raise ValueError(f"template {template!r} must contain {{tag}}")
    if unknown := fields - {"tag", "date"}:
        raise ValueError(
            f"template {template!r}: unknown field {{{sorted(unknown)[0]}}} (use {{tag}}, {{date}})"
        )

    def name(tag: str) -> str:
        return template.format(tag=tag, date=datetime.datetime.now(datetime.UTC))

    try:
        sample = name("1.22-alpine")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None
    if sample == "1.22-alpine":
        raise ValueError(f"template {template!r} names the tag itself, not a backup of it")
    if not is_tag(sample):
        raise ValueError(
            f"template {template!r} gives {sample!r}, not a valid tag (letters, digits, "
            "_ . -, at most 128)"
        )
    return name


class Copier:
    """Copies tags and digests from one source store to one target store.

    One Copier serves a whole run: it remembers which manifests it has read and which blobs
    the target holds, so tags that share content (aliases, shared layers) cost nothing twice.
    Blob transfers across all concurrent copies share one bound, ``concurrency``.
    """

    def __init__(
        self,
        source: Store,
        target: Store,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        dry_run: bool = False,
        progress: Progress | None = None,
        report: CopyReport | None = None,
        blob_attempts: int = TRANSFER.attempts,
        sleep: Sleep = asyncio.sleep,
        platforms: Sequence[Platform] = (),
        flatten: bool = False,
        flattened: dict[tuple[Digest, str], Digest] | None = None,
        referrers: bool = True,
        artifact_types: Sequence[str] = (),
        unsupported: dict[Digest, str] | None = None,
        backup: str | BackupName | None = None,
        journal: UploadJournal | None = None,
    ) -> None:
        """``backup`` (a template or a function, see ``backup_namer``) keeps the old manifest
        of a tag that is about to move under a backup tag first, in the same repository.
        ``journal`` records large uploads as they go, so that a restart resumes them.
        ``flatten`` with one platform copies that platform's image as a plain manifest
        under the tag; ``flattened`` remembers which image each index gave, so a daemon's
        later runs know an unchanged index without pulling it (pass the same dict each run).
        ``blob_attempts`` is how often a failed blob transfer is tried in all. ``referrers``
        says whether a repository sync carries signatures and referrers (``carry_referrers``),
        ``artifact_types`` which of them (all when empty). ``unsupported`` remembers source
        digests left on purpose (foreign layers the target refused), so a daemon's later runs
        do not pull them again (pass the same dict each run).
        """
        if flatten and len(platforms) != 1:
            raise MirrorError("flatten takes exactly one platform")
        self.source = source
        self.target = target
        self.dry_run = dry_run
        self.report = report if report is not None else CopyReport(dry_run=dry_run)
        self.tag_slots = asyncio.Semaphore(TAGS_IN_FLIGHT)  # callers hold one per tag copied
        self._backup = backup_namer(backup) if backup is not None else None
        self._state = TargetState()
        self._planner = Planner(
            source,
            target,
            self._state,
            self.report,
            dry_run=dry_run,
            platforms=platforms,
            flatten=flatten,
            flattened=flattened,
            unsupported=unsupported,
        )
        self._transfer = Transfer(
            source,
            target,
            self._state,
            self.report,
            concurrency=concurrency,
            progress=progress,
            policy=RetryPolicy(max(1, blob_attempts), TRANSFER.max_time_s),
            sleep=sleep,
            journal=journal,
        )
        self._planned: set[tuple[str, Digest]] = set()  # dry run: what was counted as moving
        self.referrers = referrers
        self._referrers = Referrers(
            source,
            target,
            self._planner,
            self.report,
            self.copy,
            slots=self.tag_slots,
            dry_run=dry_run,
            artifact_types=artifact_types,
        )
        self._subjects: defaultdict[tuple[str, str], list[Subject]] = defaultdict(list)

    def tagless(self, repository: str) -> None:
        """Say that the target's ``repository`` holds no tags (its tags list is empty, or it
        does not exist yet). Nothing in it can be pulled, so its blobs are not HEADed one by
        one before a first sync: each is asked for by a mount from the repository itself as
        it is sent, which links a blob already there (201, left by an interrupted run) or
        opens the upload it needs anyway (202). A 2,000-tag first sync makes 3,800 requests
        fewer. (In a repository with tags a HEAD is kept: a mount rewrites the link of a blob
        already there, which a pull reading it at that instant could find empty.)"""
        self._state.tagless.add(repository)

    def holds_blob(self, repository: str, digest: Digest) -> None:
        """Say that the target's ``repository`` holds blob ``digest`` (known from elsewhere,
        e.g. a bundle's check before an import): other repositories mount it from there."""
        self._state.holds_blob(repository, digest)

    async def copy(
        self,
        source_repo: str,
        reference: str,
        target_repo: str,
        target_reference: str | None = None,
        *,
        immutable: bool = False,
        absent: bool = False,
        priority: Priority | None = None,
        referrer_of: Digest | None = None,
    ) -> TagResult:
        """Make ``target_repo:target_reference`` match ``source_repo:reference``; never raises.

        ``reference`` is a tag or a digest; ``target_reference`` defaults to it. An
        ``immutable`` tag (a full version that names one build forever) the target already
        has is not checked upstream at all. ``absent`` says the caller knows the target has
        no such tag (its tags list says so): the target is not asked again. The result says
        whether the tag was copied, skipped (already equal), planned (dry run), deferred (the
        pull budget is spent) or failed, and why. ``priority`` orders tags competing for a
        tight pull budget. ``referrer_of`` copies a signature or referrer of that digest, as it
        is (no platform subset), counted apart from tags.

        A manifest with a ``subject`` goes after it: a subject the target lacks is copied (by
        digest) first.
        """
        target_reference = target_reference or reference
        result = TagResult(
            source=display(self.source.name, source_repo, reference),
            target=display(self.target.name, target_repo, target_reference),
            status="failed",
            target_registry=self.target.name,
            target_repository=target_repo,
            target_tag=None if ":" in target_reference else target_reference,
            referrer_of=str(referrer_of) if referrer_of is not None else None,
        )
        plan: Plan | None = None
        try:
            plan = await self._planner.plan(
                source_repo,
                reference,
                target_repo,
                target_reference,
                immutable=immutable,
                absent=absent,
                priority=priority,
                verbatim=referrer_of is not None,
            )
            result.digest = plan.digest
            result.pulls = plan.pulls
            result.previous = plan.previous
            if plan.source_digest is not None and plan.source_digest != plan.digest:
                result.source_digest = plan.source_digest
            if plan.top is None:
                result.status = "skipped"
            else:
                result.blobs_missing = len(plan.missing_blobs)
                result.bytes_missing = sum(b.size for b in plan.missing_blobs)
                result.manifests_missing = len(plan.children) + 1
                if self.dry_run:
                    result.status = "planned"
                    self._count_planned(target_repo, plan)
                else:
                    subject = plan.top.subject
                    if subject is not None:
                        result.pulls += await self._subject_first(
                            source_repo, target_repo, subject.digest
                        )
                    if self._moves(plan, target_reference) and self._backup is not None:
                        assert plan.previous is not None
                        result.backup = self._backup(target_reference)
                        await self._transfer.keep_backup(target_repo, result.backup, plan.previous)
                    there = await self._execute(plan, source_repo, target_repo, target_reference)
                    result.blobs_missing -= len(there)
                    result.bytes_missing -= sum(b.size for b in there)
                    result.status = "copied"
                foreign = sum(m.foreign_layers for m in (plan.top, *plan.children))
                if foreign:
                    result.note = (
                        f"{foreign} foreign layers (Windows base layers) stay at their URLs, "
                        "where clients fetch them; the manifest is carried as it is"
                    )
        except Unsupported as exc:
            result.status = "unsupported"
            result.error = str(exc)
        except QuotaExhausted as exc:
            result.status = "deferred"
            result.error = str(exc)
        except MirrorError as exc:
            result.error = str(exc)
        finally:
            if priority is not None:
                await priority[0].release(priority[1])
        if plan is not None and referrer_of is None and result.status in IN_STEP:
            self._subjects[(source_repo, target_repo)].append(self._subject(plan, result))
        self.report.add(result)
        return result

    async def _execute(
        self, plan: Plan, source_repo: str, target_repo: str, target_reference: str
    ) -> list[Descriptor]:
        """Steps 4-5; a target that refuses foreign layers leaves the tag unsupported, and
        the source digest is remembered so that it is not pulled again while unchanged."""
        try:
            return await self._transfer.execute(plan, source_repo, target_repo, target_reference)
        except RegistryError as exc:
            assert plan.top is not None
            foreign = sum(m.foreign_layers for m in (plan.top, *plan.children))
            # distribution refuses them with 400 MANIFEST_INVALID, or (2.8) a 500 naming
            # MANIFEST_BLOB_UNKNOWN: the foreign blob it will not fetch.
            refused = {"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN"} & set(exc.codes)
            if not foreign or not (exc.status == 400 or refused):
                raise
            reason = (
                f"its {foreign} foreign layers (Windows base layers, fetched from their URLs) "
                f"are refused by {self.target.name} (HTTP {exc.status}); a registry takes "
                "them with validation.manifests.urls.allow set (not pulled again while its "
                "digest stays the same; --recheck tries again)"
            )
            self._planner.unsupported[plan.source_digest or plan.digest] = reason
            raise Unsupported(reason) from None

    async def carry_referrers(
        self,
        source_repo: str,
        target_repo: str,
        tags: ReferrerTags,
        on_target: set[str] | None = None,
    ) -> list[TagResult]:
        """Step 6 for what this run copied from ``source_repo`` to ``target_repo`` so far:
        carry the signatures and referrers of each manifest in step (``tags``: the referrer
        tags of the source's tags list; ``on_target``: the target's tags, when listed)."""
        subjects = self._subjects.pop((source_repo, target_repo), [])
        return await self._referrers.carry(source_repo, target_repo, subjects, tags, on_target)

    def _subject(self, plan: Plan, result: TagResult) -> Subject:
        """What a tag put in step, as a subject whose referrers may follow."""
        if plan.top is not None:
            is_index: bool | None = plan.top.is_index
        elif plan.source_digest is not None and plan.source_digest != plan.digest:
            is_index = not self._planner.flatten  # a platform subset, or a flattened image
        else:
            head_type = self._planner.head_types.get(plan.digest)
            is_index = None if head_type is None else head_type in INDEX_TYPES
        return Subject(plan.digest, plan.top, is_index, result, plan.source_digest)

    async def _subject_first(self, source_repo: str, target_repo: str, subject: Digest) -> int:
        """Copy ``subject`` by digest unless the target holds it; the pulls it cost. A subject
        the source lacks is no reason to refuse what refers to it (registries take it)."""
        if await self._planner.on_target(target_repo, subject):
            return 0
        try:
            plan = await self._planner.plan(
                source_repo, str(subject), target_repo, str(subject), verbatim=True
            )
        except NotFound:
            return 0
        if plan.top is not None:
            await self._transfer.execute(plan, source_repo, target_repo, str(subject))
        return plan.pulls

    @staticmethod
    def _moves(plan: Plan, target_reference: str) -> bool:
        """Whether the copy points an existing tag at other content (its old digest is lost)."""
        return (
            plan.top is not None
            and plan.previous is not None
            and plan.previous != plan.digest
            and is_tag(target_reference)
        )

    def _count_planned(self, target_repo: str, plan: Plan) -> None:
        """In a dry run, count each blob and manifest that would move once, as a run would."""
        for blob in plan.missing_blobs:
            if (target_repo, blob.digest) not in self._planned:
                self._planned.add((target_repo, blob.digest))
                self.report.blobs_copied += 1
                self.report.bytes_copied += blob.size
        self.report.manifests_pushed += 1  # the tag
        for child in plan.children:
            if (target_repo, child.digest) not in self._planned:
                self._planned.add((target_repo, child.digest))
                self.report.manifests_pushed += 1
