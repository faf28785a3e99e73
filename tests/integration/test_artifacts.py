"""Everything else a registry holds, copied digest for digest through the real registries:
Helm charts, artifacts with the empty config, zstd layers, manifests with a subject (pushed
after it), and BuildKit indexes carrying in-toto attestation manifests; and what is left on
purpose with one line saying why: Docker schema 1, and foreign layers a target refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.helpers import HUB_PASSWORD, Run, hub_config, run_mirror
from tests.support.artifacts import (
    ALLOW_FOREIGN_URLS,
    ALLOW_SCHEMA1,
    EMPTY,
    HELM_CHART,
    HELM_CONFIG,
    ZSTD_LAYER,
    artifact,
    buildkit_index,
    helm_chart,
    schema1_image,
    windows_image,
    zstd_image,
)
from tests.support.images import (
    MANIFEST_ACCEPT,
    Pusher,
    build_image,
    manifest_digest,
    verify_same,
)
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry


def sync(tmp_path: Path, hub: HubRegistry, local: RegistryProcess, ref: str, *args: str) -> Run:
    config = hub_config(tmp_path, hub)
    run = run_mirror(
        "sync",
        f"{hub.host}/{ref}",
        "--to",
        local.host,
        "--json",
        "--config",
        str(config),
        *args,
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )
    assert run.code == 0, run.describe()
    return run


def served(local: RegistryProcess, repo: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"{local.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )


def test_helm_chart_is_copied_byte_for_byte(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    chart = hub_pusher.push(unique_repo, helm_chart("demo", "0.1.0"), "0.1.0")

    run = sync(tmp_path, hub, local, unique_repo)

    assert run.statuses() == {"0.1.0": "copied"}
    verify_same((hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["0.1.0"])
    document = served(local, unique_repo, "0.1.0").json()
    assert document["config"]["mediaType"] == HELM_CONFIG
    assert [layer["mediaType"] for layer in document["layers"]] == [HELM_CHART]
    assert served(local, unique_repo, "0.1.0").content == chart.raw


def test_zstd_layers_are_copied_as_they_are(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    image = hub_pusher.push(unique_repo, zstd_image(unique_repo), "1.0")

    run = sync(tmp_path, hub, local, unique_repo)

    assert run.statuses() == {"1.0": "copied"}
    assert run.report["bytes_copied"] == sum(b.size for b in image.blobs)
    verify_same((hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["1.0"])
    layers = served(local, unique_repo, "1.0").json()["layers"]
    assert {layer["mediaType"] for layer in layers} == {ZSTD_LAYER}


def test_artifact_with_a_subject_lands_after_its_subject(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    image = hub_pusher.push(unique_repo, build_image("oci", seed=unique_repo), "1.0")
    sbom = hub_pusher.push(unique_repo, artifact(image, unique_repo), "1.0-sbom")
    since = local.log_mark()

    run = sync(tmp_path, hub, local, unique_repo)

    assert run.statuses() == {"1.0": "copied", "1.0-sbom": "copied"}
    verify_same(
        (hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["1.0", "1.0-sbom"]
    )
    document = served(local, unique_repo, "1.0-sbom").json()
    assert document["config"]["mediaType"] == EMPTY and document["artifactType"]
    assert document["subject"]["digest"] == image.digest
    # The subject is on the target before anything that refers to it.
    puts = [
        e.path for e in local.requests_since(since) if e.method == "PUT" and "/manifests/" in e.path
    ]
    first_subject = min(i for i, p in enumerate(puts) if p.endswith(("/1.0", image.digest)))
    first_sbom = min(i for i, p in enumerate(puts) if p.endswith(("/1.0-sbom", sbom.digest)))
    assert first_subject < first_sbom, puts


def test_artifact_alone_brings_its_subject_first(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    image = hub_pusher.push(unique_repo, build_image("oci", seed=unique_repo), "1.0")
    hub_pusher.push(unique_repo, artifact(image, unique_repo), "sbom")

    sync(tmp_path, hub, local, f"{unique_repo}:sbom")

    verify_same((hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["sbom"])
    assert served(local, unique_repo, image.digest).content == image.raw


def test_buildkit_attestation_manifests_travel_inside_their_index(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    index = hub_pusher.push(unique_repo, buildkit_index(unique_repo), "1.0")

    run = sync(tmp_path, hub, local, unique_repo)

    assert run.tag("1.0")["digest"] == index.digest
    verify_same((hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["1.0"])
    for child in index.children:  # images and unknown/unknown attestations, byte for byte
        assert served(local, unique_repo, child.digest).content == child.raw


def test_foreign_layers_a_target_refuses_are_one_clear_line_not_a_failure(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    source = make_registry(extra_config=ALLOW_FOREIGN_URLS)
    with Pusher(source.url) as pusher:
        pusher.push("win/app", windows_image("refused"), "ltsc2022")
        pusher.push("win/app", build_image("docker", seed="linux"), "linux")

    run = run_mirror("sync", f"{source.host}/win/app", "--to", local.host, home=tmp_path)

    assert run.code == 0, run.describe()
    line = next(line for line in run.stdout.splitlines() if ":ltsc2022" in line)
    assert line.startswith("not copied") and "foreign layers" in line and "urls.allow" in line
    assert "1 not copied" in run.stdout.splitlines()[-1]
    assert manifest_digest(local.url, "win/app", "ltsc2022") is None
    assert manifest_digest(local.url, "win/app", "linux") is not None

    mark = source.log_mark()  # a later process (cron) knows it from the state: no pull
    again = run_mirror("sync", f"{source.host}/win/app", "--to", local.host, home=tmp_path)
    assert again.code == 0, again.describe()
    lines = [line for line in again.stdout.splitlines() if ":ltsc2022" in line]
    assert lines and lines[0].startswith("not copied"), again.describe()
    source.settle_log()
    pulls = [
        e.path for e in source.requests_since(mark) if e.method == "GET" and "/manifests/" in e.path
    ]
    assert pulls == [], pulls


def test_foreign_layers_a_target_takes_are_carried_and_stay_at_their_urls(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess]
) -> None:
    source = make_registry(extra_config=ALLOW_FOREIGN_URLS)
    target = make_registry(extra_config=ALLOW_FOREIGN_URLS)
    with Pusher(source.url) as pusher:
        image = pusher.push("win/app", windows_image("taken"), "ltsc2022")

    run = run_mirror("sync", f"{source.host}/win/app", "--to", target.host, "--json", home=tmp_path)

    assert run.code == 0, run.describe()
    result = run.tag("ltsc2022")
    assert result["status"] == "copied" and "stay at their URLs" in result["note"]
    assert manifest_digest(target.url, "win/app", "ltsc2022") == image.digest


def test_a_schema_1_tag_is_one_clear_line_and_never_pulled(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    source = make_registry(extra_config=ALLOW_SCHEMA1)
    with Pusher(source.url) as pusher:
        pusher.push("old/app", schema1_image("old/app", "1.0", "old"), "1.0")
        pusher.push("old/app", build_image("docker", seed="new"), "2.0")
    since = source.log_mark()

    run = run_mirror("sync", f"{source.host}/old/app", "--to", local.host, "--json", home=tmp_path)

    assert run.code == 0, run.describe()
    assert run.statuses() == {"1.0": "unsupported", "2.0": "copied"}
    assert "schema 1" in run.tag("1.0")["error"] and run.report["tags_unsupported"] == 1
    # Told by the HEAD's media type: the schema 1 manifest is never pulled.
    assert source.count_requests("GET", "/manifests/1.0", since=since) == 0
    assert manifest_digest(local.url, "old/app", "1.0") is None
