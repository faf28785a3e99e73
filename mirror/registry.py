"""The distribution API verbs over HTTP: one ``Registry`` client per registry.

Owns endpoints and which of them is plain HTTP (loopback, or registries marked insecure), the
verbs (``head_manifest``, ``get_manifest``, ``put_manifest``, ``blob_exists``, ``open_blob``,
``upload_blob``, ``mount_blob``, ``list_tags``, ``list_referrers`` and the upload session
ones), Docker Hub's own paths, and applying the retry policy to each request. Implements
``mirror.store.Store``. The client and TLS are ``mirror.http``'s, turning an answer into an
error ``mirror.responses``', the pull budget and pauses ``mirror.quota``'s, all met in one
place: ``Registry._check``. No policy of what to copy and no config: callers pass plain values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx

from mirror import __version__
from mirror.auth import RegistryAuth
from mirror.credentials import Credentials, CredentialSource
from mirror.errors import MirrorError, NotFound, RegistryError
from mirror.http import (
    DEFAULT_TIMEOUT,
    MAX_CONNECTIONS,
    HttpClient,
    body_chunks,
    tls_verification,
)
from mirror.manifest import (
    ACCEPT,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Manifest,
    parse_manifest,
)
from mirror.quota import PullBudget, Quota, RateLimit
from mirror.reference import DOCKER_HUB, Digest, is_loopback_host
from mirror.responses import (
    error_for,
    location,
    next_link,
    read_capped,
    safe_url,
    upload_length,
)
from mirror.retry import REQUEST, RetryPolicy, Sleep
from mirror.store import ManifestHead, MountResult

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"  # users say docker.io; the API lives here
DOCKER_HUB_API = "https://hub.docker.com"  # lists an account's repositories; no catalog on Hub
MAX_TAGS_BODY_BYTES = 16 * 1024 * 1024  # a page of tags/list; Hub pages are well under this
TAGS_PAGE_SIZE = 1000  # ask for large pages; registries may return fewer and a Link header
_T = TypeVar("_T")


def default_endpoint(registry: str, *, insecure: bool = False) -> str:
    """The base URL for ``registry``: Hub's API host, plain HTTP on loopback or when insecure."""
    if registry == DOCKER_HUB:
        return DOCKER_HUB_ENDPOINT
    scheme = "http" if insecure or is_loopback_host(registry) else "https"
    return f"{scheme}://{registry}"


