"""Credential sources: explicit credentials, Docker's ``config.json`` and credential helpers.

Owns the ``Credentials`` value, what a caller may pass as a source of them (a value, None, or a
plain or async callable), and finding what ``docker login`` stored, with credential helpers run
as subprocesses the event loop awaits, never blocks on. Does not speak HTTP or answer
challenges (``auth`` does), and does not read mirror's own config: callers pass plain values.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.errors import AuthError
from mirror.reference import DOCKER_HUB, normalize_registry

CREDENTIAL_HELPER_TIMEOUT_S = 30.0  # a helper may unlock a keychain; longer is a hang
HELPER_EXIT_WAIT_S = 1.0  # a killed helper is gone in milliseconds; this bounds one that is not
DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"  # the key Docker uses for Hub in config.json


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password (or access token); the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


# Called once, at a registry's first challenge; an async callable is awaited.
CredentialSource = Callable[[], Credentials | Awaitable[Credentials | None] | None]


async def resolve_credentials(source: CredentialSource | Credentials | None) -> Credentials | None:
    """The credentials ``source`` stands for: itself, or what calling it returns (awaited)."""
    if source is None or isinstance(source, Credentials):
        return source
    found = source()
    if found is None or isinstance(found, Credentials):
        return found
    return await found


# --- Docker's config.json ---------------------------------------------------------------------


def docker_config_path() -> Path:
    """Where Docker keeps ``config.json``: ``$DOCKER_CONFIG`` or ``~/.docker``."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


async def docker_credentials(
    registry: str,
    config_path: Path | None = None,
    *,
    helper_timeout_s: float = CREDENTIAL_HELPER_TIMEOUT_S,
) -> Credentials | None:
    """Credentials ``docker login`` stored for ``registry``, or None.

    Looks in ``credHelpers`` (per registry), then ``credsStore`` (the default helper), then the
    ``auths`` entries, the way the Docker CLI does. ``config.json`` is read in place (a few KB
    of local file); only a credential helper, an outside program, is awaited.
    """
    path = config_path or docker_config_path()
    document = _read_config(path)
    if document is None:
        return None
    registry = normalize_registry(registry)
    helper = _helper_for(document, registry, path)
    if helper is not None:
        server = DOCKER_HUB_SERVER_URL if registry == DOCKER_HUB else registry
        found = await run_credential_helper(helper, server, timeout_s=helper_timeout_s)
        if found is not None:
            return found
    return _stored_credentials(document, registry, path)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read Docker credentials from {path}: {exc}") from None
    if not isinstance(document, dict):
        raise AuthError(f"cannot read Docker credentials from {path}: not a JSON object")
    return document


def _helper_for(document: dict[str, Any], registry: str, path: Path) -> str | None:
    helpers = _table(document, "credHelpers", path)
    helper = next((h for k, h in helpers.items() if _config_key(k) == registry), None)
    helper = helper or document.get("credsStore")
    if not helper:
        return None
    if not isinstance(helper, str):
        raise AuthError(f"{path}: a credential helper name is a string, not {helper!r}")
    return helper


def _stored_credentials(document: dict[str, Any], registry: str, path: Path) -> Credentials | None:
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


# --- credential helpers -----------------------------------------------------------------------


async def run_credential_helper(
    helper: str, server: str, *, timeout_s: float = CREDENTIAL_HELPER_TIMEOUT_S
) -> Credentials | None:
    """What ``docker-credential-HELPER get`` answers for ``server``, or None when it has none.

    The server URL goes in on stdin and the secret comes back on stdout, so neither shows in a
    process list. The event loop goes on with other work while the helper runs; a helper that
    has not answered within ``timeout_s`` is killed, with whatever it started, and is an
    ``AuthError`` (so is a lookup given up: a cancelled one kills the helper too).
    """
    program = f"docker-credential-{helper}"
    try:
        process = await _start(program)
    except FileNotFoundError:
        raise AuthError(
            f"Docker's config names credential helper {helper!r} but {program} is not on PATH"
        ) from None
    except OSError as exc:
        raise AuthError(f"cannot run credential helper {program}: {exc.strerror}") from None
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(server.encode()), timeout_s)
    except TimeoutError:
        await _stop(process)
        raise AuthError(
            f"credential helper {program} did not answer within {timeout_s:g} s and was stopped"
        ) from None
    except BaseException:
        await _stop(process)
        raise
    if process.returncode != 0:
        # "credentials not found in native keychain" is how every helper says "none here".
        return None
    try:
        document = json.loads(stdout)
        username, secret = document["Username"], document["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(
            f"credential helper {program} answered something that is not JSON"
        ) from None
    if not username or not secret or username == "<token>":
        return None  # identity tokens (OAuth refresh tokens) are not supported
    return Credentials(str(username), str(secret))


async def _start(program: str) -> asyncio.subprocess.Process:
    """Start ``PROGRAM get`` in its own process group, so that a kill reaches what it starts.

    A child left holding the helper's stdout would otherwise keep the lookup waiting after the
    helper itself is gone (asyncio waits for the pipes to close, not just for the process).
    """
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            program,
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Cancelled mid-start, asyncio would kill the helper alone and then wait for its pipes,
        # which a child of it may hold for as long as it likes: let the start finish (moments),
        # then stop the whole group.
        with contextlib.suppress(Exception):
            await _stop(await starting)
        raise


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Kill a helper and its process group, and reap it (waiting a bounded time)."""
    # The helper leads its own group (start_new_session), whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), HELPER_EXIT_WAIT_S)
