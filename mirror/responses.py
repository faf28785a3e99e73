"""Reading a registry's answers: the one place a response becomes an exception.

Owns status checks (which status is which ``RegistryError``, with the registry's own error
codes and a short detail), what may be shown of a URL or an error text (query secrets and
anything credential-shaped removed), reading bodies under a size cap, and the headers that
steer a client (``Retry-After``, ``Location``, ``Link``, an upload's ``Range``). Sends nothing
and keeps no state: ``mirror.registry`` asks, ``mirror.quota`` counts.
"""

from __future__ import annotations

import json
import re

import httpx

from mirror.credentials import Credentials
from mirror.errors import (
    ManifestError,
    MirrorError,
    NotFound,
    RateLimited,
    RegistryError,
    Unauthorized,
    Unavailable,
)
from mirror.quota import RateLimit

MAX_ERROR_BODY_BYTES = 64 * 1024  # error JSON is small; never read a megabyte error page
_SAFE_QUERY_KEYS = frozenset({"digest", "mount", "from", "n", "last", "service", "scope"})
_CREDENTIAL_SHAPES = re.compile(
    r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+"  # an Authorization value echoed back
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"  # a JWT, or its first part
)


def safe_url(url: httpx.URL | str) -> str:
    """A URL fit for messages and logs: no userinfo, and only harmless query values kept.

    Upload state and CDN signatures live in query strings; they are replaced by ``...``.
    """
    url = httpx.URL(str(url))
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v if k in _SAFE_QUERY_KEYS else "...") for k, v in url.params.multi_items()
    ]
    return str(url.copy_with(userinfo=b"", query=None).copy_merge_params(params))


def redact(text: str, credentials: Credentials | None = None) -> str:
    """A registry's own words with anything credential-shaped taken out.

    A registry or proxy may echo the Authorization it refused into its error message; those
    messages go to logs and terminals, so tokens, Basic values and the password never do.
    """
    text = _CREDENTIAL_SHAPES.sub(lambda m: f"{m.group(1) or 'token'} [redacted]", text)
    if credentials is not None and credentials.password:
        text = text.replace(credentials.password, "[redacted]")
    return text


async def error_for(
    registry: str,
    response: httpx.Response,
    what: str,
    *,
    credentials: Credentials | None = None,
    credentials_configured: bool = True,
) -> RegistryError:
    """The ``RegistryError`` an error status (4xx, 5xx) stands for, with the registry's error
    codes and a short, redacted detail from its body (read up to MAX_ERROR_BODY_BYTES).

    A 429 is a pull-limit refusal (``TOOMANYREQUESTS`` in the body, or a HEAD answered with
    ``ratelimit-remaining: 0``) or the abuse limit; ``RateLimited.pull_limit`` tells which.
    """
    body = b""
    if response.request.method != "HEAD":
        try:
            body = await read_capped(response, MAX_ERROR_BODY_BYTES, "error body", trim=True)
        except httpx.HTTPError:
            body = b""
    codes, details = error_codes(body)
    details = redact(details, credentials)
    status = response.status_code
    method = response.request.method
    url = safe_url(response.request.url)
    kind: type[RegistryError]
    quota_spent = False
    if status in (401, 403):
        kind = Unauthorized
        reason = "access denied" if status == 403 or "DENIED" in codes else "unauthorized"
        if not credentials_configured:
            reason += " (no credentials configured for this registry)"
    elif status == 404:
        kind, reason = NotFound, "not found"
    elif status == 429:
        kind = RateLimited
        quota = RateLimit.from_headers(response.headers)
        quota_spent = quota is not None and quota.remaining <= 0
        pull_limit = quota_spent or "TOOMANYREQUESTS" in codes
        reason = "pull rate limit reached" if pull_limit else "too many requests"
    elif status >= 500:
        kind, reason = Unavailable, "server error"
    else:
        kind, reason = RegistryError, "request refused"
    detail = f": {details}" if details else ""
    code_text = f" [{', '.join(codes)}]" if codes else ""
    message = (
        f"registry {registry}: {what}: {reason} (HTTP {status}{code_text}, {method} {url}){detail}"
    )
    common = {
        "method": method,
        "url": url,
        "status": status,
        "codes": codes,
        "retry_after": retry_after(response.headers.get("Retry-After")),
    }
    if kind is RateLimited:
        return RateLimited(message, quota_spent=quota_spent, **common)
    return kind(message, **common)  # type: ignore[arg-type]


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; None when absent or in the rare HTTP-date form (then the
    ordinary back-off applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_codes(body: bytes) -> tuple[list[str], str]:
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


async def read_capped(
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


def location(registry: str, response: httpx.Response) -> str:
    """Where an upload session continues: its ``Location``, made absolute."""
    value = response.headers.get("Location")
    if not value:
        raise RegistryError(
            f"registry {registry}: upload started without a Location header",
            method=response.request.method,
            url=safe_url(response.request.url),
            status=response.status_code,
        )
    return str(response.request.url.join(value))


def next_link(registry: str, response: httpx.Response, what: str) -> httpx.URL | None:
    """The ``rel="next"`` target of a Link header, refused if it leaves this registry."""
    link = response.links.get("next")
    if link is None or not link.get("url"):
        return None
    target = response.request.url.join(link["url"])
    if (target.scheme, target.netloc) != (response.request.url.scheme, response.request.url.netloc):
        raise RegistryError(
            f"registry {registry}: {what} Link header points at another host "
            f"({safe_url(target)}); refusing to follow it",
            method="GET",
            url=safe_url(response.request.url),
            status=response.status_code,
        )
    return target


def upload_length(value: str | None, sent: int) -> int:
    """``Range: 0-1023`` on an upload session -> 1024 bytes held (no header: none).

    distribution reports an empty session as ``0-0`` too, which reads as one byte: with
    nothing sent, that is zero.
    """
    if not value:
        return 0
    _, _, end = value.rpartition("-")
    held = int(end) + 1 if end.isdigit() else 0
    return 0 if held == 1 and sent == 0 else held