class Registry:
    """A client for one registry: the distribution API verbs over a shared connection pool.

    Every method raises a ``RegistryError`` subclass (or ``AuthError``) on failure, never an
    httpx exception. Each request is retried as ``mirror.retry`` says, up to
    ``retry_attempts`` tries, sleeping through ``sleep`` (tests pass one that does not sleep).
    """

    def __init__(
        self,
        registry: str,
        *,
        endpoint: str | None = None,
        credentials: CredentialSource | Credentials | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_attempts: int = REQUEST.attempts,
        sleep: Sleep = asyncio.sleep,
        pull_reserve: int = 0,
    ) -> None:
        self.name = registry
        self.endpoint = (endpoint or default_endpoint(registry, insecure=insecure)).rstrip("/")
        if self.endpoint.startswith("http://") and not (insecure or is_loopback_host(registry)):
            raise MirrorError(
                f"registry {registry}: endpoint {self.endpoint} is plain HTTP; "
                "set insecure = true for it to allow that"
            )
        self.auth = RegistryAuth(registry, credentials, allow_insecure_realm=insecure)
        self._http = HttpClient(
            registry,
            self.endpoint,
            auth=self.auth,
            verify=tls_verification(registry, insecure=insecure, ca_file=ca_file),
            timeout=timeout,
            max_connections=max_connections,
            transport=transport,
            headers={"User-Agent": f"mirror/{__version__}"},
        )
        self._policy = RetryPolicy(max(1, retry_attempts), REQUEST.max_time_s)
        self._sleep = sleep
        self.quota = Quota(registry, pull_reserve)

    @property
    def budget(self) -> PullBudget:
        """The pull budget manifest GETs are charged to (shared by every job of the process)."""
        return self.quota.budget

    @property
    def rate_limit(self) -> RateLimit | None:
        """The registry's pull quota as its last answer stated it (None: no limit stated)."""
        return self.quota.budget.rate_limit

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- verbs ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the registry speaks the v2 API (``GET /v2/``); raise if it cannot be used."""
        what = "the v2 API (GET /v2/)"
        response = await self._retrying("GET", "/v2/", what=what)
        await self._check(response, what=what)

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        """HEAD a manifest by tag or digest; None when it does not exist.

        Docker Hub does not count HEADs against the pull limit, so comparing digests this way
        is free. The digest is None when the registry sends no ``Docker-Content-Digest``.
        """
        what = f"manifest {repository}:{reference}"
        path = f"/v2/{repository}/manifests/{reference}"
        response = await self._retrying("HEAD", path, what=what, headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        await self._check(response, what=what)
        digest_header = response.headers.get("Docker-Content-Digest")
        length = response.headers.get("Content-Length")
        return ManifestHead(
            digest=Digest.parse(digest_header) if digest_header else None,
            media_type=response.headers.get("Content-Type", "").split(";")[0].strip(),
            size=int(length) if length and length.isdigit() else None,
        )

    async def get_manifest(
        self, repository: str, reference: str, *, expected: Digest | None = None
    ) -> Manifest:
        """GET a manifest's exact bytes and check them against the digest they were asked by.

        ``expected`` defaults to ``reference`` when that is a digest, else to the
        ``Docker-Content-Digest`` the registry reports. Bytes over 4 MiB are refused.
        """
        if expected is None and ":" in reference:  # tags have no colon; digests always do
            expected = Digest.parse(reference)
        path = f"/v2/{repository}/manifests/{reference}"

        async def attempt() -> Manifest:
            async with self._stream("GET", path, headers={"Accept": ACCEPT}, pull=True) as response:
                await self._check(response, what=f"manifest {repository}:{reference}")
                raw = await read_capped(response, MAX_MANIFEST_BYTES, f"manifest {reference}")
                reported = response.headers.get("Docker-Content-Digest")
                content_type = response.headers.get("Content-Type")
            check = expected or (Digest.parse(reported) if reported else None)
            return parse_manifest(raw, content_type, check)

        return await self._with_retries(attempt)

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> Digest:
        """PUT a manifest's original bytes under a tag or its digest, with its own media type."""
        what = f"manifest {repository}:{reference}"
        path = f"/v2/{repository}/manifests/{reference}"
        response = await self._retrying(
            "PUT",
            path,
            what=what,
            content=manifest.raw,
            headers={"Content-Type": manifest.media_type},
        )
        await self._check(response, what=what)
        return manifest.digest

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """DELETE a manifest by digest; False when it was not there.

        distribution deletes by digest only, and every tag on that digest goes with it; with
        ``storage.delete.enabled`` off it answers 405 ``UNSUPPORTED`` (raised, as any refusal).
        The blobs stay until the registry's garbage collection runs.
        """
        what = f"manifest {repository}@{digest}"
        response = await self._retrying("DELETE", f"/v2/{repository}/manifests/{digest}", what=what)
        if response.status_code == 404:
            return False
        await self._check(response, what=what)
        return True

    async def blob_exists(self, repository: str, digest: Digest) -> bool:
        """HEAD a blob: whether ``repository`` already holds it."""
        what = f"blob {digest} in {repository}"
        response = await self._retrying("HEAD", f"/v2/{repository}/blobs/{digest}", what=what)
        if response.status_code == 404:
            return False
        await self._check(response, what=what)
        return True

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob's bytes (from ``offset``, by Range); redirects to a CDN are followed.

        The Authorization header is not sent to the redirect's host. Yields an iterator of
        chunks; nothing is buffered beyond one chunk.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        path = f"/v2/{repository}/blobs/{digest}"
        await self.quota.wait_out_pause(self._sleep)
        async with self._stream(
            "GET", path, headers=headers, follow_redirects=True, held=True
        ) as response:
            await self._check(response, what=f"blob {digest} in {repository}")
            # A server that ignores Range sends the whole blob (200): skip what we have.
            skip = offset if offset and response.status_code != 206 else 0
            yield body_chunks(response, self.name, f"blob {digest}", skip=skip)

    async def mount_blob(self, repository: str, digest: Digest, source: str) -> MountResult:
        """Ask the registry to link a blob from another of its repositories (no bytes move).

        201 means mounted. 202 means the registry declined and opened an ordinary upload
        session instead, whose URL is returned for ``upload_blob`` to use. A registry that
        refuses the request itself (400, 404, 405: some answer so for a source repository
        that does not exist) has declined too, without a session.
        """
        what = f"mount of blob {digest} into {repository}"
        response = await self._retrying(  # as an upload's POST is: at worst a spare session
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            what=what,
            params={"mount": digest, "from": source},
        )
        if response.status_code == 201:
            return MountResult(mounted=True)
        if response.status_code in (400, 404, 405):
            return MountResult(mounted=False)
        await self._check(response, what=what)
        return MountResult(mounted=False, upload_url=location(self.name, response))

    async def upload_blob(
        self,
        repository: str,
        digest: Digest,
        size: int,
        chunks: AsyncIterable[bytes],
        *,
        upload_url: str | None = None,
    ) -> None:
        """Upload a blob in one streamed PUT with an explicit Content-Length.

        Opens an upload session (POST) unless ``upload_url`` names one already, then PUTs
        ``chunks`` to it with ``?digest=``; the registry verifies the digest before it commits.
        Not retried here: ``chunks`` can be consumed once, so the caller retries the transfer.
        """
        if upload_url is None:
            what = f"upload of blob {digest} to {repository}"
            response = await self._retrying("POST", f"/v2/{repository}/blobs/uploads/", what=what)
            await self._check(response, what=what)
            upload_url = location(self.name, response)
        url = httpx.URL(upload_url).copy_merge_params({"digest": str(digest)})
        response = await self._send(
            "PUT",
            url,
            content=chunks,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        await self._check(response, what=f"upload of blob {digest} to {repository}")

    async def start_upload(self, repository: str) -> str:
        """Open an upload session (POST); return its URL."""
        what = f"upload to {repository}"
        response = await self._retrying("POST", f"/v2/{repository}/blobs/uploads/", what=what)
        await self._check(response, what=what)
        return location(self.name, response)

    async def append_upload(
        self, upload_url: str, chunks: AsyncIterable[bytes], *, held: int = 0
    ) -> tuple[str, int]:
        """Stream ``chunks`` into an upload session that holds ``held`` bytes (a chunked
        PATCH, as ``docker push`` does).

        The body may end early, e.g. because the source broke off: the registry keeps what
        arrived and the session can be continued. Returns the session's next URL and the
        number of bytes it now holds (from its ``Range: 0-N`` header).
        """
        sent = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk

        response = await self._send(
            "PATCH",
            upload_url,
            content=counted(),
            headers={"Content-Type": "application/octet-stream"},
        )
        await self._check(response, what="blob upload")
        length = upload_length(response.headers.get("Range"), held + sent)
        return location(self.name, response), length

    async def upload_status(self, upload_url: str) -> tuple[str, int] | None:
        """Where an upload session stands (``GET`` on it: 204 with ``Range: 0-N``): its next
        URL and the bytes it holds. None when the registry no longer knows the session: it
        expired or was purged (404 ``BLOB_UPLOAD_UNKNOWN``), or, in distribution, the bytes it
        holds are not the ones its URL was issued for (404 or 400 ``BLOB_UPLOAD_INVALID``)."""
        what = "blob upload status"
        response = await self._retrying("GET", upload_url, what=what)
        if response.status_code in (400, 404):
            return None
        await self._check(response, what=what)
        held = upload_length(response.headers.get("Range"), 0)
        next_url = location(self.name, response) if "Location" in response.headers else upload_url
        return next_url, held

    async def finish_upload(self, upload_url: str, digest: Digest) -> None:
        """Commit a session's bytes as blob ``digest`` (PUT ``?digest=``, empty body); the
        registry checks the digest before it links the blob."""
        url = httpx.URL(upload_url).copy_merge_params({"digest": str(digest)})
        response = await self._send("PUT", url, content=b"")
        await self._check(response, what=f"upload of blob {digest}")

    async def cancel_upload(self, upload_url: str) -> None:
        """Abandon an upload session (best effort: registries purge stale ones anyway)."""
        with contextlib.suppress(MirrorError):
            await self._send("DELETE", upload_url)

    async def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` page by page."""
        return await self._paged_names(
            f"/v2/{repository}/tags/list", "tags", f"tags list of {repository}"
        )

    async def list_referrers(self, repository: str, digest: Digest) -> list[Descriptor] | None:
        """GET ``/v2/<name>/referrers/<digest>`` (OCI distribution 1.1), every page; None when
        the registry does not offer it.

        A registry that offers the API answers with an OCI index (empty when nothing refers to
        the digest); distribution 2.8 and others answer 404 (or 400/405) or something else.
        """
        what = f"referrers of {repository}@{digest}"
        url: httpx.URL | str = f"/v2/{repository}/referrers/{digest}"
        found: list[Descriptor] = []
        seen: set[str] = set()
        while True:
            try:
                body, response = await self._get_capped(url, None, MAX_MANIFEST_BYTES, what)
            except NotFound:
                return None
            except RegistryError as exc:
                if exc.status in (400, 405, 406):
                    return None
                raise
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            if media_type != OCI_INDEX:
                return None
            try:
                found += parse_manifest(body, OCI_INDEX).children
            except MirrorError:
                return None
            seen.add(str(response.request.url))
            next_url = next_link(self.name, response, what)
            if next_url is None or str(next_url) in seen:
                return found
            url = next_url

    async def list_repositories(self, prefix: str = "") -> list[str]:
        """Repositories under ``prefix`` (``diamol`` -> ``diamol/golang``, ...; "" -> all).

        Registries list them through ``/v2/_catalog`` (paginated like tags). Docker Hub has no
        catalog: its namespaces are listed through Hub's own API at hub.docker.com, which
        shows public repositories.
        """
        if self.name == DOCKER_HUB and self.endpoint == DOCKER_HUB_ENDPOINT:
            return await self._list_hub_namespace(prefix)
        names = await self._paged_names("/v2/_catalog", "repositories", "repository catalog")
        return [r for r in names if not prefix or r.startswith(prefix + "/")]

    async def _paged_names(self, path: str, key: str, what: str) -> list[str]:
        """A list of names a registry pages (``tags/list``, ``_catalog``), every page read.

        Follows ``Link: <...>; rel="next"`` until it is absent; refuses a link to another host
        or back to a page already read, and a page that is not JSON with a list under ``key``.
        """
        names: list[str] = []
        url: httpx.URL | str = path
        params: dict[str, Any] | None = {"n": TAGS_PAGE_SIZE}
        seen: set[str] = set()
        while True:
            body, response = await self._get_capped(url, params, MAX_TAGS_BODY_BYTES, what)
            try:
                page = json.loads(body).get(key) or []
                if not isinstance(page, list) or not all(isinstance(n, str) for n in page):
                    raise ValueError(f"{key!r} is not a list of strings")
            except (ValueError, AttributeError) as exc:
                raise RegistryError(
                    f"registry {self.name}: {what} is not valid JSON: {exc}",
                    method="GET",
                    url=safe_url(response.url),
                    status=response.status_code,
                ) from None
            names.extend(page)
            seen.add(str(response.request.url))
            next_url = next_link(self.name, response, what)
            if next_url is None:
                return names
            if str(next_url) in seen:
                raise RegistryError(
                    f"registry {self.name}: {what} links back to a page already read "
                    f"({safe_url(next_url)}); refusing to loop",
                    method="GET",
                    url=safe_url(response.request.url),
                    status=response.status_code,
                )
            url, params = next_url, None

    async def _list_hub_namespace(self, namespace: str) -> list[str]:
        if not namespace or "/" in namespace:
            raise RegistryError(
                f"registry {self.name}: Docker Hub lists one account's repositories "
                f"(like diamol/*), not {namespace or 'the whole registry'}"
            )
        url: str | None = f"{DOCKER_HUB_API}/v2/namespaces/{namespace}/repositories"
        params: dict[str, Any] | None = {"page_size": 100}
        found: list[str] = []
        while url is not None:
            body, response = await self._get_capped(
                url, params, MAX_TAGS_BODY_BYTES, f"Docker Hub's list of {namespace}/*"
            )
            try:
                document = json.loads(body)
                found += [f"{namespace}/{r['name']}" for r in document.get("results") or []]
                url = document.get("next")
            except (ValueError, AttributeError, KeyError, TypeError) as exc:
                raise RegistryError(
                    f"registry {self.name}: Docker Hub's list of {namespace}/* is not valid: {exc}",
                    method="GET",
                    url=safe_url(response.url),
                    status=response.status_code,
                ) from None
            if url is not None and not url.startswith(DOCKER_HUB_API + "/"):
                raise RegistryError(
                    f"registry {self.name}: Docker Hub's next page points elsewhere "
                    f"({safe_url(url)}); refusing to follow it"
                )
            params = None
        return found

    # --- the one place an answer meets the quota and becomes an exception -------------------

    async def _check(self, response: httpx.Response, *, what: str) -> None:
        """Tell the quota what the answer says; raise its ``RegistryError`` for an error status
        (after the quota has heard of a 429), return quietly for 2xx and 3xx."""
        self.quota.observe(response.headers)
        if response.status_code < 400:
            return
        error = await error_for(
            self.name,
            response,
            what,
            credentials=self.auth.credentials,
            credentials_configured=self.auth.credentials is not None,
        )
        self.quota.refused(error)
        raise error

    # --- plumbing -----------------------------------------------------------------------------

    async def _send(
        self, method: str, url: httpx.URL | str, *, follow_redirects: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, once; its answer read (capped)."""
        return await self._http.send(method, url, follow_redirects=follow_redirects, **kwargs)

    async def _retrying(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """``_send`` under the retry policy: 5xx, the abuse 429 and transport failures are
        tried again. Retryable error statuses raise here (so the policy sees them); other
        statuses are returned for the caller to interpret (a 404 HEAD is an answer)."""

        async def attempt() -> httpx.Response:
            response = await self._send(method, url, **kwargs)
            if response.status_code >= 500 or response.status_code == 429:
                await self._check(response, what=what)
            return response

        return await self._with_retries(attempt)

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        held: bool = False,
        pull: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """A streamed request (``held``: see ``HttpClient.stream``). A ``pull`` (a manifest
        GET) that waited for its slot while another met the pull limit is not sent: Docker Hub
        counts every try, refused or not."""
        ready = (lambda: self.quota.check_pull(f"GET {safe_url(url)}")) if pull else None
        async with self._http.stream(method, url, held=held, ready=ready, **kwargs) as response:
            yield response

    async def _with_retries(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt`` under the retry policy, once any abuse-limit pause of the registry is
        over (its retries then wait by the policy, which honours the same Retry-After)."""
        await self.quota.wait_out_pause(self._sleep)
        return await self._policy.run(attempt, sleep=self._sleep)

    async def _get_capped(
        self, url: httpx.URL | str, params: Any, cap: int, what: str
    ) -> tuple[bytes, httpx.Response]:
        """GET a small document with retries, its body read up to ``cap`` bytes."""

        async def attempt() -> tuple[bytes, httpx.Response]:
            async with self._stream("GET", url, params=params) as response:
                await self._check(response, what=what)
                return await read_capped(response, cap, what), response

        return await self._with_retries(attempt)
