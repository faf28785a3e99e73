"""The copy engine between two fake registries: what moves, in which order, and what never
reaches the target (corrupt blobs, manifests whose content is missing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from mirror.copy import Copier
from mirror.http import BLOB_CHUNK_BYTES
from mirror.manifest import parse_manifest
from mirror.reference import Digest
from mirror.registry import Registry
from mirror.report import CopyReport
from tests.unit.conftest import RecordingSleep
from tests.unit.fakes import FakeRegistry, Image, Recorded, make_image, make_index

SRC_REPO = "library/app"
DST_REPO = "mirror/app"


@dataclass
class Setup:
    src: FakeRegistry
    dst: FakeRegistry
    source: Registry
    target: Registry
    sleeps: RecordingSleep

    def copier(self, **kwargs: object) -> Copier:
        kwargs.setdefault("sleep", self.sleeps)
        return Copier(self.source, self.target, **kwargs)  # type: ignore[arg-type]

    def forget_requests(self) -> None:
        self.src.requests.clear()
        self.dst.requests.clear()


@pytest.fixture
async def env(sleeps: RecordingSleep) -> AsyncIterator[Setup]:
    src = FakeRegistry("source.test")
    dst = FakeRegistry("target.test")
    async with src.client(sleep=sleeps) as source, dst.client(sleep=sleeps) as target:
        yield Setup(src, dst, source, target, sleeps)


def assert_target_holds(dst: FakeRegistry, repo: str, tag: str, image: Image) -> None:
    """The target tag serves the image's exact bytes, and every manifest and blob is there."""
    assert dst.tags[repo][tag] == image.digest
    assert dst.manifest(repo, tag) == (image.raw, image.media_type)
    for child in image.children:
        assert dst.manifest(repo, child.digest) == (child.raw, child.media_type)
    for digest, data in image.all_blobs.items():
        assert dst.blobs[repo].get(digest) == data, f"blob {digest} missing or altered"


def manifest_gets(fake: FakeRegistry) -> list[Recorded]:
    return fake.find("GET", "manifest")


# --- copying ------------------------------------------------------------------------------------


async def test_copies_a_docker_v2_image_byte_for_byte(env: Setup) -> None:
    image = make_image(1, layer_sizes=(2000, 5000, 100))
    env.src.seed(SRC_REPO, "v1", image)
    copier = env.copier()

    result = await copier.copy(SRC_REPO, "v1", DST_REPO)

    assert result.status == "copied", result.error
    assert result.digest == image.digest
    assert result.error is None
    assert result.source == f"source.test/{SRC_REPO}:v1"
    assert result.target == f"target.test/{DST_REPO}:v1"
    assert result.blobs_missing == len(image.blobs)
    assert result.bytes_missing == sum(len(b) for b in image.blobs.values())
    assert result.manifests_missing == 1
    assert_target_holds(env.dst, DST_REPO, "v1", image)


async def test_copies_an_oci_index_with_two_platforms(env: Setup) -> None:
    index = make_index(2, oci=True)
    env.src.seed(SRC_REPO, "multi", index)
    copier = env.copier()

    result = await copier.copy(SRC_REPO, "multi", DST_REPO)

    assert result.status == "copied", result.error
    assert result.digest == index.digest
    assert result.manifests_missing == 1 + len(index.children)
    assert_target_holds(env.dst, DST_REPO, "multi", index)
    report = copier.report
    assert report.manifests_pushed == 3
    assert report.blobs_copied == len(index.all_blobs)
    assert report.bytes_copied == sum(len(b) for b in index.all_blobs.values())
    assert report.upstream_manifest_gets == 1 + len(index.children)


async def test_copies_a_docker_manifest_list(env: Setup) -> None:
    index = make_index(3, oci=False)
    env.src.seed(SRC_REPO, "list", index)

    result = await env.copier().copy(SRC_REPO, "list", DST_REPO, "renamed")

    assert result.status == "copied", result.error
    assert_target_holds(env.dst, DST_REPO, "renamed", index)
    assert "list" not in env.dst.tags[DST_REPO]


