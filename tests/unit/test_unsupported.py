"""What mirror leaves on purpose: Docker schema 1 manifests (told by the HEAD, never pulled)
and foreign layers a target refuses (pulled once, then remembered). One clear result each,
counted apart, never a failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from mirror.copy import Copier
from mirror.jobs import SyncRequest, sync
from mirror.reference import Digest, parse_reference, parse_repository
from mirror.registry import Registry
from tests.unit.conftest import RecordingSleep
from tests.unit.fakes import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    FakeRegistry,
    Image,
    error_response,
    make_image,
    sha256,
)

SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


Pair = tuple[FakeRegistry, FakeRegistry, Registry, Registry]


@pytest.fixture
async def pair(sleeps: RecordingSleep) -> AsyncIterator[Pair]:
    src, dst = FakeRegistry("source.test"), FakeRegistry("target.test")
    async with src.client(sleep=sleeps) as source, dst.client(sleep=sleeps) as target:
        yield src, dst, source, target


def request() -> SyncRequest:
    return SyncRequest(
        parse_reference("source.test/team/app"), parse_repository("target.test/team/app")
    )


def serve_schema1(registry: FakeRegistry, repo: str, tag: str) -> None:
    """``repo:tag`` answers as an old Docker Hub tag does: a signed schema 1 manifest, whatever
    the Accept header asks for."""
    raw = json.dumps({"schemaVersion": 1, "name": repo, "tag": tag, "fsLayers": []}).encode()
    registry.tags.setdefault(repo, {})[tag] = sha256(raw)

    def answer(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != f"/v2/{repo}/manifests/{tag}":
            return None
        headers = {"Content-Type": SCHEMA1, "Docker-Content-Digest": sha256(raw)}
        return httpx.Response(
            200, content=b"" if request.method == "HEAD" else raw, headers=headers
        )

    registry.faults.append(answer)


def windows_image() -> Image:
    """A Docker image whose base layer lives at a foreign URL, as Windows images do."""
    layer = b"own layer"
    config = json.dumps({"os": "windows", "architecture": "amd64", "rootfs": {}}).encode()
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": sha256(config)},
        "layers": [
            {
                "mediaType": FOREIGN,
                "size": 1000,
                "digest": sha256(b"base"),
                "urls": ["https://mcr.example/base.tar.gz"],
            },
            {"mediaType": DOCKER_LAYER, "size": len(layer), "digest": sha256(layer)},
        ],
    }
    raw = json.dumps(document, indent=3).encode()
    return Image(raw, DOCKER_MANIFEST, {sha256(config): config, sha256(layer): layer})


def refuse_foreign_layers(registry: FakeRegistry) -> None:
    """Answer a manifest PUT naming foreign URLs as distribution does without urls.allow."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        if (
            request.method == "PUT"
            and "/manifests/" in request.url.path
            and b'"urls"' in request.content
        ):
            return error_response(400, "MANIFEST_INVALID", "manifest invalid")
        return None

    registry.faults.append(answer)


async def test_a_schema_1_tag_is_left_by_its_head_and_never_pulled(pair: Pair) -> None:
    src, _, source, target = pair
    src.seed("team/app", "2.0", make_image(1))
    serve_schema1(src, "team/app", "1.0")
    copier = Copier(source, target)

    results = {r.target.rsplit(":", 1)[1]: r for r in await sync(copier, request())}

    old = results["1.0"]
    assert old.status == "unsupported" and "schema 1" in (old.error or "")
    assert results["2.0"].status == "copied"
    assert (copier.report.tags_unsupported, copier.report.tags_failed) == (1, 0)
    assert [r.method for r in src.requests if r.url.path.endswith("/manifests/1.0")] == ["HEAD"]


async def test_foreign_layers_a_target_refuses_are_left_and_not_pulled_again(pair: Pair) -> None:
    src, dst, source, target = pair
    src.seed("team/app", "ltsc", windows_image())
    refuse_foreign_layers(dst)
    remembered: dict[Digest, str] = {}

    first = (await sync(Copier(source, target, unsupported=remembered), request()))[0]
    src.requests.clear()
    second = (await sync(Copier(source, target, unsupported=remembered), request()))[0]

    for result in (first, second):
        assert result.status == "unsupported"
        assert "foreign layers" in (result.error or "") and "urls.allow" in (result.error or "")
    assert src.find("GET", "manifest") == []  # the HEAD says unchanged: no pull


async def test_foreign_layers_a_target_takes_stay_at_their_urls(pair: Pair) -> None:
    src, dst, source, target = pair
    image = windows_image()
    src.seed("team/app", "ltsc", image)

    (result,) = await sync(Copier(source, target), request())

    assert result.status == "copied" and "1 foreign layers" in (result.note or "")
    assert dst.manifest("team/app", "ltsc") == (image.raw, DOCKER_MANIFEST)
