"""What a run of copies did: one ``TagResult`` per tag and the ``CopyReport`` that counts them.

Owns the result vocabulary (copied, skipped, failed, planned, deferred, unsupported), told
apart for tags and for the referrers (signatures, attestations) carried with them, and the
progress callbacks a display receives. Plain data: no I/O, and no opinion on how it is
shown (the CLI prints it, the daemon logs and counts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mirror.reference import Digest

# unsupported: left on purpose (Docker schema 1, foreign layers the target refuses), not failed.
TagStatus = Literal["copied", "skipped", "failed", "planned", "deferred", "unsupported"]


class Progress(Protocol):
    """Receives transfer progress; the CLI draws bars with it, the daemon passes nothing."""

    def blob_started(self, digest: Digest, size: int) -> None: ...
    def blob_advanced(self, digest: Digest, nbytes: int) -> None: ...
    def blob_finished(self, digest: Digest) -> None: ...


def display(registry: str, repository: str, reference: str) -> str:
    """How results name what they copied: ``registry/repository:tag`` or ``...@digest``."""
    separator = "@" if ":" in reference else ":"
    return f"{registry}/{repository}{separator}{reference}"


@dataclass(slots=True)
class TagResult:
    """What happened to one tag (or digest): its action, digest, and what moved for it."""

    source: str
    target: str
    status: TagStatus
    digest: str | None = None
    source_digest: str | None = None  # set when the target got a new (platform-filtered) index
    blobs_missing: int = 0
    bytes_missing: int = 0
    manifests_missing: int = 0
    pulls: int = 0  # upstream manifest GETs this tag cost (or, in a dry run, will cost)
    previous: str | None = None  # the target tag's digest before this run (None: no such tag)
    backup: str | None = None  # the tag the previous digest was kept under before it moved
    error: str | None = None  # why it failed, or why it was deferred
    # Where it went, as values (``target`` is for people): registry, repository, and the tag
    # (None when the target reference is a digest, or nothing was copied: a listing failed).
    target_registry: str | None = None
    target_repository: str | None = None
    target_tag: str | None = None
    referrer_of: str | None = None  # a signature, attestation or referrer: the digest it describes
    note: str | None = None  # what a reader should know of how it was carried


@dataclass(slots=True)
class CopyReport:
    """Counts for a run of copies; ``dry_run`` means counts are of what *would* move."""

    dry_run: bool = False
    tags_checked: int = 0
    tags_copied: int = 0
    tags_skipped: int = 0
    tags_failed: int = 0
    tags_deferred: int = 0
    tags_unsupported: int = 0
    manifests_pushed: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    bytes_resumed: int = 0  # of bytes_copied, held by upload sessions an earlier process left
    upstream_manifest_gets: int = 0
    # Signatures, attestations and referrers carried with what they describe (not tags: no
    # tag rule applies to them), by the same results.
    referrers_copied: int = 0
    referrers_skipped: int = 0
    referrers_failed: int = 0
    referrers_deferred: int = 0
    tags: list[TagResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Tags and referrers that failed: a run with any is not a success."""
        return self.tags_failed + self.referrers_failed

    @property
    def deferred(self) -> int:
        """Tags and referrers left for a later run to spare the pull limit."""
        return self.tags_deferred + self.referrers_deferred

    def add(self, result: TagResult) -> None:
        self.tags.append(result)
        if result.referrer_of is not None:
            if result.status in ("copied", "planned"):
                self.referrers_copied += 1
            elif result.status in ("skipped", "unsupported"):
                self.referrers_skipped += 1
            elif result.status == "failed":
                self.referrers_failed += 1
            else:
                self.referrers_deferred += 1
            return
        self.tags_checked += 1
        if result.status == "failed":
            self.tags_failed += 1
        elif result.status == "deferred":
            self.tags_deferred += 1
        elif result.status == "skipped":
            self.tags_skipped += 1
        elif result.status == "unsupported":
            self.tags_unsupported += 1
        else:
            self.tags_copied += 1

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__ if name != "tags"}
        data["tags"] = [{name: getattr(t, name) for name in TagResult.__slots__} for t in self.tags]
        return data
