"""Test images: built in Python, pushed and checked over the plain registry API.

This module owns three things, all independent of the code under test:

* **building** images: real gzip'd tar layers holding one random file
  (deterministic for a given seed), real image configs (``rootfs.diff_ids`` are the
  sha256 of the uncompressed tars), and Docker v2 / OCI manifests, Docker manifest
  lists and OCI indexes.  Manifest bytes are kept exactly as built (3-space
  indented JSON, like Docker's), so a copier that re-serialises them changes the
  digest and gets caught;
* **pushing** them with plain httpx (``Pusher``): blob upload (POST, then PUT to the
  Location with ``digest=``), children of an index by digest, then the manifest;
* **checking** a repository independently after mirroring (``verify_repository``),
  plus small read helpers (``list_tags``, ``manifest_digest``, ``get_manifest``).

Auth is a ``TokenGetter`` callback ``(scopes) -> bearer token``; ``None`` means the
registry needs no auth.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import secrets
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote, urljoin

import httpx

from tests.support.registry import http_client

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

Kind = Literal["docker", "oci"]
Seed = int | str | None
TokenGetter = Callable[[list[str]], str]

_MEDIA_TYPES: dict[Kind, tuple[str, str, str, str]] = {
    # kind: (image manifest, index, config, layer)
    "docker": (DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER),
    "oci": (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER),
}


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- building --------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Blob content; ``diff_id`` is set for layers (sha256 of the uncompressed tar)."""

    data: bytes = field(repr=False)
    digest: str
    diff_id: str | None = None

    @classmethod
    def of(cls, data: bytes, diff_id: str | None = None) -> Blob:
        return cls(data=data, digest=sha256_digest(data), diff_id=diff_id)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
DEFAULT_PLATFORMS: tuple[Platform, ...] = (AMD64, ARM64)


@dataclass(frozen=True)
class Image:
    """A manifest (image manifest or index) with everything it references.

    ``raw`` is the exact manifest bytes; ``digest`` is their sha256.  For an image
    manifest ``config``/``layers`` are set; for an index ``children`` are (in the
    order of its ``manifests`` list).
    """

    media_type: str
    raw: bytes = field(repr=False)
    digest: str
    config: Blob | None = None
    layers: tuple[Blob, ...] = ()
    children: tuple[Image, ...] = ()
    platform: Platform | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """This manifest's own blobs: config first, then layers (empty for an index)."""
        return ((self.config,) if self.config else ()) + self.layers

    @property
    def blob_digests(self) -> list[str]:
        return [b.digest for b in self.blobs]

    @property
    def blob_sizes(self) -> dict[str, int]:
        return {b.digest: b.size for b in self.blobs}

    def all_blobs(self) -> dict[str, Blob]:
        """Every blob of this manifest and its children, by digest (deduplicated)."""
        found: dict[str, Blob] = {}
        for manifest in self.all_manifests():
            for blob in manifest.blobs:
                found.setdefault(blob.digest, blob)
        return found

    def all_manifests(self) -> list[Image]:
        """This manifest followed by its children (depth first)."""
        out: list[Image] = [self]
        for child in self.children:
            out.extend(child.all_manifests())
        return out

    def descriptor(self) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.platform is not None:
            desc["platform"] = self.platform.as_dict()
        return desc

    @property
    def document(self) -> dict[str, Any]:
        """The manifest parsed as JSON."""
        value: dict[str, Any] = json.loads(self.raw)
        return value


def _seed(seed: Seed) -> int | str:
    return secrets.token_hex(8) if seed is None else seed


def _serialize(document: Mapping[str, Any]) -> bytes:
    # Docker indents manifests with three spaces; keep that (non-canonical) shape.
    return json.dumps(document, indent=3).encode()


def make_layer(size: int = 4096, *, seed: Seed = None, filename: str | None = None) -> Blob:
    """A gzip'd tar holding one file of ``size`` random bytes (same seed, same bytes)."""
    rng = random.Random(f"layer:{_seed(seed)}")
    content = rng.randbytes(size)
    info = tarfile.TarInfo(filename or f"data-{rng.getrandbits(32):08x}.bin")
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = tar_buffer.getvalue()
    return Blob.of(gzip.compress(tar_bytes, mtime=0), diff_id=sha256_digest(tar_bytes))


