"""Tag rules and immutable tags against the real registries, on the seed's tagging scheme."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.helpers import HUB_PASSWORD, hub_config, run_mirror
from tests.support.images import Pusher, build_image, list_tags, verify_same
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

VERSIONS = ["2.1.106", "2.1.114", "2.2.11", "3.0.42"]
ALIASES = {
    "2": "2.2.11",
    "2.1": "2.1.114",
    "2.2": "2.2.11",
    "3": "3.0.42",
    "3.0": "3.0.42",
    "latest": "3.0.42",
}


@pytest.fixture
def seed_repo(hub_pusher: Pusher, unique_repo: str) -> str:
    images = {v: build_image("oci", seed=f"{unique_repo}:{v}") for v in VERSIONS}
    images["edge"] = build_image("docker", seed=f"{unique_repo}:edge")
    for tag, image in images.items():
        hub_pusher.push(unique_repo, image, tag)
    for alias, version in ALIASES.items():
        hub_pusher.push(unique_repo, images[version], alias)
    return unique_repo


def entry_config(tmp_path: Path, hub: HubRegistry, local: RegistryProcess, repo: str) -> Path:
    path = hub_config(tmp_path, hub)
    path.write_text(
        f'target = "{local.host}"\n'
        + path.read_text()
        + f'[[mirrors]]\nsource = "{hub.host}/{repo}"\n'
        + 'tags = { versions = ">=2.1, <3", aliases = true }\n'
    )
    return path


def test_following_the_2_line_with_its_aliases(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, seed_repo: str
) -> None:
    config = entry_config(tmp_path, hub, local, seed_repo)

    run = run_mirror(
        "sync", "--all", "--config", str(config), home=tmp_path, env={"HUB_PW": HUB_PASSWORD}
    )

    assert run.code == 0, run.stdout + run.stderr
    wanted = ["2.1.106", "2.1.114", "2.2.11", "2", "2.1", "2.2"]
    assert sorted(list_tags(local.url, seed_repo)) == sorted(wanted)
    verify_same((hub.url, hub.token_getter()), (local.url, None), seed_repo, wanted)


def test_full_versions_on_the_target_are_not_checked_upstream_again(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, seed_repo: str
) -> None:
    config = entry_config(tmp_path, hub, local, seed_repo)
    env = {"HUB_PW": HUB_PASSWORD}
    assert run_mirror("sync", "--all", "--config", str(config), home=tmp_path, env=env).code == 0
    since = hub.log_mark()

    again = run_mirror("sync", "--all", "--config", str(config), home=tmp_path, env=env)

    assert again.code == 0
    heads = {
        e.path.rsplit("/", 1)[1]
        for e in hub.requests_since(since)
        if e.method == "HEAD" and "/manifests/" in e.path
    }
    assert heads == {"2", "2.1", "2.2"}  # the moving aliases, and nothing else
    assert hub.count_requests("GET", "/manifests/", since=since) == 0

    since = hub.log_mark()
    rechecked = run_mirror(
        "sync", "--all", "--recheck", "--config", str(config), home=tmp_path, env=env
    )
    assert rechecked.code == 0
    heads = {
        e.path.rsplit("/", 1)[1]
        for e in hub.requests_since(since)
        if e.method == "HEAD" and "/manifests/" in e.path
    }
    assert heads == {"2", "2.1", "2.2", "2.1.106", "2.1.114", "2.2.11"}


def test_mirror_tags_explains_each_decision_and_pulls_nothing(
    tmp_path: Path, hub: HubRegistry, seed_repo: str
) -> None:
    since = hub.log_mark()
    run = run_mirror(
        "tags",
        f"{hub.host}/{seed_repo}",
        "--versions",
        ">=2.1, <3",
        "--aliases",
        "--json",
        home=tmp_path,
    )

    assert run.code == 0, run.stderr
    document = json.loads(run.stdout)
    reasons = {t["tag"]: t["reason"] for t in document["tags"]}
    assert sorted(document["selected"]) == sorted(
        ["2.1.106", "2.1.114", "2.2.11", "2", "2.1", "2.2"]
    )
    assert reasons["3.0.42"] == "outside >=2.1, <3" and reasons["edge"] == "not a version"
    assert reasons["2"] == "alias of 2.2.11"
    assert hub.count_requests(path_pattern="/manifests/", since=since) == 0

    human = run_mirror("tags", f"{hub.host}/{seed_repo}", "--newest", "1", home=tmp_path)
    # tag, version, variant (none), kind, reason
    assert re.search(r"^\+ 3\.0\.42\s+3\.0\.42\s+-\s+full\s+newest 1: #1$", human.stdout, re.M), (
        human.stdout
    )
