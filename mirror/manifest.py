"""Manifests and descriptors: media types, what a manifest refers to, raw bytes kept intact.

Owns the four media types mirror copies and reading the references out of a manifest (child
manifests of an index; config and layer blobs of an image). Never re-serialises a manifest:
its digest is the sha256 of the exact bytes the registry served, so those bytes are what we push.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mirror.errors import DigestMismatch, InvalidReference, ManifestError
from mirror.reference import Digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES

# Without every one of these a registry may down-convert to schema1, and the digest changes.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # same cap as distribution's manifest handler

# Layers that live outside the registry (Windows base layers): a registry does not serve them.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


# BuildKit lists provenance/SBOM attestations in an index as unknown/unknown entries.
ATTESTATION_TYPE_KEY = "vnd.docker.reference.type"
ATTESTATION_TYPE = "attestation-manifest"
ATTESTATION_SUBJECT_KEY = "vnd.docker.reference.digest"
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")


@dataclass(frozen=True, slots=True)
class Platform:
    """Where an image of an index runs: ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/amd64`` or ``linux/arm64/v8``; ManifestError naming the text otherwise."""
        if _PLATFORM.fullmatch(text) is None:
            raise ManifestError(f"bad platform {text!r}: write it as os/arch or os/arch/variant")
        os_, architecture, *variant = text.split("/")
        return cls(os_, architecture, variant[0] if variant else None)

    def matches(self, wanted: Platform) -> bool:
        """Whether this image is what ``wanted`` asks for (no variant asked: any variant)."""
        return (self.os, self.architecture) == (wanted.os, wanted.architecture) and (
            wanted.variant is None or wanted.variant == self.variant
        )

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A pointer to content: media type, digest and size (distribution's descriptor)."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    artifact_type: str | None = None  # OCI 1.1: what kind of artifact it points at

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def as_dict(self) -> dict[str, Any]:
        """The descriptor as the OCI JSON it is written in (for an index mirror writes)."""
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            data["artifactType"] = self.artifact_type
        if self.platform is not None:
            data["platform"] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                data["platform"]["variant"] = self.platform.variant
        if self.urls:
            data["urls"] = list(self.urls)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data

    @property
    def attests(self) -> Digest | None:
        """For a BuildKit attestation entry (``unknown/unknown``), the image it describes."""
        if self.annotation(ATTESTATION_TYPE_KEY) != ATTESTATION_TYPE:
            return None
        subject = self.annotation(ATTESTATION_SUBJECT_KEY)
        return Digest(subject) if subject else None

    @property
    def is_foreign(self) -> bool:
        """True for layers that must be fetched from their URLs, not from the registry."""
        return bool(self.urls) or self.media_type in FOREIGN_LAYER_TYPES


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as served: its raw bytes, media type and digest, and what it refers to.

    ``children`` are the manifests an index lists; ``blobs`` are the config and layers of an
    image manifest (foreign layers left out: the registry holds no copy of them, and
    ``foreign_layers`` counts them). ``subject`` is the manifest this one refers to (OCI 1.1:
    a signature, an SBOM), ``artifact_type`` what kind of artifact it is (its
    ``artifactType``, else its config's media type, as the referrers API reports it).
    """

    raw: bytes = field(repr=False)
    media_type: str
    digest: Digest
    children: tuple[Descriptor, ...] = ()
    blobs: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    foreign_layers: int = 0

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def size(self) -> int:
        return len(self.raw)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    def annotation(self, key: str) -> str | None:
        """A top-level annotation of the manifest, read from its bytes."""
        annotations = json.loads(self.raw).get("annotations") if self.raw else None
        value = annotations.get(key) if isinstance(annotations, dict) else None
        return value if isinstance(value, str) else None


def platform_children(index: Manifest, platforms: Sequence[Platform]) -> set[Digest]:
    """The digests of ``index``'s images for ``platforms`` and of the attestations of those
    images (none when no image matches)."""
    keep = {
        c.digest
        for c in index.children
        if c.platform is not None and any(c.platform.matches(p) for p in platforms)
    }
    return keep | {c.digest for c in index.children if c.attests in keep}