def make_config(
    layers: Sequence[Blob],
    *,
    platform: Platform = AMD64,
    labels: Mapping[str, str] | None = None,
    created: str = "2024-01-01T00:00:00Z",
) -> Blob:
    """A real image config for ``layers`` (``diff_ids`` from the layers)."""
    diff_ids = []
    for layer in layers:
        if layer.diff_id is None:
            raise ValueError(f"layer {layer.digest} has no diff_id")
        diff_ids.append(layer.diff_id)
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Labels": dict(labels)} if labels else {},
        "created": created,
        "history": [
            {"created": created, "created_by": f"tests.support.images layer {i}"}
            for i in range(len(layers))
        ],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if platform.variant:
        config["variant"] = platform.variant
    return Blob.of(_serialize(config))


def build_image(
    kind: Kind = "docker",
    *,
    layers: Sequence[Blob] | None = None,
    layer_count: int = 2,
    layer_size: int = 4096,
    seed: Seed = None,
    platform: Platform = AMD64,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """A Docker v2 (``kind="docker"``) or OCI image manifest with config and layers.

    Pass ``layers`` to reuse existing layer blobs (shared layers); otherwise
    ``layer_count`` random layers of ``layer_size`` bytes are made from ``seed``.
    """
    manifest_type, _index_type, config_type, layer_type = _MEDIA_TYPES[kind]
    base = _seed(seed)
    if layers is None:
        layers = [make_layer(layer_size, seed=f"{base}:{platform}:{i}") for i in range(layer_count)]
    config = make_config(layers, platform=platform, labels=labels)
    document = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": config.size, "digest": config.digest},
        "layers": [
            {"mediaType": layer_type, "size": layer.size, "digest": layer.digest}
            for layer in layers
        ],
    }
    raw = _serialize(document)
    return Image(
        media_type=manifest_type,
        raw=raw,
        digest=sha256_digest(raw),
        config=config,
        layers=tuple(layers),
        platform=platform,
    )


def build_index(
    kind: Kind = "oci",
    *,
    children: Sequence[Image] | None = None,
    platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
    layer_count: int = 1,
    layer_size: int = 4096,
    seed: Seed = None,
    shared_layers: Sequence[Blob] = (),
) -> Image:
    """A Docker manifest list (``kind="docker"``) or OCI index.

    Without ``children``, one image of the same kind is built per platform, each
    with ``shared_layers`` (if any) followed by its own ``layer_count`` layers.
    """
    _manifest_type, index_type, _config_type, _layer_type = _MEDIA_TYPES[kind]
    if children is None:
        base = _seed(seed)
        built = []
        for platform in platforms:
            own = [
                make_layer(layer_size, seed=f"{base}:{platform}:{i}") for i in range(layer_count)
            ]
            built.append(build_image(kind, layers=[*shared_layers, *own], platform=platform))
        children = built
    document = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [child.descriptor() for child in children],
    }
    raw = _serialize(document)
    return Image(
        media_type=index_type, raw=raw, digest=sha256_digest(raw), children=tuple(children)
    )


# -- talking to a registry ----------------------------------------------------------


