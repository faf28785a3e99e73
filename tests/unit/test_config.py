"""Configuration: the TOML schema, errors that name the key, environment overrides, and
credentials read from the environment or a file (never from the config itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror.config import Config, RegistrySettings, config_path, load_config
from mirror.credentials import Credentials
from mirror.errors import ConfigError

FULL = """
target = "registry.local:5000/gallery"
concurrency = 8

[registries."docker.io"]
endpoint = "https://hub-cache.internal:8443"
username = "alice"
password_env = "HUB_TOKEN"

[registries."registry.local:5000"]
insecure = true
ca_file = "/etc/ssl/private-ca.pem"
username = "bob"
password_file = "/run/credentials/registry"
"""


def write(tmp_path: Path, text: str, name: str = "mirror.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_documented_key_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    assert config.target == "registry.local:5000/gallery"
    assert config.concurrency == 8
    hub = config.registry("docker.io")
    assert hub == RegistrySettings(
        endpoint="https://hub-cache.internal:8443", username="alice", password_env="HUB_TOKEN"
    )
    local = config.registry("registry.local:5000")
    assert local.insecure is True
    assert local.ca_file == "/etc/ssl/private-ca.pem"
    assert local.username == "bob"
    assert local.password_file == "/run/credentials/registry"
    assert local.endpoint is None


def test_example_config_in_the_repository_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    if not example.exists():
        pytest.skip("no config.example.toml in this checkout")

    config = load_config(example)

    assert config.registries, "the example documents per-registry settings"


def test_defaults_without_a_file() -> None:
    config = load_config(None)

    assert config.target == "localhost:5000"
    assert config.concurrency == 4
    assert config.registries == {}
    assert config.registry("ghcr.io") == RegistrySettings()
    assert config.credentials("ghcr.io") is None


def test_hub_aliases_find_the_docker_io_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[registries."index.docker.io"]\nusername = "u"\n'))

    assert config.registry("docker.io").username == "u"
    assert config.registry("registry-1.docker.io").username == "u"


# --- errors that name the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param(
            '[registries."docker.io"]\nusernme = "x"\n',
            'registries."docker.io".usernme',
            id="misspelt-registry-key",
        ),
        pytest.param('targt = "x"\n', "targt", id="misspelt-top-level-key"),
        pytest.param('concurrency = "many"\n', "concurrency", id="wrong-type"),
        pytest.param("concurrency = 0\n", "concurrency", id="out-of-range"),
        pytest.param("concurrency = 65\n", "concurrency", id="over-range"),
        pytest.param(
            '[registries."docker.io"]\ninsecure = "maybe"\n',
            'registries."docker.io".insecure',
            id="wrong-type-nested",
        ),
        pytest.param(
            '[registries."reg.example"]\nendpoint = "ftp://reg.example"\n',
            'registries."reg.example".endpoint',
            id="endpoint-not-http",
        ),
        pytest.param(
            '[registries."Not A Host"]\ninsecure = true\n',
            "registries: 'Not A Host'",
            id="bad-host",
        ),
        pytest.param(
            '[registries."reg.example:99999"]\ninsecure = true\n',
            "registries: 'reg.example:99999'",
            id="bad-port",
        ),
        pytest.param("registries = 5\n", "registries", id="registries-not-a-table"),
    ],
)
def test_invalid_setting_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert key in message
    assert str(path) in message
    assert "\n" not in message


def test_unknown_key_is_called_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'registries\."docker\.io"\.usernme: unknown key'):
        load_config(write(tmp_path, '[registries."docker.io"]\nusernme = "x"\n'))


def test_every_bad_key_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'concurrency = "x"\ntargt = "y"\n'))

    assert "concurrency" in str(caught.value) and "targt" in str(caught.value)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'target = "unterminated\n')

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_directory_instead_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


# --- the environment ------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_TARGET", "envhost:5000")
    monkeypatch.setenv("MIRROR_CONCURRENCY", "2")

    config = load_config(write(tmp_path, FULL))

    assert config.target == "envhost:5000"
    assert config.concurrency == 2
    assert config.registry("docker.io").username == "alice", "the rest of the file still counts"


def test_bad_environment_value_is_a_config_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRROR_CONCURRENCY", "lots")

    with pytest.raises(ConfigError, match="concurrency"):
        load_config(write(tmp_path, FULL))


def test_nested_keys_come_from_the_environment_with_a_double_underscore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRROR_DAEMON__LISTEN", "0.0.0.0:9999")
    monkeypatch.setenv("MIRROR_DAEMON__JITTER", "0")  # environment values are text: seconds
    monkeypatch.setenv("MIRROR_REGISTRIES", '{"registry.local:5000": {"insecure": true}}')

    config = load_config(write(tmp_path, FULL))

    assert config.daemon.listen == "0.0.0.0:9999"
    assert config.daemon.jitter == 0
    assert config.registry("registry.local:5000").insecure
    assert config.registry("docker.io").username == "alice", "registries merge key by key"


def test_mirror_config_variable_itself_is_not_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, FULL)
    monkeypatch.setenv("MIRROR_CONFIG", str(path))

    assert load_config(config_path(None)).concurrency == 8


def test_config_path_prefers_the_flag_then_the_environment(tmp_path: Path) -> None:
    flag, env = tmp_path / "flag.toml", tmp_path / "env.toml"

    assert config_path(str(flag), {"MIRROR_CONFIG": str(env)}) == flag
    assert config_path(None, {"MIRROR_CONFIG": str(env)}) == env
    assert config_path(None, {}) is None


# --- credentials --------------------------------------------------------------------------------


def config_with(tmp_path: Path, settings: str, registry: str = "docker.io") -> Config:
    return load_config(write(tmp_path, f'[registries."{registry}"]\n{settings}'))


def test_password_from_an_environment_variable(tmp_path: Path) -> None:
    config = config_with(tmp_path, 'username = "alice"\npassword_env = "HUB_TOKEN"\n')

    assert config.credentials("docker.io", {"HUB_TOKEN": "dckr_pat_x"}) == Credentials(
        "alice", "dckr_pat_x"
    )
    assert config.credentials("index.docker.io", {"HUB_TOKEN": "t"}) == Credentials("alice", "t")


def test_missing_environment_variable_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = config_with(tmp_path, 'username = "alice"\npassword_env = "HUB_TOKEN"\n')

    with pytest.raises(ConfigError) as caught:
        config.credentials("docker.io", {})

    assert 'registries."docker.io".password_env' in str(caught.value)
    assert "HUB_TOKEN" in str(caught.value)


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_password_from_a_file_drops_the_trailing_newline(tmp_path: Path, ending: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"s3cret with spaces {ending}")
    config = config_with(
        tmp_path, f'username = "bob"\npassword_file = "{secret}"\n', "registry.local:5000"
    )

    assert config.credentials("registry.local:5000", {}) == Credentials(
        "bob", "s3cret with spaces "
    )


def test_password_file_path_expands_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hub-token").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = config_with(
        tmp_path, 'username = "u"\npassword_file = "$CREDENTIALS_DIRECTORY/hub-token"\n'
    )

    assert config.credentials("docker.io", {}) == Credentials("u", "from-systemd")


def test_unreadable_password_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = config_with(tmp_path, f'username = "u"\npassword_file = "{tmp_path / "nope"}"\n')

    with pytest.raises(ConfigError, match=r'registries\."docker\.io"\.password_file'):
        config.credentials("docker.io", {})


def test_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    config = config_with(tmp_path, f'username = "u"\npassword_file = "{empty}"\n')

    with pytest.raises(ConfigError, match="empty"):
        config.credentials("docker.io", {})


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param('username = "u"\n', id="username-without-password"),
        pytest.param('username = "u"\npassword_env = "A"\npassword_file = "/f"\n', id="both"),
        pytest.param('password_env = "A"\n', id="password-without-username"),
    ],
)
def test_incomplete_or_ambiguous_credentials_are_a_config_error(
    tmp_path: Path, settings: str
) -> None:
    config = config_with(tmp_path, settings)

    with pytest.raises(ConfigError, match=r'registries\."docker\.io"'):
        config.credentials("docker.io", {"A": "x"})


def test_registry_without_username_has_no_configured_credentials(tmp_path: Path) -> None:
    config = config_with(tmp_path, "insecure = true\n", "registry.local:5000")

    assert config.credentials("registry.local:5000", {"ANYTHING": "x"}) is None


def test_password_itself_is_not_a_config_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'registries\."docker\.io"\.password: unknown key'):
        config_with(tmp_path, 'username = "u"\npassword = "plain text"\n')
