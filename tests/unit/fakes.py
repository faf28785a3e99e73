"""A small stateful registry behind a mock transport, and test images built in Python.

``FakeRegistry`` answers the distribution API verbs mirror uses (manifests, blobs, uploads with
cross-repository mounts, ``tags/list`` with ``n``/``last`` and ``Link`` pagination, optional
bearer-token auth and CDN redirects) from in-memory dicts, records every request it receives,
and lets a test inject faults. It checks what a real registry checks: an upload's digest and
length, and that everything a manifest refers to exists before the manifest is stored.

Its route parsing is written from the distribution spec (paths anchored at the end), never
borrowed from the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mirror.registry import Registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFEST_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST})

_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
_UPLOAD_START = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/?$")
_UPLOAD = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)$")
_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def accepted_types(headers: httpx.Headers) -> set[str]:
    """The media types named in an Accept header (parameters and q-values dropped)."""
    return {
        part.split(";")[0].strip() for part in headers.get("Accept", "").split(",") if part.strip()
    }


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A manifest exactly as pushed (3-space indented, like Docker's), plus what it refers to.

    ``blobs`` maps digest -> bytes for an image's config and layers; an index has none of its
    own but lists ``children``.
    """

    raw: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    children: tuple[Image, ...] = ()

    @property
    def digest(self) -> str:
        return sha256(self.raw)

    @property
    def all_blobs(self) -> dict[str, bytes]:
        found = dict(self.blobs)
        for child in self.children:
            found.update(child.all_blobs)
        return found

    @property
    def layer_digests(self) -> list[str]:
        return [d["digest"] for d in json.loads(self.raw).get("layers", [])]


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "size": len(data), "digest": sha256(data), **extra}


def make_image(
    seed: int,
    *,
    oci: bool = False,
    layer_sizes: tuple[int, ...] = (1500, 3000),
    platform: str = "linux/amd64",
    shared_layers: tuple[bytes, ...] = (),
) -> Image:
    """A single-platform image with random (seeded) layers and a real-looking config."""
    rng = random.Random(seed)
    layers = list(shared_layers) + [rng.randbytes(size) for size in layer_sizes]
    os_name, arch, *variant = platform.split("/")
    config_doc: dict[str, Any] = {
        "architecture": arch,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        "config": {"Env": [f"SEED={seed}"]},
    }
    if variant:
        config_doc["variant"] = variant[0]
    config = json.dumps(config_doc, indent=3).encode()
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": _descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config),
        "layers": [_descriptor(layer_type, layer) for layer in layers],
    }
    blobs = {sha256(config): config} | {sha256(layer): layer for layer in layers}
    return Image(json.dumps(document, indent=3).encode(), str(document["mediaType"]), blobs)


def make_index(
    seed: int,
    *,
    oci: bool = True,
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8"),
) -> Image:
    """A multi-platform index (OCI) or manifest list (Docker) over one image per platform."""
    children = tuple(
        make_image(seed * 1000 + i, oci=oci, platform=p) for i, p in enumerate(platforms)
    )
    entries = []
    for child, platform in zip(children, platforms, strict=True):
        os_name, arch, *variant = platform.split("/")
        plat: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            plat["variant"] = variant[0]
        entries.append(_descriptor(child.media_type, child.raw, platform=plat))
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if oci else DOCKER_LIST,
        "manifests": entries,
    }
    raw = json.dumps(document, indent=3).encode()
    return Image(raw, str(document["mediaType"]), children=children)


# --- the registry -----------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the fake saw it (body already read by MockTransport)."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes
    kind: str  # ping, manifest, blob, upload-start, upload, tags, token, cdn, unknown-host

    @property
    def host(self) -> str:
        return self.url.host

    @property
    def path(self) -> str:
        return self.url.path

    @property
    def params(self) -> httpx.QueryParams:
        return self.url.params

    @property
    def is_write(self) -> bool:
        return self.method in ("PUT", "POST", "PATCH", "DELETE")


Fault = Callable[[httpx.Request], "httpx.Response | None"]


def error_response(status: int, code: str, message: str = "", **headers: str) -> httpx.Response:
    body = {"errors": [{"code": code, "message": message or code.lower(), "detail": None}]}
    return httpx.Response(status, json=body, headers=headers)


@dataclass
class BrokenBody:
    """A request whose body stream raised before Content-Length bytes had arrived."""

    method: str
    url: httpx.URL
    received: int
    declared: int | None


