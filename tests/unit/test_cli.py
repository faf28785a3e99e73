"""The ``mirror`` command: pairing sources with targets, exit codes, one-line errors, and a
whole ``mirror sync`` against fake registries (``mirror.clients.Registry`` is pointed at them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import mirror.clients
from mirror.cli import main
from mirror.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, resolve_requests
from mirror.errors import ConfigError, InvalidReference
from mirror.registry import Registry
from tests.unit.fakes import FakeRegistry, make_image, make_index

# --- resolve_requests -------------------------------------------------------------------------


def test_registry_target_keeps_each_repository_path() -> None:
    requests = resolve_requests(["diamol/golang", "golang:1.22"], "localhost:5000")

    assert [(str(r.source), str(r.target)) for r in requests] == [
        ("docker.io/diamol/golang", "localhost:5000/diamol/golang"),
        ("docker.io/library/golang:1.22", "localhost:5000/library/golang"),
    ]
    assert all(r.target.tag is None and r.target.digest is None for r in requests)


def test_registry_target_without_port() -> None:
    (request,) = resolve_requests(["ghcr.io/o/r"], "registry.local")

    assert str(request.target) == "registry.local/o/r"


def test_repository_target_takes_one_ref() -> None:
    (request,) = resolve_requests(["diamol/golang:latest"], "registry.local:5000/gallery/ui")

    assert request.source.tag == "latest"
    assert (request.target.registry, request.target.repository) == (
        "registry.local:5000",
        "gallery/ui",
    )


def test_two_refs_into_one_repository_is_an_error() -> None:
    with pytest.raises(ConfigError, match="one REF"):
        resolve_requests(["a/b", "c/d"], "registry.local:5000/gallery/ui")


def test_target_with_a_tag_is_refused() -> None:
    with pytest.raises(InvalidReference):
        resolve_requests(["a/b"], "registry.local:5000/gallery/ui:v1")


@pytest.mark.parametrize("target", ["myrepo", "registry.local:0", "registry.local:port"])
def test_target_that_is_neither_registry_nor_repository_is_refused(target: str) -> None:
    with pytest.raises((ConfigError, InvalidReference)) as caught:
        resolve_requests(["a/b"], target)
    assert target in str(caught.value)


def test_bad_source_reference_is_refused_naming_it() -> None:
    with pytest.raises(InvalidReference, match="Diamol"):
        resolve_requests(["Diamol/golang"], "localhost:5000")


# --- main: usage errors -----------------------------------------------------------------------


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mirror: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_bad_reference_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sync", "UPPER/case", "--to", "localhost:5000"])

    out, err = capsys.readouterr()
    assert code == EXIT_USAGE == 2
    assert_one_line_error(err, "UPPER/case")
    assert out == ""


def test_invalid_toml_config_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text("target = [unclosed\n")

    code = main(["sync", "diamol/golang", "--config", str(config)])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, str(config))


def test_unknown_config_key_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[registries."docker.io"]\nusernme = "x"\n')

    code = main(["sync", "diamol/golang", "--config", str(config)])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, 'registries."docker.io".usernme')


def test_config_from_mirror_config_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "env.toml"
    config.write_text("concurrency = -3\n")
    monkeypatch.setenv("MIRROR_CONFIG", str(config))

    code = main(["sync", "diamol/golang"])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "concurrency", str(config))


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2


# --- main: whole runs against fake registries --------------------------------------------------


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeRegistry]:
    """Registries source.test and target.test; any other registry name fails the test."""
    registries = {name: FakeRegistry(name) for name in ("source.test", "target.test")}

    async def no_sleep(seconds: float) -> None:
        return None

    def build(name: str, **kwargs: Any) -> Registry:
        assert name in registries, f"the command tried to reach {name}"
        return Registry(name, transport=registries[name].transport(), sleep=no_sleep, **kwargs)

    monkeypatch.setattr(mirror.clients, "Registry", build)
    return registries


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["sync", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_copies_and_exits_0(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    image, index = make_image(1), make_index(2)
    fakes["source.test"].seed("team/app", "v1", image)
    fakes["source.test"].seed("team/app", "multi", index)

    code, out, err = run(capsys, "source.test/team/app", "--to", "target.test")

    assert code == EXIT_OK, err
    assert err == ""
    assert fakes["target.test"].tags["team/app"] == {"v1": image.digest, "multi": index.digest}
    assert "2 tags: 2 copied" in out


def test_sync_json_report(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(3)
    fakes["source.test"].seed("team/app", "v1", image)

    code, out, _ = run(
        capsys, "source.test/team/app:v1", "--to", "target.test/mirrored/app", "--json"
    )

    assert code == EXIT_OK
    report = json.loads(out)
    assert report["tags_copied"] == 1
    assert report["blobs_copied"] == len(image.blobs)
    assert report["tags"][0]["target"] == "target.test/mirrored/app:v1"
    assert report["tags"][0]["digest"] == image.digest
    assert isinstance(report["seconds"], float)


def test_second_sync_is_a_no_op(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].seed("team/app", "v1", make_image(4))
    assert run(capsys, "source.test/team/app", "--to", "target.test")[0] == EXIT_OK
    for fake in fakes.values():
        fake.requests.clear()

    code, out, _ = run(capsys, "source.test/team/app", "--to", "target.test")

    assert code == EXIT_OK
    assert "1 in sync" in out
    assert fakes["source.test"].find("GET", "manifest") == []
    assert fakes["target.test"].writes() == []


def test_dry_run_writes_nothing(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].seed("team/app", "v1", make_image(5))

    code, out, _ = run(capsys, "source.test/team/app", "--to", "target.test", "--dry-run")

    assert code == EXIT_OK
    assert "would" in out
    assert fakes["target.test"].writes() == []


def test_failed_tag_exits_1_with_one_line_per_failure(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].seed("team/app", "v1", make_image(6))

    code, _, err = run(
        capsys, "source.test/team/app:v1", "source.test/team/app:nope", "--to", "target.test"
    )

    assert code == EXIT_FAILED
    assert_one_line_error(err, "source.test/team/app:nope")
    assert "v1" in fakes["target.test"].tags["team/app"]


def test_unreachable_registry_is_one_line_not_one_per_tag(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].fail(503)

    code, _, err = run(
        capsys, "source.test/team/a:1", "source.test/team/b:2", "--to", "target.test"
    )

    assert code == EXIT_FAILED
    assert_one_line_error(err, "source.test")


def test_missing_password_variable_exits_2_before_any_request(
    tmp_path: Path, fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[registries."source.test"]\nusername = "u"\npassword_env = "NOT_SET_X"\n')

    code, _, err = run(
        capsys, "source.test/team/app", "--to", "target.test", "--config", str(config)
    )

    assert code == EXIT_USAGE
    assert_one_line_error(err, 'registries."source.test".password_env', "NOT_SET_X")
    assert all(fake.requests == [] for fake in fakes.values())


def test_target_comes_from_the_config_when_no_to_is_given(
    tmp_path: Path, fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(7)
    fakes["source.test"].seed("team/app", "v1", image)
    config = tmp_path / "mirror.toml"
    config.write_text('target = "target.test"\n')

    code, _, err = run(capsys, "source.test/team/app:v1", "--config", str(config))

    assert code == EXIT_OK, err
    assert fakes["target.test"].tags["team/app"]["v1"] == image.digest


@pytest.mark.parametrize("value", ["-1", "0"])
def test_concurrency_below_one_is_a_usage_error(
    value: str, fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].seed("team/app", "v1", make_image(8))

    code, _, err = run(
        capsys, "source.test/team/app", "--to", "target.test", "--concurrency", value
    )

    assert code == EXIT_USAGE
    assert_one_line_error(err, "concurrency")
    assert fakes["target.test"].writes() == []


# --- the operator's command line -------------------------------------------------------------


def test_version_names_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from mirror import __version__

    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"mirror {__version__}"


def test_shard_with_refs_is_a_usage_error_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["sync", "diamol/golang", "--shard", "0/2"])

    assert caught.value.code == EXIT_USAGE
    assert "--shard" in capsys.readouterr().err


def test_quiet_sync_prints_nothing_when_all_is_well(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fakes["source.test"].seed("team/app", "v1", make_image(5))

    code, out, err = run(capsys, "source.test/team/app", "--to", "target.test", "-q")

    assert code == EXIT_OK
    assert (out, err) == ("", "")
    assert "v1" in fakes["target.test"].tags["team/app"]


def test_quiet_sync_still_names_each_failure(
    fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "source.test/team/missing:v1", "--to", "target.test", "--quiet")

    assert code == EXIT_FAILED
    assert out == ""
    assert "team/missing:v1" in err


def test_help_says_where_defaults_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    assert "$MIRROR_CONFIG" in text
    assert "the config's target, else localhost:5000" in text
    assert "the config's concurrency, else 4" in text
    assert "Exit status" in text and "3 tags deferred" in text


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(text)
    return path


def test_config_check_is_silent_and_exits_0_when_every_password_can_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TOKEN", "secret")
    config = write_config(
        tmp_path, '[registries."docker.io"]\nusername = "me"\npassword_env = "HUB_TOKEN"\n'
    )

    code = main(["config", "--check", "--config", str(config)])

    assert code == EXIT_OK
    assert capsys.readouterr() == ("", "")


def test_config_check_exits_2_naming_a_password_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        '[registries."docker.io"]\nusername = "me"\n'
        f'password_file = "{tmp_path}/nowhere/hub-token"\n',
    )

    code = main(["config", "--check", "--config", str(config)])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "password_file", "nowhere/hub-token")


def test_plain_config_still_shows_an_unreadable_password_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, '[registries."docker.io"]\nusername = "me"\npassword_env = "NOT_SET_HERE"\n'
    )

    code = main(["config", "--config", str(config)])

    assert code == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert "cannot be read" in shown["registries"]["docker.io"]["credentials"]


def test_tags_entry_previews_the_entry_rules(
    tmp_path: Path, fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    for tag in ("1.0.0", "1.1.0", "2.0.0", "edge"):
        fakes["source.test"].seed("team/app", tag, make_image(len(tag)))
    config = write_config(
        tmp_path,
        'target = "target.test"\n[[mirrors]]\nsource = "source.test/team/app"\n'
        'tags = { versions = "^1" }\n',
    )

    code = main(["tags", "--entry", "source.test/team/app", "--config", str(config), "--selected"])

    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert out.split() == ["1.0.0", "1.1.0"]


def test_tags_shows_version_variant_kind_and_reason_per_tag(
    tmp_path: Path, fakes: dict[str, FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    for tag in ("1.22.5", "1.22", "1.22.5-alpine", "1.22-alpine", "alpine", "1.23rc2-alpine"):
        fakes["source.test"].seed("library/golang", tag, make_image(len(tag)))
    config = write_config(tmp_path, 'target = "target.test"\n')

    rules = ["--variant", "alp*", "--newest", "1", "--aliases"]

    code = main(["tags", "source.test/library/golang", *rules, "--config", str(config)])

    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    rows = [line.split(None, 5) for line in out.splitlines()[:-1]]
    assert rows == [
        ["TAG", "VERSION", "VARIANT", "KIND", "REASON"],
        ["-", "1.22", "1.22", "-", "alias", "variant <none> not selected"],
        ["-", "1.22.5", "1.22.5", "-", "full", "variant <none> not selected"],
        ["+", "1.22-alpine", "1.22", "alpine", "alias", "alias of 1.22.5-alpine"],
        ["+", "1.22.5-alpine", "1.22.5", "alpine", "full", "newest 1 of alpine: #1"],
        ["-", "1.23rc2-alpine", "1.23rc2", "alpine", "pre-release", "pre-release"],
        ["+", "alpine", "-", "alpine", "alias", "alias of 1.22.5-alpine"],
    ]
    assert out.splitlines()[-1] == "3 of 6 tags selected"


def test_tags_entry_that_is_not_configured_names_the_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, '[[mirrors]]\nsource = "diamol/golang"\n')

    code = main(["tags", "--entry", "golang", "--config", str(config)])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "--entry golang", "diamol/golang")


def test_tags_entry_refuses_rule_flags_that_would_shadow_its_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, '[[mirrors]]\nsource = "diamol/golang"\n')

    code = main(["tags", "--entry", "diamol/golang", "--newest", "2", "--config", str(config)])

    assert code == EXIT_USAGE
    assert_one_line_error(capsys.readouterr().err, "--entry")


@pytest.mark.parametrize(
    ("argv", "daemon"),
    [
        (["/opt/mirror/bin/python", "/opt/mirror/bin/mirror", "run"], True),
        (["/opt/mirror/bin/python", "/opt/mirror/bin/mirror", "run", "--config", "c"], True),
        (["/opt/mirror/bin/python", "/opt/mirror/bin/mirror", "sync", "--all"], False),
        (["/sbin/docker-init", "--", "mirror", "sync", "--all"], False),
        (["python", "-m", "mirror", "run", "--shard", "0/2"], True),
        (["/sbin/init", "splash"], True),  # not a container of mirror's: ask the daemon
    ],
)
def test_healthcheck_knows_whether_the_container_runs_the_daemon(
    tmp_path: Path, argv: list[str], daemon: bool
) -> None:
    from mirror.commands import main_process_is_daemon

    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    assert main_process_is_daemon(str(cmdline)) is daemon
