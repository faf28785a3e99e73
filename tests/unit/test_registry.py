"""The registry client against a stateful fake registry: the verbs, the Accept set, error
mapping, retries, pagination and transport security."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from mirror.credentials import Credentials
from mirror.errors import (
    AuthError,
    DigestMismatch,
    ManifestError,
    MirrorError,
    NotFound,
    RateLimited,
    RegistryError,
    Unauthorized,
    Unavailable,
)
from mirror.manifest import MAX_MANIFEST_BYTES, parse_manifest
from mirror.quota import RateLimit
from mirror.reference import Digest
from mirror.registry import DOCKER_HUB_ENDPOINT, Registry, default_endpoint
from mirror.responses import MAX_ERROR_BODY_BYTES, safe_url
from mirror.retry import MAX_RETRY_WAIT_S
from tests.unit.conftest import NetworkBlocked, RecordingSleep
from tests.unit.fakes import (
    ALL_MANIFEST_TYPES,
    FakeRegistry,
    accepted_types,
    error_response,
    make_image,
    make_index,
    sha256,
)

REPO = "team/app"


@pytest.fixture
def fake() -> FakeRegistry:
    registry = FakeRegistry("registry.test")
    registry.seed(REPO, "v1", make_image(1))
    registry.seed(REPO, "multi", make_index(2))
    return registry


@pytest.fixture
async def client(fake: FakeRegistry, sleeps: RecordingSleep) -> AsyncIterator[Registry]:
    async with fake.client(sleep=sleeps, retry_attempts=3) as registry:
        yield registry


def image_at(fake: FakeRegistry, tag: str) -> tuple[bytes, str]:
    found = fake.manifest(REPO, tag)
    assert found is not None
    return found


class CountingBody:
    """An endless-looking response body that counts how much of it was pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += self.chunk
            yield b"<p>" + b"x" * (self.chunk - 3)


# --- manifests ----------------------------------------------------------------------------------


async def test_head_manifest_sends_the_full_accept_set_and_reads_the_headers(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "v1")

    head = await client.head_manifest(REPO, "v1")

    assert head is not None
    assert (head.digest, head.media_type, head.size) == (sha256(raw), media_type, len(raw))
    (request,) = fake.find("HEAD", "manifest")
    assert accepted_types(request.headers) == ALL_MANIFEST_TYPES


async def test_get_manifest_sends_the_full_accept_set_and_returns_the_exact_bytes(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "multi")

    manifest = await client.get_manifest(REPO, "multi")

    assert manifest.raw == raw
    assert manifest.media_type == media_type
    assert manifest.digest == sha256(raw)
    assert manifest.is_index
    (request,) = fake.find("GET", "manifest")
    assert accepted_types(request.headers) == ALL_MANIFEST_TYPES


async def test_get_manifest_by_digest(fake: FakeRegistry, client: Registry) -> None:
    raw, _ = image_at(fake, "v1")

    manifest = await client.get_manifest(REPO, sha256(raw))

    assert manifest.raw == raw
    assert fake.find("GET", "manifest")[0].path.endswith(sha256(raw))


async def test_put_manifest_sends_the_original_bytes_with_their_media_type(
    fake: FakeRegistry, client: Registry
) -> None:
    image = make_image(9)
    fake.blobs.setdefault("other/repo", {}).update(image.blobs)
    manifest = parse_manifest(image.raw, None)

    digest = await client.put_manifest("other/repo", "v9", manifest)

    assert digest == image.digest
    (request,) = fake.find("PUT", "manifest")
    assert request.body == image.raw
    assert request.headers["Content-Type"] == image.media_type
    assert fake.manifest("other/repo", "v9") == (image.raw, image.media_type)


async def test_missing_manifest_is_none_for_head_and_not_found_for_get(
    fake: FakeRegistry, client: Registry
) -> None:
    assert await client.head_manifest(REPO, "nope") is None

    with pytest.raises(NotFound) as caught:
        await client.get_manifest(REPO, "nope")

    assert caught.value.status == 404
    assert caught.value.codes == ("MANIFEST_UNKNOWN",)
    assert len(fake.find("GET", "manifest")) == 1, "a 404 is an answer, not worth a retry"


async def test_get_manifest_checks_the_bytes_against_the_requested_digest(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "v1")
    digest = sha256(raw)
    fake.manifests[REPO][digest] = (raw.replace(b"sha256", b"sha256", 1) + b"\n", media_type)

    with pytest.raises(DigestMismatch) as caught:
        await client.get_manifest(REPO, digest)

    assert caught.value.expected == digest


