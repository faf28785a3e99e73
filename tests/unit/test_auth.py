"""Registry authentication: challenge parsing, the token dance driven by hand, and Docker's
credential stores (config.json, credential helpers)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mirror.auth import (
    Challenge,
    Credentials,
    RegistryAuth,
    docker_config_path,
    docker_credentials,
    parse_challenges,
    required_scopes,
)
from mirror.errors import AuthError

REGISTRY = "registry.example"
MANIFEST_URL = f"https://{REGISTRY}/v2/library/golang/manifests/latest"
REALM = "https://auth.example/token"
SERVICE = "registry.example"
PULL = "repository:library/golang:pull"


# --- parse_challenges -------------------------------------------------------------------------


def test_docker_hub_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/golang:pull"'
    )

    assert parse_challenges(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/golang:pull",
            },
        )
    ]


def test_several_challenges_in_one_header() -> None:
    header = 'Bearer realm="https://a/token",service="s", Basic realm="Registry Realm"'

    challenges = parse_challenges(header)

    assert [c.scheme for c in challenges] == ["bearer", "basic"]
    assert challenges[0].params == {"realm": "https://a/token", "service": "s"}
    assert challenges[1].params == {"realm": "Registry Realm"}


def test_quoted_commas_and_escapes_stay_inside_the_value() -> None:
    header = (
        r'Bearer realm="https://a/token",scope="repository:x:pull,push repository:y:pull",'
        r'error="say \"hi\", then \\ go"'
    )

    (challenge,) = parse_challenges(header)

    assert challenge.params["scope"] == "repository:x:pull,push repository:y:pull"
    assert challenge.scopes == ("repository:x:pull,push", "repository:y:pull")
    assert challenge.params["error"] == 'say "hi", then \\ go'


def test_scheme_and_parameter_names_are_case_insensitive_values_are_not() -> None:
    (challenge,) = parse_challenges('BEARER Realm="https://A/Token", SERVICE=Reg')

    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://A/Token", "service": "Reg"}


def test_unquoted_values_and_spaces_around_equals() -> None:
    (challenge,) = parse_challenges("Bearer realm = https://a/token , service=reg")

    assert challenge.params == {"realm": "https://a/token", "service": "reg"}


@pytest.mark.parametrize("header", ["", "   ", ",,,"])
def test_empty_header_has_no_challenges(header: str) -> None:
    assert parse_challenges(header) == []


@given(st.text() | st.text('Bearer Basic realm=",\\ \t', max_size=60))
@example('Bearer realm="unterminated')
@example('Bearer realm="ends with backslash\\')
@example("=")
@example("Bearer ,=,=")
def test_garbage_never_raises(header: str) -> None:
    challenges = parse_challenges(header)

    assert isinstance(challenges, list)
    for challenge in challenges:
        assert challenge.scheme == challenge.scheme.lower()
        assert all(isinstance(v, str) for v in challenge.params.values())


# --- required_scopes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "scopes"),
    [
        ("GET", MANIFEST_URL, (PULL,)),
        ("HEAD", MANIFEST_URL, (PULL,)),
        (
            "HEAD",
            f"https://{REGISTRY}/v2/a/b/c/blobs/sha256:{'0' * 64}",
            ("repository:a/b/c:pull",),
        ),
        ("GET", f"https://{REGISTRY}/v2/a/b/tags/list?n=10", ("repository:a/b:pull",)),
        ("PUT", f"https://{REGISTRY}/v2/a/b/manifests/v1", ("repository:a/b:pull,push",)),
        ("POST", f"https://{REGISTRY}/v2/a/b/blobs/uploads/", ("repository:a/b:pull,push",)),
        (
            "PUT",
            f"https://{REGISTRY}/v2/a/b/blobs/uploads/uuid-1?_state=x&digest=sha256:{'0' * 64}",
            ("repository:a/b:pull,push",),
        ),
        ("GET", f"https://{REGISTRY}/v2/", ()),
        ("GET", f"https://{REGISTRY}/other/path", ()),
    ],
)
def test_required_scopes_follow_path_and_method(
    method: str, url: str, scopes: tuple[str, ...]
) -> None:
    assert required_scopes(httpx.Request(method, url)) == scopes


def test_mount_needs_pull_on_the_source_repository_too() -> None:
    request = httpx.Request(
        "POST",
        f"https://{REGISTRY}/v2/team/app/blobs/uploads/",
        params={"mount": "sha256:" + "0" * 64, "from": "team/base"},
    )

    assert set(required_scopes(request)) == {
        "repository:team/app:pull,push",
        "repository:team/base:pull",
    }


def test_mount_from_the_same_repository_needs_one_scope() -> None:
    request = httpx.Request(
        "POST", f"https://{REGISTRY}/v2/a/blobs/uploads/", params={"mount": "x", "from": "a"}
    )
    assert required_scopes(request) == ("repository:a:pull,push",)


@pytest.mark.parametrize(
    ("url", "repository"),
    [
        (f"https://{REGISTRY}/v2/team/blobs/app/tags/list", "team/blobs/app"),
        (f"https://{REGISTRY}/v2/a/manifests/b/blobs/sha256:{'0' * 64}", "a/manifests/b"),
    ],
)
def test_repository_components_named_like_routes_get_the_right_scope(
    url: str, repository: str
) -> None:
    assert required_scopes(httpx.Request("GET", url)) == (f"repository:{repository}:pull",)


# --- RegistryAuth, driven by hand --------------------------------------------------------------


def bearer_challenge(
    request: httpx.Request, *, realm: str = REALM, scope: str | None = PULL, status: int = 401
) -> httpx.Response:
    params = f'realm="{realm}",service="{SERVICE}"'
    if scope is not None:
        params += f',scope="{scope}"'
    return httpx.Response(status, headers={"WWW-Authenticate": f"Bearer {params}"}, request=request)


def basic_challenge(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        401, headers={"WWW-Authenticate": 'Basic realm="Registry"'}, request=request
    )


def token_response(request: httpx.Request, **document: Any) -> httpx.Response:
    return httpx.Response(200, json=document, request=request)


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def is_token_request(request: httpx.Request) -> bool:
    return str(request.url.copy_with(query=None)) == REALM


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def drive(
    auth: RegistryAuth,
    request: httpx.Request,
    respond: Callable[[httpx.Request], httpx.Response],
    *,
    limit: int = 20,
) -> list[httpx.Request]:
    """Run one auth flow to its end, answering each yielded request with ``respond``.

    Returns a snapshot of each request as it was sent (the flow mutates and re-yields the
    same Request object, so later headers would otherwise overwrite earlier ones).
    """
    flow = auth.async_auth_flow(request)
    sent: list[httpx.Request] = []
    current = await flow.__anext__()
    while len(sent) < limit:
        sent.append(httpx.Request(current.method, current.url, headers=current.headers.copy()))
        try:
            current = await flow.asend(respond(current))
        except StopAsyncIteration:
            return sent
    pytest.fail(f"auth flow did not finish within {limit} requests")


def hub_like(
    token: str = "tok-1", *, accepted: Callable[[str], bool] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A registry that wants ``Bearer <token>`` and a realm that hands ``token`` out."""

    def respond(request: httpx.Request) -> httpx.Response:
        if is_token_request(request):
            return token_response(request, token=token, expires_in=300)
        given = request.headers.get("Authorization", "")
        ok = accepted(given) if accepted else given == f"Bearer {token}"
        return httpx.Response(200, request=request) if ok else bearer_challenge(request)

    return respond


