"""Docker Hub's pull limit, played by a proxy in front of the Hub-like registry: mirror copies
what fits, defers the rest without ever drawing a pull-limit 429, and tells the two kinds of
429 apart when they come anyway."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.helpers import HUB_PASSWORD, HUB_USER, Run, run_mirror
from tests.support.images import Pusher, build_image, list_tags, verify_same
from tests.support.proxy import RegistryProxy
from tests.support.ratelimit import PullLimit
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

VERSIONS = ["1.0.1", "1.0.2", "1.0.3", "1.0.4", "1.0.5", "1.0.6"]


def push_versions(pusher: Pusher, repo: str) -> None:
    for version in VERSIONS:
        pusher.push(repo, build_image("docker", seed=f"{repo}:{version}"), version)


def limited_hub(
    hub: HubRegistry, make_proxy: Callable[..., RegistryProxy], limit: PullLimit
) -> RegistryProxy:
    return make_proxy(hub.url, rules=[limit])


def sync(
    tmp_path: Path,
    proxy: RegistryProxy,
    repo: str,
    local: RegistryProcess,
    *extra: str,
    reserve: int = 0,
) -> Run:
    config = tmp_path / "quota.toml"
    config.write_text(
        f'[registries."{proxy.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        f"pull_reserve = {reserve}\n"
    )
    return run_mirror(
        "sync",
        f"{proxy.host}/{repo}",
        "--to",
        local.host,
        "--json",
        "--config",
        str(config),
        *extra,
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )


def test_what_fits_is_copied_newest_first_and_the_rest_waits_for_the_window(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    push_versions(hub_pusher, unique_repo)
    limit = PullLimit(limit=4)
    proxy = limited_hub(hub, make_proxy, limit)

    run = sync(tmp_path, proxy, unique_repo, local, reserve=1)

    assert run.code == 3, run.stderr  # nothing failed, some deferred
    assert limit.refused_pull_limit == 0  # the limit was never hit
    assert limit.pulls == 3  # 4 left, 1 kept in reserve
    assert sorted(list_tags(local.url, unique_repo)) == ["1.0.4", "1.0.5", "1.0.6"]
    deferred = {
        t["target"].rsplit(":", 1)[1] for t in run.report["tags"] if t["status"] == "deferred"
    }
    assert deferred == {"1.0.1", "1.0.2", "1.0.3"}
    assert run.report["tags_deferred"] == 3 and run.report["tags_failed"] == 0
    assert all("pull budget" in line for line in run.stderr.strip().splitlines())

    limit.remaining = limit.limit  # the window frees
    again = sync(tmp_path, proxy, unique_repo, local, reserve=1)

    assert again.code == 0, again.stderr
    assert limit.refused_pull_limit == 0 and limit.pulls == 6
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, VERSIONS)


def test_a_pull_limit_429_stops_all_gets_to_that_registry(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    versions = [f"1.0.{patch}" for patch in range(1, 21)]  # more tags than run at once
    for version in versions:
        hub_pusher.push(
            unique_repo, build_image("docker", seed=f"{unique_repo}:{version}"), version
        )
    limit = PullLimit(limit=2, announce=False)  # no headers: the 429 comes as a surprise
    proxy = limited_hub(hub, make_proxy, limit)

    run = sync(tmp_path, proxy, unique_repo, local)

    assert run.code == 3, run.stderr
    statuses = [t["status"] for t in run.report["tags"]]
    assert statuses.count("copied") == 2 and statuses.count("deferred") == 18
    # Only GETs already in flight met the 429; after it no tag tried: Hub counts each try.
    assert 1 <= limit.refused_pull_limit <= 8
    assert limit.pulls + limit.refused_pull_limit < len(versions)
    assert "pull limit reached" in run.stderr


def test_the_abuse_limit_is_waited_out_and_everything_arrives(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    push_versions(hub_pusher, unique_repo)
    limit = PullLimit(limit=100)
    proxy = limited_hub(hub, make_proxy, limit)
    limit.abuse(3, retry_after_s=0.4)

    started = time.monotonic()
    run = sync(tmp_path, proxy, unique_repo, local)

    assert run.code == 0, run.stderr
    assert time.monotonic() - started >= 0.4  # Retry-After was honoured
    assert limit.refused_abuse == 3 and limit.refused_pull_limit == 0
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, VERSIONS)


def test_the_dry_run_predicts_the_pulls_a_real_run_spends(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    from tests.support.images import build_index

    push_versions(hub_pusher, unique_repo)
    hub_pusher.push(unique_repo, build_index("oci", seed=unique_repo), "2.0.0")
    limit = PullLimit(limit=100)
    proxy = limited_hub(hub, make_proxy, limit)

    plan = sync(tmp_path, proxy, unique_repo, local, "--dry-run")
    before = limit.pulls
    real = sync(tmp_path, proxy, unique_repo, local)

    assert plan.code == 0 and real.code == 0, plan.stderr + real.stderr
    assert plan.report["upstream_manifest_gets"] == limit.pulls - before == 9  # 6 + 1 + 2
    assert real.report["upstream_manifest_gets"] == limit.pulls - before


def test_plan_shows_each_tags_action_cost_and_the_quota_left(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    import json

    push_versions(hub_pusher, unique_repo)
    limit = PullLimit(limit=5)
    proxy = limited_hub(hub, make_proxy, limit)
    config = tmp_path / "plan.toml"
    config.write_text(
        f'target = "{local.host}"\n'
        f'[registries."{proxy.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        "pull_reserve = 1\n"
        f'[[mirrors]]\nsource = "{proxy.host}/{unique_repo}"\n'
    )
    since = local.log_mark()

    run = run_mirror(
        "plan", "--config", str(config), "--json", home=tmp_path, env={"HUB_PW": HUB_PASSWORD}
    )

    assert run.code == 0, run.stderr
    plan = json.loads(run.stdout)
    actions = {t["tag"].rsplit(":", 1)[1]: t for t in plan["entries"][0]["tags"]}
    assert {v for v, t in actions.items() if t["action"] == "copy"} == {
        "1.0.6",
        "1.0.5",
        "1.0.4",
        "1.0.3",
    }
    assert {v for v, t in actions.items() if t["action"] == "defer"} == {"1.0.2", "1.0.1"}
    assert all(
        t["pulls"] == 1 and t["blobs_missing"] == 3
        for t in actions.values()
        if t["action"] == "copy"
    )
    assert plan["totals"]["pulls"] == 4 == limit.pulls  # sizing the copies read them
    assert plan["quota"][proxy.host] == {
        "limit": 5,
        "remaining": 1,
        "window_s": 21600,
        "reserve": 1,
    }
    assert [e for e in local.requests_since(since) if e.method in ("PUT", "POST")] == []


def test_sync_all_logs_each_deferred_tag(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
) -> None:
    import json

    push_versions(hub_pusher, unique_repo)
    proxy = limited_hub(hub, make_proxy, PullLimit(limit=3))
    config = tmp_path / "all.toml"
    config.write_text(
        f'target = "{local.host}"\n'
        f'[registries."{proxy.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        f'[[mirrors]]\nsource = "{proxy.host}/{unique_repo}"\n'
    )

    run = run_mirror(
        "sync", "--all", "--config", str(config), home=tmp_path, env={"HUB_PW": HUB_PASSWORD}
    )

    assert run.code == 3, run.stdout + run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    deferred = [e for e in events if e["event"] == "tag deferred"]
    assert len(deferred) == 3 and all("pull budget" in e["reason"] for e in deferred)
    assert len([e for e in events if e["event"] == "tag synced"]) == 3
    (job_run,) = [e for e in events if e["event"] == "job run"]
    assert job_run["tags_deferred"] == 3 and job_run["outcome"] == "success"
