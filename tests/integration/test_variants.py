"""Variant-aware tag rules against the real registries, on Docker Hub's own tagging.

A ``golang``-shaped and a ``postgres``-shaped repository are pushed to the Hub-like registry
once per module: a few small images, each under the tags Docker Hub gives it (an alias names
the same manifest as the full version it follows; ``alpine`` the alpine variant's newest). Then
the real ``mirror sync`` runs with ``--variant``, ``--versions``, ``--newest``, ``--aliases``
and a config's ``variants``, and each test asserts the exact tags the target ends up with.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import HUB_ENV, hub_config, run_mirror
from tests.support.images import Pusher, build_image, list_tags, verify_same
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

# Each image and the tags it goes by, as golang tagged them in mid-2024.
GOLANG = {
    "1.22.5": ["1.22", "1", "latest"],
    "1.21.12": ["1.21"],
    "1.23rc2": [],
    "1.22.5-alpine3.20": ["1.22.5-alpine", "1.22-alpine", "1-alpine", "alpine", "alpine3.20"],
    "1.22.5-alpine3.19": ["alpine3.19"],
    "1.21.12-alpine3.20": ["1.21.12-alpine", "1.21-alpine"],
    "1.23rc2-alpine": [],
    "1.22.5-bookworm": ["1.22-bookworm", "1-bookworm", "bookworm"],
    "1.21.12-bookworm": ["1.21-bookworm"],
    "1.22.5-windowsservercore-ltsc2022": [
        "1.22-windowsservercore-ltsc2022",
        "windowsservercore-ltsc2022",
    ],
}
# postgres: full versions without a patch (16.4), the major as their alias (16).
POSTGRES = {
    "15.8": ["15"],
    "16.3": [],
    "16.4": ["16"],
    "17.0": ["17", "latest"],
    "17rc1": [],
    "16.4-alpine": ["16-alpine"],
    "17.0-alpine": ["17-alpine", "alpine"],
    "16.4-bookworm": ["16-bookworm"],
    "17.0-bookworm": ["17-bookworm", "bookworm"],
}
_names = itertools.count(1)


def push_tag_set(hub: HubRegistry, name: str, tag_set: dict[str, list[str]]) -> str:
    """Push one tiny image per full tag, under its aliases too; the repository's name."""
    repo = f"variants{next(_names)}/{name}"
    with Pusher(hub.url, hub.token_getter("tester")) as pusher:
        for full, aliases in tag_set.items():
            image = build_image("oci", layer_count=1, layer_size=512, seed=f"{repo}:{full}")
            pusher.push(repo, image, full, *aliases)
    return repo


@pytest.fixture(scope="module")
def golang(hub: HubRegistry) -> Iterator[str]:
    yield push_tag_set(hub, "golang", GOLANG)


@pytest.fixture(scope="module")
def postgres(hub: HubRegistry) -> Iterator[str]:
    yield push_tag_set(hub, "postgres", POSTGRES)


def sync(tmp_path: Path, hub: HubRegistry, repo: str, to: str, *rules: str) -> tuple[int, str]:
    config = hub_config(tmp_path, hub)
    run = run_mirror(
        "sync", f"{hub.host}/{repo}", "--to", to, "--config", str(config), *rules,
        home=tmp_path, env=HUB_ENV,
    )  # fmt: skip
    return run.code, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("rules", "wanted"),
    [
        pytest.param(
            ["--variant", "alpine", "--versions", ">=1.22", "--aliases"],
            ["1.22.5-alpine", "1.22-alpine", "1-alpine", "alpine"],
            id="one-variant-with-its-aliases",
        ),
        pytest.param(
            ["--variant", "alpine3.*", "--newest", "1", "--aliases"],
            ["1.22.5-alpine3.20", "alpine3.20", "1.22.5-alpine3.19", "alpine3.19"],
            id="a-glob-newest-per-variant",
        ),
        pytest.param(
            ["--variant", "alpine", "--variant", "bookworm", "--newest", "1"],
            ["1.22.5-alpine", "1.22.5-bookworm"],
            id="pre-releases-apart",
        ),
        pytest.param(
            ["--variant", "alpine", "--variant", "bookworm", "--newest", "1", "--prereleases"],
            ["1.23rc2-alpine", "1.22.5-bookworm"],
            id="pre-releases-when-asked",
        ),
        pytest.param(
            ["--variant", "windowsservercore-*", "--versions", "^1.22", "--aliases"],
            [
                "1.22.5-windowsservercore-ltsc2022",
                "1.22-windowsservercore-ltsc2022",
                "windowsservercore-ltsc2022",
            ],
            id="a-two-word-variant",
        ),
        pytest.param(
            ["--versions", ">=1.21", "--aliases"],
            ["1.21.12", "1.22.5", "1.21", "1.22", "1", "latest"],
            id="no-variant-the-plain-line",
        ),
        pytest.param(
            ["--variant", "<none>", "--variant", "alpine", "--versions", "~1.21", "--aliases"],
            ["1.21.12", "1.21", "1.21.12-alpine", "1.21-alpine"],
            id="the-plain-line-beside-a-variant",
        ),
    ],
)
def test_golang_variants_land_exactly(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    golang: str,
    rules: list[str],
    wanted: list[str],
) -> None:
    code, output = sync(tmp_path, hub, golang, local.host, *rules)

    assert code == 0, output
    assert sorted(list_tags(local.url, golang)) == sorted(wanted)
    verify_same((hub.url, hub.token_getter()), (local.url, None), golang, wanted)


