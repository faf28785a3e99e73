"""Running the real ``mirror`` command against the test registries, and reading what it did.

Runs ``python -m mirror`` in a subprocess with a throwaway HOME and DOCKER_CONFIG, so no
credentials of the machine's own leak in, and returns exit code, output and the parsed
``--json`` report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.support.registry import RegistryProcess


class HasHost(Protocol):
    """A registry or a proxy in front of one: anything with a ``host:port``."""

    @property
    def host(self) -> str: ...


WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
HUB_USER, HUB_PASSWORD = "tester", "s3cret-pa55"  # tests.support.tokenserver.DEFAULT_USERS


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stdout)
        return report

    def tag(self, tag: str) -> dict[str, Any]:
        """The report's entry for the tag (or digest) ``tag``."""
        for entry in self.report["tags"]:
            if entry["target"].endswith(f":{tag}") or entry["target"].endswith(f"@{tag}"):
                return dict(entry)
        raise AssertionError(f"no result for {tag} in {self.report['tags']}")


def run_mirror(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> Run:
    """Run ``mirror ARGS`` as a user would, with a clean home directory."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "DOCKER_"))}
    environment.update(
        HOME=str(home), DOCKER_CONFIG=str(home / ".docker"), PYTHONUNBUFFERED="1", **(env or {})
    )
    completed = subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)


def hub_config(tmp_path: Path, hub: HasHost, *, password_env: str = "HUB_PW") -> Path:
    """A config naming the test user for the Hub-like registry (password from the env)."""
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'[registries."{hub.host}"]\nusername = "{HUB_USER}"\npassword_env = "{password_env}"\n'
    )
    return path


def manifest_gets(registry: RegistryProcess, since: int) -> int:
    """Manifest GETs the registry served since ``since``: what Docker Hub counts as pulls."""
    return registry.count_requests("GET", r"/manifests/", since=since)


def writes(registry: RegistryProcess, since: int) -> list[str]:
    """Every write request (PUT/POST/PATCH/DELETE) the registry logged since ``since``."""
    return [
        f"{e.method} {e.path}" for e in registry.requests_since(since) if e.method in WRITE_METHODS
    ]


def blob_path(registry: RegistryProcess, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    hexpart = digest.split(":", 1)[1]
    return registry.storage_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