async def test_push_order_is_blobs_then_child_manifests_then_the_tag(env: Setup) -> None:
    index = make_index(4)
    env.src.seed(SRC_REPO, "multi", index)

    await env.copier().copy(SRC_REPO, "multi", DST_REPO)

    writes = env.dst.writes()
    blob_puts = [i for i, r in enumerate(writes) if r.kind == "upload" and r.method == "PUT"]
    manifest_puts = [(i, r) for i, r in enumerate(writes) if r.kind == "manifest"]
    child_puts = [i for i, r in manifest_puts if r.path.rsplit("/", 1)[-1].startswith("sha256:")]
    tag_puts = [i for i, r in manifest_puts if r.path.endswith("/manifests/multi")]
    assert len(blob_puts) == len(index.all_blobs)
    assert len(child_puts) == len(index.children)
    assert len(tag_puts) == 1
    assert max(blob_puts) < min(child_puts)
    assert max(child_puts) < tag_puts[0]
    assert tag_puts[0] == len(writes) - 1, "the tag is the very last write"


async def test_large_blob_crosses_in_several_chunks_intact(env: Setup) -> None:
    size = BLOB_CHUNK_BYTES * 2 + BLOB_CHUNK_BYTES // 2
    image = make_image(5, layer_sizes=(size,))
    env.src.seed(SRC_REPO, "big", image)
    progress = RecordingProgress()

    result = await env.copier(progress=progress).copy(SRC_REPO, "big", DST_REPO)

    assert result.status == "copied", result.error
    assert_target_holds(env.dst, DST_REPO, "big", image)
    layer = Digest(image.layer_digests[0])
    assert progress.advanced[layer] == size
    assert progress.finished.count(layer) == 1
    assert progress.started[layer] == size


class RecordingProgress:
    def __init__(self) -> None:
        self.started: dict[Digest, int] = {}
        self.advanced: dict[Digest, int] = {}
        self.finished: list[Digest] = []

    def blob_started(self, digest: Digest, size: int) -> None:
        self.started[digest] = size

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        self.advanced[digest] = self.advanced.get(digest, 0) + nbytes

    def blob_finished(self, digest: Digest) -> None:
        self.finished.append(digest)


# --- moving only what is missing ------------------------------------------------------------


async def test_resync_with_nothing_new_reads_no_manifest_and_writes_nothing(env: Setup) -> None:
    index = make_index(6)
    env.src.seed(SRC_REPO, "multi", index)
    await env.copier().copy(SRC_REPO, "multi", DST_REPO)
    env.forget_requests()

    copier = env.copier()  # a new run: nothing remembered from the first
    result = await copier.copy(SRC_REPO, "multi", DST_REPO)

    assert result.status == "skipped"
    assert result.digest == index.digest
    assert manifest_gets(env.src) == []
    assert env.src.find("GET", "blob") == []
    assert env.dst.writes() == []
    assert len(env.src.find("HEAD", "manifest")) == 1
    assert copier.report.upstream_manifest_gets == 0
    assert copier.report.tags_skipped == 1


async def test_alias_tag_of_a_copied_digest_costs_no_source_get(env: Setup) -> None:
    image = make_image(7)
    env.src.seed(SRC_REPO, "1.0", image)
    env.src.seed(SRC_REPO, "latest", image)
    await env.copier().copy(SRC_REPO, "1.0", DST_REPO)
    env.forget_requests()

    copier = env.copier()
    result = await copier.copy(SRC_REPO, "latest", DST_REPO)

    assert result.status == "copied"
    assert manifest_gets(env.src) == []
    assert env.src.find("GET", "blob") == []
    assert [(r.method, r.kind) for r in env.dst.writes()] == [("PUT", "manifest")]
    assert env.dst.tags[DST_REPO]["latest"] == image.digest
    assert copier.report.upstream_manifest_gets == 0


