"""Referrers between two fake registries: the tag scheme, and the OCI 1.1 referrers API where
the source offers it (distribution 2.8, which the integration tests run, does not)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from mirror.copy import Copier
from mirror.jobs import SyncRequest, sync
from mirror.reference import Digest, parse_reference, parse_repository
from mirror.referrers import schema_tag, split_tags
from mirror.registry import Registry
from tests.unit.conftest import RecordingSleep
from tests.unit.fakes import OCI_INDEX, OCI_MANIFEST, FakeRegistry, Image, make_image, sha256

SPDX = "application/spdx+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[a-f0-9]{64})$")


def make_artifact(subject: Image, artifact_type: str, body: bytes) -> Image:
    """An OCI 1.1 artifact (empty config) whose subject is ``subject``."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "size": 2, "digest": sha256(b"{}")},
        "layers": [{"mediaType": artifact_type, "size": len(body), "digest": sha256(body)}],
        "subject": {
            "mediaType": subject.media_type,
            "size": len(subject.raw),
            "digest": subject.digest,
        },
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    raw = json.dumps(document, indent=3).encode()
    return Image(raw, OCI_MANIFEST, {sha256(b"{}"): b"{}", sha256(body): body})


def offer_referrers_api(registry: FakeRegistry) -> None:
    """Make the fake answer ``GET /v2/<name>/referrers/<digest>`` from its manifests' subjects,
    as an OCI 1.1 registry does (``artifactType`` filter applied and announced)."""

    def answer(request: httpx.Request) -> httpx.Response | None:
        match = _REFERRERS.match(request.url.path)
        if match is None:
            return None
        wanted = request.url.params.get("artifactType")
        entries = []
        for digest, (raw, media_type) in registry.manifests.get(match["name"], {}).items():
            document = json.loads(raw)
            if (document.get("subject") or {}).get("digest") != match["digest"]:
                continue
            kind = document.get("artifactType") or document["config"]["mediaType"]
            if wanted and kind != wanted:
                continue
            entries.append(
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": len(raw),
                    "artifactType": kind,
                    "annotations": document.get("annotations", {}),
                }
            )
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return httpx.Response(200, json=body, headers={"Content-Type": OCI_INDEX})

    registry.faults.append(answer)


