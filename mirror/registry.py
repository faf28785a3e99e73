"""The distribution API verbs over one ``httpx.AsyncClient`` per registry.

Owns endpoints and transport security (plain HTTP only for loopback or insecure registries),
the request verbs (``head_manifest``, ``get_manifest``, ``put_manifest``, ``blob_exists``,
``open_blob``, ``upload_blob``, ``mount_blob``, ``list_tags``), and the one place where a
response becomes an exception. No policy and no config: callers decide what to copy and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from mirror import __version__
from mirror.auth import Credentials, CredentialSource, RegistryAuth
from mirror.errors import (
    ManifestError,
    MirrorError,
    NotFound,
    RateLimited,
    RegistryError,
    Unauthorized,
    Unavailable,
    is_retryable,
)
from mirror.manifest import ACCEPT, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from mirror.quota import PullBudget, RateLimit
from mirror.reference import DOCKER_HUB, Digest, is_loopback_host
from mirror.transport import pooled_transport, ssl_context

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"  # users say docker.io; the API lives here
DOCKER_HUB_API = "https://hub.docker.com"  # lists an account's repositories; no catalog on Hub
MAX_ERROR_BODY_BYTES = 64 * 1024  # error JSON is small; never read a megabyte error page
MAX_TAGS_BODY_BYTES = 16 * 1024 * 1024  # a page of tags/list; Hub pages are well under this
BLOB_CHUNK_BYTES = 1024 * 1024  # read/write granularity when streaming blobs
TAGS_PAGE_SIZE = 1000  # ask for large pages; registries may return fewer and a Link header
# Short requests in flight per registry (the Registry's slots; its pool keeps as many
# connections idle). A registry on the LAN answers in about a millisecond: eight keep
# requests flowing, and more only add contention on a small host (16: a 2,000-tag sync took
# 81-91 s against 75-77).
MAX_CONNECTIONS = 8
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)
DEFAULT_RETRY_ATTEMPTS = 4
MAX_RETRY_WAIT_S = 60.0  # never sleep longer than this on one Retry-After
MAX_RETRY_TIME_S = 120.0  # an operation stops retrying after this long, whatever its attempts
ABUSE_BACKOFF_S = 2.0  # an abuse-limit 429 without Retry-After pauses the registry this long
_T = TypeVar("_T")
_SAFE_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})


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


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def __bool__(self) -> bool:
        return False


_NO_COOKIES = _NoCookies()


class _Client(httpx.AsyncClient):
    """httpx's client without a cookie jar. Registry APIs are stateless and docker and
    containerd keep no cookies; httpx would read every response's into its jar (4-5 % of a
    2,000-tag sync's CPU)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES  # asked twice per request: one empty jar, not a new one each time

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


def default_endpoint(registry: str, *, insecure: bool = False) -> str:
    """The base URL for ``registry``: Hub's API host, plain HTTP on loopback or when insecure."""
    if registry == DOCKER_HUB:
        return DOCKER_HUB_ENDPOINT
    scheme = "http" if insecure or is_loopback_host(registry) else "https"
    return f"{scheme}://{registry}"


def _tls_verification(registry: str, *, insecure: bool, ca_file: str | None) -> bool | str:
    """How to check a registry's certificate, as Docker does: True (the system's CAs), False
    (none) or a CA file to verify against.

    ``insecure`` registries (daemon.json's insecure-registries) and loopback ones get TLS
    without verification, unless a CA file is given, which means "verify against this CA".
    Everything else is verified against the system's CAs.
    """
    if ca_file:
        try:
            ssl_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MirrorError(f"registry {registry}: cannot use ca_file {ca_file}: {exc}") from None
        return ca_file
    return not (insecure or is_loopback_host(registry))


def safe_url(url: httpx.URL | str) -> str:
    """A URL fit for messages and logs: no userinfo, and only harmless query values kept.

    Upload state and CDN signatures live in query strings; they are replaced by ``...``.
    """
    url = httpx.URL(str(url))
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v if k in _SAFE_QUERY_KEYS else "...") for k, v in url.params.multi_items()
    ]
    return str(url.copy_with(userinfo=b"", query=None).copy_merge_params(params))