async def test_bearer_dance_step_by_step_anonymous() -> None:
    auth = RegistryAuth(REGISTRY)
    request = httpx.Request("GET", MANIFEST_URL)
    flow = auth.async_auth_flow(request)

    first = await flow.__anext__()
    assert first.url == MANIFEST_URL
    assert "Authorization" not in first.headers

    token_request = await flow.asend(bearer_challenge(first))
    assert token_request.method == "GET"
    assert str(token_request.url.copy_with(query=None)) == REALM
    assert token_request.url.params.get("service") == SERVICE
    assert token_request.url.params.get_list("scope") == [PULL]
    assert "Authorization" not in token_request.headers  # anonymous: no Basic header

    retried = await flow.asend(token_response(token_request, token="abc", expires_in=300))
    assert retried.url == MANIFEST_URL
    assert retried.headers["Authorization"] == "Bearer abc"

    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(200, request=retried))
    assert auth.token_fetches == 1


async def test_token_request_carries_basic_credentials_when_configured() -> None:
    auth = RegistryAuth(REGISTRY, Credentials("alice", "s3cret"))
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))

    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    assert token_request.headers["Authorization"] == basic_header("alice", "s3cret")
    assert token_request.url.params.get("account") == "alice"
    assert "s3cret" not in str(token_request.url)
    retried = await flow.asend(token_response(token_request, token="t"))
    assert retried.headers["Authorization"] == "Bearer t"


