"""`mirror sync` against real registries: a plain local target and a Docker-Hub-like upstream
with token auth. Every copy is checked independently (tests.support.images), and request
counts come from the registries' own access logs, not from mirror's report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import (
    HUB_PASSWORD,
    Run,
    blob_path,
    hub_config,
    manifest_gets,
    run_mirror,
    writes,
)
from tests.support.images import (
    AMD64,
    Image,
    Pusher,
    build_image,
    build_index,
    make_layer,
    manifest_digest,
    verify_repository,
    verify_same,
)
from tests.support.proxy import RegistryProxy
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

# The seed's versioning scheme: full versions plus moving aliases, all four media types.
ALIASES = {
    "1.0": "1.0.2",
    "1": "1.0.2",
    "2.0": "2.0.1",
    "3.0": "3.0.1",
    "4": "4.0.1",
    "latest": "4.0.1",
}


@dataclass
class HubRepo:
    name: str
    images: dict[str, Image]  # tag -> image

    @property
    def tags(self) -> list[str]:
        return sorted(self.images)

    def distinct_manifests(self) -> int:
        digests = {m.digest for image in self.images.values() for m in image.all_manifests()}
        return len(digests)


@pytest.fixture
def dozen(hub: HubRegistry, hub_pusher: Pusher, unique_repo: str) -> HubRepo:
    """Twelve tags on the hub: Docker v2, OCI, Docker list and OCI index, with aliases."""
    base = make_layer(6000, seed=f"{unique_repo}:base")
    images = {
        "1.0.1": build_image("docker", layers=[base, make_layer(3000, seed=f"{unique_repo}:a")]),
        "1.0.2": build_image("docker", layers=[base, make_layer(3000, seed=f"{unique_repo}:b")]),
        "2.0.1": build_image("oci", seed=f"{unique_repo}:oci"),
        "3.0.1": build_index("docker", seed=f"{unique_repo}:list", shared_layers=[base]),
        "4.0.1": build_index("oci", seed=f"{unique_repo}:index"),
        "edge": build_image("oci", seed=f"{unique_repo}:edge", layer_count=3),
    }
    for alias, version in ALIASES.items():
        images[alias] = images[version]
    for tag, image in images.items():
        hub_pusher.push(unique_repo, image, tag)
    return HubRepo(unique_repo, images)


def sync(home: Path, hub: HubRegistry, *args: str, config: Path | None = None) -> Run:
    extra = ["--config", str(config)] if config else []
    return run_mirror("sync", *args, "--json", *extra, home=home, env={"HUB_PW": HUB_PASSWORD})


def test_first_sync_copies_every_tag_with_its_digest(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    config = hub_config(tmp_path, hub)
    since = hub.log_mark()

    run = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config)

    assert run.code == 0, run.stderr
    report = run.report
    assert (report["tags_checked"], report["tags_copied"], report["tags_failed"]) == (12, 12, 0)
    verify_same((hub.url, hub.token_getter("tester")), (local.url, None), dozen.name, dozen.tags)
    # Each distinct manifest is pulled once: aliases of an already-read digest cost nothing.
    pulls = manifest_gets(hub, since)
    assert pulls == dozen.distinct_manifests() == report["upstream_manifest_gets"]
    blobs = {d: b.size for image in dozen.images.values() for d, b in image.all_blobs().items()}
    assert report["blobs_copied"] == len(blobs)
    assert report["bytes_copied"] == sum(blobs.values())


def test_resync_makes_no_pulls_and_no_writes(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    config = hub_config(tmp_path, hub)
    first = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config)
    assert first.code == 0, first.stderr
    hub_since, local_since = hub.log_mark(), local.log_mark()

    again = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config)

    assert again.code == 0, again.stderr
    report = again.report
    assert report["tags_skipped"] == 12 and report["tags_copied"] == 0
    assert report["upstream_manifest_gets"] == 0 and report["manifests_pushed"] == 0
    assert report["blobs_copied"] == report["bytes_copied"] == 0
    assert manifest_gets(hub, hub_since) == 0
    assert writes(local, local_since) == []
    # Only HEADs touch manifests on either side (plus one /v2/ ping each).
    for registry, since in ((hub, hub_since), (local, local_since)):
        methods = {e.method for e in registry.requests_since(since) if "/manifests/" in e.path}
        assert methods == {"HEAD"}


def test_incremental_change_moves_only_new_blobs(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    dozen: HubRepo,
) -> None:
    config = hub_config(tmp_path, hub)
    assert (
        sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config).code == 0
    )
    # A new patch release on the 1.0 line: same base layer, one new layer; aliases move to it.
    old = dozen.images["1.0.2"]
    new_layer = make_layer(5000, seed=f"{dozen.name}:c")
    release = build_image("docker", layers=[old.layers[0], new_layer])
    assert release.config is not None
    for tag in ("1.0.3", "1.0", "1"):
        hub_pusher.push(dozen.name, release, tag)
    local_since = local.log_mark()

    run = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config)

    assert run.code == 0, run.stderr
    report = run.report
    copied = sorted(
        t["target"].rsplit(":", 1)[1] for t in report["tags"] if t["status"] == "copied"
    )
    assert copied == ["1", "1.0", "1.0.3"]
    assert report["tags_skipped"] == 10
    assert report["blobs_copied"] == 2  # the new layer and the new config
    assert report["bytes_copied"] == new_layer.size + release.config.size
    assert report["upstream_manifest_gets"] == 1
    uploaded = [w for w in writes(local, local_since) if "digest=" in w]
    assert sorted(w.split("digest=")[1].replace("%3A", ":") for w in uploaded) == sorted(
        [new_layer.digest, release.config.digest]
    )
    verify_same((hub.url, hub.token_getter()), (local.url, None), dozen.name, ["1.0.3", "1.0", "1"])


def test_anonymous_pull_needs_no_credentials(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    run = sync(tmp_path, hub, f"{hub.host}/{dozen.name}:latest", "--to", local.host)

    assert run.code == 0, run.stderr
    verify_same((hub.url, hub.token_getter()), (local.url, None), dozen.name, ["latest"])
    token_requests = hub.token_server.requests()
    assert token_requests and all(r.username is None for r in token_requests)


def test_authenticated_pull_fetches_one_token_per_scope(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    run = sync(
        tmp_path,
        hub,
        f"{hub.host}/{dozen.name}",
        "--to",
        local.host,
        config=hub_config(tmp_path, hub),
    )

    assert run.code == 0, run.stderr
    token_requests = hub.token_server.requests()
    assert token_requests and all(r.username == "tester" for r in token_requests)
    # The ping's scopeless token and the repository's pull token; never one per tag or blob.
    assert len(token_requests) <= 2


def test_wrong_password_is_one_line_and_exit_1(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    config = hub_config(tmp_path, hub)
    run = run_mirror(
        "sync",
        f"{hub.host}/{dozen.name}",
        "--to",
        local.host,
        "--config",
        str(config),
        home=tmp_path,
        env={"HUB_PW": "not-the-password"},
    )

    assert run.code == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert hub.host in lines[0] and "tester" in lines[0] and "refused" in lines[0]
    assert "Traceback" not in run.stderr and "not-the-password" not in run.stderr + run.stdout
    assert local.count_requests(since=0, method="PUT") == 0


def test_unreachable_registry_is_one_line_and_exit_1(
    tmp_path: Path, hub: HubRegistry, dozen: HubRepo
) -> None:
    from tests.support.registry import free_port

    closed = f"127.0.0.1:{free_port()}"
    run = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", closed)

    assert run.code == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and closed in lines[0] and "cannot reach" in lines[0], run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "ref",
    ["Diamol/golang", "diamol//golang", "diamol/golang@sha256:abc", "localhost:99999/x", ""],
)
def test_bad_reference_is_one_line_and_exit_2(tmp_path: Path, ref: str) -> None:
    run = run_mirror("sync", ref, home=tmp_path)

    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid reference" in lines[0] and repr(ref) in lines[0]
    assert "Traceback" not in run.stderr


def test_corrupt_upstream_blob_fails_only_its_tags_and_is_never_pushed(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    victim = dozen.images["2.0.1"].layers[0].digest  # used by 2.0.1 and its alias 2.0 only
    data = blob_path(hub, victim)
    corrupted = bytearray(data.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    data.write_bytes(bytes(corrupted))

    run = sync(
        tmp_path,
        hub,
        f"{hub.host}/{dozen.name}",
        "--to",
        local.host,
        config=hub_config(tmp_path, hub),
    )

    assert run.code == 1
    failed = {
        t["target"].rsplit(":", 1)[1]: t["error"]
        for t in run.report["tags"]
        if t["status"] == "failed"
    }
    assert set(failed) == {"2.0.1", "2.0"}
    assert all("digest mismatch" in e and victim in e for e in failed.values())
    assert run.report["tags_copied"] == 10
    # The bad blob was asked for (a new repository: by a mount from itself), never completed
    # its upload, and nothing refers to it.
    assert local.count_requests("POST", f"mount={victim.replace(':', '%3A')}", since=0) >= 1
    import httpx

    assert httpx.head(f"{local.url}/v2/{dozen.name}/blobs/{victim}").status_code == 404
    for tag in ("2.0.1", "2.0"):
        assert manifest_digest(local.url, dozen.name, tag) is None
    assert manifest_digest(local.url, dozen.name, dozen.images["2.0.1"].digest) is None
    stderr_lines = [line for line in run.stderr.splitlines() if line]
    assert len(stderr_lines) == 2 and all(victim in line for line in stderr_lines)


def test_layers_shared_between_repositories_are_mounted(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    shared = make_layer(20_000, seed=f"{unique_repo}:shared")
    first, second = f"{unique_repo}-a", f"{unique_repo}-b"
    hub_pusher.push(first, build_image("oci", layers=[shared, make_layer(1000, seed="x1")]), "v1")
    hub_pusher.push(second, build_image("oci", layers=[shared, make_layer(1000, seed="x2")]), "v1")
    since = local.log_mark()

    run = sync(tmp_path, hub, f"{hub.host}/{first}", f"{hub.host}/{second}", "--to", local.host)

    assert run.code == 0, run.stderr
    assert run.report["blobs_mounted"] == 1
    mounts = [
        e
        for e in local.requests_since(since)
        if e.method == "POST" and f"mount={shared.digest}".replace(":", "%3A") in e.path
    ]
    # Both repositories are new: the first to send the layer asks itself (202, an upload
    # session), the other mounts it from there (201).
    sources = {m.path.split("/blobs/")[0].removeprefix("/v2/"): m for m in mounts}
    assert len(mounts) == 2 and set(sources) == {first, second}
    asked_itself = [m for r, m in sources.items() if f"from={r.replace('/', '%2F')}" in m.path]
    assert [m.status for m in asked_itself] == [202]
    assert sorted(m.status for m in mounts) == [201, 202]
    # The shared layer's bytes crossed once.
    shared_uploads = [
        w for w in writes(local, since) if shared.digest.replace(":", "%3A") in w and "PUT" in w
    ]
    assert len(shared_uploads) == 1
    for repo in (first, second):
        verify_repository(local.url, repo, "v1")


def test_blob_redirect_to_cdn_never_carries_authorization(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    dozen: HubRepo,
    redirect_proxy: RegistryProxy,
) -> None:
    config = hub_config(tmp_path, redirect_proxy)
    run = sync(
        tmp_path,
        hub,
        f"{redirect_proxy.host}/{dozen.name}:3.0.1",
        "--to",
        local.host,
        config=config,
    )

    assert run.code == 0, run.stderr
    assert redirect_proxy.cdn_requests(), "blob GETs should have gone to the CDN"
    assert redirect_proxy.cdn_rejected() == []
    verify_same((hub.url, hub.token_getter()), (local.url, None), dozen.name, ["3.0.1"])


def test_dry_run_moves_nothing_and_predicts_the_real_run(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    config = hub_config(tmp_path, hub)
    since = local.log_mark()

    plan = sync(
        tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, "--dry-run", config=config
    )

    assert plan.code == 0, plan.stderr
    assert writes(local, since) == []
    assert {t["status"] for t in plan.report["tags"]} == {"planned"}
    real = sync(tmp_path, hub, f"{hub.host}/{dozen.name}", "--to", local.host, config=config)
    for key in ("blobs_copied", "bytes_copied", "manifests_pushed", "upstream_manifest_gets"):
        assert plan.report[key] == real.report[key], key


def test_digest_reference_copies_that_manifest_and_can_tag_it(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    index = dozen.images["4.0.1"]

    by_digest = sync(tmp_path, hub, f"{hub.host}/{dozen.name}@{index.digest}", "--to", local.host)
    tagged = sync(
        tmp_path, hub, f"{hub.host}/{dozen.name}:pinned@{index.digest}", "--to", local.host
    )

    assert by_digest.code == 0 and tagged.code == 0, by_digest.stderr + tagged.stderr
    verify_repository(local.url, dozen.name, index.digest, expected_digest=index.digest)
    verify_repository(local.url, dozen.name, "pinned", expected_digest=index.digest)
    assert tagged.report["upstream_manifest_gets"] == 0  # already on the target: no pull


def test_repository_target_renames(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, dozen: HubRepo
) -> None:
    run = sync(tmp_path, hub, f"{hub.host}/{dozen.name}:edge", "--to", f"{local.host}/gallery/ui")

    assert run.code == 0, run.stderr
    verify_repository(local.url, "gallery/ui", "edge", expected_digest=dozen.images["edge"].digest)


def test_more_tags_than_one_page_are_all_mirrored(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    # distribution 2.8 ignores `n` for tags lists; the proxy pages them as Docker Hub does.
    proxy = make_proxy(hub.url, tags_page_size=2)
    image = build_image("docker", seed=unique_repo, platform=AMD64)
    tags = [f"v{i}" for i in range(7)]
    for tag in tags:
        hub_pusher.push(unique_repo, image, tag)

    run = sync(tmp_path, hub, f"{proxy.host}/{unique_repo}", "--to", local.host)

    assert run.code == 0, run.stderr
    assert run.report["tags_copied"] == 7
    pages = [r for r in proxy.requests() if r.kind == "tags"]
    assert len(pages) >= 4  # 7 tags, 2 a page (plus the 401 that asks for a token)
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, tags)