class Registry:
    """A client for one registry: the distribution API verbs over a shared connection pool.

    Every method raises a ``RegistryError`` subclass (or ``AuthError``) on failure, never an
    httpx exception. Idempotent verbs retry what ``is_retryable`` allows, up to ``retry_attempts``
    tries, sleeping through ``sleep`` (tests pass one that does not sleep).
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
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
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
        verify = _tls_verification(registry, insecure=insecure, ca_file=ca_file)
        self._http = _Client(
            base_url=self.endpoint,
            auth=self.auth,
            timeout=timeout,
            verify=ssl_context(verify),
            transport=transport or pooled_transport(verify, max_connections),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": f"mirror/{__version__}"},
        )
        self._retry_attempts = max(1, retry_attempts)
        self._sleep = sleep
        self.budget = PullBudget(pull_reserve)
        # Short requests in flight at once (blob streams are bounded by the copier instead):
        # the pool opens a connection for each request and keeps up to this many idle.
        self._slots = asyncio.Semaphore(max_connections)
        self._paused_until = 0.0  # after an abuse-limit 429: every request waits until then

    @property
    def rate_limit(self) -> RateLimit | None:
        """The registry's pull quota as its last answer stated it (None: no limit stated)."""
        return self.budget.rate_limit

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
        await self._raise_for(response, what=what)

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
        await self._raise_for(response, what=what)
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
                await self._raise_for(response, what=f"manifest {repository}:{reference}")
                raw = await _read_capped(response, MAX_MANIFEST_BYTES, f"manifest {reference}")
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
        await self._raise_for(response, what=what)
        return manifest.digest

    async def blob_exists(self, repository: str, digest: Digest) -> bool:
        """HEAD a blob: whether ``repository`` already holds it."""
        what = f"blob {digest} in {repository}"
        response = await self._retrying("HEAD", f"/v2/{repository}/blobs/{digest}", what=what)
        if response.status_code == 404:
            return False
        await self._raise_for(response, what=what)
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
        async with self._stream(
            "GET", path, headers=headers, follow_redirects=True, held=True
        ) as response:
            await self._raise_for(response, what=f"blob {digest} in {repository}")
            # A server that ignores Range sends the whole blob (200): skip what we have.
            skip = offset if offset and response.status_code != 206 else 0
            yield _chunks(response, self.name, digest, skip=skip)

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
        await self._raise_for(response, what=what)
        return MountResult(mounted=False, upload_url=self._location(response))

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
            await self._raise_for(response, what=what)
            upload_url = self._location(response)
        url = httpx.URL(upload_url).copy_merge_params({"digest": str(digest)})
        response = await self._send(
            "PUT",
            url,
            content=chunks,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        await self._raise_for(response, what=f"upload of blob {digest} to {repository}")

    async def start_upload(self, repository: str) -> str:
        """Open an upload session (POST); return its URL."""
        what = f"upload to {repository}"
        response = await self._retrying("POST", f"/v2/{repository}/blobs/uploads/", what=what)
        await self._raise_for(response, what=what)
        return self._location(response)

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
        await self._raise_for(response, what="blob upload")
        length = _upload_length(response.headers.get("Range"), held + sent)
        return self._location(response), length

    async def finish_upload(self, upload_url: str, digest: Digest) -> None:
        """Commit a session's bytes as blob ``digest`` (PUT ``?digest=``, empty body); the
        registry checks the digest before it links the blob."""
        url = httpx.URL(upload_url).copy_merge_params({"digest": str(digest)})
        response = await self._send("PUT", url, content=b"")
        await self._raise_for(response, what=f"upload of blob {digest}")

    async def cancel_upload(self, upload_url: str) -> None:
        """Abandon an upload session (best effort: registries purge stale ones anyway)."""
        with contextlib.suppress(MirrorError):
            await self._send("DELETE", upload_url)

    async def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` page by page."""
        return await self._paged_names(
            f"/v2/{repository}/tags/list", "tags", f"tags list of {repository}"
        )

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
            next_url = self._next_link(response, what)
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

    # --- the one place responses become exceptions -----------------------------------------

    async def _raise_for(self, response: httpx.Response, *, what: str) -> None:
        """Raise the RegistryError for an error status; return quietly for 2xx and 3xx."""
        rate_limit = RateLimit.from_headers(response.headers)
        if rate_limit is not None:
            self.budget.observe(rate_limit)
        if response.status_code < 400:
            return
        body = b""
        if response.request.method != "HEAD":
            try:
                body = await _read_capped(response, MAX_ERROR_BODY_BYTES, "error body", trim=True)
            except httpx.HTTPError:
                body = b""
        raise self._error(response, what, body)

    def _error(self, response: httpx.Response, what: str, body: bytes) -> RegistryError:
        codes, details = _error_codes(body)
        details = redact(details, self.auth.credentials)
        status = response.status_code
        method = response.request.method
        url = safe_url(response.request.url)
        kind: type[RegistryError]
        if status in (401, 403):
            kind = Unauthorized
            reason = "access denied" if status == 403 or "DENIED" in codes else "unauthorized"
            if self.auth.credentials is None:
                reason += " (no credentials configured for this registry)"
        elif status == 404:
            kind, reason = NotFound, "not found"
        elif status == 429:
            kind = RateLimited
            reason = (
                "pull rate limit reached" if "TOOMANYREQUESTS" in codes else "too many requests"
            )
        elif status >= 500:
            kind, reason = Unavailable, "server error"
        else:
            kind, reason = RegistryError, "request refused"
        detail = f": {details}" if details else ""
        code_text = f" [{', '.join(codes)}]" if codes else ""
        retry_after = _retry_after(response.headers.get("Retry-After"))
        extra: dict[str, Any] = {}
        if kind is RateLimited:
            quota = RateLimit.from_headers(response.headers)
            spent = quota is not None and quota.remaining <= 0
            extra["quota_spent"] = spent
            if spent or "TOOMANYREQUESTS" in codes:
                reason = "pull rate limit reached"
                self.budget.block(retry_after)  # no more GETs here, for every job
            else:
                # The abuse limit: every streamed request to this registry waits too.
                pause = min(retry_after or ABUSE_BACKOFF_S, MAX_RETRY_WAIT_S)
                self._paused_until = max(self._paused_until, time.monotonic() + pause)
        return kind(
            f"registry {self.name}: {what}: {reason} (HTTP {status}{code_text}, {method} {url})"
            f"{detail}",
            method=method,
            url=url,
            status=status,
            codes=codes,
            retry_after=retry_after,
            **extra,
        )

    def _unreachable(self, method: str, url: httpx.URL | str, exc: httpx.HTTPError) -> Unavailable:
        kind = type(exc).__name__
        text = str(exc) or kind
        full = self._http.base_url.join(str(url)) if not str(url).startswith("http") else url
        return Unavailable(
            f"registry {self.name}: cannot reach {self.endpoint} ({method} {safe_url(full)}): "
            f"{text}",
            method=method,
            url=safe_url(full),
        )

    # --- plumbing -----------------------------------------------------------------------------

    async def _send(
        self, method: str, url: httpx.URL | str, *, follow_redirects: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, its body read up to MAX_ERROR_BODY_BYTES (these answers are small; an
        error page of megabytes is cut), transport failures mapped to Unavailable."""
        request = self._http.build_request(method, url, **kwargs)
        try:
            async with self._slots:  # the bound on short requests (see MAX_CONNECTIONS)
                response = await self._http.send(
                    request, stream=True, follow_redirects=follow_redirects
                )
                try:
                    body = await _read_capped(response, MAX_ERROR_BODY_BYTES, "response", trim=True)
                finally:
                    await response.aclose()
        except httpx.TransportError as exc:
            raise self._unreachable(method, url, exc) from None
        except httpx.StreamConsumed:
            # A streamed body cannot be sent twice: the registry asked for credentials again
            # mid-upload. The transfer as a whole is retried, with a fresh token.
            raise Unavailable(
                f"registry {self.name}: credentials were refused during {method} "
                f"{safe_url(request.url)}; the transfer is started again",
                method=method,
                url=safe_url(request.url),
                status=401,
            ) from None
        # The body is decoded already: the new response must not decode it again.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=body, request=response.request
        )

    async def _retrying(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """``_send`` with retries for 5xx, the abuse 429 and transport failures.

        Retryable error statuses raise here (so the retry sees them); other statuses are
        returned for the caller to interpret (a 404 HEAD is an answer, not an error).
        """

        async def attempt() -> httpx.Response:
            response = await self._send(method, url, **kwargs)
            if response.status_code >= 500 or response.status_code == 429:
                await self._raise_for(response, what=what)
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
        """A streamed request. Short reads take a request slot like ``_send``; a ``held``
        stream (a blob, open while its upload runs) does not, so that copying within one
        registry cannot starve the upload of a slot. The copier bounds those itself.

        A ``pull`` (a manifest GET) that waited for its slot while another met the pull
        limit is not sent: Docker Hub counts every try, refused or not."""
        await self._abuse_pause()
        async with contextlib.AsyncExitStack() as stack:
            if not held:
                await stack.enter_async_context(self._slots)
            if pull and self.budget.blocked:
                raise RateLimited(
                    f"registry {self.name}: pull rate limit reached earlier in this run; "
                    f"GET {safe_url(url)} not sent ({self.budget.describe()})",
                    method=method,
                    url=safe_url(url),
                    status=429,
                    quota_spent=True,
                )
            try:
                async with self._http.stream(method, url, **kwargs) as response:
                    yield response
            except httpx.TransportError as exc:
                raise self._unreachable(method, url, exc) from None

    async def _abuse_pause(self) -> None:
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await self._sleep(wait)

    async def _with_retries(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()``, tried again on a retryable error: at most ``retry_attempts`` tries
        within MAX_RETRY_TIME_S, waiting ``backoff`` between them.

        The first try runs bare: almost every request succeeds at once, and building tenacity's
        machinery for each one cost 3 % of a no-op run's CPU (and its import, start-up time).
        """
        started = time.monotonic()
        try:
            return await attempt()
        except Exception as exc:
            if not is_retryable(exc) or self._retry_attempts < 2:
                raise
            await self._sleep(backoff(exc, 1))
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts - 1)
            | stop_after_delay(MAX_RETRY_TIME_S - (time.monotonic() - started)),
            retry=retry_if_exception(is_retryable),
            wait=_wait_after_first,
            sleep=self._sleep,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                result = await attempt()
        return result

    async def _get_capped(
        self, url: httpx.URL | str, params: Any, cap: int, what: str
    ) -> tuple[bytes, httpx.Response]:
        """GET a small document with retries, its body read up to ``cap`` bytes."""

        async def attempt() -> tuple[bytes, httpx.Response]:
            async with self._stream("GET", url, params=params) as response:
                await self._raise_for(response, what=what)
                return await _read_capped(response, cap, what), response

        return await self._with_retries(attempt)

    def _location(self, response: httpx.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                f"registry {self.name}: upload started without a Location header",
                method=response.request.method,
                url=safe_url(response.request.url),
                status=response.status_code,
            )
        return str(response.request.url.join(location))

    def _next_link(self, response: httpx.Response, what: str) -> httpx.URL | None:
        """The ``rel="next"`` target of a Link header, refused if it leaves this registry."""
        link = response.links.get("next")
        if link is None or not link.get("url"):
            return None
        target = response.request.url.join(link["url"])
        if (target.scheme, target.netloc) != (
            response.request.url.scheme,
            response.request.url.netloc,
        ):
            raise RegistryError(
                f"registry {self.name}: {what} Link header points at another host "
                f"({safe_url(target)}); refusing to follow it",
                method="GET",
                url=safe_url(response.request.url),
                status=response.status_code,
            )
        return target


def _wait_after_first(retry_state: Any) -> float:
    """tenacity's wait: ``backoff`` for the attempt that just failed (tenacity counts from
    the second try: the first ran before it)."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    return backoff(exc, retry_state.attempt_number + 1)


def backoff(exc: BaseException | None, attempt: int) -> float:
    """How long to wait before try ``attempt + 1``: the registry's Retry-After when it sent
    one (capped at MAX_RETRY_WAIT_S), else exponential from 0.5 s up to 8 s."""
    if isinstance(exc, RegistryError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_WAIT_S)
    return float(min(0.5 * 2 ** (attempt - 1), 8.0))


_CREDENTIAL_SHAPES = re.compile(
    r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+"  # an Authorization value echoed back
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"  # a JWT, or its first part
)


def redact(text: str, credentials: Credentials | None = None) -> str:
    """A registry's own words with anything credential-shaped taken out.

    A registry or proxy may echo the Authorization it refused into its error message; those
    messages go to logs and terminals, so tokens, Basic values and the password never do.
    """
    text = _CREDENTIAL_SHAPES.sub(lambda m: f"{m.group(1) or 'token'} [redacted]", text)
    if credentials is not None and credentials.password:
        text = text.replace(credentials.password, "[redacted]")
    return text


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form is rare from registries; back off normally instead


def _error_codes(body: bytes) -> tuple[list[str], str]:
    """The registry's error codes and a short detail message from a JSON error body."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return [], ""
    codes: list[str] = []
    messages: list[str] = []
    for error in errors:
        if isinstance(error, dict):
            if isinstance(error.get("code"), str):
                codes.append(error["code"])
            if isinstance(error.get("message"), str):
                messages.append(error["message"][:200])
    return codes, "; ".join(messages)[:400]


async def _read_capped(
    response: httpx.Response, cap: int, what: str, *, trim: bool = False
) -> bytes:
    """Read a response body, refusing (or with ``trim``, cutting) anything over ``cap`` bytes."""
    length = response.headers.get("Content-Length")
    if not trim and length and length.isdigit() and int(length) > cap:
        raise _too_large(response, what, cap)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            if trim:
                return bytes(body[:cap])
            raise _too_large(response, what, cap)
    return bytes(body)


def _too_large(response: httpx.Response, what: str, cap: int) -> MirrorError:
    message = f"{what} from {safe_url(response.request.url)} is over the {cap} byte cap"
    return ManifestError(message) if what.startswith("manifest") else MirrorError(message)


def _upload_length(value: str | None, sent: int) -> int:
    """``Range: 0-1023`` on an upload session -> 1024 bytes held (no header: none).

    distribution reports an empty session as ``0-0`` too, which reads as one byte: with
    nothing sent, that is zero.
    """
    if not value:
        return 0
    _, _, end = value.rpartition("-")
    held = int(end) + 1 if end.isdigit() else 0
    return 0 if held == 1 and sent == 0 else held


async def _chunks(
    response: httpx.Response, registry: str, digest: Digest, *, skip: int = 0
) -> AsyncIterator[bytes]:
    # Gathered into BLOB_CHUNK_BYTES pieces by hand: httpx's own chunker drops the part of a
    # chunk it holds when the body breaks, and a resume would fetch those bytes twice.
    pending = bytearray()
    try:
        async for data in response.aiter_bytes():
            if skip:
                dropped = min(skip, len(data))
                data, skip = data[dropped:], skip - dropped
            pending += data
            if len(pending) >= BLOB_CHUNK_BYTES:
                yield bytes(pending)
                pending.clear()
        if pending:
            yield bytes(pending)
    except httpx.TransportError as exc:
        if pending:
            yield bytes(pending)  # every byte that arrived goes on; the resume starts after it
        raise Unavailable(
            f"registry {registry}: blob {digest} download broke off: {exc or type(exc).__name__}",
            method="GET",
            url=safe_url(response.request.url),
        ) from None
