"""Registry authentication: the token dance driven by hand, answering challenges with
credentials looked up (and awaited) at the first one."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mirror.auth import RegistryAuth
from mirror.credentials import Credentials
from mirror.errors import AuthError

REGISTRY = "registry.example"
MANIFEST_URL = f"https://{REGISTRY}/v2/library/golang/manifests/latest"
REALM = "https://auth.example/token"
SERVICE = "registry.example"
PULL = "repository:library/golang:pull"


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


async def test_credentials_property_reports_what_was_resolved_and_never_looks_up() -> None:
    calls: list[int] = []

    def source() -> Credentials:
        calls.append(1)
        return Credentials("carol", "pw")

    auth = RegistryAuth(REGISTRY, source)
    assert auth.credentials is None, "nothing is resolved before the first challenge"
    assert calls == [], "reading the property runs no lookup"

    await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like())

    assert auth.credentials == Credentials("carol", "pw")
    assert calls == [1]


async def test_async_credential_source_is_awaited_at_the_first_challenge() -> None:
    calls: list[int] = []

    async def source() -> Credentials:
        calls.append(1)
        await asyncio.sleep(0)  # a real lookup (a credential helper) hands the loop back
        return Credentials("erin", "pw")

    auth = RegistryAuth(REGISTRY, source)
    flow = auth.async_auth_flow(httpx.Request("GET", MANIFEST_URL))
    first = await flow.__anext__()
    assert calls == []

    token_request = await flow.asend(bearer_challenge(first))

    assert token_request.headers["Authorization"] == basic_header("erin", "pw")
    assert auth.credentials == Credentials("erin", "pw")
    await flow.aclose()
    await drive(auth, httpx.Request("GET", f"https://{REGISTRY}/v2/x/y/manifests/z"), hub_like())
    assert calls == [1]


async def test_flows_challenged_during_a_lookup_wait_for_that_same_lookup() -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def source() -> Credentials:
        calls.append(1)
        await release.wait()
        return Credentials("frank", "pw")

    auth = RegistryAuth(REGISTRY, source)
    repositories = ["team/a", "team/b"]
    flows = [
        auth.async_auth_flow(httpx.Request("GET", f"https://{REGISTRY}/v2/{r}/manifests/v1"))
        for r in repositories
    ]
    firsts = [await flow.__anext__() for flow in flows]
    challenged = [
        asyncio.ensure_future(flow.asend(bearer_challenge(first, scope=f"repository:{r}:pull")))
        for flow, first, r in zip(flows, firsts, repositories, strict=True)
    ]
    while not calls:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not any(c.done() for c in challenged), "both flows wait for the lookup under way"

    release.set()
    token_requests = await asyncio.gather(*challenged)

    assert [r.headers["Authorization"] for r in token_requests] == 2 * [basic_header("frank", "pw")]
    assert calls == [1]
    for flow in flows:
        await flow.aclose()


async def test_a_lookup_that_failed_is_tried_again_at_the_next_challenge() -> None:
    answers: list[Credentials | AuthError] = [
        AuthError("credential helper docker-credential-x did not answer within 30 s"),
        Credentials("gina", "pw"),
    ]

    async def source() -> Credentials:
        answer = answers.pop(0)
        if isinstance(answer, AuthError):
            raise answer
        return answer

    auth = RegistryAuth(REGISTRY, source)
    with pytest.raises(AuthError, match="did not answer"):
        await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like())
    assert auth.credentials is None

    sent = await drive(auth, httpx.Request("GET", MANIFEST_URL), hub_like())

    assert sent[1].headers["Authorization"] == basic_header("gina", "pw")
    assert auth.credentials == Credentials("gina", "pw")


async def test_sync_use_is_refused() -> None:
    auth = RegistryAuth(REGISTRY)
    with pytest.raises(RuntimeError):
        auth.sync_auth_flow(httpx.Request("GET", MANIFEST_URL))