async def test_alias_tags_in_one_run_read_the_manifest_once(env: Setup) -> None:
    image = make_image(8)
    for tag in ("1", "1.0", "latest"):
        env.src.seed(SRC_REPO, tag, image)
    copier = env.copier()

    for tag in ("1", "1.0", "latest"):
        assert (await copier.copy(SRC_REPO, tag, DST_REPO)).status == "copied"

    assert len(manifest_gets(env.src)) == 1
    assert len(env.src.find("GET", "blob")) == len(image.blobs)
    assert copier.report.blobs_copied == len(image.blobs)


async def test_only_missing_blobs_are_copied(env: Setup) -> None:
    image = make_image(9, layer_sizes=(100, 200, 300))
    env.src.seed(SRC_REPO, "v1", image)
    already = dict(list(image.blobs.items())[:2])
    env.dst.blobs.setdefault(DST_REPO, {}).update(already)
    copier = env.copier()

    result = await copier.copy(SRC_REPO, "v1", DST_REPO)

    assert result.status == "copied"
    assert result.blobs_missing == len(image.blobs) - len(already)
    fetched = {r.path.rsplit("/", 1)[-1] for r in env.src.find("GET", "blob")}
    assert fetched == set(image.blobs) - set(already)
    assert copier.report.blobs_present == len(already)
    assert copier.report.blobs_copied == len(image.blobs) - len(already)
    assert_target_holds(env.dst, DST_REPO, "v1", image)


async def test_index_with_one_child_already_on_the_target_moves_only_the_other(
    env: Setup,
) -> None:
    index = make_index(10)
    env.src.seed(SRC_REPO, "multi", index)
    present = index.children[0]
    env.dst.seed(DST_REPO, None, present)
    env.forget_requests()

    result = await env.copier().copy(SRC_REPO, "multi", DST_REPO)

    assert result.status == "copied"
    assert result.manifests_missing == 2  # the other child and the index
    fetched = {r.path.rsplit("/", 1)[-1] for r in manifest_gets(env.src)}
    assert present.digest not in fetched
    assert set(present.blobs).isdisjoint(
        r.path.rsplit("/", 1)[-1] for r in env.src.find("GET", "blob")
    )
    assert_target_holds(env.dst, DST_REPO, "multi", index)


async def test_shared_layer_crosses_once_per_run(env: Setup) -> None:
    base = make_image(11, layer_sizes=(4000,))
    shared = base.blobs[base.layer_digests[0]]
    one = make_image(12, shared_layers=(shared,))
    two = make_image(13, shared_layers=(shared,))
    env.src.seed(SRC_REPO, "one", one)
    env.src.seed(SRC_REPO, "two", two)
    copier = env.copier()

    results = await asyncio.gather(
        copier.copy(SRC_REPO, "one", DST_REPO), copier.copy(SRC_REPO, "two", DST_REPO)
    )

    assert [r.status for r in results] == ["copied", "copied"]
    shared_digest = one.layer_digests[0]
    gets = [r for r in env.src.find("GET", "blob") if r.path.endswith(shared_digest)]
    puts = [r for r in env.dst.find("PUT", "upload") if r.params.get("digest") == shared_digest]
    assert len(gets) == 1
    assert len(puts) == 1


async def test_blob_in_another_target_repository_is_mounted_not_copied(env: Setup) -> None:
    image = make_image(14)
    env.src.seed(SRC_REPO, "v1", image)
    copier = env.copier()
    await copier.copy(SRC_REPO, "v1", "first/app")
    env.forget_requests()

    result = await copier.copy(SRC_REPO, "v1", "second/app")

    assert result.status == "copied", result.error
    assert env.src.find("GET", "blob") == []
    mounts = env.dst.find("POST", "upload-start")
    assert {(r.params.get("mount"), r.params.get("from")) for r in mounts} == {
        (digest, "first/app") for digest in image.blobs
    }
    assert env.dst.find("PUT", "upload") == []
    assert copier.report.blobs_mounted == len(image.blobs)
    assert_target_holds(env.dst, "second/app", "v1", image)


