"""An HTTP proxy in front of a registry, with a fake CDN, for Hub-like behaviour and faults.

This module owns *network behaviour between the code under test and a registry*:

* the **registry listener** forwards every request verbatim (method, path, headers
  including ``Host``, ``Authorization`` and ``WWW-Authenticate``, streamed bodies
  both ways) to the upstream registry;
* with ``redirect_blobs=True`` a blob GET that the upstream would answer with 200
  is answered instead with ``307 Location: <cdn>/blobs/<digest>?repo=<name>``,
  like Docker Hub does (401/404 are still relayed, so auth works as upstream);
* the **CDN listener** (another port, so another origin) rejects with 403 any
  request that carries ``Authorization`` (a client must not leak its registry
  token to a CDN), and otherwise fetches the blob from upstream with a token it
  mints itself, honouring ``Range`` (206 + ``Content-Range``);
* with ``tags_page_size=N`` tags lists are served sorted in pages of at most N with
  ``Link: <...?last=...&n=N>; rel="next"`` like Docker Hub, because distribution
  2.8 itself ignores ``n`` for tags lists (only ``_catalog`` pages).

Every request from either listener goes through ``RegistryProxy.decide`` - the one
place that picks an ``Action``.  Tests add fault modes with ``add_rule``: a rule
sees a ``ProxyRequest`` and returns an ``Action`` (e.g. ``Respond(503)``, ``Drop()``)
or None to fall through.  New kinds of fault are a new ``Action`` class plus a
branch in ``_ProxyHandler._perform``.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from tests.support.registry import http_client

TokenGetter = Callable[[list[str]], str]
Listener = Literal["registry", "cdn"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What the fake CDN passes on from the registry's blob response (a CDN does not
# speak the registry API, so e.g. Docker-Content-Digest is not among them).
CDN_RESPONSE_HEADERS = (
    "content-length",
    "content-range",
    "content-type",
    "accept-ranges",
    "etag",
    "last-modified",
)
CHUNK = 64 * 1024

_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("upload", re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<ref>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<ref>[a-z0-9]+:[a-zA-Z0-9=_-]+)$")),
    ("manifest", re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<repo>.+)/tags/list$")),
    ("cdn-blob", re.compile(r"^/blobs/(?P<ref>[a-z0-9]+:[a-zA-Z0-9=_-]+)$")),
)


@dataclass(frozen=True)
class ProxyRequest:
    """What ``decide`` and rules see about one incoming request."""

    listener: Listener
    number: int  # 1-based, per proxy, across both listeners
    method: str
    path: str  # request target as received, with query
    headers: Mapping[str, str] = field(repr=False)  # lower-cased names
    kind: str | None  # base, catalog, upload, blob, manifest, tags, cdn-blob; None: other
    repo: str | None
    ref: str | None  # tag/digest, blob digest or upload id

    @property
    def has_authorization(self) -> bool:
        return "authorization" in self.headers


# -- actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Pass the request to the upstream registry and relay the answer (plus ``headers``)."""

    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedirectToCdn:
    """Ask upstream; if it would serve the blob (200), answer 307 to the CDN instead."""


@dataclass(frozen=True)
class ServeFromCdn:
    """(CDN listener) fetch the blob from upstream with a minted token and relay it."""


@dataclass(frozen=True)
class PaginateTags:
    """Serve ``tags/list`` in sorted pages of at most ``page_size`` with a ``Link``
    header, like Docker Hub (distribution 2.8 ignores ``n`` for tags lists)."""

    page_size: int


@dataclass(frozen=True)
class Respond:
    """Answer directly without asking upstream."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Action = Forward | RedirectToCdn | ServeFromCdn | PaginateTags | Respond | Drop
Rule = Callable[[ProxyRequest], Action | None]


class _QuietServer(ThreadingHTTPServer):
    """Does not print tracebacks when a client hangs up mid-response."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _classify(path: str) -> tuple[str | None, str | None, str | None]:
    plain = urlsplit(path).path
    for kind, pattern in _ROUTES:
        match = pattern.match(plain)
        if match:
            groups = match.groupdict()
            return kind, groups.get("repo"), groups.get("ref")
    return None, None, None


