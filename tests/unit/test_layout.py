"""``oci:DIR`` as a store: one OCI image layout per repository, written so that a reader never
sees half of anything, read back byte for byte; and the ``oci:`` references that name it."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mirror.airgap import ImportCheck, check_import, take_inventory
from mirror.bundle import Bundle, Holdings, Inventory
from mirror.copy import Copier
from mirror.errors import DigestMismatch, InvalidReference, LayoutError, MirrorError, NotFound
from mirror.files import BlobWriter
from mirror.layout import REF_NAME, Layout
from mirror.manifest import Platform, parse_manifest
from mirror.reference import (
    Digest,
    is_namespace,
    names_registry,
    parse_namespace,
    parse_reference,
    resolve_target,
)
from mirror.registry import Registry
from tests.unit.fakes import FakeRegistry, Image, make_image, make_index

REPO = "diamol/golang"


@pytest.fixture
async def source() -> AsyncIterator[tuple[FakeRegistry, Registry]]:
    fake = FakeRegistry("source.test")
    async with fake.client() as client:
        yield fake, client


def files_under(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime (ns): what a run wrote shows as a change."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def blob_file(root: Path, repo: str, digest: str) -> Path:
    return root / repo / "blobs" / "sha256" / digest.split(":")[1]


async def copy_all(client: Registry, layout: Layout, tags: list[str], repo: str = REPO) -> Copier:
    copier = Copier(client, layout)
    for tag in tags:
        result = await copier.copy(repo, tag, repo, tag)
        assert result.status in ("copied", "skipped"), result.error
    return copier


def assert_layout_holds(root: Path, repo: str, tag: str, image: Image) -> None:
    """index.json names the tag; every manifest and blob is there with its exact bytes."""
    index = json.loads((root / repo / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == tag)
    assert (entry["digest"], entry["mediaType"]) == (image.digest, image.media_type)
    assert json.loads((root / repo / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for manifest in (image, *image.children):
        assert blob_file(root, repo, manifest.digest).read_bytes() == manifest.raw
    for digest, data in image.all_blobs.items():
        assert blob_file(root, repo, digest).read_bytes() == data


# --- as a target ---------------------------------------------------------------------------------


async def test_a_copy_writes_a_layout_byte_for_byte(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    image, index = make_image(1), make_index(2)
    fake.seed(REPO, "1.0", image)
    fake.seed(REPO, "2.0", index)

    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0", "2.0"])

    assert_layout_holds(tmp_path, REPO, "1.0", image)
    assert_layout_holds(tmp_path, REPO, "2.0", index)
    assert temp_files(tmp_path) == []


async def test_deleting_a_manifest_drops_its_tags_and_keeps_the_rest(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    old, new = make_image(1), make_image(2)
    fake.seed(REPO, "1.0", old)
    fake.seed(REPO, "1", old)
    fake.seed(REPO, "2.0", new)
    layout = Layout(f"oci:{tmp_path}")
    await copy_all(client, layout, ["1.0", "1", "2.0"])

    assert await layout.delete_manifest(REPO, Digest.parse(old.digest))
    assert await layout.list_tags(REPO) == ["2.0"]
    assert not await layout.delete_manifest(REPO, Digest.parse(old.digest))  # gone already
    assert_layout_holds(tmp_path, REPO, "2.0", new)


async def test_the_layout_reads_back_what_was_written(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    index = make_index(3)
    fake.seed(REPO, "2.0", index)
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["2.0"])
    layout = Layout(f"oci:{tmp_path}")

    head = await layout.head_manifest(REPO, "2.0")
    manifest = await layout.get_manifest(REPO, "2.0")
    child = index.children[0]
    layer = next(iter(child.blobs))
    async with layout.open_blob(REPO, Digest(layer)) as chunks:
        data = b"".join([c async for c in chunks])

    assert head is not None and head.digest == index.digest
    assert (manifest.raw, manifest.media_type) == (index.raw, index.media_type)
    assert await layout.list_tags(REPO) == ["2.0"]
    assert await layout.list_repositories() == [REPO]
    assert data == child.blobs[layer]
    assert await layout.head_manifest(REPO, "nope") is None


async def test_a_second_run_with_nothing_new_writes_nothing(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    fake.seed(REPO, "1.0", make_image(4))
    fake.seed(REPO, "2.0", make_index(5))
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0", "2.0"])
    before = files_under(tmp_path)

    copier = await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0", "2.0"])

    assert files_under(tmp_path) == before
    assert copier.report.tags_skipped == 2


async def test_an_incremental_run_writes_only_the_new_blobs_and_the_index(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    old = make_image(6, layer_sizes=(4000, 1000))
    fake.seed(REPO, "1.0", old)
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0"])
    before = files_under(tmp_path)
    base = old.blobs[old.layer_digests[0]]
    new = make_image(7, shared_layers=(base,), layer_sizes=(1200,))
    fake.seed(REPO, "1.1", new)

    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0", "1.1"])

    after = files_under(tmp_path)
    changed = {f for f in after if before.get(f) != after[f]}
    new_blobs = {d for d in new.blobs if d not in old.blobs} | {new.digest}
    assert changed == {f"{REPO}/index.json"} | {
        f"{REPO}/blobs/sha256/{d.split(':')[1]}" for d in new_blobs
    }


async def test_a_blob_shared_by_repositories_is_stored_once(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    shared = os.urandom(5000)
    fake.seed("a/one", "1", make_image(8, shared_layers=(shared,)))
    fake.seed("b/two", "1", make_image(9, shared_layers=(shared,)))
    layout = Layout(f"oci:{tmp_path}")
    await copy_all(client, layout, ["1"], repo="a/one")
    copier = Copier(client, layout)  # another run: nothing remembered but the disk

    result = await copier.copy("b/two", "1", "b/two", "1")

    assert result.status == "copied", result.error
    digest = Digest.of(shared)
    one, two = blob_file(tmp_path, "a/one", digest), blob_file(tmp_path, "b/two", digest)
    assert one.stat().st_ino == two.stat().st_ino  # a hard link: one copy of the bytes


async def test_many_tags_of_one_repository_at_once_all_land_in_the_index(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    image = make_image(10)
    tags = [f"1.{i}" for i in range(20)]
    for tag in tags:
        fake.seed(REPO, tag, image)
    copier = Copier(client, Layout(f"oci:{tmp_path}"))

    results = await asyncio.gather(*(copier.copy(REPO, t, REPO, t) for t in tags))

    assert {r.status for r in results} == {"copied"}
    index = json.loads((tmp_path / REPO / "index.json").read_text())
    assert sorted(m["annotations"][REF_NAME] for m in index["manifests"]) == sorted(tags)


# --- what goes wrong ---------------------------------------------------------------------------


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_truncated_blob_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    layout = Layout(f"oci:{tmp_path}")
    data = os.urandom(3000)
    digest = Digest.of(data)

    with pytest.raises(DigestMismatch, match="2000 bytes where the manifest says 3000"):
        await layout.upload_blob(REPO, digest, len(data), chunks_of(data[:2000]))

    assert not blob_file(tmp_path, REPO, digest).exists()
    assert temp_files(tmp_path) == []


async def test_a_corrupt_blob_in_an_upload_session_is_never_named(tmp_path: Path) -> None:
    layout = Layout(f"oci:{tmp_path}")
    data = os.urandom(3000)
    handle = await layout.start_upload(REPO)
    _, held = await layout.append_upload(handle, chunks_of(data[:1000], b"x" * 2000))

    with pytest.raises(DigestMismatch):
        await layout.finish_upload(handle, Digest.of(data))

    assert held == 3000
    assert not blob_file(tmp_path, REPO, Digest.of(data)).exists()
    assert temp_files(tmp_path) == []


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every blob write fails as a full disk does."""

    def no_space(self: BlobWriter, data: bytes) -> None:
        from mirror.files import failure

        raise failure("write", self.temp, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(BlobWriter, "_write", no_space)
    yield


async def test_a_full_disk_is_one_line_naming_the_path_and_leaves_nothing(
    tmp_path: Path, full_disk: None, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    fake.seed(REPO, "1.0", make_image(11))
    copier = Copier(client, Layout(f"oci:{tmp_path}"))

    result = await copier.copy(REPO, "1.0", REPO, "1.0")

    assert result.status == "failed"
    assert result.error is not None and "No space left on device" in result.error
    assert str(tmp_path / REPO / "blobs" / "sha256") in result.error
    assert "\n" not in result.error
    assert temp_files(tmp_path) == []
    index = json.loads((tmp_path / REPO / "index.json").read_text())
    assert index["manifests"] == []  # no tag points at what could not be written


async def test_a_hand_edited_index_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / REPO).mkdir(parents=True)
    (tmp_path / REPO / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp_path / REPO / "index.json").write_text('{"manifests": [{"digest": "sha256:12"}')
    layout = Layout(f"oci:{tmp_path}")

    with pytest.raises(LayoutError, match=r"index\.json is not a valid OCI image index"):
        await layout.list_tags(REPO)
    with pytest.raises(LayoutError, match=str(tmp_path / REPO / "index.json")):
        await layout.head_manifest(REPO, "1.0")


async def test_a_missing_blob_or_manifest_names_its_path(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    image = make_image(12)
    fake.seed(REPO, "1.0", image)
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0"])
    layer = image.layer_digests[0]
    blob_file(tmp_path, REPO, layer).unlink()
    blob_file(tmp_path, REPO, image.digest).unlink()
    layout = Layout(f"oci:{tmp_path}")

    with pytest.raises(NotFound, match=str(blob_file(tmp_path, REPO, layer))):
        async with layout.open_blob(REPO, Digest(layer)):
            pass
    with pytest.raises(NotFound, match="is missing"):
        await layout.get_manifest(REPO, "1.0")


async def test_an_altered_manifest_is_a_digest_mismatch_naming_its_file(tmp_path: Path) -> None:
    layout = Layout(f"oci:{tmp_path}")
    image = make_image(13)
    manifest = parse_manifest(image.raw, image.media_type)
    await layout.put_manifest(REPO, "1.0", manifest)
    blob_file(tmp_path, REPO, image.digest).write_bytes(image.raw + b" ")

    with pytest.raises(DigestMismatch, match="manifest /"):
        await layout.get_manifest(REPO, "1.0")


async def test_a_repository_name_cannot_climb_out_of_the_directory(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not a repository name"):
        await Layout(f"oci:{tmp_path}").list_tags("../etc")


# --- with an inventory of the inside ------------------------------------------------------------


async def test_with_an_inventory_only_what_the_inside_lacks_is_written(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    old = make_image(14, layer_sizes=(8000, 100))
    base = old.blobs[old.layer_digests[0]]
    new = make_image(15, shared_layers=(base,), layer_sizes=(300,))
    fake.seed(REPO, "1.0", old)
    fake.seed(REPO, "1.1", new)
    inside = Inventory(
        "registry.local:5000",
        {
            REPO: Holdings(
                {"1.0": Digest(old.digest)}, {Digest(old.digest)}, set(map(Digest, old.blobs))
            )
        },
    )
    layout = Layout(f"oci:{tmp_path}")
    layout.expect(inside)

    copier = await copy_all(client, layout, ["1.0", "1.1"])
    bundle = await layout.write_bundle()

    assert copier.report.tags_skipped == 1  # 1.0 is inside already
    written = {p.name for p in (tmp_path / REPO / "blobs" / "sha256").iterdir()}
    assert written == {d.split(":")[1] for d in new.blobs if d not in old.blobs} | {
        new.digest.split(":")[1]
    }
    assert bundle is not None and bundle.expects == {REPO: {Digest.of(base): [REPO]}}
    saved = json.loads((tmp_path / "mirror-bundle.json").read_text())
    assert saved["kind"] == "mirror-bundle" and saved["version"] == 1


def test_a_delta_bundle_needs_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "oci-layout").write_text("{}")

    with pytest.raises(LayoutError, match="needs an empty directory; it holds x"):
        Layout(f"oci:{tmp_path}").expect(Inventory("registry.local:5000"))


# --- references ----------------------------------------------------------------------------------


def make_layout_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return path


def test_oci_dir_as_a_target_keeps_the_repository_path(tmp_path: Path) -> None:
    source = parse_reference("diamol/golang:2.1")

    target = resolve_target(source, f"oci:{tmp_path}/")

    assert names_registry(f"oci:{tmp_path}")
    assert (target.registry, target.repository) == (f"oci:{tmp_path}", "diamol/golang")


def test_a_directory_of_layouts_is_a_namespace(tmp_path: Path) -> None:
    make_layout_dir(tmp_path / "diamol" / "golang")

    assert is_namespace(f"oci:{tmp_path}") and is_namespace(f"oci:{tmp_path}/*")
    assert parse_namespace(f"oci:{tmp_path}").registry == f"oci:{tmp_path}"
    assert not is_namespace(f"oci:{tmp_path}/diamol/golang")


def test_one_layout_is_named_below_its_bundle_else_by_its_last_component(tmp_path: Path) -> None:
    make_layout_dir(tmp_path / "diamol" / "golang")

    alone = parse_reference(f"oci:{tmp_path}/diamol/golang:2.1")
    (tmp_path / "mirror-bundle.json").write_text("{}")
    bundled = parse_reference(f"oci:{tmp_path}/diamol/golang@sha256:{'a' * 64}")

    assert (alone.registry, alone.repository, alone.tag) == (
        f"oci:{tmp_path}/diamol",
        "golang",
        "2.1",
    )
    assert (bundled.registry, bundled.repository) == (f"oci:{tmp_path}", "diamol/golang")
    assert bundled.digest == f"sha256:{'a' * 64}"


def test_a_tag_of_a_directory_that_is_no_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference, match="not an OCI image layout"):
        parse_reference(f"oci:{tmp_path}/nothing:1.0")


# --- the check before an import ------------------------------------------------------------------


@pytest.fixture
async def inside() -> AsyncIterator[tuple[FakeRegistry, Registry]]:
    fake = FakeRegistry("inside.test")
    async with fake.client() as client:
        yield fake, client


async def written_layout(
    tmp_path: Path, source: tuple[FakeRegistry, Registry], image: Image
) -> Layout:
    fake, client = source
    fake.seed(REPO, "1.0", image)
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0"])
    return Layout(f"oci:{tmp_path}")


async def check(layout: Layout, target: Registry) -> ImportCheck:
    request = (parse_reference(f"oci:{layout.root}/{REPO}:1.0"), parse_reference(f"x.test/{REPO}"))
    return await check_import(layout, target, [request])


async def test_a_whole_layout_passes_the_check(
    tmp_path: Path,
    source: tuple[FakeRegistry, Registry],
    inside: tuple[FakeRegistry, Registry],
) -> None:
    (tmp_path / "mirror-bundle.json").write_text(json.dumps(Bundle("x", "y").as_json()))
    layout = await written_layout(tmp_path, source, make_index(20))

    result = await check(layout, inside[1])

    assert (result.missing, result.mounts, result.tags) == ([], [], 1)


async def test_a_missing_or_cut_short_blob_is_one_line_each(
    tmp_path: Path,
    source: tuple[FakeRegistry, Registry],
    inside: tuple[FakeRegistry, Registry],
) -> None:
    (tmp_path / "mirror-bundle.json").write_text(json.dumps(Bundle("x", "y").as_json()))
    image = make_image(21, layer_sizes=(3000, 2000))
    layout = await written_layout(tmp_path, source, image)
    gone, short = image.layer_digests
    blob_file(tmp_path, REPO, gone).unlink()
    blob_file(tmp_path, REPO, short).write_bytes(image.blobs[short][:100])

    result = await check(layout, inside[1])

    assert len(result.missing) == 2
    text = "\n".join(result.missing)
    assert f"blob {gone} (3000 bytes) is in neither the bundle nor inside.test/{REPO}" in text
    assert f"blob {short} (2000 bytes) is cut short in the bundle (100 of 2000 bytes)" in text
    assert all(line.startswith(f"oci:{tmp_path}/{REPO}:1.0: ") for line in result.missing)


async def test_a_blob_the_bundle_expects_in_another_repository_is_mounted_from_there(
    tmp_path: Path,
    source: tuple[FakeRegistry, Registry],
    inside: tuple[FakeRegistry, Registry],
) -> None:
    image = make_image(22)
    layout = await written_layout(tmp_path, source, image)
    lent = image.layer_digests[0]
    blob_file(tmp_path, REPO, lent).unlink()
    bundle = Bundle("inside.test", "", {REPO: {Digest(lent): ["base/images"]}})
    (tmp_path / "mirror-bundle.json").write_text(json.dumps(bundle.as_json()))
    inside[0].blobs["base/images"] = {lent: image.blobs[lent]}

    result = await check(layout, inside[1])

    assert result.missing == []
    assert result.mounts == [("base/images", lent)]


def test_files_that_are_not_an_inventory_are_one_line_naming_them() -> None:
    with pytest.raises(MirrorError, match=r"have\.json: not JSON"):
        Inventory.from_json("{", "have.json")
    with pytest.raises(MirrorError, match=r"have\.json: not a mirror-inventory document"):
        Inventory.from_json('{"kind": "mirror-bundle"}', "have.json")
    with pytest.raises(MirrorError, match="version 2; this mirror reads 1"):
        Inventory.from_json('{"kind": "mirror-inventory", "version": 2}', "have.json")
    with pytest.raises(MirrorError, match="not a valid inventory: missing 'repositories'"):
        Inventory.from_json('{"kind": "mirror-inventory", "version": 1}', "have.json")


def test_an_inventory_reads_back_as_written() -> None:
    inventory = Inventory(
        "registry.local:5000",
        {REPO: Holdings({"1.0": Digest.of(b"m")}, {Digest.of(b"m")}, {Digest.of(b"b")})},
    )

    again = Inventory.from_json(json.dumps(inventory.as_json()), "have.json")

    assert again.repositories == inventory.repositories
    assert again.blob_homes(Digest.of(b"b")) == [REPO]


async def test_without_hard_links_a_shared_blob_is_copied(
    tmp_path: Path, source: tuple[FakeRegistry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    fake, client = source
    shared = os.urandom(4000)
    fake.seed("a/one", "1", make_image(23, shared_layers=(shared,)))
    fake.seed("b/two", "1", make_image(24, shared_layers=(shared,)))
    layout = Layout(f"oci:{tmp_path}")
    await copy_all(client, layout, ["1"], repo="a/one")

    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1"], repo="b/two")

    digest = Digest.of(shared)
    assert blob_file(tmp_path, "b/two", digest).read_bytes() == shared
    assert temp_files(tmp_path) == []


async def test_an_inventory_lets_a_run_with_platforms_skip_what_the_inside_has(
    tmp_path: Path,
    source: tuple[FakeRegistry, Registry],
    inside: tuple[FakeRegistry, Registry],
) -> None:
    fake, client = source
    fake.seed(REPO, "2.0", make_index(25))
    amd64 = [Platform.parse("linux/amd64")]
    first = await Copier(client, inside[1], platforms=amd64).copy(REPO, "2.0", REPO, "2.0")
    assert first.status == "copied", first.error
    inventory = await take_inventory(inside[1], [REPO])
    layout = Layout(f"oci:{tmp_path}")
    layout.expect(Inventory.from_json(json.dumps(inventory.as_json()), "have.json"))

    again = await Copier(client, layout, platforms=amd64).copy(REPO, "2.0", REPO, "2.0")

    assert again.status == "skipped", again.error
    assert not tmp_path.joinpath(REPO).exists()


async def test_a_large_blob_crosses_into_a_layout_and_out_again_intact(
    tmp_path: Path, source: tuple[FakeRegistry, Registry]
) -> None:
    fake, client = source
    image = make_image(26, layer_sizes=(6 * 1024 * 1024 + 17, 100))  # past RESUMABLE_MIN_BYTES
    fake.seed(REPO, "1.0", image)
    await copy_all(client, Layout(f"oci:{tmp_path}"), ["1.0"])
    assert_layout_holds(tmp_path, REPO, "1.0", image)

    other = tmp_path / "other"
    result = await Copier(Layout(f"oci:{tmp_path}"), Layout(f"oci:{other}")).copy(
        REPO, "1.0", REPO, "1.0"
    )

    assert result.status == "copied", result.error
    assert_layout_holds(other, REPO, "1.0", image)
    assert temp_files(tmp_path) == []