async def test_second_flow_for_the_same_scope_reuses_the_cached_token() -> None:
    auth = RegistryAuth(REGISTRY)
    sent = await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-1"))
    assert sum(is_token_request(r) for r in sent) == 1

    flow = auth.async_auth_flow(httpx.Request("HEAD", MANIFEST_URL))
    first = await flow.__anext__()

    assert first.headers["Authorization"] == "Bearer tok-1"
    assert not is_token_request(first)
    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(200, request=first))
    assert auth.token_fetches == 1


async def test_known_realm_fetches_a_new_scope_up_front_without_a_401() -> None:
    auth = RegistryAuth(REGISTRY)
    await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like())

    flow = auth.async_auth_flow(
        httpx.Request("GET", f"https://{REGISTRY}/v2/diamol/golang/manifests/latest")
    )
    first = await flow.__anext__()

    assert is_token_request(first)
    assert first.url.params.get_list("scope") == ["repository:diamol/golang:pull"]


async def test_push_asks_for_pull_and_push_scope() -> None:
    auth = RegistryAuth(REGISTRY)
    put = httpx.Request("PUT", f"https://{REGISTRY}/v2/library/golang/manifests/v1")
    flow = auth.async_auth_flow(put)
    first = await flow.__anext__()

    token_request = await flow.asend(
        bearer_challenge(first, scope="repository:library/golang:pull,push")
    )

    assert token_request.url.params.get_list("scope") == ["repository:library/golang:pull,push"]


async def test_mount_token_covers_both_repositories() -> None:
    auth = RegistryAuth(REGISTRY)
    post = httpx.Request(
        "POST",
        f"https://{REGISTRY}/v2/team/app/blobs/uploads/",
        params={"mount": "sha256:" + "1" * 64, "from": "team/base"},
    )
    flow = auth.async_auth_flow(post)
    first = await flow.__anext__()

    token_request = await flow.asend(bearer_challenge(first, scope="repository:team/app:pull,push"))

    assert set(token_request.url.params.get_list("scope")) == {
        "repository:team/app:pull,push",
        "repository:team/base:pull",
    }


async def test_access_token_is_accepted_in_place_of_token() -> None:
    auth = RegistryAuth(REGISTRY)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    retried = await flow.asend(token_response(token_request, access_token="oauth-style"))

    assert retried.headers["Authorization"] == "Bearer oauth-style"


async def reuse_or_fetch(auth: RegistryAuth) -> bool:
    """Start a flow for the cached scope; True when it fetched a new token first."""
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    await flow.aclose()
    return is_token_request(first)


async def test_token_without_expires_in_lives_60_seconds() -> None:
    clock = Clock()
    auth = RegistryAuth(REGISTRY, clock=clock)

    def respond(request: httpx.Request) -> httpx.Response:
        if is_token_request(request):
            return token_response(request, token="short-lived")  # no expires_in
        if request.headers.get("Authorization") == "Bearer short-lived":
            return httpx.Response(200, request=request)
        return bearer_challenge(request)

    await drive(auth, httpx.Request("GET", MANIFEST_URL), respond)

    clock.now += 30
    assert not await reuse_or_fetch(auth), "a 60 s token is still good after 30 s"
    clock.now += 30
    assert await reuse_or_fetch(auth), "a 60 s token must be refreshed by the time it expires"


async def test_token_lifetime_follows_expires_in() -> None:
    clock = Clock()
    auth = RegistryAuth(REGISTRY, clock=clock)

    def respond(request: httpx.Request) -> httpx.Response:
        if is_token_request(request):
            return token_response(request, token="long", expires_in=600)
        if request.headers.get("Authorization") == "Bearer long":
            return httpx.Response(200, request=request)
        return bearer_challenge(request)

    await drive(auth, httpx.Request("GET", MANIFEST_URL), respond)

    clock.now += 300
    assert not await reuse_or_fetch(auth)
    clock.now += 300
    assert await reuse_or_fetch(auth)


