"""Platform subsets: the target gets an index of only the wanted platforms, accepted by a real
registry, with the source digest recorded; re-runs cost no pulls."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.helpers import run_mirror
from tests.support.images import (
    AMD64,
    ARM64,
    OCI_INDEX,
    Image,
    Platform,
    Pusher,
    build_image,
    manifest_digest,
    sha256_digest,
    verify_repository,
)
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

S390X = Platform("linux", "s390x")
UNKNOWN = Platform("unknown", "unknown")


def index_with_attestation(seed: str) -> tuple[Image, dict[str, Image]]:
    """An OCI index: amd64, arm64/v8, s390x, and a BuildKit attestation for amd64."""
    images = {
        str(p): build_image("oci", seed=f"{seed}:{p}", platform=p) for p in (AMD64, ARM64, S390X)
    }
    attestation = build_image("oci", seed=f"{seed}:att", platform=UNKNOWN, layer_count=1)
    entries = [image.descriptor() for image in images.values()]
    entries.append(
        {
            **attestation.descriptor(),
            "annotations": {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": images["linux/amd64"].digest,
            },
        }
    )
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=3
    ).encode()
    index = Image(
        media_type=OCI_INDEX,
        raw=raw,
        digest=sha256_digest(raw),
        children=(*images.values(), attestation),
    )
    return index, {**images, "attestation": attestation}


def test_platform_subset_lands_as_an_index_of_just_those(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    index, parts = index_with_attestation(unique_repo)
    hub_pusher.push(unique_repo, index, "1.0")
    args = ["--platform", "linux/amd64", "--platform", "linux/arm64", "--to", local.host, "--json"]

    run = run_mirror("sync", f"{hub.host}/{unique_repo}:1.0", *args, home=tmp_path)

    assert run.code == 0, run.stderr
    result = run.tag("1.0")
    assert result["source_digest"] == index.digest and result["digest"] != index.digest
    verify_repository(local.url, unique_repo, "1.0", expected_digest=result["digest"])
    document = httpx.get(
        f"{local.url}/v2/{unique_repo}/manifests/1.0", headers={"Accept": OCI_INDEX}
    ).json()
    kept = {m["digest"] for m in document["manifests"]}
    assert kept == {
        parts["linux/amd64"].digest,
        parts["linux/arm64/v8"].digest,
        parts["attestation"].digest,
    }
    assert document["annotations"]["io.mirror.source.digest"] == index.digest
    assert manifest_digest(local.url, unique_repo, parts["linux/s390x"].digest) is None

    since = hub.log_mark()
    again = run_mirror("sync", f"{hub.host}/{unique_repo}:1.0", *args, home=tmp_path)
    assert again.code == 0 and again.tag("1.0")["status"] == "skipped"
    assert hub.count_requests("GET", "/manifests/", since=since) == 0


def test_a_platform_the_index_lacks_fails_the_tag_naming_what_it_has(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    index, _ = index_with_attestation(unique_repo)
    hub_pusher.push(unique_repo, index, "1.0")

    run = run_mirror(
        "sync",
        f"{hub.host}/{unique_repo}:1.0",
        "--platform",
        "windows/amd64",
        "--to",
        local.host,
        home=tmp_path,
    )

    assert run.code == 1
    assert "windows/amd64" in run.stderr and "linux/s390x" in run.stderr
    assert manifest_digest(local.url, unique_repo, "1.0") is None


def test_one_platform_flattened_to_a_plain_manifest(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    index, parts = index_with_attestation(unique_repo)
    hub_pusher.push(unique_repo, index, "1.0")
    args = ["--platform", "linux/arm64", "--flatten", "--to", local.host, "--json"]

    run = run_mirror("sync", f"{hub.host}/{unique_repo}:1.0", *args, home=tmp_path)

    assert run.code == 0, run.stderr
    arm64 = parts["linux/arm64/v8"]
    assert run.tag("1.0")["digest"] == arm64.digest
    assert run.tag("1.0")["source_digest"] == index.digest
    verify_repository(local.url, unique_repo, "1.0", expected_digest=arm64.digest)

    since = hub.log_mark()
    again = run_mirror("sync", f"{hub.host}/{unique_repo}:1.0", *args, home=tmp_path)
    assert again.code == 0 and again.tag("1.0")["status"] == "skipped"
    # A new process knows no index yet: it reads the index (one pull), not the image.
    assert hub.count_requests("GET", "/manifests/", since=since) == 1
