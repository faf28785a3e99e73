"""Registry challenges: reading ``WWW-Authenticate`` and the token scopes a request needs.

Owns parsing challenges (RFC 7235), normalising scopes, and reading a request's scopes from its
path and method. Pure parsing: no I/O, no tokens, no credentials (``auth`` answers challenges).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a lower-case scheme and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> tuple[str, ...]:
        """The challenge's ``scope`` parameter as normalised scopes (it may list several)."""
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
