"""Jobs: one request -> the tags it selects -> one copy each; shared registry clients."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mirror.clients import Clients
from mirror.config import load_config
from mirror.copy import Copier
from mirror.errors import ConfigError
from mirror.jobs import SyncRequest, sync
from mirror.reference import parse_reference, parse_repository
from tests.unit.conftest import RecordingSleep
from tests.unit.fakes import FakeRegistry, error_response, make_image, make_index


@dataclass
class Env:
    copier: Copier
    src: FakeRegistry
    dst: FakeRegistry


@pytest.fixture
async def env(sleeps: RecordingSleep) -> AsyncIterator[Env]:
    src = FakeRegistry("source.test", page_size=2)
    dst = FakeRegistry("target.test")
    async with src.client(sleep=sleeps) as source, dst.client(sleep=sleeps) as target:
        yield Env(Copier(source, target, sleep=sleeps), src, dst)


def request(source: str, target: str) -> SyncRequest:
    return SyncRequest(parse_reference(source), parse_repository(target))


async def test_repository_without_tag_copies_every_tag_across_pages(env: Env) -> None:
    src, dst = env.src, env.dst
    images = {tag: make_image(i) for i, tag in enumerate(["a", "b", "c", "d", "e"])}
    for tag, image in images.items():
        src.seed("team/app", tag, image)

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    assert sorted(r.target for r in results) == [f"target.test/team/app:{t}" for t in images]
    assert all(r.status == "copied" for r in results)
    assert dst.tags["team/app"] == {tag: image.digest for tag, image in images.items()}
    assert len(src.find("GET", "tags")) == 3


def tag_heads(registry: FakeRegistry, repository: str) -> list[str]:
    """The tags (not digests) HEADed in ``repository``."""
    prefix = f"/v2/{repository}/manifests/"
    return [
        r.path.removeprefix(prefix)
        for r in registry.find("HEAD", "manifest")
        if r.path.startswith(prefix) and ":" not in r.path.removeprefix(prefix)
    ]


async def test_tags_the_target_does_not_list_are_not_asked_for(env: Env) -> None:
    src, dst = env.src, env.dst
    images = {tag: make_image(20 + i) for i, tag in enumerate(["a", "b", "c"])}
    for tag, image in images.items():
        src.seed("team/app", tag, image)
    dst.seed("team/app", "b", images["b"])  # the target has b already, at the same digest

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    assert {r.target.rsplit(":", 1)[1]: r.status for r in results} == {
        "a": "copied",
        "b": "skipped",
        "c": "copied",
    }
    assert len(dst.find("GET", "tags")) == 1  # one tags list of the target...
    assert tag_heads(dst, "team/app").count("b") == 1  # ... and only b asked for its digest
    assert tag_heads(dst, "team/app").count("a") == 1  # a's only HEAD is the read-back
    assert dst.tags["team/app"] == {tag: image.digest for tag, image in images.items()}


async def test_a_new_target_repository_gets_no_tag_heads_before_the_copy(env: Env) -> None:
    src, dst = env.src, env.dst
    for i, tag in enumerate(["a", "b"]):
        src.seed("team/app", tag, make_image(30 + i))

    results = await sync(env.copier, request("source.test/team/app", "target.test/new/app"))

    assert [r.status for r in results] == ["copied", "copied"]
    # tags list: 404 NAME_UNKNOWN; the only tag HEADs are the read-backs after each PUT.
    assert sorted(tag_heads(dst, "new/app")) == ["a", "b"]
    writes = [r.path for r in dst.writes() if r.kind == "manifest"]
    assert len(writes) == 2


def blob_posts(registry: FakeRegistry, repository: str) -> list[tuple[str | None, str | None]]:
    """(mount, from) of each upload POST into ``repository``."""
    return [
        (r.params.get("mount"), r.params.get("from"))
        for r in registry.find("POST")
        if r.path.startswith(f"/v2/{repository}/blobs/uploads")
    ]


async def test_a_new_repository_is_asked_for_blobs_by_a_mount_not_a_head(env: Env) -> None:
    src, dst = env.src, env.dst
    image = make_image(33)
    src.seed("team/app", "a", image)

    results = await sync(env.copier, request("source.test/team/app", "target.test/new/app"))

    assert [r.status for r in results] == ["copied"]
    assert [r.blobs_missing for r in results] == [len(image.blobs)]
    assert dst.find("HEAD", "blob") == []
    # one POST per blob, which is a mount from the repository itself: declined (202), it is
    # the upload session the blob needed anyway
    assert sorted(blob_posts(dst, "new/app")) == sorted((d, "new/app") for d in image.blobs)
    assert dst.blobs["new/app"] == image.blobs
    assert dst.tags["new/app"] == {"a": image.digest}


async def test_blobs_left_in_a_tagless_repository_are_linked_not_sent_again(env: Env) -> None:
    src, dst = env.src, env.dst
    image = make_image(34)
    src.seed("team/app", "a", image)
    layer = image.layer_digests[0]
    dst.blobs["new/app"] = {layer: image.blobs[layer]}  # an interrupted run's leftover

    results = await sync(env.copier, request("source.test/team/app", "target.test/new/app"))

    assert [r.status for r in results] == ["copied"]
    assert results[0].blobs_missing == len(image.blobs) - 1
    assert results[0].bytes_missing == sum(len(b) for d, b in image.blobs.items() if d != layer)
    uploaded = [r.params.get("digest") for r in dst.find("PUT", "upload")]
    assert layer not in uploaded and len(uploaded) == len(image.blobs) - 1
    assert env.copier.report.blobs_present == 1
    assert env.copier.report.bytes_copied == results[0].bytes_missing


async def test_a_registry_refusing_to_mount_from_a_new_repository_is_asked_by_head(
    env: Env,
) -> None:
    src, dst = env.src, env.dst
    image = make_image(38)
    src.seed("team/app", "a", image)
    layer = image.layer_digests[0]
    dst.blobs["new/app"] = {layer: image.blobs[layer]}
    dst.faults.append(  # every mount: "no such repository" (a registry checking ``from``)
        lambda r: error_response(404, "NAME_UNKNOWN") if "mount" in r.url.params else None
    )

    results = await sync(env.copier, request("source.test/team/app", "target.test/new/app"))

    assert [r.status for r in results] == ["copied"]
    assert len(dst.find("HEAD", "blob")) == len(image.blobs)  # each refused mount, then HEAD
    uploaded = [r.params.get("digest") for r in dst.find("PUT", "upload")]
    assert sorted(uploaded) == sorted(d for d in image.blobs if d != layer)
    assert dst.blobs["new/app"] == image.blobs


async def test_a_repository_with_tags_is_asked_by_head_and_never_relinked(env: Env) -> None:
    src, dst = env.src, env.dst
    old, new = make_image(35), make_image(36)
    src.seed("team/app", "new", new)
    dst.seed("team/app", "old", old)

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    assert [r.status for r in results] == ["copied"]
    assert len(dst.find("HEAD", "blob")) == len(new.blobs)
    assert all(mount is None for mount, _ in blob_posts(dst, "team/app"))


async def test_a_dry_run_into_a_new_repository_writes_nothing(sleeps: RecordingSleep) -> None:
    src, dst = FakeRegistry("source.test"), FakeRegistry("target.test")
    image = make_image(37)
    src.seed("team/app", "a", image)
    async with src.client(sleep=sleeps) as source, dst.client(sleep=sleeps) as target:
        copier = Copier(source, target, sleep=sleeps, dry_run=True)
        results = await sync(copier, request("source.test/team/app", "target.test/new/app"))

    assert [(r.status, r.blobs_missing) for r in results] == [("planned", len(image.blobs))]
    assert dst.writes() == []
    assert len(dst.find("HEAD", "blob")) == len(image.blobs)


async def test_a_target_that_will_not_list_tags_is_asked_tag_by_tag(env: Env) -> None:
    src, dst = env.src, env.dst
    image = make_image(40)
    src.seed("team/app", "a", image)
    dst.seed("team/app", "a", image)
    dst.fail(403, kind="tags", code="DENIED")  # a target that lets us HEAD but not list

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    assert [r.status for r in results] == ["skipped"]
    assert tag_heads(dst, "team/app") == ["a"]


async def test_one_failing_tag_does_not_stop_the_others(env: Env) -> None:
    src, dst = env.src, env.dst
    good, bad = make_image(1), make_image(2)
    src.seed("team/app", "good", good)
    src.seed("team/app", "bad", bad)
    layer = bad.layer_digests[0]
    src.served_blobs[layer] = bad.blobs[layer][::-1]

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    assert {r.target.rsplit(":", 1)[1]: r.status for r in results} == {
        "good": "copied",
        "bad": "failed",
    }
    assert dst.tags["team/app"] == {"good": good.digest}


async def test_tag_listing_failure_is_one_failed_result(env: Env) -> None:
    results = await sync(env.copier, request("source.test/no/such", "target.test/no/such"))

    (result,) = results
    assert result.status == "failed"
    assert "no/such" in (result.error or "")
    assert env.copier.report.tags_failed == 1


async def test_single_tag_request_copies_only_that_tag(env: Env) -> None:
    src, dst = env.src, env.dst
    src.seed("team/app", "v1", make_image(3))
    src.seed("team/app", "v2", make_image(4))

    results = await sync(env.copier, request("source.test/team/app:v2", "target.test/x/app"))

    assert [r.status for r in results] == ["copied"]
    assert list(dst.tags["x/app"]) == ["v2"]
    # The tags list is read once, for the tag's signatures (sha256-<hex>.sig); v1 stays.
    assert len(src.find("GET", "tags")) == 1


async def test_single_tag_request_without_referrers_reads_no_tags_list(env: Env) -> None:
    env.src.seed("team/app", "v2", make_image(4))
    copier = Copier(env.copier.source, env.copier.target, referrers=False)

    results = await sync(copier, request("source.test/team/app:v2", "target.test/x/app"))

    assert [r.status for r in results] == ["copied"]
    assert env.src.find("GET", "tags") == []


async def test_digest_with_tag_is_tagged_on_the_target(env: Env) -> None:
    src, dst = env.src, env.dst
    index = make_index(5)
    src.seed("team/app", None, index)

    results = await sync(
        env.copier, request(f"source.test/team/app:pinned@{index.digest}", "target.test/team/app")
    )

    assert [r.status for r in results] == ["copied"]
    assert dst.tags["team/app"] == {"pinned": index.digest}


async def test_digest_without_tag_lands_by_digest_only(env: Env) -> None:
    src, dst = env.src, env.dst
    image = make_image(6)
    src.seed("team/app", None, image)

    await sync(env.copier, request(f"source.test/team/app@{image.digest}", "target.test/team/app"))

    assert dst.manifest("team/app", image.digest) == (image.raw, image.media_type)
    assert "team/app" not in dst.tags


# --- Clients ------------------------------------------------------------------------------------


async def test_clients_share_one_registry_per_name_built_from_config(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(
        '[registries."registry.local:5000"]\ninsecure = true\n'
        '[registries."docker.io"]\nendpoint = "https://hub-cache.internal"\n'
    )
    clients = Clients(load_config(path))

    local = clients.get("registry.local:5000")
    hub = clients.get("docker.io")

    assert clients.get("registry.local:5000") is local
    assert local.endpoint == "http://registry.local:5000"
    assert hub.endpoint == "https://hub-cache.internal"
    assert clients.get("ghcr.io").endpoint == "https://ghcr.io"
    await clients.aclose()
    assert clients.get("registry.local:5000") is not local


async def test_clients_report_bad_credentials_settings_at_once(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text('[registries."ghcr.io"]\nusername = "u"\npassword_env = "UNSET_VAR_X"\n')
    clients = Clients(load_config(path))

    with pytest.raises(ConfigError, match="UNSET_VAR_X"):
        clients.get("ghcr.io")
    await clients.aclose()


async def test_clients_answer_a_challenge_with_what_docker_login_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeps: RecordingSleep
) -> None:
    fake = FakeRegistry("registry.test", token_auth=True, credentials=("dora", "from-login"))
    fake.seed("team/app", "v1", make_image(1))
    docker = tmp_path / "docker"
    docker.mkdir()
    stored = base64.b64encode(b"dora:from-login").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {"registry.test": {"auth": stored}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    path = tmp_path / "mirror.toml"
    path.write_text("")  # names no credentials for registry.test
    clients = Clients(load_config(path), transport=fake.transport(), sleep=sleeps)

    assert await clients.get("registry.test").list_tags("team/app") == ["v1"]
    assert [r.path for r in fake.find("GET", "token")] == ["/token"]
    await clients.aclose()


# --- what one upstream does wrong fails one tag, never the job ---------------------------------


async def test_a_manifest_body_that_will_not_decode_fails_its_tag_and_the_others_copy(
    env: Env, sleeps: RecordingSleep
) -> None:
    broken, fine = make_image(41), make_image(42)
    env.src.seed("team/app", "broken", broken)
    env.src.seed("team/app", "fine", fine)

    def undecodable(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith(f"/manifests/{broken.digest}"):
            return httpx.Response(
                200, headers={"Content-Encoding": "gzip"}, content=b"this is not gzip"
            )
        return None

    env.src.faults.append(undecodable)

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    by_tag = {r.target.rsplit(":", 1)[1]: r for r in results}
    assert by_tag["fine"].status == "copied"
    assert by_tag["broken"].status == "failed"
    assert "could not be decoded" in (by_tag["broken"].error or "")
    assert env.dst.tags["team/app"] == {"fine": fine.digest}
    assert sleeps.calls, "a body that will not decode is worth another try"


async def test_a_blob_redirect_loop_fails_its_tag_and_the_others_copy(env: Env) -> None:
    looping, fine = make_image(43), make_image(44)
    env.src.seed("team/app", "looping", looping)
    env.src.seed("team/app", "fine", fine)
    layer = looping.layer_digests[0]

    def loop(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith(f"/blobs/{layer}"):
            return httpx.Response(307, headers={"Location": str(request.url)})
        return None

    env.src.faults.append(loop)

    results = await sync(env.copier, request("source.test/team/app", "target.test/team/app"))

    by_tag = {r.target.rsplit(":", 1)[1]: r for r in results}
    assert by_tag["fine"].status == "copied"
    assert by_tag["looping"].status == "failed"
    assert "too many redirects" in (by_tag["looping"].error or "")
    assert "looping" not in env.dst.tags["team/app"]
