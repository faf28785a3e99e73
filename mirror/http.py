"""The HTTP client under the registry verbs: TLS, request slots, sending and streaming.

Owns one ``httpx.AsyncClient`` per registry (no cookie jar; the auth flow, the TLS policy and
the connection pool of ``mirror.transport`` plugged in), the bound on requests in flight, and
the one choke point where anything httpx raises (``httpx.RequestError``: connection failures,
timeouts, bodies that break off or will not decode, redirect loops) becomes a mirror
``Unavailable``. Knows no registry API: paths and statuses are ``mirror.registry``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mirror.errors import MirrorError, Unavailable
from mirror.reference import is_loopback_host
from mirror.responses import MAX_ERROR_BODY_BYTES, read_capped, safe_url
from mirror.transport import ssl_context, transport_for

# Short requests in flight per registry (the client's slots; its pool keeps as many
# connections idle). A registry on the LAN answers in about a millisecond: eight keep
# requests flowing, and more only add contention on a small host (16: a 2,000-tag sync took
# 81-91 s against 75-77).
MAX_CONNECTIONS = 8
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)
BLOB_CHUNK_BYTES = 1024 * 1024  # read/write granularity when streaming blobs


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


def tls_verification(registry: str, *, insecure: bool, ca_file: str | None) -> bool | str:
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


class HttpClient:
    """Requests to one registry's ``base_url``, at most ``max_connections`` short ones at once.

    ``send`` reads a short answer whole (its body capped: error pages can be huge);
    ``stream`` hands over the open response. Neither raises anything but mirror errors for
    what the network or the server does.
    """

    def __init__(
        self,
        registry: str,
        base_url: str,
        *,
        auth: httpx.Auth,
        verify: bool | str,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.base_url = base_url
        self._http = _Client(
            base_url=base_url,
            auth=auth,
            timeout=timeout,
            verify=ssl_context(verify),
            transport=transport or transport_for(base_url, verify, max_connections),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers=headers,
        )
        # Short requests in flight at once (blob streams are bounded by the copier instead):
        # the pool opens a connection for each request and keeps up to this many idle.
        self._slots = asyncio.Semaphore(max_connections)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
        self, method: str, url: httpx.URL | str, *, follow_redirects: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, its answer read up to MAX_ERROR_BODY_BYTES (these answers are small;
        an error page of megabytes is cut)."""
        request = self._http.build_request(method, url, **kwargs)
        try:
            async with self._slots:
                response = await self._http.send(
                    request, stream=True, follow_redirects=follow_redirects
                )
                try:
                    body = await read_capped(response, MAX_ERROR_BODY_BYTES, "response", trim=True)
                finally:
                    await response.aclose()
        except httpx.RequestError as exc:
            raise self.failed(method, url, exc) from None
        except httpx.StreamConsumed:
            # A streamed body cannot be sent twice: the registry asked for credentials again
            # mid-upload. The transfer as a whole is retried, with a fresh token.
            raise Unavailable(
                f"registry {self.registry}: credentials were refused during {method} "
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

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        held: bool = False,
        ready: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """A streamed request. A short read takes a request slot like ``send``; a ``held``
        stream (a blob, open while its upload runs) does not, so that copying within one
        registry cannot starve the upload of a slot (the copier bounds those itself).
        ``ready()`` is called once the request may go, and may refuse it by raising.
        Failures while the body is read map like the request's own."""
        async with contextlib.AsyncExitStack() as stack:
            if not held:
                await stack.enter_async_context(self._slots)
            if ready is not None:
                ready()
            try:
                async with self._http.stream(method, url, **kwargs) as response:
                    yield response
            except httpx.RequestError as exc:
                raise self.failed(method, url, exc) from None

    def failed(self, method: str, url: httpx.URL | str, exc: httpx.RequestError) -> Unavailable:
        """The mirror error for a request httpx could not complete."""
        text = str(exc) or type(exc).__name__
        full = self._http.base_url.join(str(url)) if not str(url).startswith("http") else url
        where = f"({method} {safe_url(full)})"
        if isinstance(exc, httpx.DecodingError):
            what = f"answer could not be decoded {where}"
        elif isinstance(exc, httpx.TooManyRedirects):
            what = f"too many redirects {where}"
        else:
            what = f"cannot reach {self.base_url} {where}"
        return Unavailable(
            f"registry {self.registry}: {what}: {text}", method=method, url=safe_url(full)
        )


async def body_chunks(
    response: httpx.Response, registry: str, what: str, *, skip: int = 0
) -> AsyncIterator[bytes]:
    """A streamed body in BLOB_CHUNK_BYTES pieces, the first ``skip`` bytes dropped; a body
    that breaks off yields every byte that came, then raises Unavailable.

    Gathered by hand: httpx's own chunker drops the part of a chunk it holds when the body
    breaks, and a resume would fetch those bytes twice.
    """
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
    except httpx.RequestError as exc:
        if pending:
            yield bytes(pending)  # every byte that arrived goes on; the resume starts after it
        raise Unavailable(
            f"registry {registry}: {what} download broke off: {exc or type(exc).__name__}",
            method="GET",
            url=safe_url(response.request.url),
        ) from None
