"""Credential sources: Docker's ``config.json`` and credential helpers, run as subprocesses
the event loop awaits (never blocks on), with the server URL on stdin and a timeout."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mirror.auth import RegistryAuth
from mirror.credentials import Credentials, docker_config_path, docker_credentials
from mirror.errors import AuthError


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(Credentials("dave", "hunter2"))


# --- docker_credentials: config.json ----------------------------------------------------------


def write_config(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(document))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_auths_entry_with_base64_auth(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"registry.local:5000": {"auth": b64("eve:pa:ss")}}})

    assert await docker_credentials("registry.local:5000", path) == Credentials("eve", "pa:ss")


async def test_auths_entry_with_username_and_password_fields(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"auths": {"https://ghcr.io": {"username": "u", "password": "p"}}}
    )

    assert await docker_credentials("ghcr.io", path) == Credentials("u", "p")


@pytest.mark.parametrize("asked", ["docker.io", "index.docker.io", "registry-1.docker.io"])
async def test_hub_v1_key_serves_docker_io(tmp_path: Path, asked: str) -> None:
    path = write_config(
        tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")}}}
    )

    assert await docker_credentials(asked, path) == Credentials("hubuser", "hubpass")


async def test_no_entry_no_file_no_credentials(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"other.example": {"auth": b64("a:b")}}})

    assert await docker_credentials("registry.local:5000", path) is None
    assert await docker_credentials("registry.local:5000", tmp_path / "missing.json") is None


async def test_unreadable_config_is_an_auth_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")

    with pytest.raises(AuthError, match=re.escape(str(path))):
        await docker_credentials("docker.io", path)


async def test_auth_that_is_not_base64_is_an_auth_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"reg.example": {"auth": "!!!not base64!!!"}}})

    with pytest.raises(AuthError, match=r"reg\.example"):
        await docker_credentials("reg.example", path)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"auths": ["reg.example"]}, id="auths-list"),
        pytest.param({"credHelpers": ["fake"]}, id="credHelpers-list"),
        pytest.param({"auths": {"reg.example": {"auth": 5}}}, id="auth-number"),
    ],
)
async def test_malformed_docker_config_is_an_auth_error(tmp_path: Path, document: Any) -> None:
    path = write_config(tmp_path, document)

    with pytest.raises(AuthError, match=re.escape(str(path))):
        await docker_credentials("reg.example", path)


async def test_docker_config_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_config(tmp_path, {"auths": {"reg.example": {"auth": b64("x:y")}}})

    assert docker_config_path() == tmp_path / "config.json"
    assert await docker_credentials("reg.example") == Credentials("x", "y")


# --- docker_credentials: credential helpers ---------------------------------------------------


def write_helper(bin_dir: Path, name: str, body: str) -> Path:
    """Write ``docker-credential-NAME``, a shell script running ``body`` (``$here``: its dir)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    script.write_text('#!/bin/sh\nhere=$(dirname "$0")\n' + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def install_helper(
    bin_dir: Path, name: str, *, answer: dict[str, str] | None, exit_code: int = 0
) -> Path:
    """Write ``docker-credential-NAME``: it records argv and stdin next to itself."""
    body = json.dumps(answer) if answer is not None else "credentials not found in native keychain"
    return write_helper(
        bin_dir,
        name,
        f'printf "%s\\n" "$@" > "$here/{name}.argv"\n'
        f'cat > "$here/{name}.stdin"\n'
        f"printf '%s' '{body}'\n"
        f"exit {exit_code}\n",
    )


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


async def test_cred_helper_for_the_registry_is_run_with_the_server_on_stdin(
    tmp_path: Path, helper_bin: Path
) -> None:
    install_helper(helper_bin, "fake", answer={"Username": "helper-user", "Secret": "TOPSECRET"})
    path = write_config(
        tmp_path,
        {
            "credHelpers": {"registry.local:5000": "fake"},
            "auths": {"registry.local:5000": {"auth": b64("stale:entry")}},
        },
    )

    found = await docker_credentials("registry.local:5000", path)

    assert found == Credentials("helper-user", "TOPSECRET")
    argv = (helper_bin / "fake.argv").read_text().split()
    assert argv == ["get"]
    assert "TOPSECRET" not in " ".join(argv)
    assert (helper_bin / "fake.stdin").read_text().strip() == "registry.local:5000"


async def test_hub_helper_gets_dockers_hub_server_url(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "fake", answer={"Username": "hu", "Secret": "hs"})
    path = write_config(tmp_path, {"credHelpers": {"docker.io": "fake"}})

    assert await docker_credentials("docker.io", path) == Credentials("hu", "hs")
    assert (helper_bin / "fake.stdin").read_text().strip() == "https://index.docker.io/v1/"


async def test_creds_store_is_the_default_helper(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "store", answer={"Username": "su", "Secret": "ss"})
    path = write_config(tmp_path, {"credsStore": "store"})

    assert await docker_credentials("ghcr.io", path) == Credentials("su", "ss")
    assert (helper_bin / "store.argv").read_text().split() == ["get"]


async def test_helper_saying_not_found_falls_back_to_auths(
    tmp_path: Path, helper_bin: Path
) -> None:
    install_helper(helper_bin, "store", answer=None, exit_code=1)
    path = write_config(
        tmp_path, {"credsStore": "store", "auths": {"ghcr.io": {"auth": b64("fallback:pw")}}}
    )

    assert await docker_credentials("ghcr.io", path) == Credentials("fallback", "pw")


async def test_identity_token_from_a_helper_is_not_used(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "store", answer={"Username": "<token>", "Secret": "refresh"})
    path = write_config(tmp_path, {"credsStore": "store"})

    assert await docker_credentials("ghcr.io", path) is None


async def test_missing_helper_program_is_an_auth_error_naming_it(
    tmp_path: Path, helper_bin: Path
) -> None:
    path = write_config(tmp_path, {"credsStore": "nonexistent-helper"})

    with pytest.raises(AuthError, match="docker-credential-nonexistent-helper"):
        await docker_credentials("ghcr.io", path)


async def test_helper_answering_garbage_is_an_auth_error(tmp_path: Path, helper_bin: Path) -> None:
    script = install_helper(helper_bin, "broken", answer={})
    script.write_text("#!/bin/sh\ncat >/dev/null\necho 'this is not json'\n")
    path = write_config(tmp_path, {"credsStore": "broken"})

    with pytest.raises(AuthError, match="broken"):
        await docker_credentials("ghcr.io", path)


async def test_helper_that_cannot_be_run_is_an_auth_error_naming_it(
    tmp_path: Path, helper_bin: Path
) -> None:
    install_helper(helper_bin, "locked", answer={}).chmod(0o644)
    path = write_config(tmp_path, {"credsStore": "locked"})

    with pytest.raises(AuthError, match="cannot run credential helper docker-credential-locked"):
        await docker_credentials("ghcr.io", path)


# --- credential helpers and the event loop ----------------------------------------------------

SLOW_HELPER_S = 1.5


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def test_a_slow_helper_does_not_stall_other_work_on_the_loop(
    tmp_path: Path, helper_bin: Path
) -> None:
    write_helper(
        helper_bin,
        "slow",
        f"cat > /dev/null\nsleep {SLOW_HELPER_S}\n"
        """printf '%s' '{"Username": "slow-user", "Secret": "slow-secret"}'\n""",
    )
    path = write_config(tmp_path, {"credsStore": "slow"})

    def behind_login(request: httpx.Request) -> httpx.Response:
        """A registry with token auth whose realm wants the slow helper's credentials."""
        if request.url.host == "auth.slow.example":
            if request.headers.get("Authorization") == basic_header("slow-user", "slow-secret"):
                return httpx.Response(200, json={"token": "t"})
            return httpx.Response(401)
        if request.headers.get("Authorization") == "Bearer t":
            return httpx.Response(200, json={"tags": ["v1"]})
        challenge = 'Bearer realm="https://auth.slow.example/token",service="slow.example"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    def anonymous(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"tags": ["v1"]})

    slow_auth = RegistryAuth(
        "slow.example", functools.partial(docker_credentials, "slow.example", path)
    )
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(behind_login), auth=slow_auth) as slow,
        httpx.AsyncClient(
            transport=httpx.MockTransport(anonymous), auth=RegistryAuth("other.example")
        ) as other,
    ):
        started = time.monotonic()
        lookup = asyncio.create_task(slow.get("https://slow.example/v2/team/app/tags/list"))
        steps: list[float] = []  # when each request to the other registry came back
        while not lookup.done():
            response = await other.get("https://other.example/v2/team/app/tags/list")
            assert response.status_code == 200
            steps.append(time.monotonic())
            await asyncio.sleep(0.01)
        response = await lookup
        finished = time.monotonic()

    assert response.status_code == 200
    assert slow_auth.credentials == Credentials("slow-user", "slow-secret")
    assert finished - started >= SLOW_HELPER_S - 0.1, "the lookup really waited on the helper"
    gaps = [later - earlier for earlier, later in zip([started, *steps], steps, strict=False)]
    assert len(steps) >= 20, f"only {len(steps)} requests elsewhere while the helper ran"
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.2f} s"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"


