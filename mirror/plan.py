"""Steps 1-3 of a copy: compare source and target, read what must move, find missing blobs.

Owns the HEAD-only comparison, reading manifests (each at most once per run, charged to the
source's pull budget in priority order), platform subsets of an index, and asking the target
which blobs it lacks, plus the run's memory of the target that transfers share
(``TargetState``). Moves nothing: ``mirror.transfer`` does that with the ``Plan`` made here,
and a dry run stops after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from mirror.concurrency import Priority, once, resolved
from mirror.errors import MirrorError, NotFound, QuotaExhausted, RateLimited, Unsupported
from mirror.manifest import (
    DOCKER_SCHEMA1,
    Descriptor,
    Manifest,
    Platform,
    filter_index,
    platform_children,
)
from mirror.reference import Digest
from mirror.report import CopyReport
from mirror.store import Store

SOURCE_DIGEST_ANNOTATION = "io.mirror.source.digest"  # on a platform-filtered index
PLATFORMS_ANNOTATION = "io.mirror.platforms"  # which platforms it keeps, sorted, comma-joined
# A platform subset has a digest of its own: what was signed upstream was the source index.
REFERRERS_ANNOTATION = "io.mirror.referrers"
REFERRERS_NOTE = (
    "signatures and attestations of the source index do not apply to this platform subset; "
    "those of its images do, and travel with them"
)


@dataclass(slots=True)
class Plan:
    """Steps 1-3 for one tag: what to push and which blobs the target lacks.

    ``digest`` is what the target tag will point at; ``source_digest`` differs from it only
    when a platform filter made a new index.
    """

    digest: Digest
    top: Manifest | None = None  # None when the target tag already points at ``digest``
    children: list[Manifest] = field(default_factory=list)  # the target lacks these
    missing_blobs: list[Descriptor] = field(default_factory=list)
    source_digest: Digest | None = None
    pulls: int = 0  # manifest GETs upstream this tag made (what Docker Hub counts)
    previous: Digest | None = None  # what the target tag pointed at before (None: no tag)

    @property
    def tag_matches(self) -> bool:
        return self.top is None


class TargetState:
    """What this run knows of the target, so that no tag asks or sends anything twice:
    manifests and blobs each repository holds, a repository holding each blob (to mount from),
    and repositories that hold no tags (see ``Copier.tagless``)."""

    def __init__(self) -> None:
        self.manifest_present: dict[tuple[str, Digest], asyncio.Future[bool]] = {}
        self.blob_present: dict[tuple[str, Digest], asyncio.Future[bool]] = {}
        self.blob_homes: dict[Digest, str] = {}
        self.tagless: set[str] = set()

    def holds_blob(self, repo: str, digest: Digest) -> None:
        """``repo`` holds the blob now: later tags neither ask nor send it, and other
        repositories mount it from there."""
        self.blob_homes.setdefault(digest, repo)
        self.blob_present[(repo, digest)] = resolved(True)

    def holds_manifest(self, repo: str, digest: Digest) -> None:
        self.manifest_present[(repo, digest)] = resolved(True)

    def stored(self, repo: str, digest: Digest) -> bool:
        """Whether this run has seen the blob in ``repo`` already (no request made)."""
        known = self.blob_present.get((repo, digest))
        return known is not None and known.done() and not known.exception() and known.result()


class Planner:
    """Makes the ``Plan`` of each tag of a run, from one source to one target.

    Remembers every manifest it has read (from either side) for the run, so aliases and
    shared children cost no second GET. ``flatten`` with one platform plans that platform's
    image as a plain manifest; ``flattened`` remembers which image each index gave, across
    the runs of a daemon.
    """

    def __init__(
        self,
        source: Store,
        target: Store,
        state: TargetState,
        report: CopyReport,
        *,
        dry_run: bool = False,
        platforms: Sequence[Platform] = (),
        flatten: bool = False,
        flattened: dict[tuple[Digest, str], Digest] | None = None,
        unsupported: dict[Digest, str] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.state = state
        self.report = report
        self.dry_run = dry_run
        self.platforms = tuple(platforms)
        self.flatten = flatten
        self._flattened = flattened if flattened is not None else {}
        # Source digests left on purpose, and why: not pulled again while they stay unchanged.
        self.unsupported = unsupported if unsupported is not None else {}
        self._platforms_key = ",".join(sorted(str(p) for p in self.platforms))
        self._manifests: dict[tuple[str, Digest], asyncio.Future[Manifest]] = {}
        self._fetched: dict[Digest, Manifest] = {}
        self.head_types: dict[Digest, str] = {}  # media types the HEADs of step 1 reported

    async def plan(
        self,
        source_repo: str,
        reference: str,
        target_repo: str,
        target_reference: str,
        *,
        immutable: bool = False,
        absent: bool = False,
        priority: Priority | None = None,
        verbatim: bool = False,
    ) -> Plan:
        """Steps 1-3 for ``target_repo:target_reference`` from ``source_repo:reference``.

        ``verbatim`` plans the manifest as it is, whatever platforms the run keeps: a
        signature or a referrers index is copied with its digest, never cut down.
        """
        digest, target_digest = await self._compare(
            source_repo,
            reference,
            target_repo,
            target_reference,
            immutable=immutable,
            absent=absent,
        )
        plan = await self._plan(
            source_repo, target_repo, digest, target_digest, priority, verbatim=verbatim
        )
        plan.previous = target_digest
        return plan

    async def _plan(
        self,
        source_repo: str,
        target_repo: str,
        digest: Digest,
        target_digest: Digest | None,
        priority: Priority | None,
        *,
        verbatim: bool,
    ) -> Plan:
        """Steps 2-3, once step 1 gave the source's ``digest`` and the target's."""
        flatten = self.flatten and not verbatim
        platforms = bool(self.platforms) and not verbatim
        if target_digest == digest:
            return Plan(digest)
        if digest in self.unsupported:
            raise Unsupported(self.unsupported[digest])
        if priority is not None and self.source.budget.available is not None:
            await priority[0].wait(priority[1])  # pulls ahead: take the budget in turn
        if flatten and target_digest is not None:
            if self._flattened.get((digest, self._platforms_key)) == target_digest:
                return Plan(target_digest, source_digest=digest)  # this index's image
        elif platforms and target_digest is not None:
            on_target = await self._manifest_from_target(target_repo, target_digest)
            if on_target.annotation(SOURCE_DIGEST_ANNOTATION) == digest and (
                on_target.annotation(PLATFORMS_ANNOTATION) == self._platforms_key
            ):
                return Plan(target_digest, source_digest=digest)  # filtered from this source
        elif await self._target_has_manifest(target_repo, digest):
            # Already stored under another tag: its children and blobs are there too, since a
            # registry refuses a manifest whose references are missing. Only the tag moves.
            return Plan(digest, await self._manifest_from_target(target_repo, digest))

        pulls = 0 if self._pulled_or_pulling(source_repo, digest) else 1
        top = await self._manifest(source_repo, digest)
        if top.is_index and flatten:
            image = self._platform_image(top)
            self._flattened[(digest, self._platforms_key)] = image.digest
            if target_digest == image.digest:
                return Plan(image.digest, source_digest=digest, pulls=pulls)
            if await self._target_has_manifest(target_repo, image.digest):
                on_target = await self._manifest_from_target(target_repo, image.digest)
                return Plan(image.digest, on_target, source_digest=digest, pulls=pulls)
            pulls += 0 if self._pulled_or_pulling(source_repo, image.digest) else 1
            top = await self._manifest(source_repo, image.digest)
        elif top.is_index and platforms:
            top = self._only_platforms(top)
            if await self._target_has_manifest(target_repo, top.digest):
                return Plan(top.digest, top, source_digest=digest, pulls=pulls)
        children: list[Manifest] = []
        if top.is_index:
            present = await asyncio.gather(
                *(self._target_has_manifest(target_repo, c.digest) for c in top.children)
            )
            missing = [c for c, have in zip(top.children, present, strict=True) if not have]
            # The children are pulled together or not at all: half an index is no use.
            child_pulls = sum(
                1 for c in missing if not self._pulled_or_pulling(source_repo, c.digest)
            )
            self._take_pulls(child_pulls, f"{len(missing)} child manifests of {digest}")
            try:
                children = list(
                    await asyncio.gather(
                        *(self._manifest(source_repo, c.digest, granted=True) for c in missing)
                    )
                )
            finally:
                self.source.budget.settle(child_pulls)
            pulls += child_pulls
        if priority is not None:
            await priority[0].release(priority[1])  # everything this tag pulls is taken
        for child in children:
            if child.is_index:
                raise MirrorError(f"index {top.digest} lists another index {child.digest}")
        images = children if top.is_index else [top]
        blobs = {b.digest: b for image in images for b in image.blobs}
        if target_repo in self.state.tagless and not self.dry_run:
            # Asked as they are sent (see ``tagless``); only what this run stored is known.
            missing_blobs = [
                b for b in blobs.values() if not self.state.stored(target_repo, b.digest)
            ]
        else:
            present = await asyncio.gather(*(self._blob_exists(target_repo, d) for d in blobs))
            missing_blobs = [b for b, ok in zip(blobs.values(), present, strict=True) if not ok]
        return Plan(top.digest, top, children, missing_blobs, source_digest=digest, pulls=pulls)

    def _platform_image(self, index: Manifest) -> Descriptor:
        """The one image of ``index`` for the (single) wanted platform."""
        for child in index.children:
            if child.platform is not None and child.platform.matches(self.platforms[0]):
                return child
        self._only_platforms(index)  # raises, naming the platforms the index has
        raise AssertionError("unreachable")

    def _only_platforms(self, index: Manifest) -> Manifest:
        """The index cut down to the wanted platforms (and their attestations).

        A registry like distribution refuses an index whose children are missing, so the
        target gets a new index; its annotations say which source digest it came from.
        """
        keep = platform_children(index, self.platforms)
        if not keep:
            offered = sorted({str(c.platform) for c in index.children if c.platform})
            raise MirrorError(
                f"index {index.digest} has none of the platforms "
                f"{', '.join(map(str, self.platforms))} (it has: {', '.join(offered) or 'none'})"
            )
        return filter_index(
            index,
            keep,
            {
                SOURCE_DIGEST_ANNOTATION: index.digest,
                PLATFORMS_ANNOTATION: self._platforms_key,
                REFERRERS_ANNOTATION: REFERRERS_NOTE,
            },
        )

    async def _compare(
        self,
        source_repo: str,
        reference: str,
        target_repo: str,
        target_reference: str,
        *,
        immutable: bool,
        absent: bool = False,
    ) -> tuple[Digest, Digest | None]:
        """Step 1: the source's digest for ``reference``, and the digest the target has under
        ``target_reference`` (None: nothing). HEADs only, unless the source sends no digest."""
        if ":" in reference:
            # A digest names immutable content: if the target has it, there is nothing to do.
            digest = Digest.parse(reference)
            if target_reference == reference:
                present = await self._target_has_manifest(target_repo, digest)
                return digest, digest if present else None
            head = await self.target.head_manifest(target_repo, target_reference)
            return digest, head.digest if head is not None else None
        if absent:
            target_head = None
            source_head = await self.source.head_manifest(source_repo, reference)
        elif immutable:
            target_head = await self.target.head_manifest(target_repo, target_reference)
            if target_head is not None and target_head.digest is not None:
                self.head_types[target_head.digest] = target_head.media_type
                return target_head.digest, target_head.digest
            source_head = await self.source.head_manifest(source_repo, reference)
        else:
            source_head, target_head = await asyncio.gather(
                self.source.head_manifest(source_repo, reference),
                self.target.head_manifest(target_repo, target_reference),
            )
        if source_head is None:
            raise NotFound(
                f"registry {self.source.name}: {source_repo}:{reference} does not exist",
                method="HEAD",
                status=404,
            )
        if source_head.media_type in DOCKER_SCHEMA1:
            # Told by the HEAD, which is no pull: the GET would be one, every run, for nothing.
            raise Unsupported(
                f"{source_repo}:{reference} is a Docker schema 1 manifest "
                f"({source_head.media_type}); mirror copies Docker schema 2 and OCI manifests "
                "only (converting would change the digest): not copied, not pulled"
            )
        if source_head.digest is None:  # registry sent no Docker-Content-Digest: GET tells
            digest = (await self._get_source(source_repo, reference)).digest
        else:
            digest = source_head.digest
        self.head_types[digest] = source_head.media_type
        return digest, target_head.digest if target_head is not None else None

    def _pulled_or_pulling(self, source_repo: str, digest: Digest) -> bool:
        """Whether this run already has (or is getting) the manifest: no pull for this tag."""
        return digest in self._fetched or (source_repo, digest) in self._manifests

    async def _manifest(
        self, source_repo: str, digest: Digest, *, granted: bool = False
    ) -> Manifest:
        """A manifest by digest, read at most once per run from the source."""
        if digest in self._fetched:
            return self._fetched[digest]
        key = (source_repo, digest)
        return await once(self._manifests, key, self._get_source, source_repo, digest, granted)

    async def _get_source(self, repo: str, reference: str, granted: bool = False) -> Manifest:
        """GET a manifest upstream: a pull, on Docker Hub, so it asks the pull budget first
        (unless the caller already has), and a pull-limit 429 defers rather than fails."""
        if not granted:
            self._take_pulls(1, f"{repo}:{reference}")
        try:
            self.report.upstream_manifest_gets += 1
            manifest = await self.source.get_manifest(repo, reference)
        except RateLimited as exc:
            if exc.pull_limit:
                raise QuotaExhausted(
                    f"registry {self.source.name}: pull limit reached; deferred until the "
                    f"window frees ({self.source.budget.describe()})"
                ) from None
            raise
        finally:
            if not granted:
                self.source.budget.settle(1)
        self._fetched[manifest.digest] = manifest
        return manifest

    def _take_pulls(self, pulls: int, what: str) -> None:
        if pulls and not self.source.budget.take(pulls):
            raise QuotaExhausted(
                f"registry {self.source.name}: pulling {what} ({pulls}) would go past the "
                f"pull budget ({self.source.budget.describe()}); deferred"
            )

    async def source_manifest(self, repo: str, digest: Digest) -> Manifest:
        """A manifest read from the source by digest, once per run, charged to the budget."""
        return await self._manifest(repo, digest)

    async def target_manifest(self, repo: str, digest: Digest) -> Manifest:
        """A manifest the target holds, read from it (never a pull), once per run."""
        return await self._manifest_from_target(repo, digest)

    async def on_target(self, repo: str, digest: Digest) -> bool:
        """Whether the target's ``repo`` holds manifest ``digest`` (asked once per run)."""
        return await self._target_has_manifest(repo, digest)

    async def _manifest_from_target(self, repo: str, digest: Digest) -> Manifest:
        if digest in self._fetched:
            return self._fetched[digest]
        manifest = await self.target.get_manifest(repo, digest)
        self._fetched[digest] = manifest
        return manifest

    async def _target_has_manifest(self, repo: str, digest: Digest) -> bool:
        async def head() -> bool:
            return await self.target.head_manifest(repo, digest) is not None

        return await once(self.state.manifest_present, (repo, digest), head)

    async def _blob_exists(self, repo: str, digest: Digest) -> bool:
        async def head() -> bool:
            exists = await self.target.blob_exists(repo, digest)
            if exists:
                self.state.blob_homes.setdefault(digest, repo)
                self.report.blobs_present += 1
            return exists

        return await once(self.state.blob_present, (repo, digest), head)
