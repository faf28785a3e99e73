"""``mirror prune`` and a daemon's pruning, against real registries: an upstream that deletes
tags (a plain registry, where deleting takes no special token) and the local target. What is
deleted is read back from the target and counted in its own access log."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from mirror.state import State
from tests.integration.helpers import Daemon, Run, blob_path, run_mirror
from tests.support.artifacts import cosign_signature
from tests.support.images import (
    Image,
    Pusher,
    build_image,
    build_index,
    list_tags,
    manifest_digest,
    verify_same,
)
from tests.support.registry import RegistryProcess, free_port

REPO = "team/app"


def prune_config(
    tmp_path: Path,
    upstream: RegistryProcess,
    target: RegistryProcess,
    *,
    entry: str = 'prune = "deleted"\nprune_after = "0s"',
    daemon: str = "",
) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'state = "{tmp_path / "state.db"}"\ntarget = "{target.host}"\n'
        f"[daemon]\n{daemon}\n"
        f'[[mirrors]]\nsource = "{upstream.host}/{REPO}"\ninterval = "1h"\n{entry}\n'
    )
    return path


def mirror(tmp_path: Path, config: Path, *args: str) -> Run:
    return run_mirror(*args, "--config", str(config), home=tmp_path)


def deletes(registry: RegistryProcess, since: int) -> list[str]:
    registry.settle_log()
    return [e.path for e in registry.requests_since(since) if e.method == "DELETE"]


def image(name: str) -> Image:
    return build_image("oci", seed=f"prune:{name}", layer_count=1)


def test_prune_deletes_only_an_upstream_deleted_tag_mirror_wrote_and_still_holds(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    images = {tag: image(tag) for tag in ("stays", "old", "moved", "twin")}
    with Pusher(upstream.url) as up:
        for tag, built in images.items():
            up.push(REPO, built, tag)
    config = prune_config(tmp_path, upstream, local)
    assert mirror(tmp_path, config, "sync", "--all").code == 0

    golden, by_hand = image("golden"), image("by-hand")
    with Pusher(local.url) as team:
        team.push(REPO, golden, "golden")  # a team's own image, never upstream
        team.push(REPO, by_hand, "moved")  # re-pointed by hand after mirror wrote it
        team.push(REPO, images["twin"], "pinned")  # a team's tag on mirror's digest
    with Pusher(upstream.url) as up:
        for tag in ("old", "moved", "twin"):
            up.delete_manifest(REPO, images[tag].digest)
    assert sorted(list_tags(upstream.url, REPO)) == ["stays"]

    mark = local.log_mark()
    dry = mirror(tmp_path, config, "prune", "--dry-run", "--json")
    assert dry.code == 0, dry.describe()
    assert deletes(local, mark) == [], "a dry run deletes nothing"
    assert State(tmp_path / "state.db").tag(local.host, REPO, "old")["missing_since"] is None  # type: ignore[index]

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune", "--json")

    assert run.code == 0, run.describe()
    assert deletes(local, mark) == [f"/v2/{REPO}/manifests/{images['old'].digest}"]
    assert sorted(list_tags(local.url, REPO)) == ["golden", "moved", "pinned", "stays", "twin"]
    assert manifest_digest(local.url, REPO, "moved") == by_hand.digest
    for report, deleted in ((dry.report, "would delete"), (run.report, "deleted")):
        [entry] = report["entries"]
        assert (entry["prune"], entry["prune_after"], entry["error"]) == ("deleted", "0s", None)
        actions = {t["target"].rsplit(":", 1)[1]: t for t in entry["tags"]}
        assert set(actions) == {"old", "moved", "twin"}, "kept tags upstream has are not listed"
        assert actions["old"]["action"] == deleted
        assert actions["old"]["digest"] == images["old"].digest
        assert "deleted upstream" in actions["old"]["reason"]
        assert actions["moved"]["action"] == "kept"
        assert "re-pointed on the target" in actions["moved"]["reason"]
        assert actions["moved"]["digest"] == by_hand.digest
        assert actions["twin"]["action"] == "kept"
        assert "tag pinned, which stays, is on the same digest" in actions["twin"]["reason"]
    assert (dry.report["would_delete"], run.report["deleted"], run.report["kept"]) == (1, 1, 2)
    history = mirror(tmp_path, config, "history", f"{local.host}/{REPO}:old", "--json")
    [tag] = history.report["tags"]
    assert tag["changes"][-1] == tag["changes"][-1] | {"from": images["old"].digest, "to": None}

    again = mirror(tmp_path, config, "prune", "--json")
    assert again.code == 0 and again.report["deleted"] == 0

    # The disk is freed by the registry's garbage collection, as the README says: a plain one
    # (no --delete-untagged) with the registry stopped.
    [old_layer] = images["old"].layers
    assert blob_path(local, old_layer.digest).exists()
    local.stop()
    collected = subprocess.run(
        [str(local.binary), "garbage-collect", str(local.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    local.start()
    assert collected.returncode == 0, collected.stderr
    assert not blob_path(local, old_layer.digest).exists()
    verify_same((upstream.url, None), (local.url, None), REPO, ["stays"])
    assert manifest_digest(local.url, REPO, "pinned") == images["twin"].digest


def test_a_digest_an_index_that_stays_lists_is_kept(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    index = build_index("oci", seed="prune:index")
    child = index.children[0]
    with Pusher(upstream.url) as up:
        up.push(REPO, index, "multi")
        up.push(REPO, child, "amd64-only")  # one platform's image under a tag of its own
    config = prune_config(tmp_path, upstream, local)
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:
        up.delete_manifest(REPO, child.digest)  # upstream drops the tag (and the digest)

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune", "--json")

    assert run.code == 0 and deletes(local, mark) == []
    [tag] = run.report["entries"][0]["tags"]
    assert tag["action"] == "kept"
    assert "the index under tag multi, which stays, lists it" in tag["reason"]
    assert manifest_digest(local.url, REPO, "amd64-only") == child.digest


def test_a_tag_within_its_grace_period_is_kept_and_says_until_when(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    old = image("grace")
    with Pusher(upstream.url) as up:
        up.push(REPO, old, "old")
        up.push(REPO, image("new"), "new")
    config = prune_config(tmp_path, upstream, local, entry='prune = "deleted"')  # 7d grace
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:
        up.delete_manifest(REPO, old.digest)

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune")

    assert run.code == 0 and deletes(local, mark) == []
    assert f"kept          {local.host}/{REPO}:old  deleted upstream" in run.stdout
    assert "(prune_after)" in run.stdout and "0 tags deleted, 1 kept" in run.stdout


def test_a_registry_that_refuses_deletes_gets_one_line_naming_the_setting(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess]
) -> None:
    upstream = make_registry()
    target = make_registry(extra_config={"storage": {"delete": {"enabled": False}}})
    old = image("refused")
    with Pusher(upstream.url) as up:
        up.push(REPO, old, "old")
        up.push(REPO, image("other"), "other")
    config = prune_config(tmp_path, upstream, target)
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:
        up.delete_manifest(REPO, old.digest)

    run = mirror(tmp_path, config, "prune")

    assert run.code == 1
    [line] = run.error_lines()
    assert line.startswith(f"mirror: error: prune {upstream.host}/{REPO} -> ")
    assert "refuses deletes" in line and "storage.delete.enabled: true" in line
    assert manifest_digest(target.url, REPO, "old") == old.digest


def test_prune_without_an_entry_that_asks_is_a_usage_error(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    config = prune_config(tmp_path, make_registry(), local, entry="")

    run = mirror(tmp_path, config, "prune")

    assert run.code == 2 and len(run.error_lines()) == 1 and "prune" in run.stderr


def test_the_daemon_prunes_at_the_end_of_a_run_what_the_rules_no_longer_select(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    versions = {v: image(v) for v in ("1.0.0", "1.1.0")}
    with Pusher(upstream.url) as up:
        for tag, built in versions.items():
            up.push(REPO, built, tag)
    config = prune_config(
        tmp_path,
        upstream,
        local,
        entry='prune = "unselected"\nprune_after = "0s"\ntags = { newest = 2 }',
    )
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:  # a newer version pushes 1.0.0 past `newest = 2`
        up.push(REPO, image("1.2.0"), "1.2.0")
    port = free_port()
    config = prune_config(
        tmp_path,
        upstream,
        local,
        entry='prune = "unselected"\nprune_after = "0s"\ntags = { newest = 2 }',
        daemon=f'listen = "127.0.0.1:{port}"\njitter = "0s"',
    )

    daemon = Daemon(config, tmp_path, port)
    try:
        [pruned] = daemon.wait_for("the prune", lambda: daemon.events("tag pruned"))
        summary = daemon.wait_for("its summary", lambda: daemon.events("prune"))
    finally:
        assert daemon.stop() == 0
    assert pruned["target"] == f"{local.host}/{REPO}:1.0.0"
    assert pruned["digest"] == versions["1.0.0"].digest
    assert "not selected by the rules" in pruned["reason"]
    assert summary[0]["deleted"] == 1
    assert sorted(list_tags(local.url, REPO)) == ["1.1.0", "1.2.0"]


def test_a_namespace_entry_prunes_in_each_of_its_repositories(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    built = {(repo, tag): image(f"{repo}:{tag}") for repo in ("ns/a", "ns/b") for tag in "12"}
    with Pusher(upstream.url) as up:
        for (repo, tag), one in built.items():
            up.push(repo, one, tag)
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'state = "{tmp_path / "state.db"}"\ntarget = "{local.host}"\n'
        f'[[mirrors]]\nsource = "{upstream.host}/ns/*"\ntarget = "{local.host}/copy/*"\n'
        'prune = "deleted"\nprune_after = "0s"\n'
    )
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:
        up.delete_manifest("ns/b", built[("ns/b", "2")].digest)

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune", "--json")

    assert run.code == 0, run.describe()
    gone = built[("ns/b", "2")].digest
    assert deletes(local, mark) == [f"/v2/copy/b/manifests/{gone}"]
    assert sorted(list_tags(local.url, "copy/a")) == ["1", "2"]
    assert sorted(list_tags(local.url, "copy/b")) == ["1"]
    [entry] = run.report["entries"]
    assert entry["entry"] == f"{upstream.host}/ns/* -> {local.host}/copy/*"
    assert [(t["target"], t["action"]) for t in entry["tags"]] == [
        (f"{local.host}/copy/b:2", "deleted")
    ]


def test_prune_deleted_keeps_a_tag_upstream_still_has_but_the_rules_left(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    with Pusher(upstream.url) as up:
        up.push(REPO, image("v1"), "1.0.0")
    entry = 'prune = "deleted"\nprune_after = "0s"\ntags = { newest = 1 }'
    config = prune_config(tmp_path, upstream, local, entry=entry)
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    with Pusher(upstream.url) as up:
        up.push(REPO, image("v2"), "2.0.0")  # 1.0.0 is past newest = 1 now, still upstream
    assert mirror(tmp_path, config, "sync", "--all").code == 0

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune", "--json")

    assert run.code == 0 and deletes(local, mark) == []
    [tag] = run.report["entries"][0]["tags"]
    assert (tag["target"], tag["action"]) == (f"{local.host}/{REPO}:1.0.0", "kept")
    assert 'prune = "deleted" keeps tags upstream has' in tag["reason"]
    status = mirror(tmp_path, config, "status", "--json")
    assert status.report["entries"][0]["tags"]["missing_upstream"] == 1


def test_prune_unselected_never_takes_a_signature_for_a_tag_the_rules_left(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess], local: RegistryProcess
) -> None:
    upstream = make_registry()
    v1, v2 = image("v1"), image("v2")
    sig1, sig2 = cosign_signature(v1.digest, "s1"), cosign_signature(v2.digest, "s2")
    with Pusher(upstream.url) as up:
        up.push(REPO, v1, "1.0.0")
        up.push(REPO, v2, "2.0.0")
        up.push(REPO, sig1, "sha256-" + v1.digest.split(":")[1] + ".sig")
        up.push(REPO, sig2, "sha256-" + v2.digest.split(":")[1] + ".sig")
    entry = 'prune = "unselected"\nprune_after = "0s"\ntags = { versions = ">=2" }'
    config = prune_config(tmp_path, upstream, local, entry=entry)
    assert mirror(tmp_path, config, "sync", "--all").code == 0
    signature = "sha256-" + v2.digest.split(":")[1] + ".sig"
    assert sorted(list_tags(local.url, REPO)) == ["2.0.0", signature]

    mark = local.log_mark()
    run = mirror(tmp_path, config, "prune", "--json")

    assert run.code == 0 and deletes(local, mark) == []
    assert sorted(list_tags(local.url, REPO)) == ["2.0.0", signature]