async def all_gone(pids: list[int], within_s: float = 1.0) -> bool:
    """Whether every process of ``pids`` has exited, allowing ``within_s`` for a kill to land."""
    deadline = time.monotonic() + within_s
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def helper_pids(record: Path, within_s: float = 5.0) -> list[int]:
    """The pids a helper wrote to ``record`` (itself, then its child), once it has written."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if record.exists() and len(pids := record.read_text().split()) == 2:
            return [int(pid) for pid in pids]
        await asyncio.sleep(0.01)
    pytest.fail(f"the helper did not write {record}")


def install_silent_helper(bin_dir: Path) -> Path:
    """``docker-credential-silent``: starts a child, records both pids, and never answers."""
    write_helper(bin_dir, "silent", 'sleep 10 &\necho "$$ $!" > "$here/silent.pids"\nwait\n')
    return bin_dir / "silent.pids"


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
async def test_a_helper_that_never_answers_is_stopped_at_the_timeout(
    tmp_path: Path, helper_bin: Path
) -> None:
    record = install_silent_helper(helper_bin)
    path = write_config(tmp_path, {"credsStore": "silent"})

    started = time.monotonic()
    with pytest.raises(AuthError) as caught:
        await docker_credentials("ghcr.io", path, helper_timeout_s=0.3)
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert "docker-credential-silent" in message
    assert "0.3 s" in message
    assert "\n" not in message
    assert elapsed < 1.0, "the lookup ends at the timeout, not when the helper's child would"
    assert await all_gone(await helper_pids(record)), "the helper and its child are killed"


@needs_proc
async def test_a_lookup_given_up_stops_its_helper(tmp_path: Path, helper_bin: Path) -> None:
    record = install_silent_helper(helper_bin)
    path = write_config(tmp_path, {"credsStore": "silent"})
    lookup = asyncio.create_task(docker_credentials("ghcr.io", path))
    pids = await helper_pids(record)

    started = time.monotonic()
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup

    assert time.monotonic() - started < 1.0
    assert await all_gone(pids)


def wait_blocking_for(record: Path, within_s: float = 5.0) -> list[int]:
    """``helper_pids`` with the event loop held up meanwhile, as on a loaded machine."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if record.exists() and len(pids := record.read_text().split()) == 2:
            return [int(pid) for pid in pids]
        time.sleep(0.01)
    pytest.fail(f"the helper did not write {record}")


