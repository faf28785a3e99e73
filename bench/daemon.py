"""``mirror run`` under the benchmark: one daemon process, its JSON log lines as they arrive
(each stamped with the harness's clocks), and its ``/metrics``.

Owns process plumbing only. Which runs to time and what they mean is the daemon scenario's
business in ``compare.py``; nothing here reads mirror's internals, only what an operator sees.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)"
)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One JSON log line and when the harness read it (``perf_counter`` and wall time)."""

    index: int
    at_perf: float
    at_wall: float
    fields: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.fields.get("event", ""))


class DaemonError(Exception):
    """The daemon did not say what was waited for (it exited, or took too long)."""


class DaemonProcess:
    """A running ``mirror run``: started in its own session, stdout read line by line.

    Lines that are not JSON are kept in ``raw`` (and ignored); stderr is drained so a chatty
    process can never block on a full pipe.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.started_perf = time.perf_counter()
        self.started_wall = time.time()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own group: a stop ends it and anything it started
        )
        self.pid = self._proc.pid
        self.events: list[LogEvent] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._metrics_url: str | None = None

    # -- reading ------------------------------------------------------------------------------

    def _read_stdout(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):
            at_perf, at_wall = time.perf_counter(), time.time()
            text = raw.decode(errors="replace").rstrip("\n")
            with self._changed:
                self.raw.append(text)
                try:
                    fields = json.loads(text)
                except ValueError:
                    fields = None
                if isinstance(fields, dict):
                    self.events.append(LogEvent(len(self.events), at_perf, at_wall, fields))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()  # EOF: waiters learn that nothing more will come

    def _read_stderr(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_event(self, name: str, *, after: int = -1, timeout_s: float) -> LogEvent:
        """The first event called ``name`` with an index above ``after``, waiting for it."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for event in self.events[after + 1 :]:
                    if event.name == name:
                        return event
                if self._proc.poll() is not None and not self._readers[0].is_alive():
                    raise DaemonError(
                        f"mirror run exited ({self._proc.returncode}) before {name!r}: "
                        f"{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DaemonError(f"no {name!r} line within {timeout_s:.0f} s: {self.tail()}")
                self._changed.wait(min(left, 0.5))

    def named(self, name: str, *, after: int = -1, before: int | None = None) -> list[LogEvent]:
        with self._changed:
            return [e for e in self.events[after + 1 : before] if e.name == name]

    def tail(self, lines: int = 8) -> str:
        return " | ".join((self.raw + self.stderr)[-lines:])[-1500:]

    # -- the process ----------------------------------------------------------------------------

    def cpu_s(self) -> float:
        """User + system CPU seconds the daemon has used so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The daemon's peak RSS so far (VmHWM), MB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0.0

    def serve_at(self, listen: str) -> None:
        """Where its health and metrics answer (``HOST:PORT`` from "daemon started")."""
        self._metrics_url = f"http://{listen}/metrics"

    def metrics(self) -> str:
        if self._metrics_url is None:
            raise DaemonError("the daemon's listen address is not known yet")
        with httpx.Client(timeout=10, trust_env=False) as client:
            response = client.get(self._metrics_url)
            response.raise_for_status()
            return response.text

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL to the group after ``timeout_s``; the exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        for reader in self._readers:
            reader.join(5)
        return self._proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` (with these labels, when given) in Prometheus text; the
    sum when several series match; None when none does."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        if any(have.get(k) != v for k, v in labels.items()):
            continue
        total += float(match["value"])
        found = True
    return total if found else None
