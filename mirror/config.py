"""mirror's configuration: a TOML file plus ``MIRROR_*`` environment overrides.

Owns the schema (unknown keys and wrong types are errors naming the key), where the file is
found (``--config``, else ``MIRROR_CONFIG``), and turning per-registry settings into plain
values the library takes (endpoint, credentials, TLS). Does not open connections.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mirror.credentials import Credentials
from mirror.errors import ConfigError, InvalidReference, ManifestError
from mirror.manifest import Platform
from mirror.reference import (
    Namespace,
    Reference,
    is_namespace,
    names_registry,
    normalize_registry,
    parse_namespace,
    parse_reference,
    resolve_target,
    validate_registry,
)
from mirror.selection import DEFAULT_IMMUTABLE, TagRules

DEFAULT_TARGET = "localhost:5000"
DEFAULT_INTERVAL_S = 6 * 3600  # when neither the entry nor [defaults] names a schedule
CONFIG_ENV = "MIRROR_CONFIG"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, *, allow_zero: bool = False) -> float:
    """``"30m"``, ``"1h30m"``, ``"45s"``, ``"1d"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError('a duration is like "30m", "6h" or "1h30m"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
        seconds = float(value)  # a number of seconds, as environment variables spell one
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if "".join(n + u for n, u in parts) != text:
            raise ValueError(f'bad duration {value!r}: write it like "30m", "6h" or "1h30m"')
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError('a duration is like "30m", "6h" or "1h30m"')
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"duration {value!r} must be more than zero")
    return seconds


def check_cron(expression: str) -> str:
    """Validate a five-field crontab expression (``"0 */6 * * *"``), as APScheduler reads it."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return expression


Duration = Annotated[float, BeforeValidator(parse_duration)]
DurationOrZero = Annotated[float, BeforeValidator(lambda v: parse_duration(v, allow_zero=True))]
Cron = Annotated[str, BeforeValidator(lambda v: check_cron(v) if isinstance(v, str) else v)]
# "deleted": tags upstream removed; "unselected": those too, and tags the rules no longer
# select (past `newest`, out of `versions`). Only tags mirror wrote, still as it wrote them.
PruneMode = Literal["deleted", "unselected"]
DEFAULT_PRUNE_AFTER_S = 7 * 86400  # a week: an upstream mistake is usually undone by then


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
    pull_reserve: int = Field(
        default=0, ge=0, description="pulls of the rate-limit window mirror never spends"
    )
    connect_timeout: Duration = Field(default=10.0, description="to open a connection")
    read_timeout: Duration = Field(
        default=60.0, description="the longest silence while reading (or writing) a response"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


def _patterns(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_platforms(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                try:
                    Platform.parse(item)
                except ManifestError as exc:
                    raise ValueError(str(exc)) from None
    return value


Platforms = Annotated[list[str], BeforeValidator(_check_platforms)]


def _check_backup(value: Any) -> Any:
    if isinstance(value, str):
        from mirror.copy import backup_namer

        backup_namer(value)  # ValueError: one line, under the key's name
    return value


BackupTemplate = Annotated[str, BeforeValidator(_check_backup)]


class TagSettings(BaseModel):
    """``tags = { ... }`` of an entry (or of ``[defaults]``): which tags to mirror.

    See ``mirror.selection.TagRules`` for the meaning of each key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: Annotated[list[str], BeforeValidator(_patterns)] = Field(default_factory=list)
    deny: Annotated[list[str], BeforeValidator(_patterns)] = Field(default_factory=list)
    versions: str | None = None
    prereleases: bool = False
    newest: int | None = Field(default=None, ge=1)
    aliases: bool = False
    immutable: str = Field(default=DEFAULT_IMMUTABLE, description="tags never re-checked")
    variants: Annotated[list[str], BeforeValidator(_patterns)] = Field(
        default_factory=list, description="variants to mirror (alpine, alpine*, <none>)"
    )

    @model_validator(mode="after")
    def _valid_rules(self) -> TagSettings:
        try:
            self.rules()
            re.compile(self.immutable)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        except re.error as exc:
            raise ValueError(f"immutable: bad regular expression: {exc}") from None
        return self

    def rules(self) -> TagRules:
        return TagRules(
            allow=tuple(self.allow),
            deny=tuple(self.deny),
            versions=self.versions,
            prereleases=self.prereleases,
            newest=self.newest,
            aliases=self.aliases,
            variants=tuple(self.variants),
        )


