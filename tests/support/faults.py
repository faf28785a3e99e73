"""Fault modes for ``RegistryProxy``: ready-made rules that break, corrupt, slow or refuse.

This module owns *what goes wrong*, as rules for ``tests.support.proxy.RegistryProxy``
(``proxy.add_rule(rule)``): each is a callable ``(ProxyRequest) -> Action | None`` that
keeps count of what it did, so a test can assert that the fault really happened.  The
proxy owns *how* (``Tamper``, ``Respond``, ``Flood``, ``Hang`` ...).

* blob bodies (``BlobFault``): cut or reset the connection after N bytes, flip a byte,
  throttle, stall (until a timeout, or until the test releases it), for the first K
  GETs of a blob or for every one; on the registry listener or on the fake CDN; and
  an upstream that ignores ``Range``;
* no answer at all (``Silent``): the request is read and the connection left hanging;
* whole answers: ``Unavailable`` (503 with distribution's JSON ``UNAVAILABLE`` error,
  every Nth matching request, the next N, or forever), ``Intermittent`` (the same for any
  answer, e.g. ``too_many_requests``: the plain 429 with ``Retry-After``), ``Refuse``
  (any answer to the first N matching requests or all, e.g. ``server_error`` on the PUT
  that commits an upload to the *target*);
* bad upstream data: ``FakeManifest`` (any bytes served as a tag's manifest, digest
  headers consistent with them), ``SwapManifest`` (a digest answered with other bytes),
  ``TagsNotJson``, ``HugeError`` (a megabytes-long error page), ``ForeignLink``
  (a tags page whose ``Link`` points at another host), ``EchoAuthorization`` (an error
  message that repeats the credentials it was sent), ``BasicAuthGate`` (Basic auth in
  front of a registry that has none).

Docker Hub's pull limit (quota headers, the pull-limit 429 ``TOOMANYREQUESTS``, a burst of
plain 429s) is ``tests.support.ratelimit.PullLimit``; the token endpoint answering HTML is
``TokenServer.answer_html``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from tests.support.proxy import (
    Action,
    BodyPlan,
    Flood,
    Forward,
    Hang,
    Listener,
    ProxyRequest,
    RegistryProxy,
    Respond,
    Served,
    Tamper,
)

Match = Callable[[ProxyRequest], bool]
BLOB_KINDS = frozenset({"blob", "cdn-blob"})


def error_body(code: str, message: str) -> bytes:
    """distribution's JSON error document: ``{"errors": [{"code": ..., "message": ...}]}``."""
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def unavailable_response(retry_after_s: float | None = None) -> Respond:
    """A 503 as a registry behind a struggling load balancer sends it."""
    headers = {"Content-Type": "application/json"}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    return Respond(503, error_body("UNAVAILABLE", "service unavailable"), headers)


def too_many_requests(retry_after_s: float) -> Respond:
    """The plain (abuse) 429: no JSON code, a ``Retry-After``."""
    return Respond(
        429,
        b"Too Many Requests",
        {"Retry-After": f"{retry_after_s:g}", "Content-Type": "text/plain"},
    )


def is_blob_get(digest: str | None = None, listener: Listener | None = None) -> Match:
    """Matches GETs of blob ``digest`` (any blob: None) on ``listener`` (either: None)."""

    def match(request: ProxyRequest) -> bool:
        return (
            request.method == "GET"
            and request.kind in BLOB_KINDS
            and (digest is None or request.ref == digest)
            and (listener is None or request.listener == listener)
        )

    return match


def is_manifest(
    method: str | None = None, repo: str | None = None, ref: str | None = None
) -> Match:
    def match(request: ProxyRequest) -> bool:
        return (
            request.kind == "manifest"
            and (method is None or request.method == method)
            and (repo is None or request.repo == repo)
            and (ref is None or request.ref == ref)
        )

    return match


def is_registry_request(request: ProxyRequest) -> bool:
    """Every request to the registry listener (not the CDN)."""
    return request.listener == "registry"


