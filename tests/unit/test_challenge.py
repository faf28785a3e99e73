"""Registry challenges: parsing ``WWW-Authenticate`` and the scopes a request needs."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mirror.challenge import Challenge, parse_challenges, required_scopes

REGISTRY = "registry.example"
MANIFEST_URL = f"https://{REGISTRY}/v2/library/golang/manifests/latest"
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
