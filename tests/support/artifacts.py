"""What a registry holds besides images, built in Python like ``tests.support.images``.

Owns building a Helm chart, an artifact with the empty config and an ``artifactType``, an image
with zstd layers, manifests with a ``subject`` (a cosign signature, an in-toto attestation, an
SBOM), a BuildKit-style index with attestation manifests, the OCI 1.1 referrers tag-schema
index, a Windows image with a foreign layer and a libtrust-signed Docker schema 1 manifest.
Manifest bytes are kept exactly as built (3-space indented), as in ``images``. Knows nothing
of the code under test.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import struct
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.images import (
    AMD64,
    ARM64,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    Platform,
    build_image,
    make_config,
    sha256_digest,
)
from tests.support.tokenserver import b64url, libtrust_key_id

EMPTY = "application/vnd.oci.empty.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
COSIGN_PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
UNKNOWN = Platform("unknown", "unknown")


def _serialize(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


def _tar(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zstd_frame(data: bytes) -> bytes:
    """``data`` as a valid zstd frame of raw (stored) blocks: what ``zstd -d`` reads back."""
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out += bytes([0xA0]) + struct.pack("<I", len(data))  # single segment, 4-byte content size
    chunks = [data[i : i + 128 * 1024] for i in range(0, len(data), 128 * 1024)] or [b""]
    for number, chunk in enumerate(chunks):
        last = 1 if number == len(chunks) - 1 else 0
        out += struct.pack("<I", last | (len(chunk) << 3))[:3]  # raw block
        out += chunk
    return bytes(out)


def empty_config() -> Blob:
    return Blob.of(b"{}")


def manifest(
    config_type: str,
    config: Blob,
    layers: Sequence[tuple[str, Blob, Mapping[str, str]]],
    *,
    artifact_type: str | None = None,
    subject: Image | None = None,
    annotations: Mapping[str, str] | None = None,
    platform: Platform | None = None,
) -> Image:
    """An OCI image manifest of any kind: ``layers`` are (media type, blob, annotations)."""
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        document["artifactType"] = artifact_type
    document["config"] = {"mediaType": config_type, "size": config.size, "digest": config.digest}
    document["layers"] = [
        {
            "mediaType": media_type,
            "size": blob.size,
            "digest": blob.digest,
            **({"annotations": dict(notes)} if notes else {}),
        }
        for media_type, blob, notes in layers
    ]
    if subject is not None:
        document["subject"] = {
            "mediaType": subject.media_type,
            "size": subject.size,
            "digest": subject.digest,
        }
    if annotations:
        document["annotations"] = dict(annotations)
    raw = _serialize(document)
    return Image(
        media_type=OCI_MANIFEST,
        raw=raw,
        digest=sha256_digest(raw),
        config=config,
        layers=tuple(blob for _, blob, _ in layers),
        platform=platform,
    )


def helm_chart(name: str = "demo", version: str = "0.1.0") -> Image:
    """A Helm chart as ``helm push`` stores it: the chart's metadata as config, its .tgz."""
    chart_yaml = f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()
    archive = gzip.compress(_tar({f"{name}/Chart.yaml": chart_yaml}), mtime=0)
    config = Blob.of(_serialize({"apiVersion": "v2", "name": name, "version": version}))
    return manifest(HELM_CONFIG, config, [(HELM_CHART, Blob.of(archive), {})])


def zstd_image(seed: str, platform: Platform = AMD64) -> Image:
    """A runnable-shaped OCI image whose layers are zstd-compressed tars."""
    rng = random.Random(seed)
    layers = []
    for i in range(2):
        tar = _tar({f"file-{i}.bin": rng.randbytes(3000)})
        compressed = zstd_frame(tar)
        layers.append(Blob(compressed, sha256_digest(compressed), diff_id=sha256_digest(tar)))
    config = make_config(layers, platform=platform)
    return manifest(OCI_CONFIG, config, [(ZSTD_LAYER, layer, {}) for layer in layers])


