"""Namespace mapping: ``source = "team/*"`` mirrors every repository under it, kept apart
from plain mirrors under the target namespace (golden images)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.helpers import HUB_PASSWORD, hub_config, run_mirror
from tests.support.images import Pusher, build_image, make_layer, verify_same
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry


def test_a_namespace_maps_onto_another_namespace(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    team = unique_repo.split("/")[0]  # unique per test: t<N>
    base = make_layer(8000, seed=f"{team}:base")
    for name in ("golang", "openjdk"):
        image = build_image("oci", layers=[base, make_layer(500, seed=f"{team}:{name}")])
        hub_pusher.push(f"{team}/{name}", image, "1.0.0")
    hub_pusher.push(f"{team}x/other", build_image("oci", seed=f"{team}:other"), "1.0.0")
    config = hub_config(tmp_path, hub)
    config.write_text(
        config.read_text()
        + f'[[mirrors]]\nsource = "{hub.host}/{team}/*"\ntarget = "{local.host}/golden/{team}/*"\n'
    )

    run = run_mirror(
        "sync",
        "--all",
        "--config",
        str(config),
        "--json",
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )

    assert run.code == 0, run.stdout + run.stderr
    (job,) = run.report["jobs"]
    assert job["job"] == f"{hub.host}/{team}/* -> {local.host}/golden/{team}/*"
    for name in ("golang", "openjdk"):
        verify_same(
            (hub.url, hub.token_getter()),
            (local.url, None),
            f"{team}/{name}",
            ["1.0.0"],
            target_repo=f"golden/{team}/{name}",
        )
    # The sibling namespace t<N>x is not part of t<N>/*, and the shared base crossed once.
    assert {t["target"].split("/", 1)[1] for t in job["report"]["tags"]} == {
        f"golden/{team}/golang:1.0.0",
        f"golden/{team}/openjdk:1.0.0",
    }
    assert job["report"]["blobs_mounted"] == 1