@needs_proc
async def test_a_lookup_given_up_while_its_helper_starts_stops_it_all_the_same(
    tmp_path: Path, helper_bin: Path
) -> None:
    record = install_silent_helper(helper_bin)
    path = write_config(tmp_path, {"credsStore": "silent"})
    lookup = asyncio.create_task(docker_credentials("ghcr.io", path))
    for _ in range(3):
        await asyncio.sleep(0)  # the helper is started; asyncio is still connecting its pipes
    pids = wait_blocking_for(record)  # meanwhile the helper has started a child of its own

    started = time.monotonic()
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup

    assert time.monotonic() - started < 1.0
    assert await all_gone(pids)


@needs_proc
async def test_a_process_list_shows_the_helper_without_the_server_or_the_secret(
    tmp_path: Path, helper_bin: Path
) -> None:
    write_helper(
        helper_bin,
        "peek",
        'tr "\\000" "\\n" < /proc/$$/cmdline > "$here/peek.cmdline"\n'
        'cat > "$here/peek.stdin"\n'
        """printf '%s' '{"Username": "peek-user", "Secret": "TOPSECRET"}'\n""",
    )
    path = write_config(tmp_path, {"credHelpers": {"registry.local:5000": "peek"}})

    found = await docker_credentials("registry.local:5000", path)

    assert found == Credentials("peek-user", "TOPSECRET")
    shown = (helper_bin / "peek.cmdline").read_text().split()  # what ps shows for the helper
    assert [Path(arg).name for arg in shown][-2:] == ["docker-credential-peek", "get"]
    assert not [arg for arg in shown if "registry.local" in arg or "TOPSECRET" in arg]
    assert (helper_bin / "peek.stdin").read_text() == "registry.local:5000"
