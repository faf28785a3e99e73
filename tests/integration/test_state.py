"""The state mirror keeps between runs, with real registries and real ``mirror`` processes:
what a run leaves in it, and that a state file that is corrupt, unwritable or shared by two
processes at once never changes what is copied or how mirror exits."""

from __future__ import annotations

from pathlib import Path

from mirror.state import State
from tests.integration.helpers import (
    HUB_ENV,
    HUB_PASSWORD,
    HUB_USER,
    MirrorProcess,
    Run,
    run_mirror,
)
from tests.support.images import Pusher, build_image, verify_same
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry


def state_config(tmp_path: Path, hub: HubRegistry, state: Path, extra: str = "") -> Path:
    """A config with ``state`` set (top-level keys come before the tables) and the hub login."""
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'state = "{state}"\n{extra}\n'
        f'[registries."{hub.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
    )
    return path


def sync(tmp_path: Path, config: Path, *args: str) -> Run:
    return run_mirror("sync", *args, "--json", "--config", str(config), home=tmp_path, env=HUB_ENV)


def two_tags(hub_pusher: Pusher, repo: str) -> dict[str, str]:
    images = {tag: build_image("oci", seed=f"{repo}:{tag}") for tag in ("1.0.0", "latest")}
    for tag, image in images.items():
        hub_pusher.push(repo, image, tag)
    return {tag: image.digest for tag, image in images.items()}


