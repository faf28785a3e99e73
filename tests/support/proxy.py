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
branch in ``_ProxyHandler._perform``.  Besides whole answers, a rule can tamper with
a body on its way through (``Tamper``: cut or reset the connection after N bytes,
flip a byte, throttle, stall), answer with an endless body (``Flood``), never answer
(``Hang``), or forward without some request headers (``Forward(drop=...)``);
``tests.support.faults`` holds the ready-made fault rules.

Every answer either listener gives is recorded as a ``Served`` (status, body bytes
actually written, how the body ended, when), so tests can tell exactly which bytes
of a blob went out and when a retry came.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Protocol, Self
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
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")

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
    at: float = field(default_factory=time.monotonic, compare=False)  # arrival, monotonic

    @property
    def has_authorization(self) -> bool:
        return "authorization" in self.headers

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass(frozen=True)
class BodyPlan:
    """What to do to one response body on its way to the client.

    Offsets of ``cut_after`` and ``stall_after`` count the bytes of *this* body;
    ``flip_at`` is an offset in the whole blob (a ranged answer starting past it is left
    alone), so a corrupt blob stays corrupt however it is fetched.
    """

    cut_after: int | None = None  # close the connection after this many body bytes
    reset: bool = False  # with cut_after: a TCP reset (RST) instead of a clean close (FIN)
    flip_at: int | None = None  # invert the byte at this blob offset
    bytes_per_s: float | None = None  # throttle the body to this rate
    stall_after: int | None = None  # send this many body bytes, then nothing
    stall_s: float = 30.0  # the longest a stall lasts before the connection is closed
    stalled: threading.Event | None = None  # set when the stall begins
    release: threading.Event | None = None  # set it to end the stall and send the rest


class BodyFault(Protocol):
    """Decides, once a response is about to be relayed, how to tamper with its body."""

    def plan(self, request: ProxyRequest, status: int, offset: int) -> BodyPlan | None:
        """The plan for this body (None: pass it through). ``offset`` is where a ranged
        answer starts in the blob (0 otherwise); only 200 and 206 bodies are offered."""
        ...


Outcome = Literal["complete", "cut", "reset", "stalled", "client-gone"]


@dataclass(frozen=True)
class Served:
    """One answer a listener gave: status, body bytes written, and how the body ended.

    ``outcome``: complete; cut (closed after ``cut_after``); reset (RST); stalled (closed
    after a stall timed out); client-gone (the client hung up before the end).
    ``status`` is 0 when nothing was answered at all (``Hang``).
    """

    request: ProxyRequest
    status: int
    body_bytes: int
    outcome: Outcome
    offset: int  # where a ranged body started in the blob
    started: float  # monotonic, when the status line went out
    ended: float  # monotonic, when the body ended


# -- actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Pass the request to the upstream registry and relay the answer (plus ``headers``).

    ``drop`` names request headers not to pass on (e.g. ``range``: an upstream that
    ignores Range).
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()


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


@dataclass(frozen=True)
class Hang:
    """Read the request, then answer nothing: no status line, no headers. The connection
    is closed when the client gives up, after ``seconds``, or when the proxy stops."""

    seconds: float = 30.0
    started: threading.Event | None = None  # set when the hang begins


@dataclass(frozen=True)
class Tamper:
    """Do ``inner`` (by default: what the proxy would do without this rule, CDN checks and
    redirects included) but let ``fault`` tamper with the 200/206 body it relays."""

    fault: BodyFault
    inner: Forward | RedirectToCdn | ServeFromCdn | None = None


@dataclass(frozen=True)
class Flood:
    """Answer ``status`` with a generated body of ``size`` bytes (never held in memory),
    stopping early when the client hangs up: a megabytes-long error page."""

    status: int
    size: int
    headers: Mapping[str, str] = field(default_factory=dict)
    fill: bytes = b"<p>error</p>\n"


Action = (
    Forward | RedirectToCdn | ServeFromCdn | PaginateTags | Respond | Drop | Tamper | Flood | Hang
)
Rule = Callable[[ProxyRequest], Action | None]