class EntryDefaults(BaseModel):
    """``[defaults]``: merged into every ``[[mirrors]]`` entry at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: Duration | None = None
    cron: Cron | None = None
    concurrency: int | None = Field(default=None, ge=1, le=64)
    tags: TagSettings | None = None
    platforms: Platforms | None = None
    flatten: bool | None = None
    prune: PruneMode | None = None
    prune_after: DurationOrZero | None = None
    referrers: bool | None = None
    artifact_types: list[str] | None = None
    backup: BackupTemplate | None = None

    @model_validator(mode="after")
    def _one_schedule(self) -> EntryDefaults:
        if self.interval is not None and self.cron is not None:
            raise ValueError("give interval or cron, not both")
        return self


class MirrorEntry(BaseModel):
    """One ``[[mirrors]]`` entry, complete (defaults merged): what to copy, where, and when.

    ``source`` is a repository (every tag) or a tag; ``target`` a repository, defaulting to the
    config's ``target`` registry plus the source's repository path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str | None = None
    interval: Duration | None = None
    cron: Cron | None = None
    concurrency: int = Field(default=4, ge=1, le=64)
    tags: TagSettings = Field(default_factory=TagSettings)
    platforms: Platforms = Field(default_factory=list)
    flatten: bool = False
    prune: PruneMode | None = Field(
        default=None, description="delete tags mirror wrote that upstream no longer selects"
    )
    prune_after: DurationOrZero = Field(
        default=DEFAULT_PRUNE_AFTER_S, description="grace from when a tag was first seen gone"
    )
    referrers: bool = Field(
        default=True, description="carry signatures, attestations and referrers with the images"
    )
    artifact_types: list[str] = Field(
        default_factory=list, description="only referrers of these artifact types (all if empty)"
    )
    backup: BackupTemplate | None = Field(
        default=None, description="tag to keep a moving tag's old digest under"
    )

    def platform_list(self) -> list[Platform]:
        return [Platform.parse(p) for p in self.platforms]

    @field_validator("source")
    @classmethod
    def _source_is_reference(cls, value: str) -> str:
        try:
            parse_namespace(value) if is_namespace(value) else parse_reference(value)
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def is_namespace(self) -> bool:
        """``source = "diamol/*"``: every repository of the namespace, each its own copy."""
        return is_namespace(self.source)

    def namespaces(self, default_target: str) -> tuple[Namespace, Namespace]:
        """For a namespace entry: the source namespace and the one it maps to.

        Without a ``target`` the config's target registry gets the source's path:
        ``diamol/*`` -> ``registry.local:5000/diamol/*``.
        """
        source = parse_namespace(self.source)
        if self.target is not None:
            if not is_namespace(self.target):
                raise InvalidReference(self.target, "a namespace source needs a target ending /*")
            return source, parse_namespace(self.target)
        if not names_registry(default_target):
            raise InvalidReference(
                default_target, "a namespace source needs a target registry or a target /*"
            )
        validate_registry(default_target, default_target)
        return source, Namespace(default_target, source.path)

    @model_validator(mode="after")
    def _one_schedule(self) -> MirrorEntry:
        if self.interval is not None and self.cron is not None:
            raise ValueError("give interval or cron, not both")
        if self.flatten and len(self.platforms) != 1:
            raise ValueError("flatten = true takes exactly one entry in platforms")
        ref = parse_reference(self.source) if not self.is_namespace else None
        if ref and (ref.tag or ref.digest) and self.tags.rules() != TagRules():
            raise ValueError("source names one tag or digest; tag rules apply to repositories")
        if self.interval is None and self.cron is None:
            return self.model_copy(update={"interval": float(DEFAULT_INTERVAL_S)})
        return self

    def endpoints(self, default_target: str) -> tuple[Reference, Reference]:
        """The source reference and the target repository, with the config's target applied."""
        source = parse_reference(self.source)
        return source, resolve_target(source, self.target or default_target)

    def job_id(self, default_target: str) -> str:
        """A stable name for the entry's job: ``docker.io/diamol/golang -> localhost:5000/...``."""
        if self.is_namespace:
            source_ns, target_ns = self.namespaces(default_target)
            return f"{source_ns} -> {target_ns}"
        source, target = self.endpoints(default_target)
        return f"{source} -> {target.name}"

    @property
    def schedule(self) -> str:
        """``every 30m`` or ``cron 0 */6 * * *``, for logs and status."""
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {format_duration(self.interval or DEFAULT_INTERVAL_S)}"