def artifact(subject: Image | None, seed: str, artifact_type: str = SPDX) -> Image:
    """An OCI 1.1 artifact: ``artifactType``, the empty config, one layer, maybe a subject."""
    body = _serialize({"spdxVersion": "SPDX-2.3", "name": seed})
    return manifest(
        EMPTY,
        empty_config(),
        [(artifact_type, Blob.of(body), {"org.opencontainers.image.title": "sbom.spdx.json"})],
        artifact_type=artifact_type,
        subject=subject,
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    )


def cosign_signature(subject_digest: str, seed: str) -> Image:
    """What ``cosign sign`` pushes as ``sha256-<hex>.sig``: a simple-signing payload naming
    the subject's digest, the signature in the layer's annotations."""
    payload = _serialize(
        {
            "critical": {
                "identity": {"docker-reference": "registry.example/app"},
                "image": {"docker-manifest-digest": subject_digest},
                "type": "cosign container image signature",
            },
            "optional": {"seed": seed},
        }
    )
    signature = base64.b64encode(random.Random(seed).randbytes(64)).decode()
    config = Blob.of(
        _serialize(
            {
                "architecture": "",
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(payload)]},
            }
        )
    )
    notes = {"dev.cosignproject.cosign/signature": signature}
    return manifest(OCI_CONFIG, config, [(COSIGN_PAYLOAD, Blob.of(payload), notes)])


def cosign_attestation(subject_digest: str, seed: str) -> Image:
    """What ``cosign attest`` pushes as ``sha256-<hex>.att``: a DSSE envelope of an in-toto
    statement about the subject."""
    statement = _serialize(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "app", "digest": {"sha256": subject_digest.split(":")[1]}}],
            "predicate": {"seed": seed},
        }
    )
    envelope = _serialize(
        {
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(statement).decode(),
            "signatures": [{"sig": base64.b64encode(seed.encode()).decode()}],
        }
    )
    config = Blob.of(
        _serialize(
            {
                "architecture": "",
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(envelope)]},
            }
        )
    )
    notes = {"predicateType": "https://slsa.dev/provenance/v0.2"}
    return manifest(OCI_CONFIG, config, [(DSSE, Blob.of(envelope), notes)])


def referrer_descriptor(image: Image) -> dict[str, Any]:
    """The descriptor of a referrer in a referrers list: its artifactType and annotations."""
    document = image.document
    descriptor: dict[str, Any] = {
        "mediaType": image.media_type,
        "digest": image.digest,
        "size": image.size,
        "artifactType": document.get("artifactType") or document["config"]["mediaType"],
    }
    if document.get("annotations"):
        descriptor["annotations"] = document["annotations"]
    return descriptor


def referrers_index(referrers: Sequence[Image]) -> Image:
    """The OCI 1.1 referrers tag schema: an index (tagged ``sha256-<hex>``) of referrers."""
    raw = _serialize(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [referrer_descriptor(r) for r in referrers],
        }
    )
    return Image(
        media_type=OCI_INDEX, raw=raw, digest=sha256_digest(raw), children=tuple(referrers)
    )


def schema_tag(digest: str) -> str:
    """``sha256:abc...`` -> ``sha256-abc...``: the tag of its referrers (and cosign's prefix)."""
    return digest.replace(":", "-")


