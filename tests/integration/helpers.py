"""Running the real ``mirror`` command against the test registries, and reading what it did.

One runner, one environment and one poller serve every integration test:

* ``user_environment``: the environment a user's ``mirror`` runs with (a throwaway HOME and
  DOCKER_CONFIG, so no credentials of the machine's own leak in);
* ``MirrorProcess``: ``python -m mirror ARGS`` (or, with ``program``, another ``mirror``) in a
  subprocess, its output collected as it comes, optionally its peak memory measured;
  ``run_mirror`` runs one to the end and ``Daemon`` is one running ``mirror run``;
* ``wait_until``: poll a condition, stop early when the process it waits on died, and fail
  with that process's output so far.

A finished run is a ``Run``: exit code, output, the parsed ``--json`` report, wall time and
peak RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from tests.support.registry import RegistryProcess


class HasHost(Protocol):
    """A registry or a proxy in front of one: anything with a ``host:port``."""

    @property
    def host(self) -> str: ...


WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
HUB_USER, HUB_PASSWORD = "tester", "s3cret-pa55"  # tests.support.tokenserver.DEFAULT_USERS
HUB_ENV = {"HUB_PW": HUB_PASSWORD}  # where configs from hub_config and the like find it
MIRROR = (sys.executable, "-m", "mirror")  # the checkout's mirror, in the suite's own venv
WAIT_S = 20.0  # generous: a run takes well under a second here
RUN_TIMEOUT_S = 120.0  # no run in these tests comes near this; a hang fails, not blocks
# The peak is VmHWM, the high-water mark of this process's own memory since its exec. Not
# getrusage's ru_maxrss: Linux carries the parent's high-water mark across fork/vfork + exec
# into it, so a child of a pytest that had grown to 442 MB once reported 442 MB.
_MEASURE = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kib = next(l.split()[1] for l in status if l.startswith('VmHWM:'))\n"
    "    with open(out, 'w') as fh:\n"
    "        fh.write(kib)\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = 'mirror'\n"
    "runpy.run_module('mirror', run_name='__main__', alter_sys=True)\n"
)


@dataclass
class Run:
    """A finished ``mirror`` run: exit code, output, wall time and (when measured) peak RSS."""

    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    argv: list[str] = field(default_factory=list)

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

    def results(self) -> dict[str, dict[str, Any]]:
        """The --json report's per-tag results, by tag (or digest)."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self.report["tags"]:
            target = str(entry["target"])
            key = target.rsplit("@", 1)[1] if "@" in target else target.rsplit(":", 1)[1]
            out[key] = dict(entry)
        return out

    def statuses(self) -> dict[str, str]:
        return {tag: str(r["status"]) for tag, r in self.results().items()}

    def errors(self) -> dict[str, str]:
        return {tag: str(r["error"]) for tag, r in self.results().items() if r["error"]}

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        return (
            f"mirror {' '.join(self.argv)} -> {self.code} in {self.seconds:.2f} s\n"
            f"stdout: {self.stdout[:3000]}\nstderr: {self.stderr[:3000]}"
        )


def user_environment(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user's ``mirror`` runs with: this one without MIRROR_* and DOCKER_*
    settings, HOME, DOCKER_CONFIG and the state directory in a throwaway directory, then
    ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "DOCKER_"))}
    environment.update(
        HOME=str(home),
        DOCKER_CONFIG=str(home / ".docker"),
        # The state database goes in the throwaway home too, not the machine's /var/lib/mirror
        # (tests run as root), unless the config or ``env`` says otherwise.
        STATE_DIRECTORY=str(home / ".local/state/mirror"),
        PYTHONUNBUFFERED="1",
    )
    environment.update(env or {})
    return environment


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float = WAIT_S,
    still_running: Callable[[], bool] | None = None,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that.

    Fails after ``timeout`` seconds, or as soon as ``still_running`` says the process being
    waited on has gone (after one last check), with ``context()`` (its output) in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = still_running is None or still_running()  # before the check: no lost race
        value = check()
        if value:
            return value
        if not alive:
            problem = f"gave up waiting for {what}: the process exited"
            break
        if time.monotonic() >= deadline:
            problem = f"timed out after {timeout} s waiting for {what}"
            break
        time.sleep(0.02)
    raise AssertionError(problem + (f"\n{context()}" if context else ""))


