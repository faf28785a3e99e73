"""The exception tree: every failure mirror reports is one of these.

Owns the classes only. Turning an HTTP response into one of these happens in one place,
``mirror.responses``; whether one is worth another try is ``mirror.retry``'s one predicate.
Nothing here knows about HTTP clients.

    MirrorError
    ├── InvalidReference        text that is not an image reference
    ├── ConfigError             a config file or environment value that cannot be used
    ├── AuthError               credentials could not be found or a token could not be obtained
    ├── DigestMismatch          content whose sha256 is not the digest it was asked for
    ├── QuotaExhausted          a pull now would eat into the reserve or hit the pull limit
    ├── ManifestError           a manifest that cannot be used (not JSON, too large, unknown type)
    │   └── Unsupported         content mirror leaves on purpose: schema 1, refused foreign layers
    ├── LayoutError             an OCI image layout on disk that cannot be read or written
    └── RegistryError           a registry answered with an error status or could not be reached
        ├── Unauthorized        401 / 403: missing or wrong credentials, or access denied
        ├── NotFound            404: no such repository, manifest, blob or upload
        ├── RateLimited         429: pull limit (``TOOMANYREQUESTS``) or abuse limit
        └── Unavailable         5xx, connection failures and timeouts
"""

from __future__ import annotations

from collections.abc import Sequence


class MirrorError(Exception):
    """Root of every error mirror raises on purpose; its ``str`` is a one-line message."""


class InvalidReference(MirrorError, ValueError):
    """Text that does not parse as an image reference."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid reference {text!r}: {reason}")


class ConfigError(MirrorError):
    """A config file, key or environment value that cannot be used; the message names the key."""


class AuthError(MirrorError):
    """Credentials could not be read, or the token endpoint would not issue a token."""


class ManifestError(MirrorError):
    """A manifest that cannot be used: not JSON, over the size cap, or of an unknown media type."""


class LayoutError(MirrorError):
    """An OCI image layout that cannot be read (a bad ``index.json``) or written (a full
    disk); the message names the path. Not retried: waiting does not mend either."""


class Unsupported(ManifestError):
    """Content mirror does not copy, on purpose and for good: a Docker schema 1 manifest, or
    foreign layers the target refuses. Not a failure, and not tried again while unchanged."""


class DigestMismatch(MirrorError):
    """Content whose sha256 differs from the digest it was fetched by; it is never pushed."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")


class QuotaExhausted(MirrorError):
    """Pulling now would spend the source's reserve or meet its pull limit: defer, not fail."""


class RegistryError(MirrorError):
    """A registry answered with an error status, or could not be reached at all.

    ``url`` never carries credentials or tokens; ``codes`` are the registry's own error codes
    from the JSON body (``MANIFEST_UNKNOWN``, ``DENIED``, ``TOOMANYREQUESTS`` ...).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        codes: Sequence[str] = (),
        retry_after: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.codes = tuple(codes)
        self.retry_after = retry_after
        super().__init__(message)


class Unauthorized(RegistryError):
    """401 or 403: credentials missing or wrong, or the account may not do this."""


class NotFound(RegistryError):
    """404: the repository, manifest, blob or upload does not exist."""


class RateLimited(RegistryError):
    """429. ``pull_limit`` is true for Docker Hub's pull quota, false for the abuse limit.

    Hub says which in the JSON body (``TOOMANYREQUESTS``); a HEAD has no body, so there a
    ``ratelimit-remaining: 0`` header tells the quota apart (``quota_spent``).
    """

    def __init__(self, message: str, *, quota_spent: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.quota_spent = quota_spent

    @property
    def pull_limit(self) -> bool:
        return self.quota_spent or "TOOMANYREQUESTS" in self.codes


class Unavailable(RegistryError):
    """5xx answers, refused connections, resets and timeouts: worth another try."""