def test_a_sync_records_the_run_and_every_tag_it_checked(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    digests = two_tags(hub_pusher, unique_repo)
    state_path = tmp_path / "state" / "state.db"
    config = state_config(tmp_path, hub, state_path)

    first = sync(tmp_path, config, f"{hub.host}/{unique_repo}", "--to", local.host)
    again = sync(tmp_path, config, f"{hub.host}/{unique_repo}", "--to", local.host)
    dry = sync(tmp_path, config, f"{hub.host}/{unique_repo}", "--to", local.host, "--dry-run")

    assert (first.code, again.code, dry.code) == (0, 0, 0), first.stderr + again.stderr
    assert first.stderr == again.stderr == dry.stderr == ""
    state = State(state_path)
    job = f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"
    runs = state.runs(job)
    assert len(runs) == 2, "a dry run is not recorded"
    newest, oldest = runs
    assert (oldest["outcome"], oldest["tags_checked"], oldest["tags_copied"]) == ("success", 2, 2)
    assert (newest["tags_skipped"], newest["tags_copied"]) == (2, 0)
    assert oldest["bytes"] == first.report["bytes_copied"] > 0
    tags = {t["tag"]: t for t in state.tags(job)}
    assert set(tags) == set(digests)
    for tag, digest in digests.items():
        assert tags[tag]["target"] == local.host and tags[tag]["repository"] == unique_repo
        assert tags[tag]["source"] == f"{hub.host}/{unique_repo}:{tag}"
        assert tags[tag]["target_digest"] == tags[tag]["written_digest"] == digest
        assert tags[tag]["status"] == "skipped"  # as the last run found it
        assert [h["new_digest"] for h in state.history(local.host, unique_repo, tag)] == [digest]


def test_a_corrupt_state_file_is_set_aside_with_one_line_and_the_run_is_correct(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    two_tags(hub_pusher, unique_repo)
    state_path = tmp_path / "state.db"
    garbage = b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 2000
    state_path.write_bytes(garbage)
    config = state_config(tmp_path, hub, state_path)

    run = sync(tmp_path, config, f"{hub.host}/{unique_repo}", "--to", local.host)

    assert run.code == 0, run.describe()
    [line] = run.error_lines()
    assert line.startswith("mirror: warning: state ") and "corrupt" in line, line
    assert "set aside as state.db.corrupt-" in line
    [aside] = tmp_path.glob("state.db.corrupt-*")
    assert aside.read_bytes() == garbage, "the corrupt file is kept as it was, not overwritten"
    assert run.report["tags_copied"] == 2
    verify_same(
        (hub.url, hub.token_getter("tester")), (local.url, None), unique_repo, ["1.0.0", "latest"]
    )
    assert len(State(state_path).tags()) == 2, "the new state has this run"


def test_a_state_that_cannot_be_written_costs_one_line_and_not_the_exit_status(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    two_tags(hub_pusher, unique_repo)
    (tmp_path / "a-file").write_text("the state's directory would be here\n")
    state_path = tmp_path / "a-file" / "state.db"  # as root, chmod would not stop a write
    config = state_config(tmp_path, hub, state_path)

    run = sync(tmp_path, config, f"{hub.host}/{unique_repo}", "--to", local.host)
    missing = sync(tmp_path, config, f"{hub.host}/{unique_repo}:no-such-tag", "--to", local.host)

    assert run.code == 0, run.describe()
    [line] = run.error_lines()
    assert line.startswith(f"mirror: warning: state {state_path}: ") and "without it" in line
    assert run.report["tags_copied"] == 2
    assert missing.code == 1, "a failure is still a failure"
    assert len(missing.error_lines()) == 2 and "no-such-tag" in missing.error_lines()[1]


def test_two_syncs_at_once_share_one_state_file(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    repos = [f"{unique_repo}-{n}" for n in range(2)]
    for repo in repos:
        for n in range(6):
            hub_pusher.push(repo, build_image("oci", seed=f"{repo}:{n}"), f"1.0.{n}")
    state_path = tmp_path / "state.db"
    config = state_config(tmp_path, hub, state_path)

    started = [
        MirrorProcess(
            "sync",
            f"{hub.host}/{repo}",
            "--to",
            local.host,
            "--config",
            str(config),
            home=tmp_path,
            env={"HUB_PW": HUB_PASSWORD},
        )
        for repo in repos
    ]
    runs = [process.wait() for process in started]

    assert [r.code for r in runs] == [0, 0], [r.describe() for r in runs]
    assert [r.stderr for r in runs] == ["", ""], "no lock made either drop its record"
    state = State(state_path)
    assert sorted(r["job"] for r in state.runs()) == sorted(
        f"{hub.host}/{repo} -> {local.host}/{repo}" for repo in repos
    )
    assert all(r["outcome"] == "success" and r["tags_copied"] == 6 for r in state.runs())
    assert len(state.tags()) == 12


def entries_config(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    sources: list[str],
    *,
    entry: str = "",
    daemon: str = "",
) -> Path:
    """A config with ``state`` in tmp_path, a [[mirrors]] entry per source (``entry`` added to
    each) and ``daemon`` as its [daemon] table's lines."""
    lines = [f'state = "{tmp_path / "state.db"}"', f'target = "{local.host}"']
    lines += ["[daemon]", daemon, f'[registries."{hub.host}"]', f'username = "{HUB_USER}"']
    lines += ['password_env = "HUB_PW"', "[defaults]", 'interval = "1h"']
    for source in sources:
        lines += ["[[mirrors]]", f'source = "{hub.host}/{source}"', entry]
    path = tmp_path / "mirror.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def mirror(tmp_path: Path, config: Path, *args: str) -> Run:
    return run_mirror(*args, "--config", str(config), home=tmp_path, env=HUB_ENV)


def test_history_follows_a_moved_tag_across_runs_by_source_or_target_name(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    first, second = (build_image("oci", seed=f"{unique_repo}:{n}") for n in (1, 2))
    hub_pusher.push(unique_repo, first, "1.22")
    config = entries_config(tmp_path, hub, local, [unique_repo])

    runs = [mirror(tmp_path, config, "sync", "--all")]
    runs.append(mirror(tmp_path, config, "sync", "--all"))
    hub_pusher.push(unique_repo, second, "1.22")  # upstream moves the tag
    runs.append(mirror(tmp_path, config, "sync", "--all"))
    with Pusher(local.url) as by_hand:  # someone points the target back at the old build
        by_hand.push(unique_repo, first, "1.22")
    runs.append(mirror(tmp_path, config, "sync", "--all"))
    assert [r.code for r in runs] == [0, 0, 0, 0], [r.describe() for r in runs]

    source = mirror(tmp_path, config, "history", f"{hub.host}/{unique_repo}:1.22", "--json")
    target = mirror(tmp_path, config, "history", f"{local.host}/{unique_repo}:1.22", "--json")

    assert source.code == target.code == 0, source.describe()
    assert source.report == target.report | {"reference": f"{hub.host}/{unique_repo}:1.22"}
    [tag] = target.report["tags"]
    assert tag["target"] == f"{local.host}/{unique_repo}:1.22"
    assert tag["source"] == f"{hub.host}/{unique_repo}:1.22"
    assert (tag["digest"], tag["written_by_mirror"], tag["status"]) == (
        second.digest,
        True,
        "copied",
    )
    changes = [(c["from"], c["to"]) for c in tag["changes"]]
    assert changes == [
        (None, first.digest),
        (first.digest, second.digest),  # the third run
        (second.digest, first.digest),  # by hand, seen by the fourth run
        (first.digest, second.digest),  # the fourth run put it right
    ]
    times = [c["at"] for c in tag["changes"]]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    assert [c["run"] is not None for c in tag["changes"]] == [True] * 4

    text = mirror(tmp_path, config, "history", f"{hub.host}/{unique_repo}:1.22")
    assert text.code == 0 and text.stderr == ""
    lines = text.stdout.splitlines()
    assert lines[0] == f"{local.host}/{unique_repo}:1.22  from {hub.host}/{unique_repo}:1.22"
    assert lines[1].endswith(f"{first.digest}  (first seen)")
    assert lines[2].endswith(f"{first.digest} -> {second.digest}")


def test_history_of_a_tag_nothing_checked_is_one_line(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess
) -> None:
    config = entries_config(tmp_path, hub, local, [])

    run = mirror(tmp_path, config, "history", "golang:1.22")
    digest = mirror(tmp_path, config, "history", "golang@sha256:" + "a" * 64)

    assert run.code == 1 and run.stdout == ""
    [line] = run.error_lines()
    assert line.startswith("mirror: error: history: nothing recorded for ")
    assert "docker.io/library/golang:1.22" in line
    assert not (tmp_path / "state.db").exists(), "looking creates no state"
    assert digest.code == 2 and len(digest.error_lines()) == 1 and "digest" in digest.stderr


def test_status_shows_each_entry_s_last_run_tags_and_next_run(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    two_tags(hub_pusher, unique_repo)
    missing = f"{unique_repo}-never-pushed"
    config = entries_config(tmp_path, hub, local, [unique_repo, missing])
    before = mirror(tmp_path, config, "status", "--json")

    sync_all = mirror(tmp_path, config, "sync", "--all")
    status = mirror(tmp_path, config, "status", "--json")
    text = mirror(tmp_path, config, "status")

    assert before.code == 0 and [e["last_run"] for e in before.report["entries"]] == [None] * 2
    assert sync_all.code == 1
    assert status.code == text.code == 1, "an entry's last run failed"
    document = status.report
    assert document["state"] == str(tmp_path / "state.db") and document["state_problem"] is None
    good, bad = document["entries"]
    assert good["entry"] == f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"
    assert good["configured"] is True and good["schedule"] == "every 1h"
    run = good["last_run"]
    assert (run["outcome"], run["tags_checked"], run["tags_copied"]) == ("success", 2, 2)
    assert run["finished"] >= run["started"] and good["last_success"] == run["finished"]
    assert good["tags"] == {
        "in_sync": 2,
        "behind": 0,
        "failed": 0,
        "deferred": 0,
        "missing_upstream": 0,
    }
    assert good["behind_since"] is None
    assert good["next_run"] > run["started"] and good["next_run_estimated"] is True
    assert bad["last_run"]["outcome"] == "failed" and bad["last_success"] is None
    assert bad["last_run"]["tags_failed"] == 1
    assert bad["tags"]["behind"] == 0, "a repository that cannot be listed has no tags to count"
    assert text.stdout.splitlines()[0] == f"{good['entry']}  (every 1h)"
    assert "  last run      " in text.stdout and "2 in sync, 0 behind" in text.stdout


def test_the_daemon_serves_the_status_with_its_own_next_runs(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    from tests.integration.helpers import Daemon
    from tests.support.registry import free_port

    two_tags(hub_pusher, unique_repo)
    port = free_port()
    config = entries_config(
        tmp_path,
        hub,
        local,
        [unique_repo],
        daemon=f'listen = "127.0.0.1:{port}"\njitter = "0s"',
    )
    daemon = Daemon(config, tmp_path, port)
    try:
        job = f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"
        daemon.wait_for("the first run", lambda: daemon.events("job run", job=job))

        response = daemon.get("/status")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        [entry] = response.json()["entries"]
        assert entry["entry"] == job and entry["last_run"]["outcome"] == "success"
        assert entry["tags"]["in_sync"] == 2
        assert entry["next_run"] is not None and entry["next_run_estimated"] is False
        assert entry["next_run"] > entry["last_run"]["started"]
        cli = mirror(tmp_path, config, "status", "--json")
        assert cli.code == 0 and cli.report["entries"][0]["last_run"] == entry["last_run"]
    finally:
        assert daemon.stop() == 0


def test_a_daemon_sets_a_corrupt_state_aside_with_one_log_line_and_copies(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, hub_pusher: Pusher, unique_repo: str
) -> None:
    from tests.integration.helpers import Daemon
    from tests.support.registry import free_port

    two_tags(hub_pusher, unique_repo)
    (tmp_path / "state.db").write_bytes(b"not a database at all" * 500)
    port = free_port()
    config = entries_config(
        tmp_path, hub, local, [unique_repo], daemon=f'listen = "127.0.0.1:{port}"\njitter = "0s"'
    )
    daemon = Daemon(config, tmp_path, port)
    try:
        job = f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"
        [run] = daemon.wait_for("the first run", lambda: daemon.events("job run", job=job))
    finally:
        assert daemon.stop() == 0
    [warning] = [e for e in daemon.events() if e.get("level") == "warning"]
    assert warning["event"] == "state problem" and "set aside" in warning["problem"]
    assert run["outcome"] == "success" and run["tags_copied"] == 2
    assert len(list(tmp_path.glob("state.db.corrupt-*"))) == 1
    assert State(tmp_path / "state.db").runs(job)[0]["outcome"] == "success"
