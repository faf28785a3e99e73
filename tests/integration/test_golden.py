"""Issue 4's end-to-end case: "mirror the 2.x line of diamol/golang with its aliases, amd64 and
arm64 only, into golden/golang", planned with its quota cost, then carried out by the daemon
behind a Docker-Hub-like pull limit that it never hits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.helpers import HUB_PASSWORD, HUB_USER, Daemon, metric, run_mirror
from tests.support.images import (
    AMD64,
    ARM64,
    OCI_INDEX,
    Platform,
    Pusher,
    build_index,
    list_tags,
    verify_repository,
)
from tests.support.proxy import RegistryProxy
from tests.support.ratelimit import PullLimit
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

VERSIONS = ["2.1.106", "2.1.114", "2.2.11", "3.0.42"]
ALIASES = {"2": "2.2.11", "2.1": "2.1.114", "2.2": "2.2.11", "3": "3.0.42", "latest": "3.0.42"}


def test_the_2x_line_with_aliases_amd64_and_arm64_into_golden_golang(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
    start_daemon: Callable[..., Daemon],
) -> None:
    platforms = (AMD64, ARM64, Platform("linux", "ppc64le"))
    images = {
        v: build_index("oci", seed=f"{unique_repo}:{v}", platforms=platforms) for v in VERSIONS
    }
    for tag, image in images.items():
        hub_pusher.push(unique_repo, image, tag)
    for alias, version in ALIASES.items():
        hub_pusher.push(unique_repo, images[version], alias)
    limit = PullLimit(limit=40)
    proxy = make_proxy(hub.url, rules=[limit])
    port = free_port()
    config = tmp_path / "golden.toml"
    config.write_text(
        f'target = "{local.host}"\n'
        f'[daemon]\nlisten = "127.0.0.1:{port}"\njitter = "0s"\n'
        f'[registries."{proxy.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        "pull_reserve = 5\n"
        # The few config lines of the brief:
        f'[[mirrors]]\nsource = "{proxy.host}/{unique_repo}"\n'
        f'target = "{local.host}/golden/golang"\n'
        'tags = { versions = ">=2, <3", aliases = true }\n'
        'platforms = ["linux/amd64", "linux/arm64"]\n'
        'interval = "1h"\n'
    )
    env = {"HUB_PW": HUB_PASSWORD}

    plan = run_mirror("plan", "--config", str(config), "--json", home=tmp_path, env=env)

    assert plan.code == 0, plan.stderr
    document = json.loads(plan.stdout)
    copies = {
        t["tag"].rsplit(":", 1)[1] for t in document["entries"][0]["tags"] if t["action"] == "copy"
    }
    wanted = {"2.1.106", "2.1.114", "2.2.11", "2", "2.1", "2.2"}
    assert copies == wanted
    # Three distinct indexes, two platforms each: 3 + 6 pulls; aliases cost nothing.
    assert document["totals"]["pulls"] == 9
    assert document["quota"][proxy.host]["reserve"] == 5

    daemon = start_daemon(config, port)
    job = f"{proxy.host}/{unique_repo} -> {local.host}/golden/golang"
    daemon.wait_for("the first run", lambda: daemon.events("job run", job=job))

    assert sorted(list_tags(local.url, "golden/golang")) == sorted(wanted)
    for tag in wanted:
        verify_repository(local.url, "golden/golang", tag)
        index = httpx.get(
            f"{local.url}/v2/golden/golang/manifests/{tag}", headers={"Accept": OCI_INDEX}
        ).json()
        kept = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
        assert kept == {("linux", "amd64"), ("linux", "arm64")}
    assert limit.refused_pull_limit == 0
    assert metric(daemon.get("/metrics").text, "mirror_upstream_ratelimit_limit") == 40
    assert daemon.stop() == 0