def buildkit_index(seed: str, platforms: Sequence[Platform] = (AMD64, ARM64)) -> Image:
    """An OCI index as BuildKit pushes it to Docker Hub: one image per platform, and for each
    an in-toto attestation manifest listed as ``unknown/unknown``."""
    images = [build_image("oci", seed=f"{seed}:{p}", platform=p) for p in platforms]
    entries: list[dict[str, Any]] = [image.descriptor() for image in images]
    attestations = []
    for image in images:
        statement = _serialize(
            {
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://slsa.dev/provenance/v0.2",
                "subject": [{"name": "app", "digest": {"sha256": image.digest.split(":")[1]}}],
            }
        )
        config = Blob.of(
            _serialize(
                {
                    "architecture": "unknown",
                    "os": "unknown",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [sha256_digest(statement)]},
                }
            )
        )
        notes = {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}
        attestation = manifest(
            OCI_CONFIG, config, [(IN_TOTO, Blob.of(statement), notes)], platform=UNKNOWN
        )
        attestations.append(attestation)
        entries.append(
            {
                **attestation.descriptor(),
                "annotations": {
                    "vnd.docker.reference.digest": image.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            }
        )
    raw = _serialize({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    return Image(
        media_type=OCI_INDEX,
        raw=raw,
        digest=sha256_digest(raw),
        children=(*images, *attestations),
    )


FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
ALLOW_FOREIGN_URLS = {"validation": {"manifests": {"urls": {"allow": ["^https?://"]}}}}


def windows_image(seed: str) -> Image:
    """A Docker image as Windows images are: the base layer lives at a foreign URL (not in the
    registry, so not pushed), the image's own layer in the registry. A registry takes it only
    with ``ALLOW_FOREIGN_URLS`` in its config."""
    own = Blob.of(gzip.compress(_tar({"Files/app.exe": seed.encode()}), mtime=0))
    config = Blob.of(
        _serialize(
            {
                "architecture": "amd64",
                "os": "windows",
                "os.version": "10.0.20348.2527",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"base"), own.digest]},
            }
        )
    )
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
        "layers": [
            {
                "mediaType": FOREIGN_LAYER,
                "size": 1234567,
                "digest": sha256_digest(f"base:{seed}".encode()),
                "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/base"],
            },
            {"mediaType": DOCKER_LAYER, "size": own.size, "digest": own.digest},
        ],
    }
    raw = _serialize(document)
    return Image(DOCKER_MANIFEST, raw, sha256_digest(raw), config=config, layers=(own,))


SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ALLOW_SCHEMA1 = {"compatibility": {"schema1": {"enabled": True}}}


def schema1_image(name: str, tag: str, seed: str) -> Image:
    """A Docker schema 1 manifest signed as docker/libtrust signs one (a JWS with the payload's
    format tail in its protected header), as old Docker Hub tags still are. A registry takes
    it only with ``ALLOW_SCHEMA1`` in its config."""
    layer = Blob.of(gzip.compress(_tar({"hello.txt": seed.encode()}), mtime=0))
    v1 = json.dumps({"id": sha256_digest(seed.encode())[7:], "created": "2015-01-01T00:00:00Z"})
    payload = json.dumps(
        {
            "schemaVersion": 1,
            "name": name,
            "tag": tag,
            "architecture": "amd64",
            "fsLayers": [{"blobSum": layer.digest}],
            "history": [{"v1Compatibility": v1}],
        },
        indent=3,
    ).encode()
    close = payload.rstrip().rfind(b"}")
    length = len(payload[:close].rstrip())
    tail = payload[length:]
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    protected = b64url(
        json.dumps(
            {"formatLength": length, "formatTail": b64url(tail), "time": "2015-01-01T00:00:00Z"}
        ).encode()
    )
    r, s = decode_dss_signature(
        key.sign(f"{protected}.{b64url(payload)}".encode(), ec.ECDSA(hashes.SHA256()))
    )
    signature = {
        "header": {
            "jwk": {
                "crv": "P-256",
                "kid": libtrust_key_id(key.public_key()),
                "kty": "EC",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
            },
            "alg": "ES256",
        },
        "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }
    signatures = json.dumps([signature], indent=3).replace("\n", "\n   ")
    raw = payload[:length] + b',\n   "signatures": ' + signatures.encode() + b"\n}"
    # A schema 1 digest is that of the payload: the bytes without their signatures.
    return Image(SCHEMA1_SIGNED, raw, sha256_digest(payload), layers=(layer,))
