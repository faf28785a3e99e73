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
