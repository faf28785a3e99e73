"""Registry authentication: the 401 challenge dance as an ``httpx.Auth`` flow.

Owns answering a registry's challenges: bearer tokens fetched from the realm and cached per
realm, service and scope, or Basic credentials, looked up (awaited) at the first challenge.
Does not parse challenges (``challenge``), find credentials (``credentials``) or decide which
registry is which: callers pass plain values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

import httpx

from mirror.challenge import Challenge, parse_challenges, required_scopes
from mirror.credentials import Credentials, CredentialSource, resolve_credentials
from mirror.errors import AuthError
from mirror.reference import is_loopback_host

DEFAULT_TOKEN_LIFETIME_S = 60  # Docker's token spec: expires_in defaults to 60 seconds
TOKEN_REFRESH_MARGIN_S = 10  # refresh this early so a token never expires mid-request
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024  # a token is a few KB; anything larger is not a token


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic() seconds


class RegistryAuth(httpx.Auth):
    """Authenticate requests to one registry, answering its 401 challenges.

    Bearer: GET the realm with ``service`` and ``scope`` (Basic credentials when there are any,
    none when anonymous), then retry with the token. Tokens are cached per realm, service and
    scope until shortly before they expire; once a registry's realm is known, later requests
    fetch (or reuse) the token up front instead of collecting a 401 each. Basic: send the
    credentials. The credential source is consulted once, at the first challenge, and awaited
    there (a Docker credential helper may take seconds; the event loop goes on meanwhile).
    Redirects are followed by httpx, which drops the Authorization header when the redirect
    leaves the registry's origin (Docker Hub sends blob GETs to a CDN).
    """

    requires_response_body = False

    def __init__(
        self,
        registry: str,
        credentials: CredentialSource | Credentials | None = None,
        *,
        allow_insecure_realm: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._credential_source = credentials
        self._credentials_resolved = not callable(credentials)
        self._credentials = credentials if isinstance(credentials, Credentials) else None
        self._lookup: asyncio.Task[Credentials | None] | None = None  # the lookup under way
        self._allow_insecure_realm = allow_insecure_realm or is_loopback_host(registry)
        self._clock = clock
        self._challenges: dict[str, Challenge] = {}  # origin -> the challenge it last sent
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._locks: defaultdict[tuple[str, str, tuple[str, ...]], asyncio.Lock] = defaultdict(
            asyncio.Lock
        )
        self.token_fetches = 0

    @property
    def credentials(self) -> Credentials | None:
        """The credentials resolved so far: None until the first challenge has looked them up.

        Never runs the lookup itself (that may take seconds); ``resolve_credentials`` does.
        """
        return self._credentials

    async def resolve_credentials(self) -> Credentials | None:
        """The credentials for this registry, looked up once, the first time this is awaited.

        Flows challenged while the lookup is under way wait for that same lookup; a lookup that
        failed is not remembered, so the next challenge tries again.
        """
        if self._credentials_resolved:
            return self._credentials
        if self._lookup is None:
            self._lookup = asyncio.ensure_future(self._look_up())
            self._lookup.add_done_callback(_retrieve_outcome)
        # Shielded: one flow given up (its tag cancelled) must not cancel the others' lookup.
        return await asyncio.shield(self._lookup)

    async def _look_up(self) -> Credentials | None:
        try:
            found = await resolve_credentials(self._credential_source)
        finally:
            self._lookup = None
        self._credentials, self._credentials_resolved = found, True
        return found

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        origin = _origin(request.url)
        scopes = tuple(sorted(required_scopes(request)))
        refreshed = False
        for _ in range(3):
            challenge = self._challenges.get(origin)
            if challenge is not None and challenge.scheme == "bearer":
                key = self._token_key(challenge, scopes)
                async with self._locks[key]:
                    token = self._tokens.get(key)
                    if token is None or token.expires_at <= self._clock():
                        credentials = await self.resolve_credentials()
                        token_response = yield self._token_request(challenge, key[2], credentials)
                        token = await self._read_token(token_response)
                        self._tokens[key] = token
                request.headers["Authorization"] = f"Bearer {token.value}"
            elif challenge is not None and challenge.scheme == "basic":
                credentials = await self.resolve_credentials()
                if credentials is not None:
                    request.headers["Authorization"] = _basic(credentials)

            response = yield request
            if response.status_code != 401:
                return
            if challenge is not None and challenge.scheme == "bearer":
                # The token was refused (expired early, revoked): never offer it again.
                key = self._token_key(challenge, scopes)
                sent = request.headers.get("Authorization", "")
                cached = self._tokens.get(key)
                if cached is not None and sent == f"Bearer {cached.value}":
                    del self._tokens[key]
            fresh = _preferred(parse_challenges(response.headers.get("WWW-Authenticate", "")))
            if fresh is None:
                return
            # The first challenge is when credentials are looked up: a registry that never
            # asks for them never runs a credential helper.
            credentials = await self.resolve_credentials()
            if fresh.scheme == "basic" and credentials is None:
                return
            wanted = tuple(sorted(set(scopes) | set(fresh.scopes)))
            if self._challenges.get(origin) == fresh:
                # The request already carried the answer to this very challenge. Wrong Basic
                # credentials end here; a token revoked or expired early gets one fresh try.
                if fresh.scheme == "basic" or refreshed:
                    return
                if wanted == scopes:
                    refreshed = True
                    self._tokens.pop(self._token_key(fresh, scopes), None)
            self._challenges[origin] = fresh
            scopes = wanted

    def sync_auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        raise RuntimeError("RegistryAuth works with httpx.AsyncClient only")

    def _token_key(
        self, challenge: Challenge, scopes: Iterable[str]
    ) -> tuple[str, str, tuple[str, ...]]:
        return (
            challenge.params.get("realm", ""),
            challenge.params.get("service", ""),
            tuple(sorted(set(scopes))),
        )

    def _token_request(
        self, challenge: Challenge, scopes: tuple[str, ...], credentials: Credentials | None
    ) -> httpx.Request:
        realm = challenge.params.get("realm", "")
        url = httpx.URL(realm)
        if url.scheme not in ("https", "http") or not url.host:
            raise AuthError(
                f"registry {self.registry}: token realm {realm!r} is not an http(s) URL"
            )
        if url.scheme == "http" and not (
            self._allow_insecure_realm or is_loopback_host(url.netloc.decode())
        ):
            raise AuthError(
                f"registry {self.registry}: token realm {realm} is plain http; "
                "mark the registry insecure to allow it"
            )
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        headers = {"Accept": "application/json"}
        if credentials is not None:
            params.append(("account", credentials.username))
            headers["Authorization"] = _basic(credentials)
        self.token_fetches += 1
        return httpx.Request("GET", url.copy_merge_params(params), headers=headers)

    async def _read_token(self, response: httpx.Response) -> _Token:
        realm = str(response.request.url.copy_with(query=None))
        # httpx re-reads this response with aread() after the flow moves on, so it must be read
        # with aread() too; a declared oversize body is refused before reading any of it.
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_TOKEN_RESPONSE_BYTES:
            raise AuthError(f"registry {self.registry}: token endpoint {realm} sent over 1 MiB")
        body = await response.aread()
        if response.status_code in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials else "anonymous access"
            raise AuthError(
                f"registry {self.registry}: token endpoint {realm} refused {who} "
                f"(HTTP {response.status_code}); check the username and password"
            )
        if response.status_code != 200:
            raise AuthError(
                f"registry {self.registry}: token endpoint {realm} answered HTTP "
                f"{response.status_code}"
            )
        try:
            document = json.loads(body)
        except ValueError:
            raise AuthError(
                f"registry {self.registry}: token endpoint {realm} did not answer JSON"
            ) from None
        value = None
        if isinstance(document, dict):
            value = document.get("token") or document.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"registry {self.registry}: token endpoint {realm} sent no token")
        lifetime = document.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME_S
        margin = min(TOKEN_REFRESH_MARGIN_S, lifetime / 4)
        return _Token(value, self._clock() + lifetime - margin)


def _preferred(challenges: list[Challenge]) -> Challenge | None:
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def _retrieve_outcome(lookup: asyncio.Task[Credentials | None]) -> None:
    """Mark a lookup's failure as seen: every flow that awaited it may have been cancelled."""
    if not lookup.cancelled():
        lookup.exception()


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode()}"


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