def filter_index(index: Manifest, keep: set[Digest], annotations: dict[str, str]) -> Manifest:
    """A new index listing only the children in ``keep``, with ``annotations`` added.

    Each kept entry is copied verbatim; only the list shrinks. The result has a new digest:
    the caller records where it came from in ``annotations``.
    """
    document = json.loads(index.raw)
    document["manifests"] = [m for m in document["manifests"] if m.get("digest") in keep]
    document["annotations"] = {**(document.get("annotations") or {}), **annotations}
    raw = json.dumps(document, indent=3).encode()
    return parse_manifest(raw, index.media_type)


def parse_manifest(
    raw: bytes, content_type: str | None, expected: Digest | None = None
) -> Manifest:
    """Read a manifest from the exact bytes a registry served.

    The media type comes from the manifest's own ``mediaType`` field when present, else from the
    Content-Type header, else from its shape (OCI manifests may omit the field). When
    ``expected`` is given, the bytes must hash to it or DigestMismatch is raised.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte cap")
    digest = Digest.of(raw) if expected is None else _digest_with(expected, raw)
    if expected is not None and digest != expected:
        raise DigestMismatch(f"manifest {expected}", expected, digest)
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"manifest {digest} is not a JSON object")

    media_type = _media_type(document, content_type, digest)
    declared_type = document.get("artifactType")
    try:
        subject = _descriptor(document["subject"]) if document.get("subject") else None
        if media_type in INDEX_TYPES:
            children = tuple(_descriptor(d) for d in _list(document, "manifests"))
            return Manifest(
                raw,
                media_type,
                digest,
                children=children,
                subject=subject,
                artifact_type=str(declared_type) if declared_type else None,
            )
        blobs = [_descriptor(document.get("config"))]
        blobs += [_descriptor(d) for d in _list(document, "layers")]
    except (KeyError, TypeError, ValueError, InvalidReference) as exc:
        raise ManifestError(f"manifest {digest} has a malformed descriptor: {exc}") from None
    return Manifest(
        raw,
        media_type,
        digest,
        blobs=tuple(b for b in blobs if not b.is_foreign),
        subject=subject,
        artifact_type=str(declared_type) if declared_type else blobs[0].media_type,
        foreign_layers=sum(1 for b in blobs if b.is_foreign),
    )


def _media_type(document: dict[str, Any], content_type: str | None, digest: Digest) -> str:
    declared = document.get("mediaType")
    header = (content_type or "").split(";")[0].strip()
    for candidate in (declared, header):
        if candidate in MANIFEST_TYPES:
            return str(candidate)
        if candidate in DOCKER_SCHEMA1:
            raise ManifestError(f"manifest {digest} is Docker schema 1, which mirror does not copy")
    if declared is None and document.get("schemaVersion") == 2:
        # OCI allows omitting mediaType; tell index from image by shape.
        if "manifests" in document:
            return OCI_INDEX
        if "config" in document:
            return OCI_MANIFEST
    raise ManifestError(
        f"manifest {digest} has unsupported media type {declared or header or 'unknown'!r}"
    )


def _list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{key!r} is not a list")
    return value


def _descriptor(data: Any) -> Descriptor:
    if not isinstance(data, dict):
        raise ValueError(f"a descriptor is a JSON object, not {type(data).__name__}")
    platform = None
    if isinstance(data.get("platform"), dict):
        p = data["platform"]
        platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")), p.get("variant"))
    size = data["size"]
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad size {size!r}")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ValueError("annotations is not a JSON object")
    artifact_type = data.get("artifactType")
    return Descriptor(
        media_type=str(data.get("mediaType", "")),
        digest=Digest.parse(data["digest"]),
        size=size,
        platform=platform,
        urls=tuple(data.get("urls") or ()),
        annotations=tuple((str(k), str(v)) for k, v in annotations.items()),
        artifact_type=str(artifact_type) if artifact_type else None,
    )


def _digest_with(expected: Digest, data: bytes) -> Digest:
    hasher = expected.hasher()
    hasher.update(data)
    return Digest(f"{expected.algorithm}:{hasher.hexdigest()}")