class _RegistrySession:
    """An httpx client for one registry that adds bearer tokens per repository."""

    TOKEN_REUSE_S = 60.0

    def __init__(
        self, base_url: str, token_getter: TokenGetter | None, actions: str, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_getter = token_getter
        self.actions = actions
        self.client = http_client(timeout=timeout, follow_redirects=False)
        self._tokens: dict[str, tuple[str, float]] = {}

    def auth_headers(self, repo: str) -> dict[str, str]:
        if self.token_getter is None:
            return {}
        cached = self._tokens.get(repo)
        if cached is None or time.monotonic() - cached[1] > self.TOKEN_REUSE_S:
            cached = (self.token_getter([f"repository:{repo}:{self.actions}"]), time.monotonic())
            self._tokens[repo] = cached
        return {"Authorization": f"Bearer {cached[0]}"}

    def request(
        self,
        method: str,
        repo: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        full = url if url.startswith(("http://", "https://")) else urljoin(self.base_url, url)
        merged = {**self.auth_headers(repo), **(headers or {})}
        return self.client.request(
            method, full, headers=merged, content=content, follow_redirects=follow_redirects
        )

    def close(self) -> None:
        self.client.close()


def _fail(what: str, response: httpx.Response) -> AssertionError:
    return AssertionError(
        f"{what}: {response.request.method} {response.request.url} -> "
        f"{response.status_code} {response.text[:500]}"
    )


class Pusher:
    """Pushes built images to one registry.

    ``token_getter`` is called with ``["repository:<repo>:pull,push"]`` and must
    return a bearer token (None: the registry needs no auth).
    """

    def __init__(
        self, base_url: str, token_getter: TokenGetter | None = None, *, timeout: float = 30.0
    ) -> None:
        self._session = _RegistrySession(base_url, token_getter, "pull,push", timeout)
        self.base_url = self._session.base_url

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self._session.request("HEAD", repo, f"/v2/{repo}/blobs/{digest}")
        return response.status_code == 200

    def push_blob(self, repo: str, blob: Blob, *, skip_existing: bool = True) -> None:
        """Upload ``blob`` (POST to start, PUT with ``digest=`` to finish)."""
        if skip_existing and self.blob_exists(repo, blob.digest):
            return
        started = self._session.request("POST", repo, f"/v2/{repo}/blobs/uploads/")
        if started.status_code != 202 or "location" not in started.headers:
            raise _fail(f"starting upload of {blob.digest} to {repo}", started)
        location = urljoin(f"{self.base_url}/v2/{repo}/blobs/uploads/", started.headers["location"])
        separator = "&" if "?" in location else "?"
        finished = self._session.request(
            "PUT",
            repo,
            f"{location}{separator}digest={quote(blob.digest, safe='')}",
            headers={"Content-Type": "application/octet-stream"},
            content=blob.data,
        )
        if finished.status_code != 201:
            raise _fail(f"finishing upload of {blob.digest} to {repo}", finished)
        if finished.headers.get("docker-content-digest", blob.digest) != blob.digest:
            raise _fail(f"registry computed another digest for {blob.digest}", finished)

    def push_manifest(self, repo: str, ref: str, image: Image) -> str:
        """PUT ``image.raw`` as ``repo:ref``; returns Docker-Content-Digest (checked)."""
        response = self._session.request(
            "PUT",
            repo,
            f"/v2/{repo}/manifests/{ref}",
            headers={"Content-Type": image.media_type},
            content=image.raw,
        )
        if response.status_code != 201:
            raise _fail(f"pushing manifest {repo}:{ref}", response)
        digest = str(response.headers.get("docker-content-digest", ""))
        if digest != image.digest:
            raise _fail(
                f"registry says {repo}:{ref} is {digest}, expected {image.digest}", response
            )
        return digest

    def push(self, repo: str, image: Image, *tags: str) -> Image:
        """Push blobs, then children by digest, then ``image`` under each tag.

        Without tags the manifest is pushed by digest only.
        """
        for blob in image.blobs:
            self.push_blob(repo, blob)
        for child in image.children:
            self.push(repo, child)
        for ref in tags or (image.digest,):
            self.push_manifest(repo, ref, image)
        return image

    def push_image(
        self, repo: str, tag: str = "latest", kind: Kind = "docker", **build: Any
    ) -> Image:
        """Build (see ``build_image``) and push a single-platform image."""
        return self.push(repo, build_image(kind, **build), tag)

    def push_index(self, repo: str, tag: str = "latest", kind: Kind = "oci", **build: Any) -> Image:
        """Build (see ``build_index``) and push a multi-platform index and its children."""
        return self.push(repo, build_index(kind, **build), tag)

    def delete_manifest(self, repo: str, digest: str) -> None:
        response = self._session.request("DELETE", repo, f"/v2/{repo}/manifests/{digest}")
        if response.status_code != 202:
            raise _fail(f"deleting {repo}@{digest}", response)


# -- reading / checking --------------------------------------------------------------


def _reader(base_url: str, token_getter: TokenGetter | None) -> _RegistrySession:
    return _RegistrySession(base_url, token_getter, "pull", timeout=30.0)


def _media_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip()


def get_manifest(
    base_url: str, repo: str, ref: str, token_getter: TokenGetter | None = None
) -> httpx.Response:
    """GET a manifest with the full Accept set (the raw response; any status)."""
    session = _reader(base_url, token_getter)
    try:
        return session.request(
            "GET", repo, f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
    finally:
        session.close()


def manifest_digest(
    base_url: str, repo: str, ref: str, token_getter: TokenGetter | None = None
) -> str | None:
    """Docker-Content-Digest of ``repo:ref`` from a HEAD (None if it does not exist)."""
    session = _reader(base_url, token_getter)
    try:
        response = session.request(
            "HEAD", repo, f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
    finally:
        session.close()
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _fail(f"HEAD {repo}:{ref}", response)
    return str(response.headers["docker-content-digest"])


_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def list_tags(
    base_url: str,
    repo: str,
    token_getter: TokenGetter | None = None,
    *,
    page_size: int | None = None,
) -> list[str]:
    """All tags of ``repo`` (following ``Link: <...>; rel="next"`` pages); [] if unknown."""
    session = _reader(base_url, token_getter)
    url = f"/v2/{repo}/tags/list" + (f"?n={page_size}" if page_size else "")
    tags: list[str] = []
    try:
        for _page in range(10_000):
            response = session.request("GET", repo, url)
            if response.status_code == 404:
                return tags
            if response.status_code != 200:
                raise _fail(f"listing tags of {repo}", response)
            tags.extend(response.json().get("tags") or [])
            match = _LINK_NEXT.search(response.headers.get("link", ""))
            if not match:
                return tags
            url = match.group(1)
        raise AssertionError(f"tag list of {repo} never ended")
    finally:
        session.close()


def _check_blob(session: _RegistrySession, repo: str, descriptor: Mapping[str, Any]) -> None:
    digest, size = descriptor["digest"], descriptor["size"]
    response = session.request("GET", repo, f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    if response.status_code != 200:
        raise _fail(f"blob {digest} of {repo} is not readable", response)
    actual = sha256_digest(response.content)
    if actual != digest:
        raise AssertionError(f"blob {repo}@{digest} has content with digest {actual}")
    if len(response.content) != size:
        raise AssertionError(
            f"blob {repo}@{digest} is {len(response.content)} bytes, manifest says {size}"
        )


def _check_manifest(
    session: _RegistrySession,
    repo: str,
    ref: str,
    expected: Mapping[str, Any] | None,
    seen_blobs: set[str],
) -> str:
    response = session.request(
        "GET", repo, f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
    )
    if response.status_code != 200:
        raise _fail(f"manifest {repo}:{ref} is not readable", response)
    raw = response.content
    digest = sha256_digest(raw)
    header_digest = response.headers.get("docker-content-digest")
    if header_digest != digest:
        raise AssertionError(
            f"{repo}:{ref}: Docker-Content-Digest {header_digest} but the bytes hash to {digest}"
        )
    try:
        document: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise AssertionError(f"{repo}:{ref}: manifest is not JSON: {raw[:200]!r}") from exc
    media_type = _media_type(response)
    declared = document.get("mediaType")
    if declared is not None and declared != media_type:
        raise AssertionError(
            f"{repo}:{ref}: served as {media_type} but its mediaType field is {declared}"
        )
    if expected is not None:
        if digest != expected["digest"]:
            raise AssertionError(f"{repo}@{expected['digest']} served bytes hashing to {digest}")
        if len(raw) != expected["size"]:
            raise AssertionError(
                f"{repo}@{digest} is {len(raw)} bytes, its index says {expected['size']}"
            )
        if expected.get("mediaType") and expected["mediaType"] != media_type:
            raise AssertionError(
                f"{repo}@{digest} served as {media_type}, its index says {expected['mediaType']}"
            )
    if media_type in INDEX_TYPES:
        children = document.get("manifests") or []
        if not children:
            raise AssertionError(f"{repo}:{ref}: index has no manifests")
        for child in children:
            _check_manifest(session, repo, child["digest"], child, seen_blobs)
    elif media_type in IMAGE_TYPES:
        for descriptor in [document["config"], *document.get("layers", [])]:
            if descriptor["digest"] not in seen_blobs:
                _check_blob(session, repo, descriptor)
                seen_blobs.add(descriptor["digest"])
    else:
        raise AssertionError(f"{repo}:{ref}: unexpected manifest media type {media_type!r}")
    return digest


def verify_repository(
    base_url: str,
    repo: str,
    tag: str,
    token_getter: TokenGetter | None = None,
    *,
    expected_digest: str | None = None,
) -> str:
    """Check that ``repo:tag`` is complete and intact; return its digest.

    GETs the tag's manifest with the full Accept set, checks the bytes hash to
    Docker-Content-Digest (and ``expected_digest`` if given), walks an index's
    children (digest, size, media type), and GETs every blob checking sha256 and
    size.  Raises AssertionError describing the first problem.
    """
    session = _reader(base_url, token_getter)
    try:
        digest = _check_manifest(session, repo, tag, None, set())
    finally:
        session.close()
    if expected_digest is not None and digest != expected_digest:
        raise AssertionError(f"{repo}:{tag} is {digest}, expected {expected_digest}")
    return digest


def verify_same(
    source: tuple[str, TokenGetter | None],
    target: tuple[str, TokenGetter | None],
    repo: str,
    tags: Iterable[str],
    target_repo: str | None = None,
) -> None:
    """Each tag verifies in the target and has the same digest as in the source."""
    for tag in tags:
        want = manifest_digest(source[0], repo, tag, source[1])
        if want is None:
            raise AssertionError(f"{repo}:{tag} does not exist in the source {source[0]}")
        verify_repository(target[0], target_repo or repo, tag, target[1], expected_digest=want)
