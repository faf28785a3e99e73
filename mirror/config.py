"""mirror's configuration: a TOML file plus ``MIRROR_*`` environment overrides.

Owns the schema (unknown keys and wrong types are errors naming the key), where the file is
found (``--config``, else ``MIRROR_CONFIG``), and turning per-registry settings into plain
values the library takes (endpoint, credentials, TLS). Does not open connections.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mirror.auth import Credentials
from mirror.errors import ConfigError, InvalidReference
from mirror.reference import normalize_registry, validate_registry

DEFAULT_TARGET = "localhost:5000"
CONFIG_ENV = "MIRROR_CONFIG"


class RegistrySettings(BaseModel):
    """``[registries."HOST"]``: how to reach and log in to one registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = Field(
        default=None, description="base URL to use instead of https://HOST (or Hub's API host)"
    )
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="environment variable with the password"
    )
    password_file: str | None = Field(default=None, description="file holding the password")
    insecure: bool = Field(
        default=False, description="plain HTTP or unverified TLS, as daemon.json"
    )
    ca_file: str | None = Field(default=None, description="CA bundle to verify the registry's TLS")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class Config(BaseSettings):
    """The whole configuration; see ``config.example.toml`` for every key."""

    model_config = SettingsConfigDict(
        env_prefix="MIRROR_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    target: str = Field(default=DEFAULT_TARGET, description="where `mirror sync` copies to")
    concurrency: int = Field(default=4, ge=1, le=64, description="blob transfers at once")
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)

    @field_validator("registries")
    @classmethod
    def _registry_names(cls, value: dict[str, RegistrySettings]) -> dict[str, RegistrySettings]:
        normalised: dict[str, RegistrySettings] = {}
        for name, settings in value.items():
            try:
                validate_registry(name, name)
            except InvalidReference as exc:
                raise ValueError(f"{name!r} is not a registry host[:port]: {exc.reason}") from None
            canonical = normalize_registry(name)
            if canonical in normalised:
                raise ValueError(f"{name!r} and another key both name registry {canonical!r}")
            normalised[canonical] = settings
        return normalised

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: MIRROR_* overrides what the file (passed as init values) says.
        return (env_settings, init_settings)

    def registry(self, name: str) -> RegistrySettings:
        """Settings for registry ``name``; defaults when the config says nothing of it."""
        return self.registries.get(normalize_registry(name)) or RegistrySettings()

    def credentials(self, name: str, environ: Mapping[str, str] = os.environ) -> Credentials | None:
        """The configured credentials for ``name``, or None when the config names none.

        The password comes from the environment variable ``password_env`` or the file
        ``password_file`` (``$CREDENTIALS_DIRECTORY`` and other variables expanded, trailing
        newline dropped), never from the config itself.
        """
        settings = self.registry(name)
        key = f'registries."{normalize_registry(name)}"'
        if settings.username is None:
            if settings.password_env or settings.password_file:
                raise ConfigError(f"{key}: password_env/password_file given without username")
            return None
        if bool(settings.password_env) == bool(settings.password_file):
            raise ConfigError(f"{key}: give exactly one of password_env or password_file")
        if settings.password_env:
            password = environ.get(settings.password_env)
            if not password:
                raise ConfigError(
                    f"{key}.password_env: environment variable {settings.password_env} is not set"
                )
        else:
            assert settings.password_file is not None
            path = Path(os.path.expandvars(settings.password_file))
            try:
                password = path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"{key}.password_file: cannot read {path}: {exc.strerror}"
                ) from None
            if not password:
                raise ConfigError(f"{key}.password_file: {path} is empty")
        return Credentials(settings.username, password)


def config_path(explicit: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The config file to read: ``--config``, else ``$MIRROR_CONFIG``, else none."""
    chosen = explicit or environ.get(CONFIG_ENV)
    return Path(chosen) if chosen else None


def load_config(path: Path | None) -> Config:
    """Read and validate the config; raise ConfigError naming the file and the key at fault."""
    data: dict[str, Any] = {}
    where = str(path) if path else "environment"
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"config {where}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad key: ``registries."docker.io".usernme: unknown key``."""
    parts = []
    for error in exc.errors():
        key = _dotted(error["loc"])
        if error["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        elif error["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            parts.append(f"{key}: {message} (got {error.get('input')!r})")
    return "; ".join(parts)


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for item in loc:
        if isinstance(item, int):
            text += f"[{item}]"
            continue
        name = f'"{item}"' if "." in item or ":" in item else item
        text += f".{name}" if text else name
    return text