class _Counted:
    """A fault that fires for the first ``times`` matching requests (None: for ever)."""

    def __init__(self, times: int | None) -> None:
        self.times = times
        self.hits = 0
        self._lock = threading.Lock()

    def _take(self) -> bool:
        with self._lock:
            if self.times is not None and self.hits >= self.times:
                return False
            self.hits += 1
            return True


class BlobFault(_Counted):
    """Tamper with the bodies of GETs of one blob (or of every blob: ``digest=None``).

    Counts only bodies it really tampered with (a 401 or a redirect is not a hit): the
    first ``times`` 200/206 bodies (None: every one), of each blob apart with ``each``.
    ``listener`` limits it to the registry or to the fake CDN.  See ``BodyPlan`` for the
    knobs; ``stalled`` is set when a stall begins, ``release`` ends it.  ``ignore_range``
    makes the registry listener drop the client's ``Range`` header: an upstream that always
    answers 200 with the whole blob.
    """

    def __init__(
        self,
        digest: str | None,
        *,
        times: int | None = 1,
        each: bool = False,
        listener: Listener | None = None,
        cut_after: int | None = None,
        reset: bool = False,
        flip_at: int | None = None,
        bytes_per_s: float | None = None,
        stall_after: int | None = None,
        stall_s: float = 30.0,
        ignore_range: bool = False,
    ) -> None:
        super().__init__(times)
        self.digest = digest
        self.ignore_range = ignore_range
        self.each = each
        self.hits_by_blob: dict[str, int] = {}
        self.match = is_blob_get(digest, listener)
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._plan = BodyPlan(
            cut_after=cut_after,
            reset=reset,
            flip_at=flip_at,
            bytes_per_s=bytes_per_s,
            stall_after=stall_after,
            stall_s=stall_s,
            stalled=self.stalled,
            release=self.release,
        )

    def __call__(self, request: ProxyRequest) -> Action | None:
        if not self.match(request):
            return None
        if self.ignore_range and request.listener == "registry":
            return Tamper(self, Forward(drop=frozenset({"range"})))
        return Tamper(self)

    def plan(self, request: ProxyRequest, status: int, offset: int) -> BodyPlan | None:
        key = request.ref or ""
        with self._lock:
            done = self.hits_by_blob.get(key, 0) if self.each else self.hits
            if self.times is not None and done >= self.times:
                return None
            self.hits += 1
            self.hits_by_blob[key] = self.hits_by_blob.get(key, 0) + 1
        return self._plan


def cut_blob(
    digest: str, after: int, *, times: int | None = 1, reset: bool = False, **kwargs: Any
) -> BlobFault:
    """Break the download of ``digest`` after ``after`` bytes (FIN, or RST with ``reset``)."""
    return BlobFault(digest, times=times, cut_after=after, reset=reset, **kwargs)


def corrupt_blob(digest: str, at: int, **kwargs: Any) -> BlobFault:
    """Serve ``digest`` with the byte at offset ``at`` inverted, every time."""
    return BlobFault(digest, times=None, flip_at=at, **kwargs)


def throttle_blobs(bytes_per_s: float, digest: str | None = None, **kwargs: Any) -> BlobFault:
    """Serve blob bodies (every blob, or ``digest``) at ``bytes_per_s``, every time."""
    return BlobFault(digest, times=None, bytes_per_s=bytes_per_s, **kwargs)


def stall_blob(
    digest: str, after: int, *, times: int | None = 1, stall_s: float = 30.0, **kwargs: Any
) -> BlobFault:
    """Send ``after`` bytes of ``digest``, then nothing for ``stall_s`` (or until released)."""
    return BlobFault(digest, times=times, stall_after=after, stall_s=stall_s, **kwargs)


