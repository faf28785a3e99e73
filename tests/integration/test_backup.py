"""Backups of moving tags against real registries: before a tag already on the target moves,
its old manifest is put under a backup tag (read from the target, never pulled again), so a
rollback is one re-tag. A first copy makes no backup."""

from __future__ import annotations

import datetime
from pathlib import Path

from tests.integration.helpers import (
    HUB_ENV,
    hub_config,
    manifest_gets,
    run_mirror,
)
from tests.support.images import Pusher, build_image, list_tags, manifest_digest
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry


def entry_config(tmp_path: Path, hub: HubRegistry, local: RegistryProcess, repo: str) -> Path:
    config = hub_config(tmp_path, hub)
    config.write_text(
        f'target = "{local.host}"\n{config.read_text()}\n'
        f'[[mirrors]]\nsource = "{hub.host}/{repo}"\nbackup = "{{tag}}-prev"\n'
    )
    return config


def test_an_alias_that_moves_upstream_keeps_its_old_digest_under_the_backup_tag(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
) -> None:
    old = hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "1.0.1")
    hub_pusher.push(unique_repo, old, "1", "latest")
    config = entry_config(tmp_path, hub, local, unique_repo)

    first = run_mirror("sync", "--all", "--config", str(config), home=tmp_path, env=HUB_ENV)

    assert first.code == 0, first.stderr
    assert sorted(list_tags(local.url, unique_repo)) == ["1", "1.0.1", "latest"]  # no backup
    new = hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:2"), "1.0.2")
    hub_pusher.push(unique_repo, new, "1", "latest")
    since = hub.log_mark()

    second = run_mirror("sync", "--all", "--config", str(config), home=tmp_path, env=HUB_ENV)

    assert second.code == 0, second.stderr
    assert sorted(list_tags(local.url, unique_repo)) == [
        "1",
        "1-prev",
        "1.0.1",
        "1.0.2",
        "latest",
        "latest-prev",
    ]
    for tag in ("1", "latest"):
        assert manifest_digest(local.url, unique_repo, tag) == new.digest
        assert manifest_digest(local.url, unique_repo, f"{tag}-prev") == old.digest
    assert manifest_gets(hub, since) == 1  # the new image only: backups come from the target
    lines = [line for line in second.stdout.splitlines() if '"tag synced"' in line]
    assert sum('"backup": "latest-prev"' in line for line in lines) == 1, second.stdout


def test_the_backup_flag_takes_a_dated_template(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
) -> None:
    old = hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "latest")
    config = hub_config(tmp_path, hub)
    ref = f"{hub.host}/{unique_repo}:latest"
    args = ("sync", ref, "--to", local.host, "--config", str(config), "--json")
    template = "{tag}-{date:%Y%m%d}"
    assert run_mirror(*args, "--backup", template, home=tmp_path, env=HUB_ENV).code == 0
    hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:2"), "latest")

    run = run_mirror(*args, "--backup", template, home=tmp_path, env=HUB_ENV)

    assert run.code == 0, run.stderr
    backup = f"latest-{datetime.datetime.now(datetime.UTC):%Y%m%d}"
    assert run.tag("latest")["backup"] == backup
    assert run.tag("latest")["previous"] == old.digest
    assert manifest_digest(local.url, unique_repo, backup) == old.digest


def test_a_bad_backup_template_is_one_line_naming_the_key(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[[mirrors]]\nsource = "{hub.host}/x/y"\nbackup = "prev"\n')

    run = run_mirror("sync", "--all", "--config", str(config), home=tmp_path)
    flag = run_mirror(
        "sync", f"{hub.host}/x/y", "--to", local.host, "--backup", "{tag}:{date}", home=tmp_path
    )

    assert run.code == 2 and len(run.error_lines()) == 1, run.describe()
    assert "mirrors[0].backup" in run.stderr and "{tag}" in run.stderr
    assert flag.code == 2 and len(flag.error_lines()) == 1, flag.describe()
    assert "--backup" in flag.stderr and "not a valid tag" in flag.stderr