class RegistryProxy:
    """A proxy (``url``) in front of ``upstream_url``, plus a fake CDN (``cdn_url``).

    ``cdn_token_getter`` mints the CDN's own pull tokens (``["repository:<name>:pull"]``
    -> token); None means upstream needs no auth.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        redirect_blobs: bool = False,
        tags_page_size: int | None = None,
        cdn_token_getter: TokenGetter | None = None,
        rules: Sequence[Rule] = (),
        timeout: float = 30.0,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.redirect_blobs = redirect_blobs
        self.tags_page_size = tags_page_size
        self.cdn_token_getter = cdn_token_getter
        self._rules: list[Rule] = list(rules)
        self._lock = threading.Lock()
        self._counter = 0
        self._requests: list[ProxyRequest] = []
        self._cdn_requests: list[ProxyRequest] = []
        self._cdn_rejected: list[ProxyRequest] = []
        self._redirects: list[ProxyRequest] = []
        self.upstream = http_client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._servers: dict[Listener, ThreadingHTTPServer] = {}
        self._threads: list[threading.Thread] = []

    # -- addresses -------------------------------------------------------------

    def _port(self, listener: Listener) -> int:
        if listener not in self._servers:
            raise RuntimeError("proxy not started")
        port: int = self._servers[listener].server_address[1]
        return port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port('registry')}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._port('cdn')}"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        if self._servers:
            return self
        listeners: tuple[Listener, ...] = ("registry", "cdn")
        for listener in listeners:
            server = _QuietServer(("127.0.0.1", 0), _ProxyHandler)
            server.proxy = self  # type: ignore[attr-defined]
            server.listener = listener  # type: ignore[attr-defined]
            self._servers[listener] = server
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name=f"proxy-{listener}:{server.server_address[1]}",
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self.upstream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- decisions -------------------------------------------------------------

    def add_rule(self, rule: Rule) -> None:
        """Add a rule; rules are asked in order and the first non-None action wins."""
        with self._lock:
            self._rules.append(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def decide(self, request: ProxyRequest) -> Action:
        """The single place that decides what happens to a request (and counts it)."""
        with self._lock:
            rules = list(self._rules)
            if request.listener == "registry":
                self._requests.append(request)
            else:
                self._cdn_requests.append(request)
        for rule in rules:
            action = rule(request)
            if action is not None:
                return action
        if request.listener == "cdn":
            if request.has_authorization:
                with self._lock:
                    self._cdn_rejected.append(request)
                return Respond(
                    403,
                    b"<Error><Code>AccessDenied</Code><Message>Authorization header not "
                    b"allowed on a signed URL</Message></Error>",
                    {"Content-Type": "application/xml"},
                )
            if request.kind != "cdn-blob" or request.method not in ("GET", "HEAD"):
                return Respond(404, b"not found", {"Content-Type": "text/plain"})
            return ServeFromCdn()
        if self.redirect_blobs and request.method == "GET" and request.kind == "blob":
            return RedirectToCdn()
        if self.tags_page_size and request.method == "GET" and request.kind == "tags":
            return PaginateTags(self.tags_page_size)
        return Forward()

    def _next_number(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _note_redirect(self, request: ProxyRequest) -> None:
        with self._lock:
            self._redirects.append(request)

    def cdn_location(self, repo: str, digest: str) -> str:
        return f"{self.cdn_url}/blobs/{digest}?repo={quote(repo, safe='')}"

    # -- records ---------------------------------------------------------------

    def requests(self) -> list[ProxyRequest]:
        """Requests the registry listener received."""
        with self._lock:
            return list(self._requests)

    def cdn_requests(self) -> list[ProxyRequest]:
        """Requests the CDN listener received (including rejected ones)."""
        with self._lock:
            return list(self._cdn_requests)

    def cdn_rejected(self) -> list[ProxyRequest]:
        """CDN requests refused with 403 because they carried Authorization."""
        with self._lock:
            return list(self._cdn_rejected)

    def redirects(self) -> list[ProxyRequest]:
        """Blob GETs answered with a 307 to the CDN."""
        with self._lock:
            return list(self._redirects)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": len(self._requests),
                "redirects": len(self._redirects),
                "cdn_requests": len(self._cdn_requests),
                "cdn_rejected_authorization": len(self._cdn_rejected),
            }

    def reset_records(self) -> None:
        with self._lock:
            for records in (
                self._requests,
                self._cdn_requests,
                self._cdn_rejected,
                self._redirects,
            ):
                records.clear()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-registry-proxy/1"
    timeout = 30  # idle keep-alive connections give up eventually
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    @property
    def proxy(self) -> RegistryProxy:
        proxy: RegistryProxy = self.server.proxy  # type: ignore[attr-defined]
        return proxy

    @property
    def listener(self) -> Listener:
        listener: Listener = self.server.listener  # type: ignore[attr-defined]
        return listener

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        kind, repo, ref = _classify(self.path)
        if kind == "cdn-blob":
            repo = parse_qs(urlsplit(self.path).query).get("repo", [None])[0]
        request = ProxyRequest(
            listener=self.listener,
            number=self.proxy._next_number(),
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            kind=kind,
            repo=repo,
            ref=ref,
        )
        self._perform(self.proxy.decide(request), request)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    # -- request bodies --------------------------------------------------------

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives (Content-Length or chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise ConnectionError("client went away mid-body")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(1024)  # CRLF after each chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, CHUNK))
                if not data:
                    raise ConnectionError("client went away mid-body")
                remaining -= len(data)
                yield data

    def _has_body(self) -> bool:
        return "Content-Length" in self.headers or "Transfer-Encoding" in self.headers

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    # -- responses -------------------------------------------------------------

    def _respond(self, action: Respond) -> None:
        self._drain()
        self.send_response(action.status)
        for name, value in action.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(action.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(action.body)

    def _relay(
        self,
        upstream: httpx.Response,
        allowed: Sequence[str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """Send ``upstream``'s status, headers (and ``extra``) and streamed body to the client."""
        self.send_response_only(upstream.status_code, upstream.reason_phrase)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        has_length = False
        for name, value in upstream.headers.multi_items():
            lower = name.lower()
            if lower in HOP_BY_HOP or (allowed is not None and lower not in allowed):
                continue
            has_length |= lower == "content-length"
            self.send_header(name, value)
        bodiless = self.command == "HEAD" or upstream.status_code in (204, 304)
        chunked = not has_length and not bodiless
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodiless:
            return
        for data in upstream.iter_raw(CHUNK):
            if not data:
                continue
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send_upstream(
        self, method: str, url: str, headers: list[tuple[str, str]], with_body: bool
    ) -> httpx.Response | None:
        """Open a streamed upstream response, or answer 502 and return None."""
        client = self.proxy.upstream
        content: Iterator[bytes] | None = self._body_chunks() if with_body else None
        request = client.build_request(method, url, headers=headers, content=content)
        sent = {name.lower() for name, _ in headers}
        for default in ("accept", "accept-encoding", "user-agent"):
            if default not in sent:
                del request.headers[default]  # forward verbatim: no httpx defaults
        try:
            return client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.close_connection = True
            body = f"proxy: upstream failed: {exc!r}".encode()
            self.send_response(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return None

    def _forward_headers(self) -> list[tuple[str, str]]:
        return [
            (name, value) for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP
        ]

    def _paginate_tags(self, request: ProxyRequest, page_size: int) -> None:
        upstream = self._send_upstream(
            "GET",
            f"{self.proxy.upstream_url}/v2/{request.repo}/tags/list",
            self._forward_headers(),
            with_body=False,
        )
        if upstream is None:
            return
        try:
            if upstream.status_code != 200:
                self._relay(upstream)
                return
            all_tags = sorted(json.loads(upstream.read()).get("tags") or [])
        finally:
            upstream.close()
        query = parse_qs(urlsplit(self.path).query)
        last = query.get("last", [""])[0]
        size = min(page_size, int(query["n"][0])) if query.get("n") else page_size
        remaining = [tag for tag in all_tags if tag > last]
        page = remaining[:size]
        body = json.dumps({"name": request.repo, "tags": page}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if len(remaining) > size and page:
            next_url = f"/v2/{request.repo}/tags/list?last={quote(page[-1], safe='')}&n={size}"
            self.send_header("Link", f'<{next_url}>; rel="next"')
        self.end_headers()
        self.wfile.write(body)

    def _perform(self, action: Action, request: ProxyRequest) -> None:
        proxy = self.proxy
        match action:
            case Respond():
                self._respond(action)
            case Drop():
                self.close_connection = True
            case Forward() | RedirectToCdn():
                upstream = self._send_upstream(
                    self.command,
                    proxy.upstream_url + self.path,
                    self._forward_headers(),
                    with_body=self._has_body(),
                )
                if upstream is None:
                    return
                try:
                    redirect = (
                        isinstance(action, RedirectToCdn)
                        and upstream.status_code == 200
                        and request.repo is not None
                        and request.ref is not None
                    )
                    if redirect:
                        assert request.repo is not None and request.ref is not None
                        proxy._note_redirect(request)
                        self.send_response(307)
                        self.send_header("Location", proxy.cdn_location(request.repo, request.ref))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        extra = action.headers if isinstance(action, Forward) else None
                        self._relay(upstream, extra=extra)
                finally:
                    upstream.close()
            case PaginateTags(page_size=page_size):
                self._drain()
                self._paginate_tags(request, page_size)
            case ServeFromCdn():
                self._drain()
                headers = []
                if request.repo and proxy.cdn_token_getter is not None:
                    token = proxy.cdn_token_getter([f"repository:{request.repo}:pull"])
                    headers.append(("Authorization", f"Bearer {token}"))
                if "range" in request.headers:
                    headers.append(("Range", request.headers["range"]))
                upstream = self._send_upstream(
                    self.command,
                    f"{proxy.upstream_url}/v2/{request.repo}/blobs/{request.ref}",
                    headers,
                    with_body=False,
                )
                if upstream is None:
                    return
                try:
                    self._relay(upstream, allowed=CDN_RESPONSE_HEADERS)
                finally:
                    upstream.close()