class _ServerLikeTransport(httpx.AsyncBaseTransport):
    """Like ``httpx.MockTransport``, but reads a request body the way a server does.

    The body is read chunk by chunk and the request is handled the moment Content-Length
    bytes have arrived: that is when a registry commits an upload, whatever the client's
    stream does afterwards (it is still drained, as an HTTP client would). A stream that
    raises before then never reaches the handler: it is noted in ``fake.broken_bodies`` and
    the error goes back to the client.
    """

    def __init__(self, fake: FakeRegistry) -> None:
        self._fake = fake

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        declared_text = request.headers.get("Content-Length", "")
        declared = int(declared_text) if declared_text.isdigit() else None
        body = bytearray()
        response: httpx.Response | None = None
        try:
            async for chunk in request.stream:  # type: ignore[union-attr]
                body += chunk
                if response is None and declared is not None and len(body) >= declared:
                    response = self._handle(request, bytes(body))
        except Exception:
            if response is None:
                self._fake.broken_bodies.append(
                    BrokenBody(request.method, request.url, len(body), declared)
                )
            raise
        return response if response is not None else self._handle(request, bytes(body))

    def _handle(self, request: httpx.Request, body: bytes) -> httpx.Response:
        received = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        return self._fake.handle(received)


class FakeRegistry:
    """An in-memory registry for one host, served through ``self.transport()``.

    State per repository: ``manifests`` (digest -> (raw, media type)), ``tags`` (tag ->
    digest), ``blobs`` (digest -> bytes). ``requests`` records everything in order.
    ``faults`` are consulted first: a fault returning a response pre-empts normal handling.
    ``served_blobs`` overrides the bytes served for a digest (to simulate corruption).
    """

    def __init__(
        self,
        host: str = "registry.test",
        *,
        page_size: int | None = None,
        mount: bool = True,
        blob_redirect: bool = False,
        token_auth: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.cdn_host = f"cdn.{host}"
        self.auth_host = f"auth.{host}"
        self.page_size = page_size
        self.mount_enabled = mount
        self.blob_redirect = blob_redirect
        self.token_auth = token_auth
        self.credentials = credentials
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.blobs: dict[str, dict[str, bytes]] = {}
        self.uploads: dict[str, str] = {}  # uuid -> repository
        self.served_blobs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[Recorded] = []
        self.issued_tokens: list[str] = []
        self.broken_bodies: list[BrokenBody] = []  # request bodies that broke off mid-way
        self._ids = itertools.count(1)

    # --- wiring -------------------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        return _ServerLikeTransport(self)

    def client(self, **kwargs: Any) -> Registry:
        """A mirror Registry talking to this fake over HTTPS, with retries that never sleep."""

        async def no_sleep(seconds: float) -> None:
            return None

        kwargs.setdefault("sleep", no_sleep)
        return Registry(
            self.host, endpoint=f"https://{self.host}", transport=self.transport(), **kwargs
        )

    # --- seeding and inspection -----------------------------------------------------------

    def seed(self, repository: str, tag: str | None, image: Image) -> None:
        """Store an image (children and blobs included) as if it had been pushed."""
        for child in image.children:
            self.seed(repository, None, child)
        self.blobs.setdefault(repository, {}).update(image.blobs)
        self.manifests.setdefault(repository, {})[image.digest] = (image.raw, image.media_type)
        if tag is not None:
            self.tags.setdefault(repository, {})[tag] = image.digest

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        digest = self.tags.get(repository, {}).get(reference, reference)
        return self.manifests.get(repository, {}).get(digest)

    def has_blob(self, repository: str, digest: str) -> bool:
        return digest in self.blobs.get(repository, {})

    def find(
        self, method: str | None = None, kind: str | None = None, host: str | None = None
    ) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (kind is None or r.kind == kind)
            and (host is None or r.host == host)
        ]

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.is_write]

    def fail(
        self,
        status: int,
        *,
        times: int | None = None,
        method: str | None = None,
        kind: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer matching requests with ``status`` (``times`` times, or always)."""
        remaining = [times]

        def fault(request: httpx.Request) -> httpx.Response | None:
            if method is not None and request.method != method:
                return None
            if kind is not None and self.kind_of(request) != kind:
                return None
            if remaining[0] is not None:
                if remaining[0] <= 0:
                    return None
                remaining[0] -= 1
            if code is not None:
                return error_response(status, code, **(headers or {}))
            return httpx.Response(status, headers=headers)

        self.faults.append(fault)

    # --- the handler ------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(
            Recorded(
                request.method,
                request.url,
                request.headers.copy(),
                request.content,
                self.kind_of(request),
            )
        )
        for fault in self.faults:
            response = fault(request)
            if response is not None:
                return response
        host = request.url.host
        if host == self.auth_host:
            return self._token(request)
        if host == self.cdn_host:
            return self._cdn(request)
        if host != self.host:
            raise httpx.ConnectError(f"fake: no route to {host}", request=request)
        if self.token_auth and not self._authorised(request):
            return self._challenge(request)
        return self._route(request)

    def kind_of(self, request: httpx.Request) -> str:
        host, path = request.url.host, request.url.path
        if host == self.auth_host:
            return "token"
        if host == self.cdn_host:
            return "cdn"
        if host != self.host:
            return "unknown-host"
        if path in ("/v2/", "/v2"):
            return "ping"
        for kind, pattern in (
            ("tags", _TAGS),
            ("upload-start", _UPLOAD_START),
            ("upload", _UPLOAD),
            ("blob", _BLOB),
            ("manifest", _MANIFEST),
        ):
            if pattern.match(path):
                return kind
        return "other"

    def _route(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if path in ("/v2/", "/v2"):
            return httpx.Response(200, json={})
        if m := _TAGS.match(path):
            return self._tags_list(request, m["name"])
        if m := _UPLOAD_START.match(path):
            if method == "POST":
                return self._start_upload(request, m["name"])
        elif m := _UPLOAD.match(path):
            if method == "PUT":
                return self._finish_upload(request, m["name"], m["uuid"])
        elif m := _BLOB.match(path):
            if method in ("GET", "HEAD"):
                return self._blob(request, m["name"], m["digest"])
        elif m := _MANIFEST.match(path):
            if method in ("GET", "HEAD"):
                return self._get_manifest(request, m["name"], m["reference"])
            if method == "PUT":
                return self._put_manifest(request, m["name"], m["reference"])
        return error_response(405, "UNSUPPORTED", f"{method} {path}")

    # --- manifests ----------------------------------------------------------------------------

    def _get_manifest(self, request: httpx.Request, name: str, reference: str) -> httpx.Response:
        found = self.manifest(name, reference)
        if found is None:
            return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown")
        raw, media_type = found
        if media_type not in accepted_types(request.headers):
            # distribution answers 404 for an index the client did not ask for (and would
            # down-convert an image to schema 1); either way the client gets nothing usable.
            return error_response(404, "MANIFEST_UNKNOWN", "media type not accepted")
        headers = {
            "Content-Type": media_type,
            "Docker-Content-Digest": sha256(raw),
            "Content-Length": str(len(raw)),
        }
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, content=raw, headers=headers)

    def _put_manifest(self, request: httpx.Request, name: str, reference: str) -> httpx.Response:
        raw = request.content
        digest = sha256(raw)
        media_type = request.headers.get("Content-Type", "")
        if media_type not in ALL_MANIFEST_TYPES:
            return error_response(400, "MANIFEST_INVALID", f"bad media type {media_type}")
        if reference.startswith("sha256:") and reference != digest:
            return error_response(400, "DIGEST_INVALID", "digest does not match the body")
        document = json.loads(raw)
        if "manifests" in document:
            for child in document["manifests"]:
                if child["digest"] not in self.manifests.get(name, {}):
                    return error_response(400, "MANIFEST_UNKNOWN", f"child {child['digest']}")
        else:
            for blob in [document["config"], *document.get("layers", [])]:
                if blob.get("urls"):
                    continue
                if not self.has_blob(name, blob["digest"]):
                    return error_response(400, "MANIFEST_BLOB_UNKNOWN", blob["digest"])
        self.manifests.setdefault(name, {})[digest] = (raw, media_type)
        if not reference.startswith("sha256:"):
            self.tags.setdefault(name, {})[reference] = digest
        return httpx.Response(
            201,
            headers={
                "Docker-Content-Digest": digest,
                "Location": f"/v2/{name}/manifests/{digest}",
            },
        )

    # --- blobs and uploads --------------------------------------------------------------------

    def _blob(self, request: httpx.Request, name: str, digest: str) -> httpx.Response:
        data = self.blobs.get(name, {}).get(digest)
        if data is None:
            return error_response(404, "BLOB_UNKNOWN", "blob unknown")
        if request.method == "HEAD":
            return httpx.Response(
                200, headers={"Content-Length": str(len(data)), "Docker-Content-Digest": digest}
            )
        if self.blob_redirect:
            location = f"https://{self.cdn_host}/blobs/{digest}?X-Amz-Signature=CDNSECRET"
            return httpx.Response(307, headers={"Location": location})
        return self._serve_blob(request, digest, data)

    def _cdn(self, request: httpx.Request) -> httpx.Response:
        digest = request.url.path.rsplit("/", 1)[-1]
        for repo_blobs in self.blobs.values():
            if digest in repo_blobs:
                return self._serve_blob(request, digest, repo_blobs[digest])
        return httpx.Response(404, text="no such object")

    def _serve_blob(self, request: httpx.Request, digest: str, data: bytes) -> httpx.Response:
        data = self.served_blobs.get(digest, data)
        range_header = request.headers.get("Range")
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-", range_header)):
            start = int(m[1])
            return httpx.Response(
                206,
                content=data[start:],
                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
            )
        return httpx.Response(200, content=data, headers={"Docker-Content-Digest": digest})

    def _start_upload(self, request: httpx.Request, name: str) -> httpx.Response:
        mount, source = request.url.params.get("mount"), request.url.params.get("from")
        if mount and source and self.mount_enabled and self.has_blob(source, mount):
            self.blobs.setdefault(name, {})[mount] = self.blobs[source][mount]
            return httpx.Response(
                201,
                headers={"Location": f"/v2/{name}/blobs/{mount}", "Docker-Content-Digest": mount},
            )
        uuid = f"upload-{next(self._ids)}"
        self.uploads[uuid] = name
        return httpx.Response(
            202,
            headers={
                "Location": f"/v2/{name}/blobs/uploads/{uuid}?_state=SECRETSTATE{uuid}",
                "Docker-Upload-UUID": uuid,
                "Range": "0-0",
            },
        )

    def _finish_upload(self, request: httpx.Request, name: str, uuid: str) -> httpx.Response:
        if self.uploads.get(uuid) != name:
            return error_response(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        digest = request.url.params.get("digest", "")
        body = request.content
        declared = request.headers.get("Content-Length")
        if declared is None or int(declared) != len(body):
            return error_response(400, "SIZE_INVALID", "Content-Length does not match the body")
        if sha256(body) != digest:
            return error_response(400, "DIGEST_INVALID", "provided digest did not match")
        del self.uploads[uuid]
        self.blobs.setdefault(name, {})[digest] = body
        return httpx.Response(
            201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
        )

    # --- tags -----------------------------------------------------------------------------------

    def _tags_list(self, request: httpx.Request, name: str) -> httpx.Response:
        if name not in self.tags and name not in self.manifests:
            return error_response(404, "NAME_UNKNOWN", "repository name not known")
        tags = sorted(self.tags.get(name, {}))
        last = request.url.params.get("last")
        if last is not None:
            tags = [t for t in tags if t > last]
        n_text = request.url.params.get("n")
        n = int(n_text) if n_text else len(tags)
        if self.page_size is not None:
            n = min(n, self.page_size)
        page, more = tags[:n], len(tags) > n
        headers = {}
        if more and page:
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return httpx.Response(200, json={"name": name, "tags": page}, headers=headers)

    # --- token auth -----------------------------------------------------------------------------

    def _authorised(self, request: httpx.Request) -> bool:
        value = request.headers.get("Authorization", "")
        return value.startswith("Bearer ") and value[len("Bearer ") :] in self.issued_tokens

    def _challenge(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        name = None
        for pattern in (_TAGS, _UPLOAD_START, _UPLOAD, _BLOB, _MANIFEST):
            if m := pattern.match(path):
                name = m["name"]
                break
        params = f'realm="https://{self.auth_host}/token",service="{self.host}"'
        if name is not None:
            actions = "pull" if request.method in ("GET", "HEAD") else "pull,push"
            params += f',scope="repository:{name}:{actions}"'
        return error_response(
            401,
            "UNAUTHORIZED",
            "authentication required",
            **{"WWW-Authenticate": f"Bearer {params}"},
        )

    def _token(self, request: httpx.Request) -> httpx.Response:
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return httpx.Response(401, json={"details": "incorrect username or password"})
        token = f"token-{next(self._ids)}"
        self.issued_tokens.append(token)
        return httpx.Response(200, json={"token": token, "expires_in": 300})
