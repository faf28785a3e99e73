"""Signatures, attestations and referrers travel with the images they describe, through the
real registries: a Docker-Hub-like source where cosign and oras left them by tag (distribution
2.8 offers no referrers API), and a plain target that gets the referrers tag schema. Request
counts come from the registries' access logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import (
    HUB_PASSWORD,
    Run,
    hub_config,
    manifest_gets,
    run_mirror,
    writes,
)
from tests.support.artifacts import (
    artifact,
    cosign_attestation,
    cosign_signature,
    referrers_index,
    schema_tag,
)
from tests.support.images import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    Image,
    Pusher,
    build_image,
    build_index,
    list_tags,
    manifest_digest,
)
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry


@dataclass
class Signed:
    """A repository on the hub whose images were signed and attested as cosign and oras do."""

    name: str
    index: Image  # tag 1.0: an OCI index of two images, each signed, the index signed and attested
    image: Image  # tag 2.0: one image, signed, with an SBOM referrer in the tag schema
    old: Image  # tag 0.9: signed too, but left out by --versions ">=1"
    referrer_tags: dict[str, Image]  # every referrer tag of 1.0 and 2.0 -> what it holds

    def sig(self, digest: str) -> str:
        return schema_tag(digest) + ".sig"


@pytest.fixture
def signed(hub_pusher: Pusher, unique_repo: str) -> Signed:
    repo = unique_repo
    index = hub_pusher.push(repo, build_index("oci", seed=f"{repo}:index"), "1.0")
    image = hub_pusher.push(repo, build_image("oci", seed=f"{repo}:image"), "2.0")
    old = hub_pusher.push(repo, build_image("oci", seed=f"{repo}:old"), "0.9")
    sbom = artifact(image, f"{repo}:sbom")
    referrer_tags = {
        schema_tag(index.digest) + ".sig": cosign_signature(index.digest, f"{repo}:i"),
        schema_tag(index.digest) + ".att": cosign_attestation(index.digest, f"{repo}:a"),
        schema_tag(image.digest) + ".sig": cosign_signature(image.digest, f"{repo}:m"),
        schema_tag(image.digest): referrers_index([sbom]),  # what oras leaves without the API
    }
    for child in index.children:
        referrer_tags[schema_tag(child.digest) + ".sig"] = cosign_signature(
            child.digest, child.digest
        )
    for tag, manifest in referrer_tags.items():
        hub_pusher.push(repo, manifest, tag)
    hub_pusher.push(
        repo, cosign_signature(old.digest, f"{repo}:o"), schema_tag(old.digest) + ".sig"
    )
    return Signed(repo, index, image, old, referrer_tags)


def sync(tmp_path: Path, hub: HubRegistry, local: RegistryProcess, ref: str, *args: str) -> Run:
    run = run_mirror(
        "sync",
        f"{hub.host}/{ref}",
        "--to",
        local.host,
        "--json",
        "--config",
        str(hub_config(tmp_path, hub)),
        *args,
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )
    assert run.code == 0, run.describe()
    return run


def referrer_results(run: Run) -> dict[str, dict[str, object]]:
    return {k: v for k, v in run.results().items() if v["referrer_of"]}


def test_signatures_and_referrers_arrive_with_their_images(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, signed: Signed
) -> None:
    run = sync(tmp_path, hub, local, signed.name, "--versions", ">=1")

    report = run.report
    # Referrer tags are no tags to the rules: neither dropped as "not versions" nor counted.
    assert {t for t, r in run.results().items() if not r["referrer_of"]} == {"1.0", "2.0"}
    assert (report["tags_checked"], report["tags_copied"]) == (2, 2)
    assert (
        report["referrers_copied"] == len(signed.referrer_tags) and report["referrers_failed"] == 0
    )
    assert set(referrer_results(run)) == set(signed.referrer_tags)
    for tag, manifest in signed.referrer_tags.items():  # digest for digest
        assert manifest_digest(local.url, signed.name, tag) == manifest.digest, tag
    # 0.9 was not selected: its signature stays behind.
    assert signed.sig(signed.old.digest) not in list_tags(local.url, signed.name)
    # The tag schema on the target names the SBOM, for `oras discover` and `cosign tree`.
    listed = httpx.get(
        f"{local.url}/v2/{signed.name}/manifests/{schema_tag(signed.image.digest)}",
        headers={"Accept": OCI_INDEX},
    ).json()
    sbom = signed.referrer_tags[schema_tag(signed.image.digest)].children[0]
    assert [m["digest"] for m in listed["manifests"]] == [sbom.digest]
    assert listed["manifests"][0]["artifactType"]
    assert (
        httpx.get(
            f"{local.url}/v2/{signed.name}/manifests/{sbom.digest}",
            headers={"Accept": MANIFEST_ACCEPT},
        ).content
        == sbom.raw
    )


def test_a_no_op_run_costs_no_pulls_and_a_new_signature_is_carried(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, signed: Signed
) -> None:
    first = sync(tmp_path, hub, local, signed.name)
    hub_since, local_since = hub.log_mark(), local.log_mark()

    again = sync(tmp_path, hub, local, signed.name)

    assert manifest_gets(hub, hub_since) == 0 and again.report["upstream_manifest_gets"] == 0
    assert writes(local, local_since) == []
    carried = first.report["referrers_copied"]
    assert again.report["referrers_skipped"] == carried and again.report["referrers_copied"] == 0
    # What a no-op run pays for them: one HEAD per referrer tag on each side, as for any tag,
    # one ask of the source's referrers API per run (distribution 2.8: 404, not asked again),
    # and one read of the target's index 1.0 to learn its images' digests, never a pull.
    tags = 3 + carried  # 0.9, 1.0, 2.0 and their referrer tags
    assert hub.count_requests("HEAD", "/manifests/", since=hub_since) == tags
    assert hub.count_requests("GET", "/referrers/", since=hub_since) == 1
    assert local.count_requests("HEAD", "/manifests/", since=local_since) == tags
    assert local.count_requests("GET", "/manifests/", since=local_since) == 1

    # Someone signs 1.0 again upstream: the same tag, a new digest.
    tag = signed.sig(signed.index.digest)
    resigned = hub_pusher.push(signed.name, cosign_signature(signed.index.digest, "again"), tag)
    hub_since = hub.log_mark()

    third = sync(tmp_path, hub, local, signed.name)

    assert referrer_results(third)[tag]["status"] == "copied"
    assert manifest_digest(local.url, signed.name, tag) == resigned.digest
    assert third.report["referrers_copied"] == 1 and manifest_gets(hub, hub_since) == 1


def test_a_platform_subset_carries_its_images_signatures_not_the_index(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, signed: Signed
) -> None:
    amd64, arm64 = signed.index.children

    run = sync(tmp_path, hub, local, f"{signed.name}:1.0", "--platform", "linux/amd64")

    result = run.tag("1.0")
    assert result["source_digest"] == signed.index.digest
    assert "do not apply" in str(result["note"])
    tags = set(list_tags(local.url, signed.name))
    assert signed.sig(amd64.digest) in tags
    assert signed.sig(arm64.digest) not in tags and signed.sig(signed.index.digest) not in tags
    filtered = httpx.get(
        f"{local.url}/v2/{signed.name}/manifests/1.0", headers={"Accept": OCI_INDEX}
    ).json()
    assert "do not apply" in filtered["annotations"]["io.mirror.referrers"]


def test_no_referrers_leaves_them_behind_and_copies_no_signature_as_a_tag(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, signed: Signed
) -> None:
    run = sync(tmp_path, hub, local, signed.name, "--no-referrers")

    assert set(run.results()) == {"0.9", "1.0", "2.0"}
    assert set(list_tags(local.url, signed.name)) == {"0.9", "1.0", "2.0"}
    assert run.report["referrers_copied"] == 0


def test_artifact_types_choose_from_the_source_tag_schema_and_the_target_gets_its_own(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    image = hub_pusher.push(unique_repo, build_image("oci", seed=unique_repo), "1.0")
    sbom = artifact(image, f"{unique_repo}:sbom")
    vex = artifact(image, f"{unique_repo}:vex", artifact_type="application/vnd.openvex+json")
    hub_pusher.push(unique_repo, referrers_index([sbom, vex]), schema_tag(image.digest))
    config = hub_config(tmp_path, hub)
    entry = (
        f'[[mirrors]]\nsource = "{hub.host}/{unique_repo}"\n'
        f'target = "{local.host}/{unique_repo}"\nartifact_types = ["application/spdx+json"]\n'
    )
    config.write_text(config.read_text() + "\n" + entry)

    def run() -> Run:
        done = run_mirror(
            "sync",
            "--all",
            "--json",
            "--config",
            str(config),
            home=tmp_path,
            env={"HUB_PW": HUB_PASSWORD},
        )
        assert done.code == 0, done.describe()
        return done

    first = run()

    assert first.report["jobs"][0]["report"]["referrers_copied"] == 1
    listed = httpx.get(
        f"{local.url}/v2/{unique_repo}/manifests/{schema_tag(image.digest)}",
        headers={"Accept": OCI_INDEX},
    ).json()
    assert [m["digest"] for m in listed["manifests"]] == [sbom.digest]
    source_index = manifest_digest(
        hub.url, unique_repo, schema_tag(image.digest), hub.token_getter("tester")
    )
    assert listed["annotations"]["io.mirror.source.digest"] == source_index
    assert manifest_digest(local.url, unique_repo, vex.digest) is None

    hub_since, local_since = hub.log_mark(), local.log_mark()
    run()  # the source index unchanged: read from the target's annotation, not pulled

    assert manifest_gets(hub, hub_since) == 0 and writes(local, local_since) == []


def test_mirror_tags_shows_referrer_tags_apart_from_the_rules(
    tmp_path: Path, hub: HubRegistry, signed: Signed
) -> None:
    run = run_mirror(
        "tags",
        f"{hub.host}/{signed.name}",
        "--config",
        str(hub_config(tmp_path, hub)),
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )

    assert run.code == 0, run.describe()
    assert "sha256-" not in run.stdout.split("tags selected")[0]
    assert "3 of 3 tags selected" in run.stdout
    assert f"{len(signed.referrer_tags) + 1} signature and referrer tags" in run.stdout