def test_postgres_full_versions_without_a_patch(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, postgres: str
) -> None:
    plain, alpine = f"{local.host}/pg/plain", f"{local.host}/pg/alpine"

    first = sync(tmp_path, hub, postgres, plain, "--versions", ">=16", "--aliases")
    second = sync(
        tmp_path, hub, postgres, alpine, "--variant", "alpine", "--versions", "^16", "--aliases"
    )

    assert first[0] == 0 and second[0] == 0, first[1] + second[1]
    assert sorted(list_tags(local.url, "pg/plain")) == sorted(
        ["16.3", "16.4", "16", "17.0", "17", "latest"]
    )
    assert sorted(list_tags(local.url, "pg/alpine")) == ["16-alpine", "16.4-alpine"]
    verify_same(
        (hub.url, hub.token_getter()), (local.url, None), postgres, ["16", "16.4"], "pg/plain"
    )


def test_config_variants_and_which_tags_a_rerun_checks_upstream(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, golang: str
) -> None:
    config = hub_config(tmp_path, hub)
    config.write_text(
        f'target = "{local.host}"\n'
        + config.read_text()
        + f'[[mirrors]]\nsource = "{hub.host}/{golang}"\n'
        + 'tags = { versions = ">=1.22", variants = ["alpine", "bookworm"], aliases = true }\n'
    )
    sync_all = ("sync", "--all", "--config", str(config))

    first = run_mirror(*sync_all, home=tmp_path, env=HUB_ENV)

    assert first.code == 0, first.stdout + first.stderr
    wanted = ["1.22.5-alpine", "1.22-alpine", "1-alpine", "alpine"]
    wanted += ["1.22.5-bookworm", "1.22-bookworm", "1-bookworm", "bookworm"]
    assert sorted(list_tags(local.url, golang)) == sorted(wanted)

    since = hub.log_mark()
    again = run_mirror(*sync_all, home=tmp_path, env=HUB_ENV)

    assert again.code == 0, again.stdout + again.stderr
    assert hub.count_requests("GET", "/manifests/", since=since) == 0  # a no-op: no pulls
    heads = {
        e.path.rsplit("/", 1)[1]
        for e in hub.requests_since(since)
        if e.method == "HEAD" and "/manifests/" in e.path
    }
    # bookworm pins its release, so 1.22.5-bookworm is trusted like 1.22.5; alpine floats to
    # the next Alpine release (alpine3.20 exists beside it), so 1.22.5-alpine is checked.
    assert heads == {"1.22.5-alpine", "1.22-alpine", "1-alpine", "alpine"} | {
        "1.22-bookworm",
        "1-bookworm",
        "bookworm",
    }


def test_mirror_tags_shows_version_variant_and_kind(
    tmp_path: Path, hub: HubRegistry, golang: str
) -> None:
    since = hub.log_mark()
    run = run_mirror(
        "tags", f"{hub.host}/{golang}", "--variant", "alpine", "--newest", "1", "--aliases",
        "--json", home=tmp_path,
    )  # fmt: skip

    assert run.code == 0, run.stderr
    document = json.loads(run.stdout)
    read = {
        t["tag"]: (t["version"], t["variant"], t["kind"], t["reason"]) for t in document["tags"]
    }
    assert read["1.22.5-alpine"] == ("1.22.5", "alpine", "full", "newest 1 of alpine: #1")
    assert read["1-alpine"] == ("1", "alpine", "alias", "alias of 1.22.5-alpine")
    assert read["alpine"] == (None, "alpine", "alias", "alias of 1.22.5-alpine")
    assert read["1.23rc2-alpine"] == ("1.23rc2", "alpine", "pre-release", "pre-release")
    assert read["1.22.5-bookworm"][3] == "variant bookworm not selected"
    assert read["1.22.5"][1:3] == (None, "full")
    assert sorted(document["selected"]) == sorted(
        ["1.22.5-alpine", "1.22-alpine", "1-alpine", "alpine"]
    )
    assert hub.count_requests(path_pattern="/manifests/", since=since) == 0

    selected = run_mirror(
        "tags", f"{hub.host}/{golang}", "--variant", "alpine", "--newest", "1", "--aliases",
        "--selected", home=tmp_path,
    )  # fmt: skip
    assert sorted(selected.stdout.split()) == sorted(document["selected"])


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--variant", ""], "tags.variants"),
        (["--variant", "alp ine"], "tags.variants"),
    ],
)
def test_a_bad_variant_is_one_line(
    tmp_path: Path, hub: HubRegistry, golang: str, args: list[str], key: str
) -> None:
    run = run_mirror("sync", f"{hub.host}/{golang}", *args, home=tmp_path)

    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_a_bad_variant_in_the_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[[mirrors]]\nsource = "golang"\ntags = { variants = ["alpine", ""] }\n')

    run = run_mirror("config", "--check", "--config", str(config), home=tmp_path)

    assert run.code == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "mirrors[0].tags: tags.variants: bad variant ''" in lines[0]
    assert "Traceback" not in run.stderr