@dataclass
class Env:
    src: FakeRegistry
    dst: FakeRegistry
    source: Registry
    target: Registry

    def copier(self, **kwargs: object) -> Copier:
        return Copier(self.source, self.target, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def env(sleeps: RecordingSleep) -> AsyncIterator[Env]:
    src, dst = FakeRegistry("source.test"), FakeRegistry("target.test")
    async with src.client(sleep=sleeps) as source, dst.client(sleep=sleeps) as target:
        yield Env(src, dst, source, target)


def request(source: str, target: str) -> SyncRequest:
    return SyncRequest(parse_reference(source), parse_repository(target))


def referrers_asked(registry: FakeRegistry) -> list[str]:
    return [r.url.path for r in registry.requests if "/referrers/" in r.url.path]


def test_the_tags_list_is_parted_into_tags_and_referrer_tags_by_subject() -> None:
    digest = Digest("sha256:" + "ab" * 32)
    hexpart = "ab" * 32
    tags = [
        "1.0",
        f"sha256-{hexpart}.sig",
        f"sha256-{hexpart}.att",
        f"sha256-{hexpart}",
        "sha256-abc.sig",
        f"sha256-{hexpart}.other",
        "latest",
    ]

    plain, referrers = split_tags(tags)

    assert plain == ["1.0", "sha256-abc.sig", f"sha256-{hexpart}.other", "latest"]
    assert referrers.of(digest) == (
        f"sha256-{hexpart}",
        f"sha256-{hexpart}.att",
        f"sha256-{hexpart}.sig",
    )
    assert schema_tag(digest) == f"sha256-{hexpart}"


async def test_referrers_the_source_lists_by_api_arrive_with_the_tag_schema(env: Env) -> None:
    offer_referrers_api(env.src)
    image = make_image(1, oci=True)
    sbom = make_artifact(image, SPDX, b'{"spdxVersion": "SPDX-2.3"}')
    signature = make_artifact(image, SIG, b"signed")
    env.src.seed("team/app", "1.0", image)
    env.src.seed("team/app", None, sbom)  # by digest only: found through the API alone
    env.src.seed("team/app", None, signature)
    copier = env.copier()

    results = await sync(copier, request("source.test/team/app", "target.test/team/app"))

    carried = {r.digest: r for r in results if r.referrer_of}
    assert set(carried) == {sbom.digest, signature.digest}
    assert {r.referrer_of for r in carried.values()} == {image.digest}
    assert copier.report.referrers_copied == 2 and copier.report.tags_copied == 1
    for artifact in (sbom, signature):  # byte for byte, by digest
        assert env.dst.manifest("team/app", artifact.digest) == (artifact.raw, OCI_MANIFEST)
    # The target has no referrers API (the fake answers 405): it gets the tag schema.
    raw, media_type = env.dst.manifest("team/app", schema_tag(Digest(image.digest))) or (b"", "")
    listed = json.loads(raw)["manifests"]
    assert media_type == OCI_INDEX
    assert {(m["digest"], m["artifactType"]) for m in listed} == {
        (sbom.digest, SPDX),
        (signature.digest, SIG),
    }
    # Asked once for the image, then once for each referrer (a signed SBOM has referrers too).
    asked = [f"/v2/team/app/referrers/{d}" for d in (image.digest, sbom.digest, signature.digest)]
    assert sorted(referrers_asked(env.src)) == sorted(asked)


async def test_artifact_types_choose_among_the_referrers(env: Env) -> None:
    offer_referrers_api(env.src)
    image = make_image(2, oci=True)
    sbom = make_artifact(image, SPDX, b"{}")
    signature = make_artifact(image, SIG, b"signed")
    env.src.seed("team/app", "1.0", image)
    env.src.seed("team/app", None, sbom)
    env.src.seed("team/app", None, signature)

    results = await sync(
        env.copier(artifact_types=[SIG]), request("source.test/team/app", "target.test/team/app")
    )

    assert [r.digest for r in results if r.referrer_of] == [signature.digest]
    assert env.dst.manifest("team/app", sbom.digest) is None


async def test_a_second_run_writes_nothing_and_pulls_nothing(env: Env) -> None:
    offer_referrers_api(env.src)
    image = make_image(3, oci=True)
    env.src.seed("team/app", "1.0", image)
    env.src.seed("team/app", None, make_artifact(image, SPDX, b"{}"))
    await sync(env.copier(), request("source.test/team/app", "target.test/team/app"))
    env.src.requests.clear()
    env.dst.requests.clear()

    copier = env.copier()
    await sync(copier, request("source.test/team/app", "target.test/team/app"))

    assert env.dst.writes() == []
    assert env.src.find("GET", "manifest") == []
    assert copier.report.referrers_skipped == 1 and copier.report.referrers_copied == 0


async def test_a_source_without_the_api_is_asked_once_a_run(env: Env) -> None:
    for number, tag in enumerate(["1.0", "2.0", "3.0"]):
        env.src.seed("team/app", tag, make_image(10 + number))
    copier = env.copier()

    await sync(copier, request("source.test/team/app", "target.test/team/app"))
    await sync(copier, request("source.test/team/app", "target.test/other"))

    assert len(referrers_asked(env.src)) == 1
    assert copier.report.referrers_copied == 0 and copier.report.tags_copied == 6


async def test_the_referrers_verb_reads_every_page_and_knows_when_it_is_not_offered() -> None:
    digest = Digest("sha256:" + "cd" * 32)
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + c * 64, "size": 10, "artifactType": SIG}
        for c in "12"
    ]
    pages = {
        "/v2/a/referrers/" + digest: httpx.Response(
            200,
            json={"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries[:1]},
            headers={"Content-Type": OCI_INDEX, "Link": '</v2/a/referrers/next>; rel="next"'},
        ),
        "/v2/a/referrers/next": httpx.Response(
            200,
            json={"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries[1:]},
            headers={"Content-Type": OCI_INDEX},
        ),
        "/v2/b/referrers/" + digest: httpx.Response(404, text="404 page not found"),
        "/v2/c/referrers/" + digest: httpx.Response(
            200, text="<html>", headers={"Content-Type": "text/html"}
        ),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return pages[request.url.path]

    async with Registry("r.test", transport=httpx.MockTransport(answer)) as registry:
        found = await registry.list_referrers("a", digest)
        assert [(d.digest, d.artifact_type) for d in found or []] == [
            (e["digest"], SIG) for e in entries
        ]
        assert await registry.list_referrers("b", digest) is None
        assert await registry.list_referrers("c", digest) is None


def test_metrics_count_referrers_by_result_beside_tags() -> None:
    from mirror.health import Metrics
    from mirror.jobs import JobResult
    from mirror.report import CopyReport

    report = CopyReport(referrers_copied=3, referrers_skipped=2, tags_unsupported=1)
    metrics = Metrics()

    metrics.record(JobResult("a -> b", "a", "success", report, 1.0), None)

    text = metrics.render().decode()
    assert 'mirror_referrers_total{entry="a -> b",result="copied"} 3.0' in text
    assert 'mirror_referrers_total{entry="a -> b",result="skipped"} 2.0' in text
    assert 'mirror_tags_total{entry="a -> b",result="unsupported"} 1.0' in text


async def test_a_target_refusing_the_index_is_one_failed_result_not_a_crash(env: Env) -> None:
    offer_referrers_api(env.src)
    image = make_image(4, oci=True)
    env.src.seed("team/app", "1.0", image)
    env.src.seed("team/app", None, make_artifact(image, SPDX, b"{}"))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT" and "/manifests/sha256-" in request.url.path:
            return httpx.Response(400, json={"errors": [{"code": "TAG_INVALID"}]})
        return None

    env.dst.faults.append(refuse)
    copier = env.copier()

    results = await sync(copier, request("source.test/team/app", "target.test/team/app"))

    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 1 and failed[0].referrer_of == image.digest
    assert copier.report.referrers_failed == 1 and copier.report.tags_copied == 1
