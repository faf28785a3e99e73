"""A real registry for tests: Debian's ``docker-registry`` (CNCF distribution 2.8).

This module owns the registry *process*: it generates a config (filesystem storage
in a temporary directory, deletes enabled, optional token auth), starts the binary
on a free 127.0.0.1 port, waits until ``/v2/`` answers, and stops/restarts it on
the same port and storage.  It also owns reading the registry's access log (stdout,
combined-log format, one line per request including 401s and 404s) so tests can
count which requests a piece of code made.

It deliberately knows nothing about the code under test.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self

import httpx

DEFAULT_BINARY = Path("/usr/bin/docker-registry")

_ACCESS_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<proto>[^"]+)" '
    r"(?P<status>\d{3}) (?P<size>\S+)"
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)
# The readiness probe identifies itself so it can be left out of requests().
_PROBE_AGENT = "tests-support-readiness-probe"


class RegistryStartError(RuntimeError):
    """The registry process did not come up (or died while starting)."""


@dataclass(frozen=True)
class TokenAuth:
    """The ``auth.token`` section of a distribution config."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


class AccessLogEntry(NamedTuple):
    """One request as the registry's access log recorded it."""

    method: str
    path: str  # request target as sent, including the query string
    status: int


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def trust_ca(ca_file: Path) -> None:
    """Make every client from ``http_client`` trust ``ca_file`` too (for TLS test registries)."""
    _tls_context().load_verify_locations(cafile=str(ca_file))