class MirrorProcess:
    """``mirror ARGS`` started in the background as a user would, with a clean home directory.

    Its stdout and stderr are collected as they come (``stdout_lines``, ``stderr_lines``;
    ``events()`` reads the JSON log lines of both), so a test can wait for a log line, ask the
    daemon's HTTP port (``get()``, given ``port``), send a signal, then ``wait()`` for the
    ``Run``. ``program`` is the command (the checkout's mirror by default); ``measure`` runs
    the checkout's mirror under a wrapper that records its peak RSS; ``stdout`` sends stdout
    to that file instead of collecting it.
    """

    def __init__(
        self,
        *args: str,
        home: Path,
        env: dict[str, str] | None = None,
        program: Sequence[str] = MIRROR,
        cwd: Path | None = None,
        measure: bool = False,
        port: int | None = None,
        stdout: IO[str] | None = None,
    ) -> None:
        self.argv = list(args)
        self.port = port
        self._peak: Path | None = None
        command = [*program, *args]
        if measure:
            assert tuple(program) == MIRROR, "peak RSS is measured for the checkout's mirror"
            handle, name = tempfile.mkstemp(prefix="mirror-peak-", dir=home)
            os.close(handle)
            self._peak = Path(name)
            command = [sys.executable, "-c", _MEASURE, str(self._peak), *args]
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._events: list[dict[str, Any]] = []  # JSON lines of both streams, as they came
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=user_environment(home, env),
            cwd=cwd,
        )
        streams = [(self.proc.stderr, self.stderr_lines)]
        if stdout is None:
            streams.append((self.proc.stdout, self.stdout_lines))
        self._readers = [
            threading.Thread(target=self._read, args=stream, daemon=True) for stream in streams
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        with stream:
            for line in stream:
                lines.append(line)
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        self._events.append(event)

    @property
    def output(self) -> str:
        """Everything it wrote so far: stdout, then stderr."""
        return "".join(self.stdout_lines) + "".join(self.stderr_lines)

    def output_tail(self) -> str:
        return (
            f"mirror {' '.join(self.argv)}\nstdout:\n{''.join(self.stdout_lines)[-3000:]}\n"
            f"stderr:\n{''.join(self.stderr_lines)[-3000:]}"
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log lines so far (named ``event``, with the fields in ``match``)."""
        return [
            e
            for e in list(self._events)
            if event in (None, e.get("event")) and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """``wait_until`` this process: stops early if it exits, fails with its output."""
        return wait_until(
            what, check, timeout=timeout, still_running=self.running, context=self.output_tail
        )

    def get(self, path: str) -> httpx.Response:
        """GET ``path`` from the daemon's HTTP port."""
        assert self.port is not None, "started without a port"
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.running():
            self.proc.send_signal(signum)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> Run:
        """Wait for it to exit; fail the test (and kill it) if it is still running after
        ``timeout`` seconds."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"still running after {timeout} s (a hang)\n{self.output_tail()}"
            ) from None
        seconds = time.monotonic() - self.started
        self._join_readers()
        peak_mb = 0.0
        if self._peak is not None:
            text = self._peak.read_text().strip() if self._peak.exists() else ""
            peak_mb = int(text) / 1024 if text.isdigit() else 0.0
            self._peak.unlink(missing_ok=True)
        stdout, stderr = "".join(self.stdout_lines), "".join(self.stderr_lines)
        return Run(self.proc.returncode, stdout, stderr, seconds, peak_mb, self.argv)

    def stop(self, timeout: float = WAIT_S) -> int:
        """SIGTERM (if still running), then its exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout).code

    def kill(self) -> None:
        """SIGKILL (if still running); its output is all in once this returns."""
        if self.running():
            self.proc.kill()
        self.proc.wait()
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)


class Daemon(MirrorProcess):
    """``mirror run --config CONFIG EXTRA...`` with the Hub password in its environment."""

    def __init__(
        self,
        config: Path,
        home: Path,
        port: int | None = None,
        *extra: str,
        program: Sequence[str] = MIRROR,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(
            "run",
            "--config",
            str(config),
            *extra,
            home=home,
            env=HUB_ENV,
            program=program,
            cwd=cwd,
            port=port,
        )


def run_mirror(
    *args: str,
    home: Path,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_S,
    program: Sequence[str] = MIRROR,
    cwd: Path | None = None,
    measure: bool = False,
    stdout: IO[str] | None = None,
) -> Run:
    """Run ``mirror ARGS`` to the end as a user would, with a clean home directory."""
    started = MirrorProcess(
        *args, home=home, env=env, program=program, cwd=cwd, measure=measure, stdout=stdout
    )
    return started.wait(timeout)


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


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                return float(value)
    return 0.0