class _QuietServer(ThreadingHTTPServer):
    """Does not print tracebacks when a client hangs up mid-response."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _ConnectionReset(ConnectionResetError):
    """Raised after the proxy reset a connection on purpose, to end its handler quietly."""


def _range_start(content_range: str | None) -> int:
    match = _CONTENT_RANGE.match(content_range or "")
    return int(match.group(1)) if match else 0


class _BodyWriter:
    """Writes one response body to the client, applying a ``BodyPlan`` (if any).

    Counts the bytes it hands to the socket; a client that hangs up ends the body
    ("client-gone") instead of raising.
    """

    def __init__(
        self, handler: _ProxyHandler, *, chunked: bool, plan: BodyPlan | None, offset: int
    ) -> None:
        self.handler = handler
        self.chunked = chunked
        self.plan = plan
        self.offset = offset
        self.sent = 0
        self._began = time.monotonic()

    def send(self, chunks: Iterator[bytes]) -> Outcome:
        try:
            return self._send(chunks)
        except (ConnectionError, TimeoutError):
            self.handler.close_connection = True
            return "client-gone"

    def _send(self, chunks: Iterator[bytes]) -> Outcome:
        plan = self.plan
        stall_pending = plan is not None and plan.stall_after is not None
        for data in chunks:
            if not data:
                continue
            if plan is not None and plan.flip_at is not None:
                at = plan.flip_at - self.offset - self.sent
                if 0 <= at < len(data):
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
            while data:
                boundaries = []
                if plan is not None and plan.cut_after is not None:
                    boundaries.append(plan.cut_after)
                if stall_pending and plan is not None and plan.stall_after is not None:
                    boundaries.append(plan.stall_after)
                boundary = min(boundaries) if boundaries else None
                if boundary is None or self.sent + len(data) < boundary:
                    self._emit(data)
                    break
                head, data = data[: boundary - self.sent], data[boundary - self.sent :]
                self._emit(head)
                assert plan is not None
                if plan.cut_after is not None and boundary == plan.cut_after:
                    return self._cut(plan.reset)
                stall_pending = False
                outcome = self._stall(plan)
                if outcome != "complete":
                    self.handler.close_connection = True
                    return outcome
        if self.chunked:
            self._write(b"0\r\n\r\n")
        return "complete"

    def _emit(self, data: bytes) -> None:
        rate = self.plan.bytes_per_s if self.plan is not None else None
        if not rate:
            self._write_body(data)
            return
        piece = max(1, int(rate / 50))  # about 50 writes a second
        for start in range(0, len(data), piece):
            self._write_body(data[start : start + piece])
            due = self._began + self.sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _write_body(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._write(data)
        self.sent += len(data)

    def _write(self, data: bytes) -> None:
        self.handler.wfile.write(data)

    def _cut(self, reset: bool) -> Outcome:
        handler = self.handler
        handler.close_connection = True
        if not reset:
            return "cut"  # the server closes the connection cleanly (FIN) after the handler
        # SO_LINGER 0 makes close() send RST; the handler's file objects hold the socket
        # open until they are closed too.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.rfile.close()
        handler.wfile.close()
        handler.connection.close()
        return "reset"

    def _stall(self, plan: BodyPlan) -> Outcome:
        """Send nothing until released, the client hangs up, the stall ends or the proxy
        stops. "complete" means released: send the rest."""
        if plan.stalled is not None:
            plan.stalled.set()
        return self.handler._wait_quietly(plan.stall_s, plan.release)


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
        self._served: list[Served] = []
        self.stopping = threading.Event()  # ends stalls when the proxy stops
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
        self.stopping.set()
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
            if isinstance(action, Tamper) and action.inner is None:
                default = self._default_action(request)
                if isinstance(default, Forward | RedirectToCdn | ServeFromCdn):
                    return Tamper(action.fault, default)
                return default  # a refusal (or a tags page) is answered as usual
            if action is not None:
                return action
        return self._default_action(request)

    def _default_action(self, request: ProxyRequest) -> Action:
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

    def _note_served(self, served: Served) -> None:
        with self._lock:
            self._served.append(served)

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

    def served(self) -> list[Served]:
        """Every answer either listener gave (or began), in the order they ended."""
        with self._lock:
            return list(self._served)

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
            self._served.clear()


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

    def _record(
        self,
        request: ProxyRequest,
        status: int,
        body_bytes: int,
        outcome: Outcome,
        started: float,
        offset: int = 0,
    ) -> None:
        self.proxy._note_served(
            Served(request, status, body_bytes, outcome, offset, started, time.monotonic())
        )

    def _wait_quietly(self, seconds: float, release: threading.Event | None = None) -> Outcome:
        """Send nothing until ``release`` is set ("complete"), the client hangs up
        ("client-gone"), ``seconds`` pass or the proxy stops ("stalled")."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        stopping = self.proxy.stopping
        while True:
            if release is not None and release.is_set():
                return "complete"
            left = deadline - time.monotonic()
            if left <= 0 or stopping.is_set():
                return "stalled"
            readable, _, _ = select.select([sock], [], [], min(0.02, left))
            if readable:
                try:
                    peeked = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    return "client-gone"
                if not peeked:
                    return "client-gone"  # the client timed out and closed
                time.sleep(0.02)

    def _respond(self, action: Respond, request: ProxyRequest) -> None:
        self._drain()
        started = time.monotonic()
        self.send_response(action.status)
        for name, value in action.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(action.body)))
        self.end_headers()
        if self.command == "HEAD":
            self._record(request, action.status, 0, "complete", started)
            return
        writer = _BodyWriter(self, chunked=False, plan=None, offset=0)
        body = action.body
        outcome = writer.send(iter([body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]))
        self._record(request, action.status, writer.sent, outcome, started)

    def _flood(self, action: Flood, request: ProxyRequest) -> None:
        self._drain()
        started = time.monotonic()
        self.send_response(action.status)
        for name, value in action.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(action.size))
        self.end_headers()
        if self.command == "HEAD":
            self._record(request, action.status, 0, "complete", started)
            return
        block = (action.fill * (CHUNK // max(1, len(action.fill)) + 1))[:CHUNK]
        writer = _BodyWriter(self, chunked=False, plan=None, offset=0)

        def blocks() -> Iterator[bytes]:
            left = action.size
            while left > 0:
                yield block[: min(left, CHUNK)]
                left -= CHUNK

        outcome = writer.send(blocks())
        self._record(request, action.status, writer.sent, outcome, started)

    def _relay(
        self,
        upstream: httpx.Response,
        request: ProxyRequest,
        allowed: Sequence[str] | None = None,
        extra: Mapping[str, str] | None = None,
        fault: BodyFault | None = None,
    ) -> None:
        """Send ``upstream``'s status, headers (and ``extra``) and streamed body to the client,
        letting ``fault`` tamper with a 200/206 body."""
        started = time.monotonic()
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
        offset = _range_start(upstream.headers.get("content-range"))
        if bodiless:
            self._record(request, upstream.status_code, 0, "complete", started, offset)
            return
        plan = None
        if fault is not None and upstream.status_code in (200, 206):
            plan = fault.plan(request, upstream.status_code, offset)
        writer = _BodyWriter(self, chunked=chunked, plan=plan, offset=offset)
        outcome = writer.send(upstream.iter_raw(CHUNK))
        self._record(request, upstream.status_code, writer.sent, outcome, started, offset)
        if outcome == "reset":
            raise _ConnectionReset("connection reset by the proxy on purpose")

    def _send_upstream(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        with_body: bool,
        for_request: ProxyRequest | None = None,
    ) -> httpx.Response | None:
        """Open a streamed upstream response, or answer 502 (recorded as served for
        ``for_request``) and return None."""
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
            started = time.monotonic()
            self.send_response(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            if for_request is not None:
                written = 0 if self.command == "HEAD" else len(body)
                self._record(for_request, 502, written, "complete", started)
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
            for_request=request,
        )
        if upstream is None:
            return
        try:
            if upstream.status_code != 200:
                self._relay(upstream, request)
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

    def _perform(
        self, action: Action, request: ProxyRequest, fault: BodyFault | None = None
    ) -> None:
        proxy = self.proxy
        match action:
            case Respond():
                self._respond(action, request)
            case Drop():
                self.close_connection = True
            case Hang(seconds=seconds, started=hang_started):
                self._drain()
                began = time.monotonic()
                if hang_started is not None:
                    hang_started.set()
                outcome = self._wait_quietly(seconds)
                self.close_connection = True
                self._record(request, 0, 0, outcome, began)
            case Tamper(fault=body_fault, inner=inner):
                self._perform(inner or Forward(), request, body_fault)
            case Flood():
                self._flood(action, request)
            case Forward() | RedirectToCdn():
                dropped = action.drop if isinstance(action, Forward) else frozenset()
                upstream = self._send_upstream(
                    self.command,
                    proxy.upstream_url + self.path,
                    [(k, v) for k, v in self._forward_headers() if k.lower() not in dropped],
                    with_body=self._has_body(),
                    for_request=request,
                )
                if upstream is None:
                    return
                try:
                    # Docker Hub redirects ranged blob GETs to its CDN as well.
                    redirect = (
                        isinstance(action, RedirectToCdn)
                        and upstream.status_code in (200, 206)
                        and request.repo is not None
                        and request.ref is not None
                    )
                    if redirect:
                        assert request.repo is not None and request.ref is not None
                        proxy._note_redirect(request)
                        started = time.monotonic()
                        self.send_response(307)
                        self.send_header("Location", proxy.cdn_location(request.repo, request.ref))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        self._record(request, 307, 0, "complete", started)
                    else:
                        extra = action.headers if isinstance(action, Forward) else None
                        self._relay(upstream, request, extra=extra, fault=fault)
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
                    for_request=request,
                )
                if upstream is None:
                    return
                try:
                    self._relay(upstream, request, allowed=CDN_RESPONSE_HEADERS, fault=fault)
                finally:
                    upstream.close()
