"""Registry authentication: the 401 challenge dance as an ``httpx.Auth`` flow, and credentials.

Owns parsing ``WWW-Authenticate``, fetching and caching bearer tokens per realm/service/scope,
Basic auth, and finding credentials (explicit, Docker's ``config.json``, credential helpers).
Does not decide which registry is which or read mirror's config: callers pass plain values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mirror.errors import AuthError
from mirror.reference import DOCKER_HUB, is_loopback_host, normalize_registry

DEFAULT_TOKEN_LIFETIME_S = 60  # Docker's token spec: expires_in defaults to 60 seconds
TOKEN_REFRESH_MARGIN_S = 10  # refresh this early so a token never expires mid-request
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024  # a token is a few KB; anything larger is not a token
CREDENTIAL_HELPER_TIMEOUT_S = 30
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"  # the key Docker uses for Hub in config.json


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password (or access token); the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a lower-case scheme and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope", "")
        return tuple(normalize_scope(s) for s in scope.split(" ") if s)


def normalize_scope(scope: str) -> str:
    """``repository:x:push,pull`` -> ``repository:x:pull,push``: actions as a sorted set.

    distribution lists a challenge's actions in random order; a cache must not care.
    """
    resource, colon, actions = scope.rpartition(":")
    if not colon:
        return scope
    return f"{resource}:{','.join(sorted(set(actions.split(','))))}"


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235) into its challenges.

    Handles several challenges in one header, quoted values with backslash escapes and commas
    inside quotes (Docker Hub's scope lists). Malformed parts are skipped, never raised.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    current: Challenge | None = None
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        start = i
        while i < n and header[i] not in " \t,=":
            i += 1
        token = header[start:i]
        if not token:
            i += 1
            continue
        j = i
        while j < n and header[j] in " \t":
            j += 1
        if j < n and header[j] == "=" and current is not None:
            i = j + 1
            while i < n and header[i] in " \t":
                i += 1
            value, i = _read_value(header, i)
            current.params[token.lower()] = value
        else:
            current = Challenge(token.lower(), {})
            challenges.append(current)
    return challenges


def _read_value(header: str, i: int) -> tuple[str, int]:
    n = len(header)
    if i < n and header[i] == '"':
        i += 1
        chars: list[str] = []
        while i < n and header[i] != '"':
            if header[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(header[i])
            i += 1
        return "".join(chars), i + 1
    start = i
    while i < n and header[i] not in ",":
        i += 1
    return header[start:i].strip(), i


# The route is anchored at the end: a repository may have a component called "blobs".
_REPOSITORY_ROUTE = re.compile(
    r"^/v2/(?P<name>.+?)/(?:manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+|tags/list)$"
)


def required_scopes(request: httpx.Request) -> tuple[str, ...]:
    """The token scopes a registry request needs, read from its path and method.

    Reads and HEADs need ``pull``; writes need ``pull,push``; a cross-repository mount needs
    ``pull`` on the repository it mounts from as well.
    """
    match = _REPOSITORY_ROUTE.match(request.url.path)
    if match is None:
        return ()
    name = match["name"]
    write = request.method not in ("GET", "HEAD")
    scopes = [f"repository:{name}:{'pull,push' if write else 'pull'}"]
    source = request.url.params.get("from")
    if source and source != name:
        scopes.append(f"repository:{source}:pull")
    return tuple(scopes)


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic() seconds


CredentialSource = Callable[[], "Credentials | None"]


class RegistryAuth(httpx.Auth):
    """Authenticate requests to one registry, answering its 401 challenges.

    Bearer: GET the realm with ``service`` and ``scope`` (Basic credentials when there are any,
    none when anonymous), then retry with the token. Tokens are cached per realm, service and
    scope until shortly before they expire; once a registry's realm is known, later requests
    fetch (or reuse) the token up front instead of collecting a 401 each. Basic: send the
    credentials. Redirects are followed by httpx, which drops the Authorization header when the
    redirect leaves the registry's origin (Docker Hub sends blob GETs to a CDN).
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
        """The credentials for this registry, looked up once, at the first challenge."""
        if not self._credentials_resolved:
            source = self._credential_source
            assert callable(source)
            self._credentials = source()
            self._credentials_resolved = True
        return self._credentials

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
                        token_response = yield self._token_request(challenge, key[2])
                        token = await self._read_token(token_response)
                        self._tokens[key] = token
                request.headers["Authorization"] = f"Bearer {token.value}"
            elif challenge is not None and challenge.scheme == "basic" and self.credentials:
                request.headers["Authorization"] = _basic(self.credentials)

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
            if fresh.scheme == "basic" and self.credentials is None:
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

    def _token_request(self, challenge: Challenge, scopes: tuple[str, ...]) -> httpx.Request:
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
        credentials = self.credentials
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


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode()}"


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


# --- credential sources ---------------------------------------------------------------------


def docker_config_path() -> Path:
    """Where Docker keeps ``config.json``: ``$DOCKER_CONFIG`` or ``~/.docker``."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def docker_credentials(registry: str, config_path: Path | None = None) -> Credentials | None:
    """Credentials ``docker login`` stored for ``registry``, or None.

    Looks in ``credHelpers`` (per registry), then ``credsStore`` (the default helper), then the
    ``auths`` entries, the way the Docker CLI does. Helpers run as ``docker-credential-NAME get``
    with the server URL on stdin, so no secret ever appears in a process list.
    """
    path = config_path or docker_config_path()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read Docker credentials from {path}: {exc}") from None
    if not isinstance(document, dict):
        raise AuthError(f"cannot read Docker credentials from {path}: not a JSON object")
    registry = normalize_registry(registry)
    server = DOCKER_HUB_SERVER_URL if registry == DOCKER_HUB else registry

    helpers = _table(document, "credHelpers", path)
    helper = next((h for k, h in helpers.items() if _config_key(k) == registry), None)
    helper = helper or document.get("credsStore")
    if helper:
        if not isinstance(helper, str):
            raise AuthError(f"{path}: a credential helper name is a string, not {helper!r}")
        found = _run_credential_helper(helper, server)
        if found is not None:
            return found

    for key, entry in _table(document, "auths", path).items():
        if _config_key(key) != registry or not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if isinstance(username, str) and isinstance(password, str) and username and password:
            return Credentials(username, password)
        encoded = entry.get("auth")
        if encoded:
            try:
                if not isinstance(encoded, str):
                    raise ValueError
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                raise AuthError(
                    f"{path}: the auth entry for {key!r} is not base64 user:password"
                ) from None
            if user and password:
                return Credentials(user, password)
    return None


def _table(document: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise AuthError(f"{path}: {key!r} should be a JSON object, not {type(value).__name__}")
    return value


def _config_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://reg:5000/x`` -> ``reg:5000``."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return normalize_registry(host)


def _run_credential_helper(helper: str, server: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=CREDENTIAL_HELPER_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise AuthError(
            f"Docker's config names credential helper {helper!r} but {program} is not on PATH"
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} did not answer within 30 s") from None
    if result.returncode != 0:
        # "credentials not found in native keychain" is how every helper says "none here".
        return None
    try:
        document = json.loads(result.stdout)
        username, secret = document["Username"], document["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            f"credential helper {program} answered something that is not JSON"
        ) from None
    if not username or not secret or username == "<token>":
        return None  # identity tokens (OAuth refresh tokens) are not supported
    return Credentials(str(username), str(secret))