async def test_declined_mount_falls_back_to_an_upload_in_the_offered_session(env: Setup) -> None:
    env.dst.mount_enabled = False
    image = make_image(15)
    env.src.seed(SRC_REPO, "v1", image)
    copier = env.copier()
    await copier.copy(SRC_REPO, "v1", "first/app")
    env.forget_requests()

    result = await copier.copy(SRC_REPO, "v1", "second/app")

    assert result.status == "copied", result.error
    assert len(env.dst.find("POST", "upload-start")) == len(image.blobs), "one POST per blob"
    assert len(env.dst.find("PUT", "upload")) == len(image.blobs)
    assert copier.report.blobs_mounted == 0
    assert_target_holds(env.dst, "second/app", "v1", image)


# --- what never reaches the target -------------------------------------------------------------


def flip_one_byte(data: bytes) -> bytes:
    return data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(flip_one_byte, id="same-length"),
        pytest.param(lambda data: data[:-1], id="truncated"),
        pytest.param(lambda data: data + b"extra", id="extended"),
    ],
)
async def test_corrupt_blob_fails_its_tag_and_never_lands(
    env: Setup, corrupt: Callable[[bytes], bytes]
) -> None:
    bad = make_image(16)
    good = make_image(17)
    env.src.seed(SRC_REPO, "bad", bad)
    env.src.seed(SRC_REPO, "good", good)
    layer = bad.layer_digests[0]
    env.src.served_blobs[layer] = corrupt(bad.blobs[layer])
    copier = env.copier()

    results = await asyncio.gather(
        copier.copy(SRC_REPO, "bad", DST_REPO), copier.copy(SRC_REPO, "good", DST_REPO)
    )

    by_tag = {r.target.rsplit(":", 1)[-1]: r for r in results}
    assert by_tag["bad"].status == "failed"
    assert "digest mismatch" in (by_tag["bad"].error or "")
    assert layer in (by_tag["bad"].error or "")
    assert not env.dst.has_blob(DST_REPO, layer)
    assert not [r for r in env.dst.find("PUT", "upload") if r.params.get("digest") == layer]
    broken = [b for b in env.dst.broken_bodies if b.url.params.get("digest") == layer]
    assert broken, "the upload was started and then broken off"
    assert all(b.declared is not None and b.received < b.declared for b in broken), (
        "the registry never saw the whole declared length, so it could not commit"
    )
    assert "bad" not in env.dst.tags.get(DST_REPO, {})
    assert bad.digest not in env.dst.manifests.get(DST_REPO, {})
    put_paths = [r.path for r in env.dst.find("PUT", "manifest")]
    assert not [p for p in put_paths if p.endswith(("/bad", bad.digest))]
    assert by_tag["good"].status == "copied"
    assert_target_holds(env.dst, DST_REPO, "good", good)
    assert (copier.report.tags_failed, copier.report.tags_copied) == (1, 1)
    assert env.sleeps.calls == [], "a digest mismatch is not worth a retry"


async def test_corrupt_child_blob_keeps_the_whole_index_off_the_target(env: Setup) -> None:
    index = make_index(18)
    env.src.seed(SRC_REPO, "multi", index)
    layer = index.children[1].layer_digests[0]
    env.src.served_blobs[layer] = flip_one_byte(index.all_blobs[layer])

    result = await env.copier().copy(SRC_REPO, "multi", DST_REPO)

    assert result.status == "failed"
    assert env.dst.find("PUT", "manifest") == []
    assert "multi" not in env.dst.tags.get(DST_REPO, {})


async def test_transient_blob_failure_is_retried(env: Setup) -> None:
    image = make_image(19)
    env.src.seed(SRC_REPO, "v1", image)
    env.src.fail(503, times=1, method="GET", kind="blob")

    result = await env.copier().copy(SRC_REPO, "v1", DST_REPO)

    assert result.status == "copied", result.error
    assert len(env.sleeps.calls) >= 1
    assert_target_holds(env.dst, DST_REPO, "v1", image)