async def test_get_manifest_by_sha512_digest_checks_the_bytes(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "v1")
    asked = "sha512:" + "ab" * 64  # not the sha512 of raw
    fake.faults.append(
        lambda request: (
            httpx.Response(200, content=raw, headers={"Content-Type": media_type})
            if request.url.path.endswith(asked)
            else None
        )
    )

    with pytest.raises(DigestMismatch):
        await client.get_manifest(REPO, asked)


async def test_get_manifest_by_tag_checks_the_reported_digest(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "v1")
    lie = "sha256:" + "0" * 64

    def wrong_digest(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/manifests/v1"):
            return httpx.Response(
                200, content=raw, headers={"Content-Type": media_type, "Docker-Content-Digest": lie}
            )
        return None

    fake.faults.append(wrong_digest)

    with pytest.raises(DigestMismatch):
        await client.get_manifest(REPO, "v1")


async def test_get_manifest_without_a_reported_digest_hashes_the_bytes(
    fake: FakeRegistry, client: Registry
) -> None:
    raw, media_type = image_at(fake, "v1")
    fake.faults.append(
        lambda request: httpx.Response(200, content=raw, headers={"Content-Type": media_type})
    )

    assert (await client.get_manifest(REPO, "v1")).digest == sha256(raw)


async def test_oversized_manifest_is_refused_without_reading_it_all(
    fake: FakeRegistry, client: Registry
) -> None:
    body = CountingBody(64 * 1024 * 1024)
    fake.faults.append(
        lambda request: httpx.Response(
            200,
            content=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
    )

    with pytest.raises(ManifestError):
        await client.get_manifest(REPO, "v1")

    assert body.pulled <= MAX_MANIFEST_BYTES + body.chunk


async def test_declared_oversized_manifest_is_refused_before_reading(
    fake: FakeRegistry, client: Registry
) -> None:
    body = CountingBody(MAX_MANIFEST_BYTES * 2)
    fake.faults.append(
        lambda request: httpx.Response(
            200, content=body, headers={"Content-Length": str(MAX_MANIFEST_BYTES * 2)}
        )
    )

    with pytest.raises(ManifestError):
        await client.get_manifest(REPO, "v1")
    assert body.pulled == 0


# --- blobs --------------------------------------------------------------------------------------


async def test_blob_exists(fake: FakeRegistry, client: Registry) -> None:
    digest = next(iter(make_image(1).blobs))

    assert await client.blob_exists(REPO, Digest(digest)) is True
    assert await client.blob_exists(REPO, Digest("sha256:" + "0" * 64)) is False
    assert await client.blob_exists("other/repo", Digest(digest)) is False


async def test_open_blob_streams_the_bytes(fake: FakeRegistry, client: Registry) -> None:
    digest, data = next(iter(make_image(1).blobs.items()))

    async with client.open_blob(REPO, Digest(digest)) as chunks:
        received = b"".join([chunk async for chunk in chunks])

    assert received == data


async def test_open_blob_from_an_offset_uses_range(fake: FakeRegistry, client: Registry) -> None:
    digest, data = next(iter(make_image(1).blobs.items()))

    async with client.open_blob(REPO, Digest(digest), offset=100) as chunks:
        received = b"".join([chunk async for chunk in chunks])

    assert received == data[100:]
    assert fake.find("GET", "blob")[0].headers["Range"] == "bytes=100-"


async def test_open_blob_skips_the_known_part_when_a_registry_ignores_range(
    fake: FakeRegistry, client: Registry
) -> None:
    digest = next(iter(make_image(1).blobs))
    fake.faults.append(lambda request: httpx.Response(200, content=b"whole blob"))

    async with client.open_blob(REPO, Digest(digest), offset=5) as chunks:
        rest = b"".join([chunk async for chunk in chunks])

    assert rest == b" blob"


async def test_missing_blob_is_not_found(client: Registry) -> None:
    with pytest.raises(NotFound):
        async with client.open_blob(REPO, Digest("sha256:" + "0" * 64)):
            pass


async def test_blob_redirect_is_followed_without_the_registry_authorization() -> None:
    fake = FakeRegistry("registry.test", token_auth=True, blob_redirect=True)
    image = make_image(5)
    fake.seed(REPO, "v1", image)
    digest, data = next(iter(image.blobs.items()))

    async with fake.client() as client, client.open_blob(REPO, Digest(digest)) as chunks:
        received = b"".join([chunk async for chunk in chunks])

    assert received == data
    registry_get = [r for r in fake.find("GET", "blob") if "Authorization" in r.headers]
    assert registry_get and registry_get[-1].headers["Authorization"].startswith("Bearer ")
    (cdn,) = fake.find("GET", "cdn")
    assert "Authorization" not in cdn.headers


async def test_upload_blob_streams_with_explicit_length_and_digest(
    fake: FakeRegistry, client: Registry
) -> None:
    data = bytes(range(256)) * 40
    digest = Digest(sha256(data))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    await client.upload_blob("new/repo", digest, len(data), chunks())

    assert fake.blobs["new/repo"][digest] == data
    (post,) = fake.find("POST", "upload-start")
    (put,) = fake.find("PUT", "upload")
    assert put.params["digest"] == digest
    assert put.headers["Content-Length"] == str(len(data))
    assert "chunked" not in put.headers.get("Transfer-Encoding", "")
    assert put.params.get("_state", "").startswith("SECRETSTATE"), "Location's state is kept"
    assert fake.requests.index(post) < fake.requests.index(put)


async def test_upload_rejected_by_the_registry_names_codes_without_the_upload_state(
    fake: FakeRegistry, client: Registry
) -> None:
    claimed = Digest(sha256(b"what the manifest says"))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"something else entirely"

    with pytest.raises(RegistryError) as caught:
        await client.upload_blob("new/repo", claimed, 23, chunks())

    error = caught.value
    assert error.codes == ("DIGEST_INVALID",)
    assert (error.method, error.status) == ("PUT", 400)
    assert "SECRETSTATE" not in error.url and "SECRETSTATE" not in str(error)
    assert httpx.URL(error.url).params["digest"] == claimed, "the digest is harmless and useful"
    for part in ("DIGEST_INVALID", "PUT", "400", "registry.test"):
        assert part in str(error)
    assert "\n" not in str(error)
    assert not fake.has_blob("new/repo", claimed)


async def test_mount_blob_from_a_sibling_repository(fake: FakeRegistry, client: Registry) -> None:
    digest = Digest(next(iter(make_image(1).blobs)))

    result = await client.mount_blob("mirror/app", digest, REPO)

    assert result.mounted
    assert fake.has_blob("mirror/app", digest)
    (post,) = fake.find("POST", "upload-start")
    assert (post.params["mount"], post.params["from"]) == (digest, REPO)


async def test_a_mount_is_retried_after_a_server_error(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    # A first sync's every blob starts with a mount: a passing 503 must not fail the blob.
    digest = Digest(next(iter(make_image(1).blobs)))
    fake.fail(503, kind="upload-start", times=1)

    result = await client.mount_blob("mirror/app", digest, REPO)

    assert result.mounted
    assert len(fake.find("POST", "upload-start")) == 2
    assert len(sleeps.calls) == 1


async def test_a_mount_refused_outright_is_declined_without_a_session(
    fake: FakeRegistry, client: Registry
) -> None:
    digest = Digest(next(iter(make_image(1).blobs)))
    fake.fail(404, kind="upload-start", code="NAME_UNKNOWN", times=1)

    result = await client.mount_blob("mirror/app", digest, "no/such-repo")

    assert (result.mounted, result.upload_url) == (False, None)


async def test_declined_mount_returns_an_upload_session_to_use_instead(
    client: Registry, fake: FakeRegistry
) -> None:
    fake.mount_enabled = False
    data = b"layer bytes"
    digest = Digest(sha256(data))
    fake.blobs.setdefault(REPO, {})[digest] = data

    result = await client.mount_blob("mirror/app", digest, REPO)
    assert not result.mounted
    assert result.upload_url is not None

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await client.upload_blob(
        "mirror/app", digest, len(data), chunks(), upload_url=result.upload_url
    )

    assert fake.has_blob("mirror/app", digest)
    assert len(fake.find("POST", "upload-start")) == 1, "the session from the 202 is reused"


async def test_upload_started_without_location_is_a_registry_error(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.faults.append(lambda r: httpx.Response(202) if r.method == "POST" else None)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(RegistryError, match="Location"):
        await client.upload_blob("new/repo", Digest(sha256(b"x")), 1, chunks())


# --- tags ---------------------------------------------------------------------------------------


async def test_list_tags_follows_link_pagination_across_pages(sleeps: RecordingSleep) -> None:
    fake = FakeRegistry("registry.test", page_size=2)
    image = make_image(1)
    names = ["1.0", "1.1", "2.0", "latest", "zeta"]
    for tag in names:
        fake.seed(REPO, tag, image)

    async with fake.client(sleep=sleeps) as client:
        tags = await client.list_tags(REPO)

    assert tags == sorted(names)
    pages = fake.find("GET", "tags")
    assert len(pages) == 3
    assert "last" not in pages[0].params and "n" in pages[0].params
    assert [p.params.get("last") for p in pages[1:]] == ["1.1", "latest"]


async def test_list_tags_refuses_a_link_to_another_host(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.faults.append(
        lambda request: httpx.Response(
            200,
            json={"name": REPO, "tags": ["a"]},
            headers={"Link": '<https://evil.test/v2/team/app/tags/list?last=a>; rel="next"'},
        )
    )

    with pytest.raises(RegistryError, match="another host"):
        await client.list_tags(REPO)

    assert fake.find(host="evil.test") == []


async def test_list_tags_refuses_a_link_that_loops(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    pages = 0

    def looping(request: httpx.Request) -> httpx.Response | None:
        nonlocal pages
        if fake.kind_of(request) != "tags":
            return None
        pages += 1
        if pages > 20:  # keep the test finite whatever the client does
            raise httpx.ConnectError("the test registry gave up", request=request)
        return httpx.Response(
            200,
            json={"name": REPO, "tags": ["a", "b"]},
            headers={"Link": f'</v2/{REPO}/tags/list?n=2&last=b>; rel="next"'},
        )

    fake.faults.append(looping)

    with pytest.raises(RegistryError) as caught:
        await client.list_tags(REPO)

    assert not isinstance(caught.value, Unavailable)
    assert pages <= 3


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(lambda: httpx.Response(200, html="<html>maintenance</html>"), id="html"),
        pytest.param(lambda: httpx.Response(200, json=["a", "b"]), id="list"),
        pytest.param(lambda: httpx.Response(200, json={"tags": "latest"}), id="tags-string"),
        pytest.param(lambda: httpx.Response(200, json={"tags": [1, 2]}), id="tags-ints"),
    ],
)
async def test_tags_list_that_is_not_a_json_list_of_strings_is_a_registry_error(
    fake: FakeRegistry, client: Registry, response: Callable[[], httpx.Response]
) -> None:
    fake.faults.append(lambda request: response())

    with pytest.raises(RegistryError) as caught:
        await client.list_tags(REPO)

    assert caught.value.method == "GET"
    assert caught.value.status == 200


async def test_tags_null_is_an_empty_list(fake: FakeRegistry, client: Registry) -> None:
    fake.faults.append(lambda request: httpx.Response(200, json={"name": REPO, "tags": None}))

    assert await client.list_tags(REPO) == []


async def test_tags_of_an_unknown_repository_is_not_found(client: Registry) -> None:
    with pytest.raises(NotFound) as caught:
        await client.list_tags("no/such")
    assert caught.value.codes == ("NAME_UNKNOWN",)


# --- error mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "UNAUTHORIZED", Unauthorized),
        (403, "DENIED", Unauthorized),
        (404, "MANIFEST_UNKNOWN", NotFound),
        (400, "MANIFEST_INVALID", RegistryError),
        (405, "UNSUPPORTED", RegistryError),
        (429, "TOOMANYREQUESTS", RateLimited),
        (500, "UNKNOWN", Unavailable),
        (503, "UNAVAILABLE", Unavailable),
    ],
)
async def test_error_status_maps_to_its_exception(
    fake: FakeRegistry, sleeps: RecordingSleep, status: int, code: str, kind: type[RegistryError]
) -> None:
    fake.fail(status, code=code)

    async with fake.client(sleep=sleeps, retry_attempts=1) as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_manifest(REPO, "v1")

    error = caught.value
    assert type(error) is kind
    assert (error.status, error.codes, error.method) == (status, (code,), "GET")
    assert error.url == f"https://registry.test/v2/{REPO}/manifests/v1"
    assert code in str(error) and str(status) in str(error) and "\n" not in str(error)


async def test_unauthorized_says_when_no_credentials_are_configured(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.fail(401)

    with pytest.raises(Unauthorized, match="no credentials"):
        await client.head_manifest(REPO, "v1")


async def test_denied_put_carries_the_registry_message(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.faults.append(
        lambda r: (
            error_response(403, "DENIED", "requested access to the resource is denied")
            if r.method == "PUT"
            else None
        )
    )
    manifest = parse_manifest(make_image(1).raw, None)

    with pytest.raises(Unauthorized) as caught:
        await client.put_manifest(REPO, "v2", manifest)

    assert caught.value.codes == ("DENIED",)
    assert caught.value.method == "PUT"
    assert "requested access to the resource is denied" in str(caught.value)
    assert "access denied" in str(caught.value)


async def test_pull_limit_is_rate_limited_and_not_retried(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(429, code="TOOMANYREQUESTS", headers={"Retry-After": "3600"})

    with pytest.raises(RateLimited) as caught:
        await client.get_manifest(REPO, "v1")

    assert caught.value.pull_limit
    assert caught.value.retry_after == 3600
    assert "pull rate limit" in str(caught.value)
    assert len(fake.requests) == 1
    assert sleeps.calls == []


async def test_429_on_a_head_never_falls_back_to_a_get(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.fail(429, headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"})

    with pytest.raises(RateLimited):
        await client.head_manifest(REPO, "v1")

    assert fake.find("GET") == []
    assert fake.find("HEAD")


async def test_abuse_limit_is_retried_after_the_wait_the_registry_asks_for(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(429, times=1, headers={"Retry-After": "2"})

    head = await client.head_manifest(REPO, "v1")

    assert head is not None
    assert sleeps.calls == [2.0]
    assert len(fake.find("HEAD", "manifest")) == 2


async def test_server_errors_are_retried_then_raised_as_unavailable(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(503)

    with pytest.raises(Unavailable):
        await client.get_manifest(REPO, "v1")

    assert len(fake.find("GET", "manifest")) == 3  # retry_attempts of the fixture
    assert len(sleeps.calls) == 2
    assert all(0 < s <= MAX_RETRY_WAIT_S for s in sleeps.calls)
    assert sleeps.calls == sorted(sleeps.calls), "backoff does not shrink"


async def test_retry_after_is_honoured_and_capped(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(503, times=1, headers={"Retry-After": "7"})
    fake.fail(503, times=1, headers={"Retry-After": "86400"})

    manifest = await client.get_manifest(REPO, "v1")

    assert manifest.raw == image_at(fake, "v1")[0]
    assert sleeps.calls == [7.0, MAX_RETRY_WAIT_S]


async def test_retry_after_as_an_http_date_falls_back_to_backoff(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(503, times=1, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})

    await client.get_manifest(REPO, "v1")

    (wait,) = sleeps.calls
    assert 0 < wait <= MAX_RETRY_WAIT_S


async def test_transient_error_then_success_on_every_idempotent_verb(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(502, times=1, kind="blob")
    fake.fail(502, times=1, kind="tags")
    digest = Digest(next(iter(make_image(1).blobs)))

    assert await client.blob_exists(REPO, digest)
    assert await client.list_tags(REPO) == ["multi", "v1"]
    assert len(sleeps.calls) == 2


async def test_megabyte_error_body_is_read_only_up_to_the_cap(
    fake: FakeRegistry, client: Registry
) -> None:
    body = CountingBody(16 * 1024 * 1024)
    fake.faults.append(lambda request: httpx.Response(404, content=body))

    with pytest.raises(NotFound) as caught:
        await client.get_manifest(REPO, "v1")

    assert body.pulled <= MAX_ERROR_BODY_BYTES + body.chunk
    assert len(str(caught.value)) < 1000


async def test_megabyte_error_body_on_a_put_is_read_only_up_to_the_cap(
    fake: FakeRegistry, client: Registry
) -> None:
    body = CountingBody(16 * 1024 * 1024)
    fake.faults.append(lambda request: httpx.Response(400, content=body))
    manifest = parse_manifest(make_image(1).raw, None)

    with pytest.raises(RegistryError):
        await client.put_manifest(REPO, "v1", manifest)

    assert body.pulled <= MAX_ERROR_BODY_BYTES + body.chunk


async def test_compressed_error_body_is_read_once(fake: FakeRegistry, client: Registry) -> None:
    body = gzip.compress(
        json.dumps({"errors": [{"code": "DENIED", "message": "no push for you"}]}).encode()
    )
    fake.faults.append(
        lambda r: (
            httpx.Response(
                403,
                content=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
            if r.method == "PUT"
            else None
        )
    )

    with pytest.raises(Unauthorized) as caught:
        await client.put_manifest(REPO, "v1", parse_manifest(make_image(1).raw, None))

    assert caught.value.codes == ("DENIED",)
    assert "no push for you" in str(caught.value)


async def test_compressed_success_body_is_read_once(fake: FakeRegistry, client: Registry) -> None:
    fake.faults.append(
        lambda r: (
            httpx.Response(200, content=gzip.compress(b"{}"), headers={"Content-Encoding": "gzip"})
            if r.url.path == "/v2/"
            else None
        )
    )

    await client.ping()


# --- transport failures and endpoints ------------------------------------------------------------


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
async def test_transport_failure_is_unavailable_with_a_one_line_message(
    fake: FakeRegistry,
    client: Registry,
    sleeps: RecordingSleep,
    exc_type: type[httpx.TransportError],
) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise exc_type("[Errno 111] Connection refused", request=request)

    fake.faults.append(broken)

    with pytest.raises(Unavailable) as caught:
        await client.head_manifest(REPO, "v1")

    message = str(caught.value)
    assert "\n" not in message
    assert "registry.test" in message and "Connection refused" in message
    assert caught.value.method == "HEAD"
    assert caught.value.url == f"https://registry.test/v2/{REPO}/manifests/v1"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(fake.requests) == 3, "a refused connection is worth another try"


async def test_transport_failure_on_a_streamed_get_is_unavailable(
    fake: FakeRegistry, client: Registry
) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection reset", request=request)

    fake.faults.append(broken)

    with pytest.raises(Unavailable, match="connection reset"):
        await client.get_manifest(REPO, "v1")


def test_plain_http_endpoint_for_a_remote_registry_needs_insecure() -> None:
    with pytest.raises(MirrorError, match="insecure") as caught:
        Registry("registry.example", endpoint="http://registry.example")
    assert "registry.example" in str(caught.value)


async def test_plain_http_endpoint_is_allowed_when_insecure_or_loopback() -> None:
    async with Registry("registry.example", endpoint="http://registry.example", insecure=True) as r:
        assert r.endpoint == "http://registry.example"
    async with Registry("localhost:5000") as r:
        assert r.endpoint == "http://localhost:5000"


@pytest.mark.parametrize(
    ("registry", "insecure", "endpoint"),
    [
        ("docker.io", False, DOCKER_HUB_ENDPOINT),
        ("ghcr.io", False, "https://ghcr.io"),
        ("registry.local:5000", False, "https://registry.local:5000"),
        ("registry.local:5000", True, "http://registry.local:5000"),
        ("localhost:5000", False, "http://localhost:5000"),
        ("127.0.0.1:5000", False, "http://127.0.0.1:5000"),
    ],
)
def test_default_endpoint(registry: str, insecure: bool, endpoint: str) -> None:
    assert default_endpoint(registry, insecure=insecure) == endpoint


def test_docker_hub_is_reached_on_its_api_host() -> None:
    assert httpx.URL(DOCKER_HUB_ENDPOINT).host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("url", "absent", "present"),
    [
        (
            "https://user:hunter2@registry.test/v2/a/blobs/uploads/u1?_state=SECRET&digest=sha256:ab",
            ["hunter2", "user:", "SECRET"],
            ["digest=sha256", "/v2/a/blobs/uploads/u1"],
        ),
        (
            "https://cdn.test/blobs/x?X-Amz-Signature=SIGNATURE&X-Amz-Credential=KEY",
            ["SIGNATURE", "KEY"],
            ["https://cdn.test/blobs/x", "X-Amz-Signature="],
        ),
        (
            "https://auth.test/token?service=reg&scope=repository:a:pull&account=bob",
            [],
            ["service=reg", "scope=repository"],
        ),
    ],
)
def test_safe_url_drops_secrets(url: str, absent: list[str], present: list[str]) -> None:
    cleaned = safe_url(url)

    for secret in absent:
        assert secret not in cleaned
    for part in present:
        assert part in unquote(cleaned)


# --- rate limit headers, ping, auth ----------------------------------------------------------


def test_rate_limit_headers_are_read_with_their_window() -> None:
    headers = httpx.Headers({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"})

    assert RateLimit.from_headers(headers) == RateLimit(limit=100, remaining=76, window_s=21600)
    assert RateLimit.from_headers(httpx.Headers({})) is None
    assert RateLimit.from_headers(httpx.Headers({"ratelimit-limit": "junk"})) is None


async def test_rate_limit_seen_on_a_head_is_remembered(
    fake: FakeRegistry, sleeps: RecordingSleep
) -> None:
    raw, media_type = image_at(fake, "v1")

    def with_quota(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={
                "Docker-Content-Digest": sha256(raw),
                "Content-Type": media_type,
                "ratelimit-limit": "200;w=3600",
                "ratelimit-remaining": "199;w=3600",
            },
        )

    async with Registry(
        "registry.test",
        endpoint="https://registry.test",
        transport=httpx.MockTransport(with_quota),
        sleep=sleeps,
    ) as client:
        assert client.rate_limit is None
        await client.head_manifest(REPO, "v1")
        assert client.rate_limit == RateLimit(200, 199, 3600)


async def test_ping(fake: FakeRegistry, client: Registry) -> None:
    await client.ping()
    assert fake.find("GET", "ping")


async def test_ping_of_a_registry_that_wants_credentials(
    fake: FakeRegistry, client: Registry
) -> None:
    fake.fail(401)
    with pytest.raises(Unauthorized):
        await client.ping()


async def test_ping_retries_a_transient_server_error(
    fake: FakeRegistry, client: Registry, sleeps: RecordingSleep
) -> None:
    fake.fail(503, times=1, kind="ping")

    await client.ping()

    assert len(fake.find("GET", "ping")) == 2
    assert len(sleeps.calls) == 1


async def test_token_auth_end_to_end_with_one_token_per_scope(sleeps: RecordingSleep) -> None:
    fake = FakeRegistry("registry.test", token_auth=True, credentials=("alice", "pw"))
    image = make_image(3)
    fake.seed(REPO, "v1", image)

    async with fake.client(credentials=Credentials("alice", "pw"), sleep=sleeps) as client:
        head = await client.head_manifest(REPO, "v1")
        manifest = await client.get_manifest(REPO, "v1")
        assert await client.blob_exists(REPO, Digest(next(iter(image.blobs))))

    assert head is not None and head.digest == manifest.digest == image.digest
    (token_request,) = fake.find(kind="token")
    assert token_request.params.get("scope") == f"repository:{REPO}:pull"
    assert token_request.params.get("service") == "registry.test"
    assert len(fake.find(kind="manifest")) == 3  # one 401, then HEAD and GET with the token


async def test_token_auth_with_wrong_credentials_is_an_auth_error(sleeps: RecordingSleep) -> None:
    fake = FakeRegistry("registry.test", token_auth=True, credentials=("alice", "pw"))
    fake.seed(REPO, "v1", make_image(3))

    async with fake.client(credentials=Credentials("alice", "nope"), sleep=sleeps) as client:
        with pytest.raises(AuthError) as caught:
            await client.head_manifest(REPO, "v1")

    assert "registry.test" in str(caught.value)
    assert "nope" not in str(caught.value)
    assert sleeps.calls == []


async def test_client_never_raises_httpx_exceptions(fake: FakeRegistry, client: Registry) -> None:
    calls: list[Any] = [
        client.head_manifest(REPO, "v1"),
        client.get_manifest(REPO, "v1"),
        client.list_tags(REPO),
        client.blob_exists(REPO, Digest("sha256:" + "0" * 64)),
    ]

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("boom", request=request)

    fake.faults.append(broken)
    for call in calls:
        with pytest.raises(MirrorError):
            await call


async def test_unit_tests_cannot_open_connections() -> None:
    """The guard in conftest: a client without a MockTransport must not reach anything."""
    async with Registry("registry.example", retry_attempts=1) as client:
        with pytest.raises(NetworkBlocked):
            await client.ping()


async def test_no_cookies_are_kept_or_sent() -> None:
    # Like docker and containerd: a registry API is stateless (and httpx's jar costs CPU).
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(
            200, json={"name": REPO, "tags": ["v1"]}, headers={"Set-Cookie": "lb=node-2; Path=/"}
        )

    async with Registry("registry.test", transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):
            assert await client.list_tags(REPO) == ["v1"]
    assert seen == [None, None]
