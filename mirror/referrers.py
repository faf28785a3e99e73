"""Signatures, attestations and other referrers: found on the source, carried after what they
describe.

Owns cosign's tag scheme (``sha256-<hex>.sig``, ``.att``, ``.sbom``), the OCI 1.1 referrers
tag schema (``sha256-<hex>``: an index of the referrers of that digest), finding what refers
to a manifest (from the tags list a run already read, and from the referrers API where the
source offers it, asked once per registry per run) and writing the tag-schema index on a target
that lacks the API, so ``cosign tree`` and ``oras discover`` find them there. Copies through
the run's copy function (``mirror.copy``); which tags a run selects is not its business, and
it reads no config.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mirror.errors import MirrorError
from mirror.manifest import INDEX_TYPES, OCI_INDEX, Descriptor, Manifest, parse_manifest
from mirror.plan import SOURCE_DIGEST_ANNOTATION, Planner
from mirror.reference import Digest
from mirror.report import CopyReport, TagResult, display
from mirror.store import Store

# cosign's tag suffixes, and the artifactType cosign gives each when it attaches by referrer.
COSIGN_TYPES = {
    "sig": "application/vnd.dev.cosign.artifact.sig.v1+json",
    "att": "application/vnd.dev.cosign.artifact.att.v1+json",
    "sbom": "application/vnd.dev.cosign.artifact.sbom.v1+json",
}
_REFERRER_TAG = re.compile(r"(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})(?:\.(sig|att|sbom))?")
IN_STEP = ("copied", "skipped", "planned")  # results whose manifest is (or would be) there
MAX_DEPTH = 3  # referrers of referrers (a signed SBOM, a signature of it) are followed so deep

CopyOne = Callable[..., Awaitable[TagResult]]


def schema_tag(digest: Digest) -> str:
    """``sha256:abc…`` -> ``sha256-abc…``: the tag of its referrers index (cosign's prefix)."""
    return str(digest).replace(":", "-", 1)


@dataclass(frozen=True, slots=True)
class ReferrerTags:
    """The tags of a repository that name another manifest by digest, by that digest."""

    by_subject: dict[Digest, tuple[str, ...]] = field(default_factory=dict)

    def of(self, digest: Digest) -> tuple[str, ...]:
        return self.by_subject.get(digest, ())

    def __len__(self) -> int:
        return sum(len(tags) for tags in self.by_subject.values())


def is_referrer_tag(tag: str) -> bool:
    """Whether ``tag`` is a signature, attestation or referrers-index tag (see ``split_tags``)."""
    return _REFERRER_TAG.fullmatch(tag) is not None


def split_tags(tags: Iterable[str]) -> tuple[list[str], ReferrerTags]:
    """A tags list parted into ordinary tags (for the tag rules) and referrer tags: cosign's
    ``sha256-<hex>.sig``/``.att``/``.sbom`` and the tag schema's ``sha256-<hex>``."""
    plain: list[str] = []
    found: defaultdict[Digest, list[str]] = defaultdict(list)
    for tag in tags:
        match = _REFERRER_TAG.fullmatch(tag)
        if match is None:
            plain.append(tag)
        else:
            found[Digest(f"{match[1]}:{match[2]}")].append(tag)
    return plain, ReferrerTags({d: tuple(sorted(t)) for d, t in found.items()})


def referrers_index(entries: Sequence[Descriptor], annotations: dict[str, str]) -> Manifest:
    """The OCI 1.1 referrers tag-schema index listing ``entries``."""
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [e.as_dict() for e in entries],
    }
    if annotations:
        document["annotations"] = annotations
    return parse_manifest(json.dumps(document, indent=3).encode(), OCI_INDEX)


@dataclass(slots=True)
class Subject:
    """A manifest a run put (or found) in step on the target: what refers to it may travel.

    ``manifest`` is None when the tag was in step and unread (an index's children are then
    read from the target, only when something may refer to them); ``source_digest`` is the
    source index a platform subset was made from, whose own signatures do not apply.
    """

    digest: Digest
    manifest: Manifest | None
    is_index: bool | None
    result: TagResult
    source_digest: Digest | None = None