async def test_missing_source_tag_fails_that_tag_only(env: Setup) -> None:
    image = make_image(20)
    env.src.seed(SRC_REPO, "v1", image)
    copier = env.copier()

    missing = await copier.copy(SRC_REPO, "nope", DST_REPO)
    present = await copier.copy(SRC_REPO, "v1", DST_REPO)

    assert missing.status == "failed"
    assert "nope" in (missing.error or "")
    assert present.status == "copied"
    assert env.dst.tags[DST_REPO] == {"v1": image.digest}


async def test_target_refusing_writes_fails_the_tag_with_the_registry_reason(env: Setup) -> None:
    image = make_image(21)
    env.src.seed(SRC_REPO, "v1", image)
    env.dst.fail(403, method="POST", code="DENIED")

    result = await env.copier().copy(SRC_REPO, "v1", DST_REPO)

    assert result.status == "failed"
    assert "DENIED" in (result.error or "")
    assert env.dst.find("PUT", "manifest") == []


# --- copying by digest --------------------------------------------------------------------------


async def test_copy_by_digest_pushes_the_manifest_by_digest(env: Setup) -> None:
    image = make_image(22)
    env.src.seed(SRC_REPO, None, image)

    result = await env.copier().copy(SRC_REPO, image.digest, DST_REPO)

    assert result.status == "copied", result.error
    assert result.source == f"source.test/{SRC_REPO}@{image.digest}"
    assert env.dst.manifest(DST_REPO, image.digest) == (image.raw, image.media_type)
    assert DST_REPO not in env.dst.tags
    assert env.src.find("HEAD", "manifest") == []


async def test_copy_by_digest_already_on_the_target_is_skipped(env: Setup) -> None:
    image = make_image(23)
    env.src.seed(SRC_REPO, None, image)
    env.dst.seed(DST_REPO, None, image)
    env.forget_requests()

    result = await env.copier().copy(SRC_REPO, image.digest, DST_REPO)

    assert result.status == "skipped"
    assert env.src.requests == []
    assert env.dst.writes() == []


async def test_copy_by_digest_to_a_tag(env: Setup) -> None:
    image = make_image(24)
    env.src.seed(SRC_REPO, None, image)

    result = await env.copier().copy(SRC_REPO, image.digest, DST_REPO, "pinned")

    assert result.status == "copied", result.error
    assert env.dst.tags[DST_REPO]["pinned"] == image.digest


async def test_copy_by_digest_to_a_tag_writes_the_tag_when_the_content_is_already_there(
    env: Setup,
) -> None:
    image = make_image(25)
    env.src.seed(SRC_REPO, None, image)
    env.dst.seed(DST_REPO, None, image)

    result = await env.copier().copy(SRC_REPO, image.digest, DST_REPO, "pinned")

    assert result.status in ("copied", "skipped")
    assert env.dst.tags.get(DST_REPO, {}).get("pinned") == image.digest


# --- dry run and the report ---------------------------------------------------------------------


async def test_dry_run_moves_nothing_and_counts_what_would_move(env: Setup) -> None:
    index = make_index(26)
    image = make_image(27)
    env.src.seed(SRC_REPO, "multi", index)
    env.src.seed(SRC_REPO, "single", image)
    env.src.seed(SRC_REPO, "alias", image)
    copier = env.copier(dry_run=True)

    results = [await copier.copy(SRC_REPO, tag, DST_REPO) for tag in ("multi", "single", "alias")]

    assert [r.status for r in results] == ["planned"] * 3
    assert env.dst.writes() == []
    assert env.src.find("GET", "blob") == []
    report = copier.report
    assert report.dry_run
    expected_blobs = index.all_blobs | image.blobs
    assert report.blobs_copied == len(expected_blobs), "a blob shared by two tags counts once"
    assert report.bytes_copied == sum(len(b) for b in expected_blobs.values())
    assert report.manifests_pushed == (1 + len(index.children)) + 1 + 1
    assert report.tags_copied == 3
    assert results[0].blobs_missing == len(index.all_blobs)
    assert results[0].manifests_missing == 3