async def test_token_endpoint_401_is_an_auth_error_naming_the_registry() -> None:
    auth = RegistryAuth(REGISTRY, Credentials("alice", "wrong-password"))
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    with pytest.raises(AuthError) as caught:
        await flow.asend(httpx.Response(401, json={"details": "incorrect"}, request=token_request))

    message = str(caught.value)
    assert REGISTRY in message
    assert "alice" in message
    assert "wrong-password" not in message


async def test_token_endpoint_answering_html_is_an_auth_error() -> None:
    auth = RegistryAuth(REGISTRY)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    with pytest.raises(AuthError, match="JSON") as caught:
        await flow.asend(
            httpx.Response(200, html="<html><body>Login</body></html>", request=token_request)
        )
    assert REGISTRY in str(caught.value)


@pytest.mark.parametrize(
    "document", [{}, {"token": ""}, {"token": 42}, ["token"]], ids=["empty", "blank", "int", "list"]
)
async def test_token_response_without_a_token_is_an_auth_error(document: Any) -> None:
    auth = RegistryAuth(REGISTRY)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    with pytest.raises(AuthError, match="no token"):
        await flow.asend(httpx.Response(200, json=document, request=token_request))


async def test_token_endpoint_server_error_is_an_auth_error() -> None:
    auth = RegistryAuth(REGISTRY)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    token_request = await flow.asend(bearer_challenge(first))

    with pytest.raises(AuthError, match="503"):
        await flow.asend(httpx.Response(503, request=token_request))


async def test_plain_http_realm_is_refused_for_a_remote_registry() -> None:
    auth = RegistryAuth(REGISTRY, Credentials("alice", "s3cret"))
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()

    with pytest.raises(AuthError, match="plain http") as caught:
        await flow.asend(bearer_challenge(first, realm="http://auth.example/token"))
    assert REGISTRY in str(caught.value)


async def test_plain_http_realm_is_allowed_when_marked_insecure() -> None:
    auth = RegistryAuth(REGISTRY, allow_insecure_realm=True)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()

    token_request = await flow.asend(bearer_challenge(first, realm="http://auth.example/token"))

    assert token_request.url.scheme == "http"


async def test_plain_http_realm_is_allowed_for_a_loopback_registry() -> None:
    auth = RegistryAuth("localhost:5000")
    flow = auth.async_auth_flow(httpx.Request("GET", "http://localhost:5000/v2/a/manifests/b"))
    first = await flow.__anext__()

    token_request = await flow.asend(bearer_challenge(first, realm="http://auth.lan:8080/token"))

    assert token_request.url.host == "auth.lan"


@pytest.mark.parametrize("realm", ["ftp://auth.example/token", "/relative/token", ""])
async def test_realm_that_is_not_an_http_url_is_refused(realm: str) -> None:
    auth = RegistryAuth(REGISTRY)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()

    with pytest.raises(AuthError, match=re.escape(REGISTRY)):
        await flow.asend(bearer_challenge(first, realm=realm))


async def test_basic_challenge_is_answered_with_basic_credentials() -> None:
    auth = RegistryAuth(REGISTRY, Credentials("bob", "pw"))
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()

    retried = await flow.asend(basic_challenge(first))

    assert retried.headers["Authorization"] == basic_header("bob", "pw")
    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(200, request=retried))

    # Once the registry is known to want Basic, later requests carry it from the start.
    second = await auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL)).__anext__()
    assert second.headers["Authorization"] == basic_header("bob", "pw")


async def test_wrong_basic_credentials_are_tried_once_not_forever() -> None:
    auth = RegistryAuth(REGISTRY, Credentials("bob", "wrong"))

    sent = await drive(auth, httpx.Request("GET", MANIFEST_URL), basic_challenge)

    assert len(sent) == 2
    assert "Authorization" not in sent[0].headers
    assert sent[1].headers["Authorization"] == basic_header("bob", "wrong")


async def test_basic_challenge_without_credentials_passes_the_401_through() -> None:
    auth = RegistryAuth(REGISTRY)

    sent = await drive(auth, httpx.Request("GET", MANIFEST_URL), basic_challenge)

    assert len(sent) == 1