class Intermittent(_Counted):
    """Answer ``response`` to matching requests: every ``every``-th one, at most ``times``
    in all (None: no limit).  With ``once_each`` no request (method and path) is refused
    twice, so a client that retries at all gets through, whatever the interleaving.
    ``answered`` lists the refused requests."""

    def __init__(
        self,
        response: Respond,
        match: Match = is_registry_request,
        *,
        every: int = 1,
        times: int | None = None,
        once_each: bool = False,
    ) -> None:
        super().__init__(times)
        self.response = response
        self.match = match
        self.every = every
        self.once_each = once_each
        self.seen = 0
        self.answered: list[ProxyRequest] = []
        self._refused: set[tuple[str, str]] = set()

    def __call__(self, request: ProxyRequest) -> Action | None:
        if not self.match(request):
            return None
        key = (request.method, request.path)
        with self._lock:
            if self.once_each and key in self._refused:
                return None
            self.seen += 1
            if self.seen % self.every:
                return None
            if self.times is not None and self.hits >= self.times:
                return None
            self.hits += 1
            self._refused.add(key)
            self.answered.append(request)
        return self.response


class Unavailable(Intermittent):
    """503 ``UNAVAILABLE`` (see ``Intermittent``), with ``Retry-After`` if given."""

    def __init__(
        self,
        match: Match = is_registry_request,
        *,
        every: int = 1,
        times: int | None = None,
        once_each: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(
            unavailable_response(retry_after_s),
            match,
            every=every,
            times=times,
            once_each=once_each,
        )


class Refuse(_Counted):
    """Answer matching requests with ``response`` (the first ``times``; None: every one)."""

    def __init__(self, match: Match, response: Respond, *, times: int | None = None) -> None:
        super().__init__(times)
        self.match = match
        self.response = response

    def __call__(self, request: ProxyRequest) -> Action | None:
        if self.match(request) and self._take():
            return self.response
        return None


class Silent(_Counted):
    """Matching requests are read and never answered (``Hang``): a black-holed upstream.
    ``hung`` lists them."""

    def __init__(self, match: Match, *, times: int | None = None, seconds: float = 30.0) -> None:
        super().__init__(times)
        self.match = match
        self.seconds = seconds
        self.hung: list[ProxyRequest] = []

    def __call__(self, request: ProxyRequest) -> Action | None:
        if not self.match(request) or not self._take():
            return None
        with self._lock:
            self.hung.append(request)
        return Hang(self.seconds)


def is_upload_commit(digest: str | None = None) -> Match:
    """The PUT that finishes a blob upload (``PUT .../blobs/uploads/ID?digest=...``)."""

    def match(request: ProxyRequest) -> bool:
        if request.method != "PUT" or request.kind != "upload":
            return False
        committed = request.query.get("digest", [None])[0]
        return committed is not None and (digest is None or committed == digest)

    return match


def server_error(
    message: str = "storage backend failed", *, retry_after_s: float | None = None
) -> Respond:
    """A 500 with distribution's JSON ``UNKNOWN`` error (and ``Retry-After`` if given)."""
    headers = {"Content-Type": "application/json"}
    if retry_after_s is not None:
        headers["Retry-After"] = f"{retry_after_s:g}"
    return Respond(500, error_body("UNKNOWN", message), headers)


class FakeManifest:
    """Serve ``body`` as manifest ``repo:tag`` (and as its own digest), HEAD and GET.

    ``Docker-Content-Digest`` is the sha256 of ``body``, so a client that checks digests
    finds them consistent and has to judge the bytes themselves.
    """

    def __init__(self, repo: str, tag: str, body: bytes, media_type: str) -> None:
        self.repo, self.tag, self.body, self.media_type = repo, tag, body, media_type
        self.digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.gets = 0

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.kind != "manifest" or request.repo != self.repo:
            return None
        if request.ref not in (self.tag, self.digest) or request.method not in ("GET", "HEAD"):
            return None
        if request.method == "GET":
            self.gets += 1
        headers = {"Content-Type": self.media_type, "Docker-Content-Digest": self.digest}
        return Respond(200, self.body, headers)  # a HEAD gets the length and no body


class SwapManifest:
    """GETs of manifest ``repo@digest`` get ``body`` instead (HEADs tell the truth)."""

    def __init__(self, repo: str, digest: str, body: bytes, media_type: str) -> None:
        self.repo, self.digest, self.body, self.media_type = repo, digest, body, media_type
        self.gets = 0

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.method == "GET" and is_manifest(repo=self.repo, ref=self.digest)(request):
            self.gets += 1
            return Respond(
                200,
                self.body,
                {"Content-Type": self.media_type, "Docker-Content-Digest": self.digest},
            )
        return None


class TagsNotJson:
    """The tags list of ``repo`` is an HTML page with status 200."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.gets = 0

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.kind == "tags" and request.repo == self.repo and request.method == "GET":
            self.gets += 1
            return Respond(
                200,
                b"<html><body>Gateway maintenance</body></html>",
                {"Content-Type": "application/json"},
            )
        return None


class HugeError:
    """Matching requests get ``status`` with an error page of ``size`` bytes."""

    def __init__(self, match: Match, *, status: int = 400, size: int = 1024**3) -> None:
        self.match = match
        self.status = status
        self.size = size
        self.hits = 0

    def __call__(self, request: ProxyRequest) -> Action | None:
        if self.match(request):
            self.hits += 1
            return Flood(self.status, self.size, {"Content-Type": "text/html"})
        return None


class ForeignLink:
    """Tags pages of ``repo`` carry ``Link: <url>; rel="next"`` pointing at ``url``."""

    def __init__(self, repo: str, url: str) -> None:
        self.repo = repo
        self.url = url

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.kind == "tags" and request.repo == self.repo and request.method == "GET":
            return Forward(headers={"Link": f'<{self.url}>; rel="next"'})
        return None


class EchoAuthorization:
    """Matching requests that carry credentials get 403 ``DENIED`` whose message repeats the
    ``Authorization`` header (some registries and proxies echo what they refused)."""

    def __init__(self, match: Match) -> None:
        self.match = match
        self.echoed: list[str] = []

    def __call__(self, request: ProxyRequest) -> Action | None:
        credentials = request.headers.get("authorization")
        if credentials is None or not self.match(request):
            return None
        self.echoed.append(credentials)
        return Respond(
            403,
            error_body("DENIED", f"requested access to the resource is denied for {credentials}"),
            {"Content-Type": "application/json"},
        )


class BasicAuthGate:
    """Basic auth in front of a registry that has none: requests to the registry listener
    without one of ``users``' credentials get 401 with ``WWW-Authenticate: Basic``; the
    rest fall through (to ``Forward``). ``challenged`` counts the 401s."""

    def __init__(self, users: dict[str, str]) -> None:
        self.accepted = {
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            for user, password in users.items()
        }
        self.challenged = 0

    def __call__(self, request: ProxyRequest) -> Action | None:
        if request.listener != "registry" or request.headers.get("authorization") in self.accepted:
            return None
        self.challenged += 1
        return Respond(
            401,
            error_body("UNAUTHORIZED", "authentication required"),
            {
                "WWW-Authenticate": 'Basic realm="Registry Realm"',
                "Content-Type": "application/json",
            },
        )


# -- reading the proxy's records -----------------------------------------------------------


def blob_bodies(proxy: RegistryProxy, digest: str) -> list[Served]:
    """The 200/206 bodies of blob ``digest`` either listener served, in order."""
    return [
        s
        for s in proxy.served()
        if s.request.kind in BLOB_KINDS and s.request.ref == digest and s.status in (200, 206)
    ]


def bytes_served(proxy: RegistryProxy, digest: str) -> int:
    """Body bytes of blob ``digest`` the proxy (registry listener and CDN) wrote in all."""
    return sum(s.body_bytes for s in blob_bodies(proxy, digest))


def range_start(request: ProxyRequest) -> int | None:
    """N of a ``Range: bytes=N-`` header; None without one."""
    value = request.headers.get("range")
    if value is None:
        return None
    prefix, _, rest = value.partition("=")
    start = rest.split("-", 1)[0]
    return int(start) if prefix.strip() == "bytes" and start.isdigit() else None
