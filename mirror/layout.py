"""A directory of OCI image layouts as a ``mirror.store.Store``: ``oci:DIR``, one layout per
repository (``DIR/diamol/golang/`` holding ``oci-layout``, ``index.json`` and
``blobs/sha256/…``), tags named by ``org.opencontainers.image.ref.name`` as skopeo and
regclient read them.

Owns the layout's rules as a target and a source: blobs written under a temporary name,
fsynced and renamed only once their digest checks out; ``index.json`` replaced atomically,
last, and one writer at a time per repository; a blob another repository of DIR holds linked,
not copied; nothing written when nothing changed. With an inventory of the inside registry
(``expect``) it stands in for that registry too, so a run writes only what the inside lacks,
and records what it relied on (``mirror.bundle``). The file mechanics are ``mirror.files``';
what to copy is the engine's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mirror.bundle import Bundle, Inventory
from mirror.errors import DigestMismatch, InvalidReference, LayoutError, NotFound
from mirror.files import BlobWriter, failure, link_or_copy, read_capped, read_chunks, write_atomic
from mirror.manifest import MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor, Manifest, parse_manifest
from mirror.quota import PullBudget, RateLimit
from mirror.reference import (
    BUNDLE_FILE,
    LAYOUT_FILE,
    LAYOUT_PREFIX,
    Digest,
    is_tag,
    layout_name,
    parse_repository,
)
from mirror.store import ManifestHead, MountResult

INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"  # image-spec's annotation for a tag
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
EMPTY_INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
MAX_INDEX_BYTES = 64 * 1024 * 1024  # 2,000 tags make about 0.5 MB
# What a run without an inventory leaves at DIR's top: it relies on nothing inside, and it
# tells ``oci:DIR/diamol/golang`` that its repository is diamol/golang, not golang.
PLAIN_BUNDLE = json.dumps(Bundle(None, None).as_json(), indent=1).encode()


class Layout:
    """The layouts under one directory, ``oci:DIR``; every repository is a layout of its own.

    Every method raises a ``MirrorError``: ``NotFound`` for what is not there, ``LayoutError``
    (naming the path) for a layout that cannot be read or written. Blocking file work runs in
    threads. One instance per directory per process keeps ``index.json`` writes in order.
    """

    def __init__(self, name: str) -> None:
        self.name = layout_name(name)
        self.root = Path(self.name.removeprefix(LAYOUT_PREFIX))
        self.budget = PullBudget()  # nothing counts pulls from a disk
        self.rate_limit: RateLimit | None = None
        self.have: Inventory | None = None
        self.expected: dict[str, dict[Digest, list[str]]] = {}  # repo -> blob -> inside homes
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._indexes: dict[str, tuple[tuple[int, int, int], list[dict[str, Any]]]] = {}
        self._ready: set[str] = set()
        self._repositories: list[str] | None = None
        self._uploads: dict[str, tuple[str, BlobWriter]] = {}

    # --- the inside registry's inventory (delta bundles) -------------------------------------

    def expect(self, inventory: Inventory) -> None:
        """Stand in for the registry ``inventory`` describes: its tags and blobs count as
        present, so only what it lacks is written. DIR must hold no layout yet, so that no
        old tag in it can move the inside's tags back on import."""
        found = self._scan_repositories()
        if found:
            raise LayoutError(
                f"{self.name}: a delta bundle needs an empty directory; it holds {found[0]}"
                + (f" and {len(found) - 1} more layouts" if len(found) > 1 else "")
            )
        self.have = inventory

    async def write_bundle(self) -> Bundle | None:
        """Write ``DIR/mirror-bundle.json`` (after a run with an inventory): what the layouts
        rely on finding inside. Written last, atomically."""
        if self.have is None:
            return None
        bundle = Bundle(self.have.registry, self.have.created, self.expected)
        data = json.dumps(bundle.as_json(), indent=1).encode()

        def write() -> None:
            self._make_dir(self.root)
            write_atomic(self.root / BUNDLE_FILE, data)

        await asyncio.to_thread(write)
        return bundle

    async def bundle(self) -> Bundle | None:
        """The bundle file at DIR's top, if a delta run left one."""
        path = self.root / BUNDLE_FILE
        raw = await asyncio.to_thread(read_capped, path, MAX_INDEX_BYTES)
        return None if raw is None else Bundle.from_json(raw, str(path))

    def _expected_inside(self, repository: str, digest: Digest) -> bool:
        homes = self.have.blob_homes(digest) if self.have is not None else []
        if homes:
            self.expected.setdefault(repository, {})[digest] = homes
        return bool(homes)

    # --- Store: reading ----------------------------------------------------------------------

    async def ping(self) -> None:
        """A DIR that exists must be a directory (one that does not is made at first write)."""
        if await asyncio.to_thread(lambda: self.root.exists() and not self.root.is_dir()):
            raise LayoutError(f"{self.name}: {self.root} is not a directory")

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """A manifest by tag (from ``index.json``) or by digest (its blob); None if absent."""
        if ":" in reference:
            digest = Digest.parse(reference)
            size = await asyncio.to_thread(_size, self._blob_path(repository, digest))
            return None if size is None else ManifestHead(digest, "", size)
        entry = _tagged(await self._index(repository) or [], reference)
        if entry is not None:
            return ManifestHead(Digest(entry["digest"]), entry.get("mediaType", ""), entry["size"])
        inside = self.have.tag(repository, reference) if self.have is not None else None
        return ManifestHead(inside, "", None) if inside is not None else None

    async def get_manifest(
        self, repository: str, reference: str, *, expected: Digest | None = None
    ) -> Manifest:
        """A manifest's exact bytes, checked against the digest that names them."""
        media_type = None
        if ":" in reference:
            digest = Digest.parse(reference)
        else:
            entry = _tagged(await self._index(repository) or [], reference)
            if entry is None:
                raise NotFound(f"{self.name}: {repository}:{reference} does not exist")
            digest, media_type = Digest(entry["digest"]), entry.get("mediaType")
        path = self._blob_path(repository, digest)
        raw = await asyncio.to_thread(read_capped, path, MAX_MANIFEST_BYTES)
        if raw is None and self.have is not None:
            raw = self.have.index(repository, digest)  # a filtered index inside: compared
        if raw is None:
            raise NotFound(f"{self.name}: manifest {digest} of {repository} is missing ({path})")
        try:
            return parse_manifest(raw, media_type, expected or digest)
        except DigestMismatch as exc:
            raise DigestMismatch(f"manifest {path}", exc.expected, exc.actual) from None

    async def blob_exists(self, repository: str, digest: Digest) -> bool:
        if await asyncio.to_thread(self._blob_path(repository, digest).is_file):
            return True
        return self._expected_inside(repository, digest)

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        """The size of the blob's file in the layout; None when it has none."""
        return await asyncio.to_thread(_size, self._blob_path(repository, digest))

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        path = self._blob_path(repository, digest)

        def open_file() -> Any:
            try:
                handle = open(path, "rb")  # noqa: SIM115 (closed below)
                handle.seek(offset)
                return handle
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise failure("read", path, exc) from None

        handle = await asyncio.to_thread(open_file)
        if handle is None:
            raise NotFound(f"{self.name}: blob {digest} of {repository} is missing ({path})")
        try:
            yield read_chunks(handle, path)
        finally:
            handle.close()

    async def list_tags(self, repository: str) -> list[str]:
        """The tags ``index.json`` names (and the inventory's, standing in for the inside)."""
        entries = await self._index(repository)
        inside = self.have.tags(repository) if self.have is not None else []
        if entries is None and not inside:
            raise NotFound(f"{self.name}: no layout {repository} ({self._dir(repository)})")
        tags = [tag for e in entries or [] if (tag := _tag_of(e)) is not None]
        return list(dict.fromkeys(tags + inside))

    async def list_referrers(self, repository: str, digest: Digest) -> list[Descriptor] | None:
        """None: a layout has no referrers API; its referrers travel as tags (tag schema)."""
        return None

    async def list_repositories(self, prefix: str = "") -> list[str]:
        """Every layout under DIR (a directory with an ``oci-layout`` file), by its path."""
        found = await asyncio.to_thread(self._scan_repositories, True)
        return [r for r in found if not prefix or r.startswith(prefix + "/")]

    # --- Store: writing ----------------------------------------------------------------------

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> Digest:
        """Store the manifest's bytes as a blob; for a tag, then point ``index.json`` at it."""
        async with self._locks[repository]:
            await self._prepare(repository)
            path = self._blob_path(repository, manifest.digest)
            if await asyncio.to_thread(_size, path) != manifest.size:
                await asyncio.to_thread(write_atomic, path, manifest.raw)
            if ":" not in reference:
                await self._tag(repository, reference, manifest)
        return manifest.digest

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Drop every ``index.json`` entry naming ``digest`` (its tags); the blobs stay, as a
        registry keeps them until garbage collection."""
        async with self._locks[repository]:
            entries = await self._index(repository)
            if entries is None:
                return False
            kept = [e for e in entries if e.get("digest") != str(digest)]
            if len(kept) == len(entries):
                return False
            await self._write_index(repository, kept)
        return True

    async def _write_index(self, repository: str, entries: list[dict[str, Any]]) -> None:
        path = self._dir(repository) / INDEX_FILE
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        await asyncio.to_thread(write_atomic, path, json.dumps(document, indent=1).encode())

    async def _tag(self, repository: str, tag: str, manifest: Manifest) -> None:
        entries = list(await self._index(repository) or [])
        entry = {
            "mediaType": manifest.media_type,
            "digest": str(manifest.digest),
            "size": manifest.size,
            "annotations": {REF_NAME: tag},
        }
        old = _tagged(entries, tag)
        if old is not None and all(old.get(k) == entry[k] for k in ("mediaType", "digest", "size")):
            return  # already so: write nothing
        await self._write_index(repository, [e for e in entries if _tag_of(e) != tag] + [entry])

    async def mount_blob(self, repository: str, digest: Digest, source: str) -> MountResult:
        """Link the blob from wherever DIR holds it (``source`` first): stored once. Without
        a copy in DIR, a blob the inventory says the inside holds counts as mounted."""
        target = self._blob_path(repository, digest)
        if await asyncio.to_thread(target.is_file):
            return MountResult(mounted=True)
        found = await asyncio.to_thread(self._find_blob, digest, source)
        if found is not None:
            await self._prepare(repository)
            await asyncio.to_thread(link_or_copy, found, target)
            return MountResult(mounted=True)
        return MountResult(mounted=self._expected_inside(repository, digest))

    async def upload_blob(
        self,
        repository: str,
        digest: Digest,
        size: int,
        chunks: AsyncIterable[bytes],
        *,
        upload_url: str | None = None,
    ) -> None:
        """Write a blob from ``chunks``; it takes its name only once size and digest match."""
        await self._prepare(repository)
        target = self._blob_path(repository, digest)
        found = await asyncio.to_thread(self._find_blob, digest, None)
        if found is not None:
            await asyncio.to_thread(link_or_copy, found, target)
            return
        writer = BlobWriter(target.parent)
        await writer.open()
        try:
            await writer.write(chunks)
            await writer.commit(target, digest, size)
        finally:
            writer.discard()

    async def start_upload(self, repository: str) -> str:
        await self._prepare(repository)
        writer = BlobWriter(self._dir(repository) / "blobs" / "sha256")
        await writer.open()
        handle = f"{self.name}#{writer.temp.name}"
        self._uploads[handle] = (repository, writer)
        return handle

    async def append_upload(
        self, upload_url: str, chunks: AsyncIterable[bytes], *, held: int = 0
    ) -> tuple[str, int]:
        _, writer = self._upload(upload_url)
        if writer.written != held:
            raise LayoutError(f"{writer.temp}: holds {writer.written} bytes, not {held}")
        await writer.write(chunks)
        return upload_url, writer.written

    async def upload_status(self, upload_url: str) -> tuple[str, int] | None:
        """A session of this process and its bytes; None for any other (a session's temporary
        file does not outlive its process: its hash state is gone, so the blob starts again)."""
        entry = self._uploads.get(upload_url)
        return None if entry is None else (upload_url, entry[1].written)

    async def finish_upload(self, upload_url: str, digest: Digest) -> None:
        repository, writer = self._upload(upload_url)
        del self._uploads[upload_url]
        try:
            await writer.commit(self._blob_path(repository, digest), digest)
        finally:
            writer.discard()

    async def cancel_upload(self, upload_url: str) -> None:
        entry = self._uploads.pop(upload_url, None)
        if entry is not None:
            entry[1].discard()

    async def aclose(self) -> None:
        for _, writer in self._uploads.values():
            writer.discard()
        self._uploads.clear()

    # --- plumbing ----------------------------------------------------------------------------

    def _dir(self, repository: str) -> Path:
        try:
            parse_repository(f"localhost/{repository}")  # no '..', no '/' doubled: stays in DIR
        except InvalidReference:
            raise LayoutError(f"{self.name}: {repository!r} is not a repository name") from None
        return self.root.joinpath(*repository.split("/"))

    def _blob_path(self, repository: str, digest: Digest) -> Path:
        return self._dir(repository) / "blobs" / digest.algorithm / digest.hex

    def _upload(self, handle: str) -> tuple[str, BlobWriter]:
        entry = self._uploads.get(handle)
        if entry is None:
            raise NotFound(f"{self.name}: no upload {handle}")
        return entry

    async def _index(self, repository: str) -> list[dict[str, Any]] | None:
        """``index.json``'s manifests (re-read only when the file changed); None: no layout."""
        return await asyncio.to_thread(self._read_index, repository)

    def _read_index(self, repository: str) -> list[dict[str, Any]] | None:
        directory = self._dir(repository)
        path = directory / INDEX_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            if (directory / LAYOUT_FILE).exists():
                raise LayoutError(f"{path} is missing (the layout has {LAYOUT_FILE})") from None
            return None
        except OSError as exc:
            raise failure("read", path, exc) from None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._indexes.get(repository)
        if cached is not None and cached[0] == key:
            return cached[1]
        entries = _parse_index(path, read_capped(path, MAX_INDEX_BYTES) or b"")
        self._indexes[repository] = (key, entries)
        return entries

    async def _prepare(self, repository: str) -> None:
        """Make the repository's layout (``index.json`` first, then ``oci-layout``: a
        directory with the marker always has an index) before its first write."""
        if repository in self._ready:
            return

        def make() -> None:
            directory = self._dir(repository)
            self._make_dir(directory / "blobs" / "sha256")
            if self.have is None and not (self.root / BUNDLE_FILE).exists():
                write_atomic(self.root / BUNDLE_FILE, PLAIN_BUNDLE)  # (with one: at the end)

            if not (directory / INDEX_FILE).exists():
                write_atomic(directory / INDEX_FILE, EMPTY_INDEX)
            if not (directory / LAYOUT_FILE).exists():
                write_atomic(directory / LAYOUT_FILE, LAYOUT_VERSION)
                if self._repositories is not None:
                    self._repositories.append(repository)

        await asyncio.to_thread(make)
        self._ready.add(repository)

    def _make_dir(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise failure("create", directory, exc) from None

    def _scan_repositories(self, must_exist: bool = False) -> list[str]:
        """Every directory under DIR with an ``oci-layout`` file (not inside ``blobs``)."""
        if not self.root.is_dir():
            if must_exist:
                raise LayoutError(f"{self.name}: {self.root} is not a directory")
            return []
        found = []
        for directory, subdirs, files in os.walk(self.root, onerror=None):
            subdirs[:] = sorted(d for d in subdirs if d != "blobs" and not d.startswith("."))
            if LAYOUT_FILE in files and directory != str(self.root):
                found.append(Path(directory).relative_to(self.root).as_posix())
        self._repositories = sorted(found)
        return list(self._repositories)

    def _find_blob(self, digest: Digest, first: str | None) -> Path | None:
        """A file of blob ``digest`` in any layout under DIR (``first`` looked at first)."""
        if self._repositories is None:
            self._scan_repositories()
        for repository in ([first] if first else []) + list(self._repositories or []):
            path = self._blob_path(repository, digest)
            if path.is_file():
                return path
        return None


def _parse_index(path: Path, raw: bytes) -> list[dict[str, Any]]:
    """``index.json``'s manifest descriptors; LayoutError naming the file when it is not one."""
    try:
        document = json.loads(raw)
        manifests = document["manifests"] if isinstance(document, dict) else None
        if not isinstance(manifests, list):
            raise ValueError('no "manifests" list')
        for entry in manifests:
            if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
                raise ValueError(f"bad descriptor {entry!r:.80}")
            Digest.parse(str(entry.get("digest")))
    except (ValueError, KeyError, UnicodeDecodeError, InvalidReference) as exc:
        raise LayoutError(f"{path} is not a valid OCI image index: {exc}") from None
    return manifests


def _tag_of(entry: dict[str, Any]) -> str | None:
    """The tag an ``index.json`` entry carries; None for none, or a name that is no tag."""
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) and is_tag(name) else None


def _tagged(entries: list[dict[str, Any]], tag: str) -> dict[str, Any] | None:
    """The entry ``tag`` names (the last, should a hand-edited index name it twice)."""
    return next((e for e in reversed(entries) if _tag_of(e) == tag), None)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise failure("read", path, exc) from None