def http_client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` that is cheap to create.

    ``httpx.Client()`` loads the CA bundle every time (~30 ms); the test servers
    speak plain HTTP on loopback, so all clients share one TLS context instead.
    """
    kwargs.setdefault("verify", _tls_context())
    return httpx.Client(**kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class RegistryProcess:
    """A ``docker-registry serve`` process bound to ``127.0.0.1:<free port>``.

    Usage::

        with RegistryProcess() as reg:
            httpx.get(f"{reg.url}/v2/")
            mark = reg.reset_log_mark()
            ...                                   # code under test
            gets = [r for r in reg.requests_since(mark) if r.method == "GET"]

    ``stop()`` keeps port and storage so ``start()``/``restart()`` bring the same
    registry back; ``close()`` (and leaving the ``with`` block) also removes the
    temporary directory if this object created it.
    """

    def __init__(
        self,
        *,
        token_auth: TokenAuth | None = None,
        binary: str | Path = DEFAULT_BINARY,
        workdir: Path | None = None,
        startup_timeout_s: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
        scheme: str = "http",
        ca_file: Path | None = None,
    ) -> None:
        """``scheme="https"`` with ``extra_config`` holding ``http.tls``; ``ca_file`` is the CA
        that signed its certificate, trusted by every ``http_client`` from then on."""
        self.binary = Path(binary)
        self.scheme = scheme
        if ca_file is not None:
            trust_ca(ca_file)
        self.token_auth = token_auth
        self.startup_timeout_s = startup_timeout_s
        self._extra_config = dict(extra_config or {})
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="registry-"))
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.access_log_path = self.workdir / "access.log"
        self.error_log_path = self.workdir / "registry.log"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._mark = 0
        self.start_duration_s: float | None = None  # how long the last start took

    # -- addresses -------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (what goes in an image reference)."""
        if self.port is None:
            raise RuntimeError("registry was never started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (or https://, no trailing slash)."""
        return f"{self.scheme}://{self.host}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The config that will be written (JSON, which is valid YAML)."""
        if self.port is None:
            raise RuntimeError("no port chosen yet")
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.token_auth is not None:
            cfg["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.token_auth.rootcertbundle),
                }
            }
        return _deep_merge(cfg, self._extra_config)

    def start(self) -> Self:
        """Start the process; on the first start pick a port (retrying if it was taken)."""
        if self.running:
            return self
        if not self.binary.exists():
            raise RegistryStartError(
                f"{self.binary} not found: install Debian's docker-registry package "
                "(apt-get install docker-registry); the project's test script does this"
            )
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 5
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            try:
                self._spawn_and_wait()
                return self
            except RegistryStartError:
                port_taken = "address already in use" in self.stderr_tail(5)
                if fixed_port or not port_taken or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._stdout = self.access_log_path.open("ab")
        self._stderr = self.error_log_path.open("ab")
        began = time.monotonic()
        self._proc = subprocess.Popen(
            [str(self.binary), "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,  # a Ctrl-C of pytest is not delivered twice
        )
        deadline = began + self.startup_timeout_s
        with http_client(timeout=1.0, headers={"User-Agent": _PROBE_AGENT}) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._close_logs()
                    raise RegistryStartError(
                        f"docker-registry exited with {code} while starting on {self.host}; "
                        f"stderr tail:\n{self.stderr_tail()}"
                    )
                try:
                    status = client.get(f"{self.url}/v2/").status_code
                    if status in (200, 401):
                        self.start_duration_s = time.monotonic() - began
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self._terminate(graceful=False)
                    raise RegistryStartError(
                        f"docker-registry did not answer GET /v2/ on {self.host} within "
                        f"{self.startup_timeout_s}s; stderr tail:\n{self.stderr_tail()}"
                    )
                time.sleep(0.005)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the process (SIGTERM, or SIGKILL if ``graceful=False``); keep port and storage."""
        self._terminate(graceful=graceful)

    def kill(self) -> None:
        """SIGKILL the process (for fault tests); same as ``stop(graceful=False)``."""
        self._terminate(graceful=False)

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory (if this object created it)."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._close_logs()

    def _close_logs(self) -> None:
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()
        self._stdout = self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        auth = " token-auth" if self.token_auth else ""
        return f"<RegistryProcess {self.url if self.port else '?'}{auth} {state}>"

    # -- logs ------------------------------------------------------------------

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the registry's application log."""
        try:
            text = self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def settle_log(self, quiet_s: float = 0.05, timeout_s: float = 2.0) -> int:
        """Wait until the access log has not grown for ``quiet_s`` (at most ``timeout_s``).

        The registry writes an access-log line right after it finishes a response,
        so a client can see the response a moment before the line exists.
        Returns the log size in bytes.
        """
        deadline = time.monotonic() + timeout_s
        size = self._log_size()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.01)
            now_size = self._log_size()
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                break
        return size

    def _log_size(self) -> int:
        try:
            return os.stat(self.access_log_path).st_size
        except FileNotFoundError:
            return 0

    def log_mark(self) -> int:
        """A position in the access log (after settling); pass it to ``requests_since``."""
        return self.settle_log()

    def reset_log_mark(self) -> int:
        """Remember the current end of the access log as the default mark, and return it."""
        self._mark = self.settle_log()
        return self._mark

    def requests(self) -> list[AccessLogEntry]:
        """Every request the registry has logged (across restarts), minus readiness probes."""
        return self.requests_since(0)

    def requests_since(self, mark: int | None = None) -> list[AccessLogEntry]:
        """Requests logged after ``mark`` (default: the last ``reset_log_mark()``)."""
        start = self._mark if mark is None else mark
        self.settle_log()
        try:
            with self.access_log_path.open("rb") as fh:
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return []
        entries: list[AccessLogEntry] = []
        for raw in data.split(b"\n")[:-1]:  # only complete lines
            match = _ACCESS_LINE.match(raw.decode("utf-8", errors="replace"))
            if match and match["agent"] != _PROBE_AGENT:
                entries.append(AccessLogEntry(match["method"], match["path"], int(match["status"])))
        return entries

    def count_requests(
        self,
        method: str | None = None,
        path_pattern: str | None = None,
        status: int | None = None,
        *,
        since: int | None = None,
    ) -> int:
        """How many logged requests (after ``since``, default the mark) match.

        ``path_pattern`` is a regular expression searched in the path, e.g.
        ``r"/v2/library/alpine/manifests/"``.
        """
        pattern = re.compile(path_pattern) if path_pattern else None
        return sum(
            1
            for entry in self.requests_since(since)
            if (method is None or entry.method == method)
            and (pattern is None or pattern.search(entry.path))
            and (status is None or entry.status == status)
        )
