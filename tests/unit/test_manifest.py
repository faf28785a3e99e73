"""Manifests: the four media types, what each refers to, and the bytes kept exactly as served."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mirror.errors import DigestMismatch, ManifestError, MirrorError
from mirror.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    parse_manifest,
)
from mirror.reference import Digest
from tests.unit.fakes import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    OCI_CONFIG,
    OCI_LAYER,
    make_image,
    make_index,
    sha256,
)

FOREIGN_DOCKER_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
NONDISTRIBUTABLE_OCI_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def descriptor(media_type: str, seed: str, **extra: Any) -> dict[str, Any]:
    data = seed.encode()
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


def image_document(media_type: str | None, config_type: str, layer_type: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(config_type, "config"),
        "layers": [descriptor(layer_type, "layer-1"), descriptor(layer_type, "layer-2")],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return document


def index_document(media_type: str | None, child_type: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(child_type, "amd64", platform={"os": "linux", "architecture": "amd64"}),
            descriptor(
                child_type,
                "arm64",
                platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
            ),
        ],
    }
    if media_type is not None:
        document["mediaType"] = media_type
    return document


# --- the four media types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "config_type", "layer_type"),
    [(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER), (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)],
)
def test_image_manifest_lists_config_then_layers_as_blobs(
    media_type: str, config_type: str, layer_type: str
) -> None:
    document = image_document(media_type, config_type, layer_type)
    raw = encode(document)

    manifest = parse_manifest(raw, media_type)

    assert manifest.media_type == media_type
    assert not manifest.is_index
    assert manifest.children == ()
    assert [b.digest for b in manifest.blobs] == [
        document["config"]["digest"],
        *(layer["digest"] for layer in document["layers"]),
    ]
    assert [b.media_type for b in manifest.blobs] == [config_type, layer_type, layer_type]
    assert [b.size for b in manifest.blobs] == [
        document["config"]["size"],
        *(layer["size"] for layer in document["layers"]),
    ]


@pytest.mark.parametrize(
    ("media_type", "child_type"),
    [(DOCKER_MANIFEST_LIST, DOCKER_MANIFEST), (OCI_INDEX, OCI_MANIFEST)],
)
def test_index_lists_its_children_with_platforms(media_type: str, child_type: str) -> None:
    document = index_document(media_type, child_type)

    manifest = parse_manifest(encode(document), media_type)

    assert manifest.media_type == media_type
    assert manifest.is_index
    assert manifest.blobs == ()
    assert [c.digest for c in manifest.children] == [d["digest"] for d in document["manifests"]]
    assert all(c.media_type == child_type for c in manifest.children)
    assert [c.platform for c in manifest.children] == [
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
    ]
    assert [str(c.platform) for c in manifest.children] == ["linux/amd64", "linux/arm64/v8"]


def test_digest_and_raw_are_the_exact_bytes_served() -> None:
    image = make_image(7)  # 3-space indented: any re-serialisation would change the digest

    manifest = parse_manifest(image.raw, None)

    assert manifest.raw == image.raw
    assert manifest.digest == Digest.of(image.raw)
    assert manifest.size == len(image.raw)
    descriptor_ = manifest.descriptor()
    assert (descriptor_.media_type, descriptor_.digest, descriptor_.size) == (
        image.media_type,
        Digest.of(image.raw),
        len(image.raw),
    )


def test_index_built_by_the_fakes_parses_with_both_children() -> None:
    index = make_index(3)

    manifest = parse_manifest(index.raw, "application/octet-stream")

    assert [c.digest for c in manifest.children] == [c.digest for c in index.children]


# --- media type detection -----------------------------------------------------------------------


def test_oci_manifest_without_media_type_is_recognised_by_its_shape() -> None:
    manifest = parse_manifest(encode(image_document(None, OCI_CONFIG, OCI_LAYER)), None)

    assert manifest.media_type == OCI_MANIFEST
    assert len(manifest.blobs) == 3


def test_oci_index_without_media_type_is_recognised_by_its_shape() -> None:
    manifest = parse_manifest(encode(index_document(None, OCI_MANIFEST)), None)

    assert manifest.media_type == OCI_INDEX
    assert len(manifest.children) == 2


def test_content_type_header_names_the_type_when_the_body_does_not() -> None:
    raw = encode(index_document(None, DOCKER_MANIFEST))

    manifest = parse_manifest(raw, f"{DOCKER_MANIFEST_LIST}; charset=utf-8")

    assert manifest.media_type == DOCKER_MANIFEST_LIST


def test_declared_media_type_wins_over_the_content_type_header() -> None:
    raw = encode(image_document(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER))

    assert parse_manifest(raw, DOCKER_MANIFEST).media_type == OCI_MANIFEST


def test_unknown_media_type_is_refused() -> None:
    raw = encode({"schemaVersion": 2, "mediaType": "application/vnd.example+json"})

    with pytest.raises(ManifestError, match="unsupported media type"):
        parse_manifest(raw, None)


# --- foreign layers ---------------------------------------------------------------------------


def test_foreign_layers_are_left_out_of_blobs() -> None:
    document = image_document(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    foreign = descriptor(FOREIGN_DOCKER_LAYER, "windows-base", urls=["https://example/base"])
    nondistributable = descriptor(NONDISTRIBUTABLE_OCI_LAYER, "restricted")
    with_urls = descriptor(DOCKER_LAYER, "elsewhere", urls=["https://example/layer"])
    document["layers"] = [foreign, nondistributable, with_urls, *document["layers"]]

    manifest = parse_manifest(encode(document), None)

    digests = {b.digest for b in manifest.blobs}
    assert digests == {
        document["config"]["digest"],
        *(layer["digest"] for layer in document["layers"][3:]),
    }
    assert not ({foreign["digest"], nondistributable["digest"], with_urls["digest"]} & digests)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        pytest.param(
            {
                "schemaVersion": 1,
                "mediaType": "application/vnd.docker.distribution.manifest.v1+json",
                "fsLayers": [],
            },
            None,
            id="declared",
        ),
        pytest.param(
            {"schemaVersion": 1, "name": "library/golang", "fsLayers": [], "signatures": []},
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            id="content-type",
        ),
        pytest.param(
            {"schemaVersion": 1, "name": "library/golang", "fsLayers": []}, None, id="shape"
        ),
    ],
)
def test_docker_schema1_is_refused(document: dict[str, Any], content_type: str | None) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(encode(document), content_type)
    assert "schema 1" in str(caught.value) or "unsupported" in str(caught.value)


@pytest.mark.parametrize("media_type", sorted(DOCKER_SCHEMA1))
def test_schema1_declared_in_the_body_is_named_as_such(media_type: str) -> None:
    raw = encode({"schemaVersion": 1, "mediaType": media_type})
    with pytest.raises(ManifestError, match="schema 1"):
        parse_manifest(raw, None)


@pytest.mark.parametrize("raw", [b"<html>not found</html>", b"\xff\xfe\x00", b"{", b""])
def test_not_json_is_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest(raw, OCI_MANIFEST)


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"manifest"', b"null"])
def test_json_that_is_not_an_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw, OCI_MANIFEST)


def test_manifest_over_the_size_cap_is_refused_before_parsing() -> None:
    raw = b" " * (MAX_MANIFEST_BYTES + 1)

    with pytest.raises(ManifestError, match=str(MAX_MANIFEST_BYTES)):
        parse_manifest(raw, OCI_MANIFEST)


def test_manifest_exactly_at_the_size_cap_is_accepted() -> None:
    body = encode(image_document(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER))
    raw = body + b" " * (MAX_MANIFEST_BYTES - len(body))
    assert len(raw) == MAX_MANIFEST_BYTES

    assert parse_manifest(raw, None).digest == Digest.of(raw)


def test_bytes_that_do_not_hash_to_the_expected_digest_raise_digest_mismatch() -> None:
    image = make_image(1)
    tampered = image.raw.replace(b'"size"', b'"size" ', 1)

    with pytest.raises(DigestMismatch) as caught:
        parse_manifest(tampered, image.media_type, Digest(image.digest))

    assert caught.value.expected == image.digest
    assert caught.value.actual == Digest.of(tampered)
    assert image.digest in str(caught.value)
    assert isinstance(caught.value, MirrorError)


def test_expected_digest_that_matches_is_accepted() -> None:
    image = make_image(2)

    assert parse_manifest(image.raw, None, Digest(image.digest)).digest == image.digest


def test_sha512_expected_digest_is_checked_with_sha512() -> None:
    import hashlib

    image = make_image(3)
    expected = Digest("sha512:" + hashlib.sha512(image.raw).hexdigest())

    assert parse_manifest(image.raw, None, expected).digest == expected
    with pytest.raises(DigestMismatch):
        parse_manifest(image.raw + b" ", None, expected)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"digest": "sha256:short"}, id="bad-digest"),
        pytest.param({"size": -1}, id="negative-size"),
        pytest.param({"size": "12"}, id="size-as-string"),
        pytest.param({"digest": None}, id="digest-null"),
    ],
)
def test_malformed_descriptor_is_a_manifest_error(broken: dict[str, Any]) -> None:
    document = image_document(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    document["layers"][0].update(broken)

    with pytest.raises(ManifestError, match="malformed descriptor"):
        parse_manifest(encode(document), None)


def test_image_manifest_without_config_is_a_manifest_error() -> None:
    document = image_document(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    del document["config"]

    with pytest.raises(ManifestError):
        parse_manifest(encode(document), None)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"mediaType": OCI_INDEX, "manifests": ["sha256:abc"]}, id="index-string"),
        pytest.param({"mediaType": OCI_INDEX, "manifests": {"a": 1}}, id="index-object"),
        pytest.param({"mediaType": OCI_MANIFEST, "config": None}, id="config-null"),
        pytest.param({"mediaType": OCI_MANIFEST, "config": "x"}, id="config-string"),
        pytest.param(
            {"mediaType": DOCKER_MANIFEST, "config": descriptor(DOCKER_CONFIG, "c"), "layers": [1]},
            id="layer-number",
        ),
    ],
)
def test_wrongly_shaped_manifest_is_a_manifest_error(document: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(encode(document), None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    media_type=st.sampled_from([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]),
    body=st.dictionaries(st.sampled_from(["config", "layers", "manifests"]), _json),
)
@example(media_type=OCI_INDEX, body={"manifests": [None]})
def test_any_json_body_gives_a_manifest_or_a_manifest_error(
    media_type: str, body: dict[str, Any]
) -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": media_type, **body}).encode()
    with contextlib.suppress(ManifestError):
        parse_manifest(raw, None)
