"""Crossing an air gap with a delta bundle: the inside registry's inventory, and the check,
before an import moves any tag, that everything its tags need is in the bundle or inside.

Owns walking tags to the manifests and blobs they need, on any ``Store``. Moves nothing and
writes no file: the formats are ``mirror.bundle``'s, the layouts ``mirror.layout``'s, and
the import itself is an ordinary copy once this check says yes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from mirror.bundle import Holdings, Inventory
from mirror.errors import MirrorError, NotFound
from mirror.layout import Layout
from mirror.manifest import Descriptor, Manifest, Platform, platform_children
from mirror.plan import SOURCE_DIGEST_ANNOTATION
from mirror.reference import Digest, Reference
from mirror.report import display
from mirror.selection import TagRules, select
from mirror.store import Store

IN_FLIGHT = 8  # requests at once while walking a registry or a bundle


async def take_inventory(store: Store, repositories: Sequence[str]) -> Inventory:
    """The tags, manifests and blobs each of ``repositories`` holds in ``store`` (a
    repository that does not exist holds nothing). Reads manifests; writes nothing."""
    inventory = Inventory(store.name)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def repository(name: str) -> None:
        holdings = Holdings()
        try:
            tags = await store.list_tags(name)
        except NotFound:
            tags = []

        async def walk(digest: Digest) -> None:
            if digest in holdings.manifests:
                return
            holdings.manifests.add(digest)
            async with slots:
                manifest = await store.get_manifest(name, digest)
            holdings.blobs.update(b.digest for b in manifest.blobs)
            if manifest.is_index and manifest.annotation(SOURCE_DIGEST_ANNOTATION):
                with contextlib.suppress(UnicodeDecodeError):  # JSON text is UTF-8 in practice
                    holdings.indexes[digest] = manifest.raw.decode()
            await asyncio.gather(*(walk(c.digest) for c in manifest.children))

        async def tag(tag: str) -> None:
            async with slots:
                head = await store.head_manifest(name, tag)
                digest = head.digest if head is not None else None
                if head is not None and digest is None:  # no Docker-Content-Digest: GET tells
                    digest = (await store.get_manifest(name, tag)).digest
            if digest is not None:
                holdings.tags[tag] = digest
                await walk(digest)

        await asyncio.gather(*(tag(t) for t in tags))
        inventory.repositories[name] = holdings

    await asyncio.gather(*(repository(r) for r in repositories))
    return inventory


@dataclass(slots=True)
class ImportCheck:
    """What an import from a layout needs and cannot find (one line per missing blob or
    manifest), and the blobs to mount from other repositories of the target, as
    ``(repository, digest)``."""

    missing: list[str] = field(default_factory=list)
    mounts: list[tuple[str, Digest]] = field(default_factory=list)
    tags: int = 0


async def check_import(
    source: Layout,
    target: Store,
    requests: Sequence[tuple[Reference, Reference]],
    *,
    rules: TagRules | None = None,
    platforms: Sequence[Platform] = (),
) -> ImportCheck:
    """Whether every tag ``requests`` select (source reference, target repository) can be
    imported whole: each manifest and blob it needs is in the layout (blobs at their full
    size) or already in the target repository, or in the inside repository the bundle file
    says holds it. Tags the target already has are not looked into. HEADs only on the target.
    """
    bundle = await source.bundle()
    check = ImportCheck()
    slots = asyncio.Semaphore(IN_FLIGHT)
    seen: set[tuple[str, Digest]] = set()

    async def present(repo: str, digest: Digest) -> bool:
        async with slots:
            return await target.head_manifest(repo, digest) is not None

    async def manifest(src: str, dst: str, digest: Digest, label: str) -> None:
        if (dst, digest) in seen:
            return
        seen.add((dst, digest))
        if await present(dst, digest):
            return  # the target holds it, and so everything it refers to
        try:
            found: Manifest = await source.get_manifest(src, digest)
        except NotFound:
            check.missing.append(
                f"{label}: manifest {digest} is in neither the bundle nor {target.name}/{dst}"
            )
            return
        children = _wanted(found, platforms)
        await asyncio.gather(
            *(manifest(src, dst, c.digest, label) for c in children),
            *(blob(src, dst, b, label) for b in found.blobs),
        )

    async def blob(src: str, dst: str, descriptor: Descriptor, label: str) -> None:
        digest = descriptor.digest
        if (dst, digest) in seen:
            return
        seen.add((dst, digest))
        size = await source.blob_size(src, digest)
        if size == descriptor.size:
            return
        async with slots:
            if await target.blob_exists(dst, digest):
                return
        homes = [h for h in (bundle.homes(dst, digest) if bundle else []) if h != dst]
        for home in homes:
            async with slots:
                if await target.blob_exists(home, digest):
                    check.mounts.append((home, digest))
                    return
        if size is not None:
            why = f"is cut short in the bundle ({size} of {descriptor.size} bytes)"
        else:
            why = f"is in neither the bundle nor {target.name}/{dst}"
            why += f" (nor in {', '.join(homes)}, where the bundle expected it)" if homes else ""
        check.missing.append(f"{label}: blob {digest} ({descriptor.size} bytes) {why}")

    async def tag(src: str, reference: str, dst: str, dst_reference: str) -> None:
        label = display(source.name, src, reference)
        async with slots:
            head = await source.head_manifest(src, reference)
            there = await target.head_manifest(dst, dst_reference)
        check.tags += 1
        if head is None or head.digest is None:
            return  # not in the layout: the copy itself says so
        if there is None or there.digest != head.digest:
            await manifest(src, dst, head.digest, label)

    jobs = []
    for source_ref, target_ref in requests:
        src, dst = source_ref.repository, target_ref.repository
        if source_ref.digest is not None:
            jobs.append(tag(src, source_ref.digest, dst, source_ref.tag or source_ref.digest))
            continue
        if source_ref.tag is not None:
            tags = [source_ref.tag]
        else:
            try:
                tags = select(await source.list_tags(src), rules or TagRules()).tags
            except MirrorError:
                continue  # the copy reports a repository it cannot list
        jobs.extend(tag(src, t, dst, t) for t in tags)
    await asyncio.gather(*jobs)
    check.missing.sort()
    return check


def _wanted(manifest: Manifest, platforms: Sequence[Platform]) -> list[Descriptor]:
    """The children of an index an import with ``platforms`` copies (all, without any)."""
    if not platforms:
        return list(manifest.children)
    keep = platform_children(manifest, platforms)
    return [c for c in manifest.children if c.digest in keep]