async def test_401_without_a_challenge_passes_through() -> None:
    auth = RegistryAuth(REGISTRY)

    sent = await drive(
        auth, httpx.Request("GET", MANIFEST_URL), lambda r: httpx.Response(401, request=r)
    )

    assert len(sent) == 1


async def test_rejected_token_is_refreshed_once_then_the_401_passes_through() -> None:
    auth = RegistryAuth(REGISTRY)
    await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-1"))

    # The registry now rejects every token (revoked): one fresh token, one retry, then stop.
    sent = await drive(
        auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-2", accepted=lambda _: False)
    )

    registry_requests = [r for r in sent if not is_token_request(r)]
    assert sum(is_token_request(r) for r in sent) == 1
    assert [r.headers["Authorization"] for r in registry_requests] == [
        "Bearer tok-1",
        "Bearer tok-2",
    ]


async def test_rejected_token_recovers_with_a_fresh_one() -> None:
    auth = RegistryAuth(REGISTRY)
    await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-1"))

    sent = await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-2"))

    assert sent[-1].headers["Authorization"] == "Bearer tok-2"
    assert auth.token_fetches == 2


async def test_concurrent_flows_for_one_scope_share_one_token_fetch() -> None:
    clock = Clock()
    auth = RegistryAuth(REGISTRY, clock=clock)
    await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like("tok-1"))
    clock.now += 3600  # the cached token has expired: the next flow must fetch

    first_flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    second_flow = auth.async_auth_flow(httpx.Request("HEAD", MANIFEST_URL))
    token_request = await first_flow.__anext__()
    assert is_token_request(token_request)
    waiting = asyncio.ensure_future(second_flow.__anext__())
    await asyncio.sleep(0)
    assert not waiting.done(), "the second flow waits for the fetch under way"

    await first_flow.asend(token_response(token_request, token="tok-2", expires_in=300))
    second_first = await waiting

    assert second_first.headers["Authorization"] == "Bearer tok-2"
    assert auth.token_fetches == 2  # the initial one, and one refresh shared by both flows
    await first_flow.aclose()
    await second_flow.aclose()


async def test_credential_source_is_consulted_once_and_only_when_challenged() -> None:
    calls: list[int] = []

    def source() -> Credentials:
        calls.append(1)
        return Credentials("carol", "pw")

    auth = RegistryAuth(REGISTRY, source)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    assert calls == []

    token_request = await flow.asend(bearer_challenge(first))
    assert token_request.headers["Authorization"] == basic_header("carol", "pw")
    await drive(auth, httpx.Request("GET", f"https://{REGISTRY}/v2/x/y/manifests/z"), hub_like())

    assert calls == [1]


async def test_sync_use_is_refused() -> None:
    auth = RegistryAuth(REGISTRY)
    with pytest.raises(RuntimeError):
        auth.sync_auth_flow(httpx.Request("GET", MANIFEST_URL))


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(Credentials("dave", "hunter2"))


# --- docker_credentials: config.json ----------------------------------------------------------


def write_config(directory: Path, document: dict[str, Any]) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(document))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_entry_with_base64_auth(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"registry.local:5000": {"auth": b64("eve:pa:ss")}}})

    assert docker_credentials("registry.local:5000", path) == Credentials("eve", "pa:ss")


def test_auths_entry_with_username_and_password_fields(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"auths": {"https://ghcr.io": {"username": "u", "password": "p"}}}
    )

    assert docker_credentials("ghcr.io", path) == Credentials("u", "p")


@pytest.mark.parametrize("asked", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_hub_v1_key_serves_docker_io(tmp_path: Path, asked: str) -> None:
    path = write_config(
        tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")}}}
    )

    assert docker_credentials(asked, path) == Credentials("hubuser", "hubpass")


def test_no_entry_no_file_no_credentials(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"other.example": {"auth": b64("a:b")}}})

    assert docker_credentials("registry.local:5000", path) is None
    assert docker_credentials("registry.local:5000", tmp_path / "missing.json") is None


def test_unreadable_config_is_an_auth_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")

    with pytest.raises(AuthError, match=re.escape(str(path))):
        docker_credentials("docker.io", path)


