"""The seam between the copy engine and where images live: the ``Store`` interface.

Owns the verbs the engine needs of a source or a target (HEAD/GET/PUT a manifest, ask for, read,
upload or mount a blob, list tags, list a manifest's referrers; and prune's DELETE of a
manifest) and the small values they
return. ``mirror.registry`` implements it over the distribution API; another store (an OCI
image layout on disk) only has to implement these to be copied from and to. Declares,
implements nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mirror.manifest import Descriptor, Manifest
from mirror.quota import PullBudget
from mirror.reference import Digest


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a manifest HEAD tells: digest, media type and size, without counting as a pull."""

    digest: Digest | None
    media_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class MountResult:
    """The outcome of a mount attempt: mounted (201), or an upload session to use instead (202)."""

    mounted: bool
    upload_url: str | None = None


class Store(Protocol):
    """Where manifests and blobs are read from or written to, repository by repository.

    Every method raises a ``mirror.errors.MirrorError`` on failure. ``budget`` is the pull
    budget reads of manifests are charged to (unlimited where nothing counts them).
    """

    @property
    def name(self) -> str:
        """How the store is named in messages and results (``docker.io``, ``oci:/media``)."""
        ...

    @property
    def budget(self) -> PullBudget: ...

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """A manifest's digest by tag or digest; None when there is none. Never a pull."""
        ...

    async def get_manifest(
        self, repository: str, reference: str, *, expected: Digest | None = None
    ) -> Manifest:
        """A manifest's exact bytes, checked against the digest they were asked by."""
        ...

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> Digest:
        """Store a manifest's original bytes under a tag or its digest."""
        ...

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Delete a manifest by digest, with every tag on it; False when it was not there."""
        ...

    async def blob_exists(self, repository: str, digest: Digest) -> bool: ...

    def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """A blob's bytes from ``offset`` on, as chunks; a break mid-way raises Unavailable
        after yielding every byte that came."""
        ...

    async def mount_blob(self, repository: str, digest: Digest, source: str) -> MountResult:
        """Link a blob from another repository of the same store, where it offers that."""
        ...

    async def upload_blob(
        self,
        repository: str,
        digest: Digest,
        size: int,
        chunks: AsyncIterable[bytes],
        *,
        upload_url: str | None = None,
    ) -> None:
        """Store a blob from ``chunks`` in one go; its digest is checked before it is kept."""
        ...

    async def start_upload(self, repository: str) -> str:
        """Open an upload session that can take a blob in pieces; return its handle."""
        ...

    async def append_upload(
        self, upload_url: str, chunks: AsyncIterable[bytes], *, held: int = 0
    ) -> tuple[str, int]:
        """Add ``chunks`` to a session holding ``held`` bytes; the next handle and the bytes
        it now holds. The chunks may end early: what arrived is kept."""
        ...

    async def upload_status(self, upload_url: str) -> tuple[str, int] | None:
        """Where a session opened earlier (perhaps by another process) stands: its next handle
        and the bytes it holds; None when the store no longer knows it (start again)."""
        ...

    async def finish_upload(self, upload_url: str, digest: Digest) -> None:
        """Commit a session's bytes as blob ``digest`` (checked before it is kept)."""
        ...

    async def cancel_upload(self, upload_url: str) -> None:
        """Abandon a session (best effort)."""
        ...

    async def list_tags(self, repository: str) -> list[str]: ...

    async def list_referrers(self, repository: str, digest: Digest) -> list[Descriptor] | None:
        """What refers to manifest ``digest`` (the OCI 1.1 referrers API), each with its
        ``artifact_type``; None when the store does not offer that API (a store without one
        can always return None: referrers are then found by tag)."""
        ...