class DaemonSettings(BaseModel):
    """``[daemon]``: how ``mirror run`` serves health and metrics, stops, and spreads load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Not 9090: that is Prometheus's own port, and the two often share a host.
    listen: str = Field(default="127.0.0.1:9755", description="health and metrics address")
    grace_period: DurationOrZero = Field(default=30.0, description="time to let copies finish")
    jitter: DurationOrZero = Field(default=30.0, description="random delay added to each run")
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        _, colon, port = value.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


NotifyEvent = Literal["tag.moved", "tag.failed", "entry.deferred", "entry.recovered"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


class NotifySettings(BaseModel):
    """``[[notify]]``: one receiver of notifications (a JSON webhook, or any apprise URL).

    The URL often carries a token: give it in ``url``, or keep it out of the file with
    ``url_env`` / ``url_file``. It is never shown (``mirror config`` masks it, logs name the
    receiver by scheme and host only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, description="https://... (JSON) or an apprise URL")
    url_env: str | None = Field(default=None, description="environment variable with the URL")
    url_file: str | None = Field(default=None, description="file holding the URL")
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), description="which events to send"
    )
    timeout: Duration = Field(default=10.0, description="the longest one delivery may take")

    @model_validator(mode="after")
    def _one_url(self) -> NotifySettings:
        if sum(x is not None for x in (self.url, self.url_env, self.url_file)) != 1:
            raise ValueError("give exactly one of url, url_env or url_file")
        return self

    def resolved_url(self, key: str, environ: Mapping[str, str] = os.environ) -> str:
        """The receiver's URL, read from where the settings say; ConfigError naming ``key``
        (never showing the URL) when it cannot be read or no receiver takes it."""
        if self.url_env is not None:
            url = environ.get(self.url_env, "")
            if not url:
                raise ConfigError(f"{key}.url_env: environment variable {self.url_env} is not set")
        elif self.url_file is not None:
            path = Path(os.path.expandvars(self.url_file))
            try:
                url = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{key}.url_file: cannot read {path}: {exc.strerror}") from None
        else:
            url = self.url or ""
        scheme, colon, rest = url.partition("://")
        if not colon or not scheme or not rest:
            raise ConfigError(f"{key}: not a scheme://... URL (not shown: it may hold a token)")
        if scheme.lower() not in ("http", "https"):
            import logging

            import apprise

            logging.getLogger("apprise").disabled = True  # its lines may show the URL
            if not apprise.Apprise().add(url):
                raise ConfigError(
                    f"{key}: apprise does not take {scheme}:// URLs like this one (see "
                    "https://github.com/caronc/apprise/wiki for each service's form)"
                )
        return url


def format_duration(seconds: float) -> str:
    """3600 -> ``1h``; 5400 -> ``1h30m``; 0.5 -> ``0.5s``."""
    if seconds < 1 or seconds != int(seconds):
        return f"{seconds:g}s"
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


class Config(BaseSettings):
    """The whole configuration; see ``config.example.toml`` for every key."""

    model_config = SettingsConfigDict(
        env_prefix="MIRROR_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    target: str = Field(default=DEFAULT_TARGET, description="where `mirror sync` copies to")
    concurrency: int = Field(default=4, ge=1, le=64, description="blob transfers at once")
    state: str | None = Field(default=None, description="the state database (default: see docs)")
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    defaults: EntryDefaults = Field(default_factory=EntryDefaults)
    mirrors: list[MirrorEntry] = Field(default_factory=list)
    notify: list[NotifySettings] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Merge ``[defaults]`` into every entry, so the jobs only ever see complete entries.

        An entry that names its own schedule (interval or cron) takes neither from defaults.
        """
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults") or {}
        entries = data.get("mirrors")
        if not isinstance(defaults, dict) or not isinstance(entries, list):
            return data
        if "concurrency" in data and "concurrency" not in defaults:
            # The top-level concurrency is the default of the entries' too.
            defaults = {**defaults, "concurrency": data["concurrency"]}
        merged = []
        for entry in entries:
            if isinstance(entry, dict):
                base = dict(defaults)
                if "interval" in entry or "cron" in entry:
                    base.pop("interval", None)
                    base.pop("cron", None)
                tags = base.get("tags")
                if isinstance(tags, dict) and isinstance(entry.get("tags"), dict):
                    base["tags"] = {**tags, **entry["tags"]}  # key by key, entry wins
                    entry = {k: v for k, v in entry.items() if k != "tags"}
                entry = {**base, **entry}
            merged.append(entry)
        return {**data, "mirrors": merged}

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

    @model_validator(mode="after")
    def _entries_resolve(self) -> Config:
        """Every entry has a usable target, and no two entries are the same job."""
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.mirrors):
            try:
                job = entry.job_id(self.target)
            except InvalidReference as exc:
                key = f"mirrors[{index}].target" if entry.target else "target"
                raise ValueError(f"{key}: {exc}") from None
            if job in seen:
                raise ValueError(f"mirrors[{index}] repeats mirrors[{seen[job]}] ({job})")
            seen[job] = index
        return self

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
            value = error.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
            if key.startswith("notify"):
                shown = ""  # a receiver's URL may hold a token
            parts.append(f"{key}: {message}{shown}" if key else f"{message}{shown}")
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