def test_auth_that_is_not_base64_is_an_auth_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"auths": {"reg.example": {"auth": "!!!not base64!!!"}}})

    with pytest.raises(AuthError, match=r"reg\.example"):
        docker_credentials("reg.example", path)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"auths": ["reg.example"]}, id="auths-list"),
        pytest.param({"credHelpers": ["fake"]}, id="credHelpers-list"),
        pytest.param({"auths": {"reg.example": {"auth": 5}}}, id="auth-number"),
    ],
)
def test_malformed_docker_config_is_an_auth_error(tmp_path: Path, document: Any) -> None:
    path = write_config(tmp_path, document)

    with pytest.raises(AuthError, match=re.escape(str(path))):
        docker_credentials("reg.example", path)


def test_docker_config_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_config(tmp_path, {"auths": {"reg.example": {"auth": b64("x:y")}}})

    assert docker_config_path() == tmp_path / "config.json"
    assert docker_credentials("reg.example") == Credentials("x", "y")


# --- docker_credentials: credential helpers ---------------------------------------------------


def install_helper(
    bin_dir: Path, name: str, *, answer: dict[str, str] | None, exit_code: int = 0
) -> Path:
    """Write ``docker-credential-NAME``: it records argv and stdin next to itself."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    body = json.dumps(answer) if answer is not None else "credentials not found in native keychain"
    script.write_text(
        "#!/bin/sh\n"
        'here=$(dirname "$0")\n'
        f'printf "%s\\n" "$@" > "$here/{name}.argv"\n'
        f'cat > "$here/{name}.stdin"\n'
        f"printf '%s' '{body}'\n"
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def test_cred_helper_for_the_registry_is_run_with_the_server_on_stdin(
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

    found = docker_credentials("registry.local:5000", path)

    assert found == Credentials("helper-user", "TOPSECRET")
    argv = (helper_bin / "fake.argv").read_text().split()
    assert argv == ["get"]
    assert "TOPSECRET" not in " ".join(argv)
    assert (helper_bin / "fake.stdin").read_text().strip() == "registry.local:5000"


def test_hub_helper_gets_dockers_hub_server_url(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "fake", answer={"Username": "hu", "Secret": "hs"})
    path = write_config(tmp_path, {"credHelpers": {"docker.io": "fake"}})

    assert docker_credentials("docker.io", path) == Credentials("hu", "hs")
    assert (helper_bin / "fake.stdin").read_text().strip() == "https://index.docker.io/v1/"


def test_creds_store_is_the_default_helper(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "store", answer={"Username": "su", "Secret": "ss"})
    path = write_config(tmp_path, {"credsStore": "store"})

    assert docker_credentials("ghcr.io", path) == Credentials("su", "ss")
    assert (helper_bin / "store.argv").read_text().split() == ["get"]


def test_helper_saying_not_found_falls_back_to_auths(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "store", answer=None, exit_code=1)
    path = write_config(
        tmp_path, {"credsStore": "store", "auths": {"ghcr.io": {"auth": b64("fallback:pw")}}}
    )

    assert docker_credentials("ghcr.io", path) == Credentials("fallback", "pw")


def test_identity_token_from_a_helper_is_not_used(tmp_path: Path, helper_bin: Path) -> None:
    install_helper(helper_bin, "store", answer={"Username": "<token>", "Secret": "refresh"})
    path = write_config(tmp_path, {"credsStore": "store"})

    assert docker_credentials("ghcr.io", path) is None


def test_missing_helper_program_is_an_auth_error_naming_it(
    tmp_path: Path, helper_bin: Path
) -> None:
    path = write_config(tmp_path, {"credsStore": "nonexistent-helper"})

    with pytest.raises(AuthError, match="docker-credential-nonexistent-helper"):
        docker_credentials("ghcr.io", path)


def test_helper_answering_garbage_is_an_auth_error(tmp_path: Path, helper_bin: Path) -> None:
    script = install_helper(helper_bin, "broken", answer={})
    script.write_text("#!/bin/sh\ncat >/dev/null\necho 'this is not json'\n")
    path = write_config(tmp_path, {"credsStore": "broken"})

    with pytest.raises(AuthError, match="broken"):
        docker_credentials("ghcr.io", path)