async def test_report_counts_each_outcome(env: Setup) -> None:
    copied, skipped = make_image(28), make_image(29)
    env.src.seed(SRC_REPO, "copied", copied)
    env.src.seed(SRC_REPO, "skipped", skipped)
    env.dst.seed(DST_REPO, "skipped", skipped)
    report = CopyReport()
    copier = env.copier(report=report)

    for tag in ("copied", "skipped", "missing"):
        await copier.copy(SRC_REPO, tag, DST_REPO)

    assert copier.report is report
    assert (report.tags_checked, report.tags_copied, report.tags_skipped, report.tags_failed) == (
        3,
        1,
        1,
        1,
    )
    assert report.blobs_copied == len(copied.blobs)
    assert report.bytes_copied == sum(len(b) for b in copied.blobs.values())
    assert report.manifests_pushed == 1
    assert report.upstream_manifest_gets == 1
    as_dict = report.as_dict()
    assert as_dict["tags_failed"] == 1
    assert [t["status"] for t in as_dict["tags"]] == ["copied", "skipped", "failed"]
    assert as_dict["tags"][1]["digest"] == skipped.digest
    assert not as_dict["dry_run"]


async def test_copy_never_raises_for_a_registry_failure(env: Setup) -> None:
    env.src.fail(500)

    result = await env.copier().copy(SRC_REPO, "v1", DST_REPO)

    assert result.status == "failed"
    assert "source.test" in (result.error or "")


class _SlowManifestPuts(httpx.AsyncBaseTransport):
    """The fake target, with each manifest PUT taking a while: shows which PUTs overlap."""

    def __init__(self, fake: FakeRegistry) -> None:
        self.inner = fake.transport()
        self.in_flight: list[str] = []  # digests each PUT in flight writes or reads
        self.overlapped = 0  # PUTs that started while another was in flight
        self.clashes: list[str] = []  # digests a PUT touched while another PUT touched them

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "PUT" or "/manifests/" not in request.url.path:
            return await self.inner.handle_async_request(request)
        body = await request.aread()
        manifest = parse_manifest(body, request.headers["Content-Type"])
        touched = [str(manifest.digest), *(str(c.digest) for c in manifest.children)]
        self.overlapped += bool(self.in_flight)
        self.clashes += [d for d in touched if d in self.in_flight]
        self.in_flight += touched
        try:
            await asyncio.sleep(0.01)
            return await self.inner.handle_async_request(request)
        finally:
            for digest in touched:
                self.in_flight.remove(digest)


async def test_manifest_puts_overlap_unless_they_touch_the_same_manifest(
    sleeps: RecordingSleep,
) -> None:
    # distribution rewrites a repository's link to a manifest on every PUT of it, and a read
    # of it meanwhile (an index checking its child, a HEAD of an alias) draws a 500.
    src, dst = FakeRegistry("source.test"), FakeRegistry("target.test")
    index, images = make_index(40), [make_image(41 + i) for i in range(3)]
    src.seed(SRC_REPO, "multi", index)
    src.seed(SRC_REPO, "multi-alias", index)
    src.seed(SRC_REPO, "multi-amd64", index.children[0])  # a tag on one of its children
    for child in index.children:  # there already: the index and that tag are PUT at once
        dst.seed(DST_REPO, None, child)
    for i, image in enumerate(images):
        src.seed(SRC_REPO, f"v{i}", image)
    slow = _SlowManifestPuts(dst)
    target = Registry(dst.host, endpoint=f"https://{dst.host}", transport=slow, sleep=sleeps)
    async with src.client(sleep=sleeps) as source, target:
        copier = Copier(source, target, sleep=sleeps)
        tags = ["multi", "multi-alias", "multi-amd64", "v0", "v1", "v2"]
        results = await asyncio.gather(*(copier.copy(SRC_REPO, t, DST_REPO) for t in tags))

    assert [r.status for r in results] == ["copied"] * 6
    assert slow.overlapped >= 2  # unrelated manifests went side by side...
    assert slow.clashes == []  # ... but never two that touch the same one
    for tag in tags:
        assert dst.tags[DST_REPO][tag] == src.tags[SRC_REPO][tag]
