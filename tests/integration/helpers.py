"""Running the real ``mirror`` command against the test registries, and reading what it did.

Runs ``python -m mirror`` (or, with ``program``, another installed ``mirror``) in a subprocess
with a throwaway HOME and DOCKER_CONFIG, so no credentials of the machine's own leak in, and
returns exit code, output and the parsed ``--json`` report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.registry import RegistryProcess


class HasHost(Protocol):
    """A registry or a proxy in front of one: anything with a ``host:port``."""

    @property
    def host(self) -> str: ...


WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
HUB_USER, HUB_PASSWORD = "tester", "s3cret-pa55"  # tests.support.tokenserver.DEFAULT_USERS
MIRROR = (sys.executable, "-m", "mirror")  # the checkout's mirror, in the suite's own venv


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


def user_environment(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user's ``mirror`` runs with: this one without MIRROR_* and DOCKER_*
    settings, HOME and DOCKER_CONFIG in a throwaway directory, then ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "DOCKER_"))}
    environment.update(
        HOME=str(home), DOCKER_CONFIG=str(home / ".docker"), PYTHONUNBUFFERED="1", **(env or {})
    )
    return environment


def run_mirror(
    *args: str,
    home: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    program: Sequence[str] = MIRROR,
    cwd: Path | None = None,
) -> Run:
    """Run ``mirror ARGS`` as a user would, with a clean home directory."""
    completed = subprocess.run(
        [*program, *args],
        capture_output=True,
        text=True,
        env=user_environment(home, env),
        timeout=timeout,
        check=False,
        cwd=cwd,
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


WAIT_S = 20.0  # generous: a run takes well under a second here


class Daemon:
    """A running ``mirror run`` with its log lines collected as they come."""

    def __init__(
        self,
        config: Path,
        home: Path,
        port: int,
        *extra: str,
        program: Sequence[str] = MIRROR,
        cwd: Path | None = None,
    ) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [*program, "run", "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=user_environment(home, {"HUB_PW": HUB_PASSWORD}),
            cwd=cwd,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.lines)
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; log:\n{''.join(self.raw)}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def stop(self, timeout: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                return float(value)
    return 0.0
