"""``mirror config``: the resolved config, checked, with passwords masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirror.cli import main

SECRET = "hub-token-value-9f8e7d"


def test_prints_the_resolved_config_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TOKEN", SECRET)
    config = tmp_path / "mirror.toml"
    config.write_text(
        'target = "registry.local:5000"\n'
        '[registries."docker.io"]\nusername = "someone"\npassword_env = "HUB_TOKEN"\n'
        '[defaults]\ninterval = "30m"\n'
        '[[mirrors]]\nsource = "diamol/golang"\n'
    )

    assert main(["config", "--config", str(config)]) == 0

    out = capsys.readouterr().out
    document = json.loads(out)
    assert SECRET not in out
    assert document["registries"]["docker.io"]["credentials"] == {
        "username": "someone",
        "password": "********",
    }
    (entry,) = document["mirrors"]
    assert entry["interval"] == 1800 and entry["schedule"] == "every 30m"
    assert entry["job"] == "docker.io/diamol/golang -> registry.local:5000/diamol/golang"


def test_says_when_a_password_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[registries."docker.io"]\nusername = "someone"\npassword_env = "UNSET_X"\n')

    assert main(["config", "--config", str(config)]) == 0

    status = json.loads(capsys.readouterr().out)["registries"]["docker.io"]["credentials"]
    assert "UNSET_X is not set" in status


def test_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text('[registries."docker.io"]\nusernme = "someone"\n')

    assert main(["config", "--config", str(config)]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'registries."docker.io".usernme: unknown key' in err[0]
