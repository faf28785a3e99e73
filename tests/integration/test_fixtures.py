"""The test infrastructure itself works: registries, token server, images, proxy.

If one of these fails, integration failures elsewhere say nothing about ``mirror``.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.images import (
    ARM64,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Pusher,
    build_image,
    build_index,
    get_manifest,
    list_tags,
    make_layer,
    manifest_digest,
    sha256_digest,
    verify_repository,
)
from tests.support.proxy import Drop, ProxyRequest, RegistryProxy, Respond
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import (
    Algorithm,
    HubRegistry,
    TokenServer,
    decode_jwt_unverified,
    libtrust_key_id,
)

PASSWORD = "s3cret-pa55"


def anonymous_token(
    http: httpx.Client, server: TokenServer, repo: str, actions: str = "pull"
) -> str:
    """A token fetched over HTTP without credentials, as a client would."""
    response = http.get(
        server.realm, params={"service": server.service, "scope": f"repository:{repo}:{actions}"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


# -- built images -------------------------------------------------------------------


def test_a_layer_is_a_gzipped_tar_whose_diff_id_is_the_uncompressed_digest() -> None:
    layer = make_layer(3000, seed=7)

    tar_bytes = gzip.decompress(layer.data)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        (member,) = tar.getmembers()
        assert member.size == 3000
    assert layer.diff_id == sha256_digest(tar_bytes)
    assert layer.digest == sha256_digest(layer.data)


def test_the_same_seed_builds_the_same_bytes_and_another_seed_does_not() -> None:
    assert build_image(seed="s").raw == build_image(seed="s").raw
    assert build_image(seed="s").digest != build_image(seed="t").digest
    assert make_layer(seed=None).digest != make_layer(seed=None).digest


def test_an_image_config_lists_the_diff_ids_of_its_layers() -> None:
    image = build_image("oci", layer_count=3, seed=1)

    assert image.config is not None
    config = json.loads(image.config.data)
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [layer.diff_id for layer in image.layers],
    }
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert image.blob_digests == [image.config.digest, *(layer.digest for layer in image.layers)]


def test_an_index_describes_its_children_with_platforms() -> None:
    index = build_index("docker", seed=2)

    entries = index.document["manifests"]
    assert [entry["digest"] for entry in entries] == [child.digest for child in index.children]
    assert [entry["mediaType"] for entry in entries] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    assert entries[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert index.children[1].platform == ARM64


# -- the plain registry ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "media_type"),
    [
        (lambda: build_image("docker"), DOCKER_MANIFEST),
        (lambda: build_image("oci"), OCI_MANIFEST),
        (lambda: build_index("docker"), DOCKER_LIST),
        (lambda: build_index("oci"), OCI_INDEX),
    ],
    ids=["docker-v2", "oci-manifest", "docker-list", "oci-index"],
)
def test_the_plain_registry_stores_each_manifest_kind_byte_for_byte(
    local: RegistryProcess,
    local_pusher: Pusher,
    build: Callable[[], Image],
    media_type: str,
) -> None:
    image: Image = build()
    assert image.media_type == media_type

    local_pusher.push("library/app", image, "v1")

    assert verify_repository(local.url, "library/app", "v1") == image.digest
    assert manifest_digest(local.url, "library/app", "v1") == image.digest
    served = get_manifest(local.url, "library/app", "v1")
    assert served.content == image.raw
    assert served.headers["content-type"] == media_type


def test_verify_repository_notices_a_missing_blob(
    local: RegistryProcess, local_pusher: Pusher
) -> None:
    image = local_pusher.push_image("library/app", "v1")
    layer = image.layers[0]
    blob_dir = local.storage_dir / "docker/registry/v2/blobs/sha256" / layer.digest[7:9]
    (blob_dir / layer.digest[7:] / "data").unlink()

    with pytest.raises(AssertionError, match=layer.digest):
        verify_repository(local.url, "library/app", "v1")


def test_a_layer_can_be_shared_between_repositories(
    local: RegistryProcess, local_pusher: Pusher
) -> None:
    base = make_layer(seed="base")
    first = local_pusher.push_image("team/one", "v1", layers=[base, make_layer()])
    second = local_pusher.push_index("team/two", "v1", kind="oci", shared_layers=[base])

    assert base.digest in first.all_blobs()
    assert all(base.digest in child.blob_digests for child in second.children)
    assert local_pusher.blob_exists("team/two", base.digest)
    verify_repository(local.url, "team/one", "v1")
    verify_repository(local.url, "team/two", "v1")


def test_distribution_ignores_n_for_tags_lists_but_pages_the_catalog(
    local: RegistryProcess, local_pusher: Pusher, http: httpx.Client
) -> None:
    """distribution 2.8 answers every tag, unsorted and without Link, whatever ``n`` is."""
    image = build_image()
    local_pusher.push("library/app", image, "a", "b", "c", "d", "e")
    local_pusher.push("library/other", image, "a")

    tags = http.get(f"{local.url}/v2/library/app/tags/list?n=2")
    catalog = http.get(f"{local.url}/v2/_catalog?n=1")

    assert sorted(tags.json()["tags"]) == ["a", "b", "c", "d", "e"]
    assert "link" not in tags.headers
    assert catalog.json()["repositories"] == ["library/app"]
    assert catalog.headers["link"] == '</v2/_catalog?last=library%2Fapp&n=1>; rel="next"'


def test_a_paginating_proxy_serves_tags_in_linked_pages_like_docker_hub(
    local: RegistryProcess,
    local_pusher: Pusher,
    make_proxy: Callable[..., RegistryProxy],
    http: httpx.Client,
) -> None:
    local_pusher.push("library/app", build_image(), "e", "d", "c", "b", "a")
    proxy = make_proxy(local.url, tags_page_size=2)

    first = http.get(f"{proxy.url}/v2/library/app/tags/list")
    last = http.get(f"{proxy.url}/v2/library/app/tags/list?last=d&n=2")

    assert first.json() == {"name": "library/app", "tags": ["a", "b"]}
    assert first.headers["link"] == '</v2/library/app/tags/list?last=b&n=2>; rel="next"'
    assert last.json()["tags"] == ["e"]
    assert "link" not in last.headers
    assert list_tags(proxy.url, "library/app") == ["a", "b", "c", "d", "e"]
    assert list_tags(proxy.url, "library/missing") == []
    assert len([r for r in proxy.requests() if r.kind == "tags"]) == 2 + 3 + 1


def test_the_access_log_shows_each_request_with_its_status(
    local: RegistryProcess, local_pusher: Pusher
) -> None:
    local_pusher.push_image("library/app", "v1")
    mark = local.reset_log_mark()

    get_manifest(local.url, "library/app", "v1")
    manifest_digest(local.url, "library/app", "v1")
    get_manifest(local.url, "library/app", "nope")

    assert local.requests_since(mark) == [
        ("GET", "/v2/library/app/manifests/v1", 200),
        ("HEAD", "/v2/library/app/manifests/v1", 200),
        ("GET", "/v2/library/app/manifests/nope", 404),
    ]
    assert local.count_requests("GET", r"/manifests/") == 2
    assert local.count_requests("GET", r"/manifests/", status=200) == 1
    assert ("PUT", "/v2/library/app/manifests/v1", 201) in local.requests()
    assert ("GET", "/v2/", 200) not in local.requests()  # readiness probes are left out


def test_a_restarted_registry_keeps_its_port_and_content(
    local: RegistryProcess, local_pusher: Pusher
) -> None:
    image = local_pusher.push_image("library/app", "v1")
    url = local.url

    local.restart()

    assert local.url == url
    assert verify_repository(local.url, "library/app", "v1") == image.digest


def test_a_stopped_registry_refuses_connections(local: RegistryProcess, http: httpx.Client) -> None:
    local.stop()

    with pytest.raises(httpx.ConnectError):
        http.get(f"{local.url}/v2/")
    local.start()
    assert http.get(f"{local.url}/v2/").status_code == 200


# -- the token server and the hub -----------------------------------------------------


def test_the_token_server_answers_with_a_signed_token_for_the_requested_scopes(
    token_server: TokenServer, http: httpx.Client
) -> None:
    response = http.get(
        token_server.realm,
        params={
            "service": token_server.service,
            "scope": ["repository:a/b:pull,push", "repository:c:pull"],
            "account": "tester",
        },
        auth=("tester", PASSWORD),
    )

    body = response.json()
    assert response.status_code == 200
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    header, claims = decode_jwt_unverified(body["token"])
    assert header == {"typ": "JWT", "alg": "ES256", "kid": token_server.key_id}
    assert len(token_server.key_id.split(":")) == 12
    assert claims["aud"] == token_server.service
    assert claims["iss"] == token_server.issuer
    assert claims["sub"] == "tester"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["access"] == [
        {"type": "repository", "name": "a/b", "actions": ["pull", "push"]},
        {"type": "repository", "name": "c", "actions": ["pull"]},
    ]
    (record,) = token_server.requests()
    assert (record.username, record.scopes) == (
        "tester",
        ("repository:a/b:pull,push", "repository:c:pull"),
    )


def test_the_token_kid_is_the_libtrust_id_of_the_certificate_key(token_server: TokenServer) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(token_server.cert_path.read_bytes())

    assert libtrust_key_id(cert.public_key()) == token_server.key_id  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algorithm", "include_x5c"),
    [("RS256", False), ("ES256", True), ("RS256", True)],
    ids=["rs256-kid", "es256-x5c", "rs256-x5c"],
)
def test_a_registry_accepts_tokens_of_every_signing_variant(
    make_registry: Callable[..., RegistryProcess],
    http: httpx.Client,
    algorithm: Algorithm,
    include_x5c: bool,
) -> None:
    with TokenServer(algorithm=algorithm, include_x5c=include_x5c) as server:
        registry = make_registry(token_auth=server.auth_config)
        push = server.issue_token(["repository:a/b:pull,push"], "tester")

        started = http.post(
            f"{registry.url}/v2/a/b/blobs/uploads/", headers={"Authorization": f"Bearer {push}"}
        )

    assert started.status_code == 202
    assert ("x5c" in decode_jwt_unverified(push)[0]) is include_x5c


def test_anonymous_callers_get_pull_only(token_server: TokenServer, http: httpx.Client) -> None:
    token = anonymous_token(http, token_server, "a/b", actions="pull,push")

    _, claims = decode_jwt_unverified(token)
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]
    assert claims["sub"] == ""
    assert token_server.requests()[0].username is None


def test_the_token_server_refuses_a_wrong_password(
    token_server: TokenServer, http: httpx.Client
) -> None:
    response = http.get(
        token_server.realm,
        params={"service": token_server.service, "scope": "repository:a:pull"},
        auth=("tester", "wrong"),
    )

    assert response.status_code == 401
    assert response.json() == {"details": "incorrect username or password"}
    assert token_server.requests()[0].status == 401


@pytest.mark.parametrize("fields", ["token", "access_token"])
def test_the_token_server_can_answer_with_only_one_token_field(
    token_server: TokenServer, fields: str, http: httpx.Client
) -> None:
    token_server.response_fields = fields  # type: ignore[assignment]
    token_server.lifetime_s = 5

    body = http.get(token_server.realm, params={"service": token_server.service}).json()

    assert set(body) == {fields, "expires_in", "issued_at"}
    assert body["expires_in"] == 5


def test_the_token_server_supports_the_oauth2_password_grant(
    token_server: TokenServer, http: httpx.Client
) -> None:
    response = http.post(
        token_server.realm,
        data={
            "grant_type": "password",
            "username": "tester",
            "password": PASSWORD,
            "service": token_server.service,
            "scope": "repository:a:pull repository:b:pull",
            "client_id": "mirror",
        },
    )

    assert response.status_code == 200
    assert token_server.requests()[0].scopes == ("repository:a:pull", "repository:b:pull")


def test_the_hub_challenges_for_a_token_from_the_token_server(
    hub: HubRegistry, http: httpx.Client
) -> None:
    response = http.get(f"{hub.url}/v2/")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="{hub.token_server.realm}",service="{hub.token_server.service}"'
    )


def test_the_hub_refuses_anonymous_push(
    hub: HubRegistry, unique_repo: str, http: httpx.Client
) -> None:
    token = anonymous_token(http, hub.token_server, unique_repo)

    without_token = http.post(f"{hub.url}/v2/{unique_repo}/blobs/uploads/")
    with_pull_token = http.post(
        f"{hub.url}/v2/{unique_repo}/blobs/uploads/",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert without_token.status_code == 401
    assert with_pull_token.status_code == 401
    challenge = with_pull_token.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    # distribution lists the actions in either order ("pull,push" or "push,pull").
    scope = re.search(r'scope="repository:([^"]+):([^":]+)"', challenge)
    assert scope is not None
    assert scope[1] == unique_repo
    assert set(scope[2].split(",")) == {"pull", "push"}


def test_the_hub_serves_anonymous_pulls_with_an_anonymous_token(
    hub: HubRegistry, hub_pusher: Pusher, unique_repo: str, http: httpx.Client
) -> None:
    image = hub_pusher.push_index(unique_repo, "latest", kind="docker")
    token = anonymous_token(http, hub.token_server, unique_repo)

    assert http.get(f"{hub.url}/v2/{unique_repo}/tags/list").status_code == 401
    assert verify_repository(hub.url, unique_repo, "latest", lambda scopes: token) == image.digest


def test_the_hub_rejects_a_token_only_once_it_is_a_minute_past_exp(
    hub: HubRegistry, hub_pusher: Pusher, unique_repo: str, http: httpx.Client
) -> None:
    """distribution allows 60 s of clock skew: a token is good until exp + 60 s."""
    hub_pusher.push_image(unique_repo, "v1")
    server = hub.token_server
    server.exp_claim_offset_s = -server.lifetime_s - 55
    nearly_stale = server.issue_token([f"repository:{unique_repo}:pull"])
    server.exp_claim_offset_s = -server.lifetime_s - 65
    stale = server.issue_token([f"repository:{unique_repo}:pull"])
    url = f"{hub.url}/v2/{unique_repo}/manifests/v1"

    ok = http.get(
        url, headers={"Authorization": f"Bearer {nearly_stale}", "Accept": MANIFEST_ACCEPT}
    )
    refused = http.get(url, headers={"Authorization": f"Bearer {stale}"})

    assert ok.status_code == 200
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


# -- the proxy and its CDN ----------------------------------------------------------------


def test_the_proxy_forwards_auth_and_uploads_verbatim(
    hub: HubRegistry, make_proxy: Callable[..., RegistryProxy], unique_repo: str, http: httpx.Client
) -> None:
    proxy = make_proxy(hub.url)

    challenge = http.get(f"{proxy.url}/v2/")
    with Pusher(proxy.url, hub.token_getter()) as pusher:
        image = pusher.push_index(unique_repo, "v1", kind="oci")

    assert challenge.status_code == 401
    assert hub.token_server.realm in challenge.headers["www-authenticate"]
    assert verify_repository(proxy.url, unique_repo, "v1", hub.token_getter()) == image.digest
    assert any(r.kind == "upload" and r.method == "PUT" for r in proxy.requests())


def test_the_redirect_proxy_serves_blobs_from_a_cdn_that_needs_no_authorization(
    hub: HubRegistry,
    hub_pusher: Pusher,
    redirect_proxy: RegistryProxy,
    unique_repo: str,
    http: httpx.Client,
) -> None:
    image = hub_pusher.push_image(unique_repo, "v1", layer_size=20_000)
    layer = image.layers[0]
    token = hub.token_getter(None)([f"repository:{unique_repo}:pull"])
    auth = {"Authorization": f"Bearer {token}"}

    redirect = http.get(f"{redirect_proxy.url}/v2/{unique_repo}/blobs/{layer.digest}", headers=auth)
    location = redirect.headers["location"]
    followed = http.get(
        f"{redirect_proxy.url}/v2/{unique_repo}/blobs/{layer.digest}",
        headers=auth,
        follow_redirects=True,  # httpx drops Authorization on a cross-origin redirect
    )
    ranged = http.get(location, headers={"Range": "bytes=100-"})

    assert redirect.status_code == 307
    assert location.startswith(redirect_proxy.cdn_url)
    assert followed.status_code == 200
    assert followed.content == layer.data
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 100-{layer.size - 1}/{layer.size}"
    assert ranged.content == layer.data[100:]
    assert redirect_proxy.counts() == {
        "requests": 2,
        "redirects": 2,
        "cdn_requests": 2,
        "cdn_rejected_authorization": 0,
    }
    assert verify_repository(redirect_proxy.url, unique_repo, "v1", hub.token_getter(None))


def test_the_cdn_rejects_requests_carrying_authorization(
    hub: HubRegistry,
    hub_pusher: Pusher,
    redirect_proxy: RegistryProxy,
    unique_repo: str,
    http: httpx.Client,
) -> None:
    image = hub_pusher.push_image(unique_repo, "v1")
    location = redirect_proxy.cdn_location(unique_repo, image.layers[0].digest)

    response = http.get(location, headers={"Authorization": "Bearer whatever"})

    assert response.status_code == 403
    assert len(redirect_proxy.cdn_rejected()) == 1


def test_the_redirect_proxy_relays_auth_failures_instead_of_redirecting(
    hub: HubRegistry,
    hub_pusher: Pusher,
    redirect_proxy: RegistryProxy,
    unique_repo: str,
    http: httpx.Client,
) -> None:
    image = hub_pusher.push_image(unique_repo, "v1")

    response = http.get(f"{redirect_proxy.url}/v2/{unique_repo}/blobs/{image.layers[0].digest}")

    assert response.status_code == 401
    assert "www-authenticate" in response.headers
    assert redirect_proxy.redirects() == []


def test_proxy_rules_inject_faults_per_request(
    local: RegistryProcess,
    local_pusher: Pusher,
    make_proxy: Callable[..., RegistryProxy],
    http: httpx.Client,
) -> None:
    local_pusher.push_image("library/app", "v1")
    proxy = make_proxy(local.url)
    failures: Iterator[Respond | Drop] = iter([Respond(503, b"busy"), Drop()])

    def first_two_manifest_gets_fail(request: ProxyRequest) -> Respond | Drop | None:
        if request.kind == "manifest" and request.method == "GET":
            return next(failures, None)
        return None

    proxy.add_rule(first_two_manifest_gets_fail)
    url = f"{proxy.url}/v2/library/app/manifests/v1"

    assert http.get(url).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url)
    assert http.get(url, headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
    assert [r.kind for r in proxy.requests()] == ["manifest", "manifest", "manifest"]