class Referrers:
    """Carries what refers to the subjects of a run, from one source store to one target.

    Referrers go after their subject (a run calls ``carry`` once its tags are copied).
    Cosign's tags are copied as tags: HEAD-compared like any, so a signature made again
    upstream arrives on the next run and an unchanged one costs two HEADs. Referrers the
    source lists by API, or (with ``artifact_types``) by tag-schema index, are copied by
    digest and added to the target's tag-schema index where it lacks the API.
    """

    def __init__(
        self,
        source: Store,
        target: Store,
        planner: Planner,
        report: CopyReport,
        copy: CopyOne,
        *,
        slots: asyncio.Semaphore,
        dry_run: bool = False,
        artifact_types: Sequence[str] = (),
    ) -> None:
        self.source = source
        self.target = target
        self.planner = planner
        self.report = report
        self.artifact_types = frozenset(artifact_types)
        self._copy = copy
        self._slots = slots
        self._dry_run = dry_run
        self._offers_api: dict[str, bool] = {}  # per store, for the run: answers the API
        self._listed: dict[tuple[str, str, Digest], list[Descriptor] | None] = {}
        self._done: set[tuple[str, Digest]] = set()
        self._index_locks: defaultdict[tuple[str, Digest], asyncio.Lock] = defaultdict(asyncio.Lock)

    def wanted(self, artifact_type: str | None) -> bool:
        return not self.artifact_types or artifact_type in self.artifact_types

    async def carry(
        self,
        source_repo: str,
        target_repo: str,
        subjects: Sequence[Subject],
        tags: ReferrerTags,
        on_target: set[str] | None = None,
    ) -> list[TagResult]:
        """Copy what refers to each subject (and to an index's images), then to what was
        copied, ``MAX_DEPTH`` levels deep; one result per referrer. Never raises for one."""
        if not subjects:
            return []
        if self.source.name not in self._offers_api:
            await self._referrers_api(self.source, source_repo, subjects[0].digest)
        level = await self._digests(target_repo, subjects, tags)
        results: list[TagResult] = []
        for _depth in range(MAX_DEPTH):
            level = {d for d in level if (target_repo, d) not in self._done}
            if not level:
                break
            self._done |= {(target_repo, d) for d in level}
            found = await asyncio.gather(
                *(self._guarded(source_repo, target_repo, d, tags, on_target) for d in level)
            )
            level = set()
            for carried in found:
                results += carried
                level |= {Digest(r.digest) for r in carried if r.digest and r.status in IN_STEP}
        return results

    async def _guarded(
        self,
        source_repo: str,
        target_repo: str,
        subject: Digest,
        tags: ReferrerTags,
        on_target: set[str] | None,
    ) -> list[TagResult]:
        """``_carry_one``, with a failure to find or index them as one failed result."""
        try:
            return await self._carry_one(source_repo, target_repo, subject, tags, on_target)
        except MirrorError as exc:
            result = TagResult(
                source=display(self.source.name, source_repo, subject),
                target=display(self.target.name, target_repo, schema_tag(subject)),
                status="failed",
                error=f"referrers of {subject}: {exc}",
                referrer_of=str(subject),
            )
            self.report.add(result)
            return [result]

    async def _digests(
        self, target_repo: str, subjects: Sequence[Subject], tags: ReferrerTags
    ) -> set[Digest]:
        """The subjects' digests and their images': an index in step is read from the target
        only when the source offers the API or a referrer tag names something not yet known."""
        digests = {s.digest for s in subjects}
        unknown = any(d not in digests for d in tags.by_subject)
        need_children = unknown or self._offers_api.get(self.source.name, False)
        for subject in subjects:
            manifest = subject.manifest
            if manifest is None and need_children and subject.is_index is not False:
                try:
                    manifest = await self.planner.target_manifest(target_repo, subject.digest)
                except MirrorError:
                    continue  # its tag is in step; its images' referrers wait for a next run
            if manifest is not None and manifest.media_type in INDEX_TYPES:
                digests |= {c.digest for c in manifest.children}
            left = subject.source_digest
            if left is not None and left != subject.digest and tags.of(left):
                subject.result.note = (
                    f"the source index's signatures ({', '.join(tags.of(left))}) do not apply "
                    "to this platform subset and were not carried; its images' were"
                )
        return digests

    async def _carry_one(
        self,
        source_repo: str,
        target_repo: str,
        subject: Digest,
        tags: ReferrerTags,
        on_target: set[str] | None,
    ) -> list[TagResult]:
        listed: list[Descriptor] | None = None
        from_index: Digest | None = None  # the source's tag-schema index they came from
        copies = []
        for tag in tags.of(subject):
            suffix = tag.rpartition(".")[2] if "." in tag else None
            if suffix is None and self.artifact_types:
                # Filtered: the index is read for its entries, and the target gets its own.
                listed, from_index = await self._from_schema_tag(
                    source_repo, target_repo, subject, tag
                )
            elif suffix is None or self.wanted(COSIGN_TYPES[suffix]):
                absent = on_target is not None and tag not in on_target
                copies.append(self._bounded(source_repo, tag, target_repo, tag, absent, subject))
        results = list(await asyncio.gather(*copies))
        if self._offers_api.get(self.source.name):
            listed = await self._referrers_api(self.source, source_repo, subject)
            from_index = None
        if not listed:
            return results
        chosen = [d for d in listed if self.wanted(d.artifact_type)]
        carried = await asyncio.gather(
            *(
                self._bounded(
                    source_repo, str(d.digest), target_repo, str(d.digest), False, subject
                )
                for d in chosen
            )
        )
        results += carried
        copied = [
            d for d, r in zip(chosen, carried, strict=True) if r.status in ("copied", "skipped")
        ]
        if not self._dry_run and (copied or from_index is not None):
            await self._write_index(target_repo, subject, copied, from_index)
        return results

    async def _bounded(
        self,
        source_repo: str,
        reference: str,
        target_repo: str,
        target_reference: str,
        absent: bool,
        subject: Digest,
    ) -> TagResult:
        """One referrer copied, holding one of the run's tag slots."""
        async with self._slots:
            return await self._copy(
                source_repo,
                reference,
                target_repo,
                target_reference,
                absent=absent,
                referrer_of=subject,
            )

    async def _from_schema_tag(
        self, source_repo: str, target_repo: str, subject: Digest, tag: str
    ) -> tuple[list[Descriptor] | None, Digest | None]:
        """The entries of the source's tag-schema index and its digest, read (a pull) only
        when it changed since the target's index was written from it."""
        head = await self.source.head_manifest(source_repo, tag)
        if head is None or head.digest is None:
            return None, None
        existing = await self._target_index(target_repo, subject)
        if existing is not None and existing.annotation(SOURCE_DIGEST_ANNOTATION) == head.digest:
            return None, None
        try:
            index = await self.planner.source_manifest(source_repo, head.digest)
        except MirrorError:
            return None, None
        return list(index.children), head.digest

    async def _referrers_api(
        self, store: Store, repo: str, digest: Digest
    ) -> list[Descriptor] | None:
        """The store's referrers of ``digest`` (once per run); learns whether it offers the API."""
        key = (store.name, repo, digest)
        if key not in self._listed:
            try:
                listed = await store.list_referrers(repo, digest)
            except MirrorError:
                listed = None
            self._offers_api.setdefault(store.name, listed is not None)
            self._listed[key] = listed
        return self._listed[key]

    async def _target_index(self, repo: str, subject: Digest) -> Manifest | None:
        head = await self.target.head_manifest(repo, schema_tag(subject))
        if head is None or head.digest is None:
            return None
        return await self.planner.target_manifest(repo, head.digest)

    async def _write_index(
        self,
        repo: str,
        subject: Digest,
        entries: list[Descriptor],
        from_index: Digest | None = None,
    ) -> None:
        """Add ``entries`` to the target's tag-schema index of ``subject`` (where the target
        has no referrers API): an index listing every referrer, old and new, by digest, and
        the source index they were chosen from, if any."""
        if self.target.name not in self._offers_api:
            await self._referrers_api(self.target, repo, subject)
        if self._offers_api.get(self.target.name):
            return  # the target indexes a manifest's subject itself
        async with self._index_locks[(repo, subject)]:
            existing = await self._target_index(repo, subject)
            kept = list(existing.children) if existing is not None else []
            known = {d.digest for d in kept}
            new = [d for d in entries if d.digest not in known]
            was = existing.annotation(SOURCE_DIGEST_ANNOTATION) if existing is not None else None
            if not new and (from_index is None or was == from_index):
                return
            annotations = {SOURCE_DIGEST_ANNOTATION: str(from_index)} if from_index else {}
            index = referrers_index([*kept, *new], annotations)
            await self.target.put_manifest(repo, schema_tag(subject), index)
            self.report.manifests_pushed += 1
