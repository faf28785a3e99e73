"""Benchmark: ``mirror sync`` side by side with ``skopeo sync --all --preserve-digests``.

Starts the same real registries the integration tests use (a Docker-Hub-like upstream with
token auth and the test user, and a fresh plain local target for every run), fills the
upstream with generated images and times both tools on the same copies, alternating
(mirror, skopeo, mirror, skopeo, ...) so neither gets a warmer machine. Scenarios (issue 5):

- ``repo``: one repository, 12 tags (Docker v2, OCI, two Docker lists and two OCI indexes of
  2 platforms; 6 aliases; 14 distinct manifests), about 30 MB. Phases: ``first`` (empty
  target), ``noop`` (resync, nothing changed), ``incremental`` (a new version ``1.0.3`` was
  pushed upstream and the alias ``1.0`` moved to it);
- ``large``: one image with a 1 GiB random layer (phase ``1gib``) and, to show memory stays
  flat, one with a 32 MiB layer (``32mib``); plus the physical reference, a raw
  ``curl GET | curl PUT`` stream of the 1 GiB blob between the two registries;
- ``scale``: 200 repositories x 10 tags (9 versions + ``latest``) of small images sharing a
  base layer: ``first`` and ``noop``;
- ``daemon`` (issue 15): the ``repo`` scenario's repository as the one ``[[mirrors]]`` entry
  of a ``mirror run`` started once per pair, into a fresh target. Its ``first`` (start-up),
  ``noop`` and ``incremental`` job runs are timed by the daemon's own "job run" log line
  (``seconds``, cross-checked against ``mirror_job_duration_seconds``), beside skopeo's whole
  runs of the same three phases. How the runs are scheduled is in ``run_daemon``.

Run from the repository root (``bash tests/run`` installs what it needs; skopeo is
Debian's ``skopeo`` package, and without it only mirror runs)::

    .venv/bin/python bench/compare.py [--scenario repo|large|scale|daemon|all] [--runs N]
                                      [--large-runs N] [--quick] [--out FILE]
                                      [--mirror-src live|snapshot|head|git:REV]
                                      [--tools mirror,mirror-b,skopeo]
                                      [--mirror-b-src snapshot|head|git:REV]
                                      [--daemon-interval S] [--daemon-token-lifetime S]
                                      [--wait-quiet S]

``--quick`` is a smoke run (small layers, 64 MiB large layer, 20 x 10 scale, 1 run each).
``--mirror-src snapshot`` copies ``mirror/`` aside when the benchmark starts, so edits made
while it runs do not change what is measured (``head`` or ``git:REV``: that commit's
``mirror/``); the results record which source every run imported.

An A/B of two mirror sources: ``--tools mirror,mirror-b --mirror-b-src git:REV`` runs a
second mirror, ``mirror-b``, imported from its own snapshot exactly as ``--mirror-src`` does
for ``mirror``, as one more tool in the alternation (mirror, mirror-b[, skopeo], mirror,
...). The table gains a ``b/a`` column and every phase its per-pair ratios; the notes say
whether b is within 5 % of a (issue 15's bar for adopting a change).

How each figure is obtained (per tool run, a tool run being one process):

- wall: from spawning the process to its exit (interpreter start-up included);
- peak RSS: the process's VmHWM from ``/proc/PID/status``, polled every 10 ms;
- upstream manifest GETs (pulls): ``GET .../manifests/...`` answered 200 in the upstream's
  access log; requests: every line of each registry's access log (401s included) written
  while the tool ran; token requests: requests the token server answered;
- bytes moved: for every blob upload the target completed (``PUT ...?digest=`` answered
  201 in its access log), the size of that blob in the target's storage, summed (a blob
  uploaded twice counts twice; a cross-repository mount counts 0 bytes and is reported as a
  mount); MB/s = bytes moved / wall (MB = 10^6 bytes);
- CPU seconds: the tool's own (user + system, from the kernel's accounting of the reaped
  process), the two registries' (from /proc), and other processes' on the machine (from
  /proc, this harness and its children excluded). On a shared 2-core machine the last one
  says whether a run was disturbed: runs where others used over 15 % of the machine are
  flagged NOISY in the notes, and a "quiet runs" median leaves them out. Before each run
  the harness waits (``--wait-quiet``, default up to 60 s) for the machine to settle;
- after every run both registries' tags and digests are compared (the target must equal
  the upstream), outside the timed window; after the first run of ``repo`` every blob is
  read back and checked. Tools run with their throwaway HOME as the working directory.

Medians over runs are printed with the ratio mirror/skopeo; ``--out`` (default
``bench/results.json``) gets every run's figures, mirror's own ``--json`` report, and the
machine and versions. Needs about 3 GiB free in /tmp for the full ``large`` scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HUB_PASSWORD,
    HUB_USER,
    MIB,
    ROOT,
    LogEntry,
    blob_data_path,
    clean_env,
    completed_mounts,
    completed_uploads,
    log_entries,
    machine_busy_s,
    mirror_argv,
    others_cpu_s,
    process_cpu_s,
    push_random_blob,
    run_measured,
    single_layer_image,
)
from bench.daemon import DaemonError, DaemonProcess, LogEvent, metric_value
from tests.support.images import (
    AMD64,
    ARM64,
    MANIFEST_ACCEPT,
    Blob,
    Image,
    Pusher,
    build_image,
    build_index,
    make_layer,
    verify_same,
)
from tests.support.registry import RegistryProcess, http_client
from tests.support.tokenserver import HubRegistry, TokenServer

TOOLS = ("mirror", "mirror-b", "skopeo")
MIRRORS = ("mirror", "mirror-b")  # the two mirror sources an A/B compares (a, b)
SKOPEO = "/usr/bin/skopeo"
TIMEOUT_S = {"repo": 300, "large": 1800, "scale": 1800, "daemon": 300}
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})

# The repo scenario's versions: two aliases of a version are the same manifest.
REPO_ALIASES = {
    "1.0": "1.0.2",
    "1": "1.0.2",
    "2.0": "2.0.1",
    "3": "3.1.0",
    "4": "4.0.1",
    "latest": "4.0.1",
}
REPO_NAME = "bench/app"
DAEMON_REPO = "bench/daemon"  # the daemon scenario's copies, apart from repo's in one upstream
LARGE_REPO, SMALL_REPO = "bench/large", "bench/large32"
SCALE_NS = "scale"

# Issue 5's targets (floors), checked in the notes.
TARGET_REPO_RATIO = 0.5
TARGET_SCALE_RATIO = 0.45
TARGET_LARGE_THROUGHPUT_RATIO = 0.95
TARGET_LARGE_RSS_MB = 80.0
TARGET_DAEMON_RATIO = {"first": 0.5, "noop": 0.2, "incremental": 0.4}  # issue 15
AB_TOLERANCE = 1.05  # issue 15: adopt mirror-b when it is within 5 % of mirror, or faster
# (numerator, denominator) of the ratio columns, each shown when both tools ran
RATIOS = (("mirror", "skopeo"), ("mirror-b", "mirror"), ("mirror-b", "skopeo"))
NOISY_SHARE = 0.15  # a run during which other work used more of the machine is flagged
QUIET_BUSY_PCT = 25.0  # start a measured run only below this machine load (see --wait-quiet)


# -- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    repo_base: int  # the repo scenario's shared base layer
    repo_layer: int  # every other layer of the repo scenario
    large: int
    large_small: int
    scale_repos: int
    scale_versions: int  # tags per repository besides ``latest``
    scale_base: int
    scale_repo_layer: int
    scale_tag_layer: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(6_000_000, 2_000_000, 1024 * MIB, 32 * MIB, 200, 9, 512 * 1024, 32 * 1024, 4096)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(600_000, 200_000, 64 * MIB, 8 * MIB, 20, 9, 512 * 1024, 32 * 1024, 4096)


# -- results ----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    tool: str
    run: int
    ok: bool
    metrics: dict[str, Any]
    error: str | None = None
    report: dict[str, Any] | None = None  # mirror's own --json report, without per-tag lines


@dataclass
class Phase:
    scenario: str
    name: str
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.scenario} {self.name}"

    def add(self, record: RunRecord) -> None:
        self.runs.setdefault(record.tool, []).append(record)

    def median(self, tool: str, metric: str) -> float | None:
        values = [
            r.metrics[metric]
            for r in self.runs.get(tool, [])
            if r.ok and r.metrics.get(metric) is not None
        ]
        return statistics.median(values) if values else None

    def quiet_median(self, tool: str, metric: str) -> float | None:
        """The median over runs during which other processes used little of the machine."""
        values = [
            r.metrics[metric]
            for r in self.runs.get(tool, [])
            if r.ok and r.metrics.get(metric) is not None and others_share(r) <= NOISY_SHARE
        ]
        return statistics.median(values) if values else None

    def quiet_runs(self, tool: str) -> int:
        return sum(1 for r in self.runs.get(tool, []) if r.ok and others_share(r) <= NOISY_SHARE)

    def pair_ratios(self, num: str, den: str, metric: str = "wall_s") -> list[tuple[int, float]]:
        """``num``'s figure over ``den``'s for each pair (same run number), both successful."""
        dens = {r.run: r.metrics.get(metric) for r in self.runs.get(den, []) if r.ok}
        out = []
        for r in self.runs.get(num, []):
            value, base = r.metrics.get(metric), dens.get(r.run)
            if r.ok and value is not None and base:
                out.append((r.run, value / base))
        return out

    def spread(self, tool: str, metric: str) -> tuple[float, float] | None:
        values = [
            r.metrics[metric]
            for r in self.runs.get(tool, [])
            if r.ok and r.metrics.get(metric) is not None
        ]
        return (min(values), max(values)) if len(values) > 1 else None


def others_share(record: RunRecord) -> float:
    """The share of the machine's CPU other processes used during a run's measured window
    (a daemon run's window is a little longer than the job itself: see ``run_daemon``)."""
    window = float(record.metrics.get("window_s") or record.metrics["wall_s"])
    return float(record.metrics.get("other_cpu_s", 0)) / (window * (os.cpu_count() or 1))


# -- reading registries (verification, outside the timed window) ------------------------------


TokenGetter = Callable[[list[str]], str]


def list_repo_tags(base_url: str, repo: str, token_getter: TokenGetter | None) -> list[str]:
    headers = (
        {"Authorization": f"Bearer {token_getter([f'repository:{repo}:pull'])}"}
        if (token_getter)
        else {}
    )
    with http_client(base_url=base_url, headers=headers, timeout=60) as client:
        response = client.get(f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(response.json().get("tags") or [])


def tag_digests(base_url: str, repo: str, token_getter: TokenGetter | None) -> dict[str, str]:
    """Every tag of ``repo`` and the digest a HEAD with the full Accept set reports for it."""
    tags = list_repo_tags(base_url, repo, token_getter)
    headers = {"Accept": MANIFEST_ACCEPT}
    if token_getter:
        headers["Authorization"] = f"Bearer {token_getter([f'repository:{repo}:pull'])}"
    out = {}
    with http_client(base_url=base_url, headers=headers, timeout=60) as client:
        for tag in tags:
            response = client.head(f"/v2/{repo}/manifests/{tag}")
            response.raise_for_status()
            out[tag] = response.headers["docker-content-digest"]
    return out


def all_tag_digests(
    base_url: str, repos: Sequence[str], token_getter: TokenGetter | None
) -> dict[str, dict[str, str]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = pool.map(lambda r: tag_digests(base_url, r, token_getter), repos)
        return dict(zip(repos, found, strict=True))


# -- the bench --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MirrorSource:
    """How to start one mirror tool: its command, its extra environment (PYTHONPATH of its
    snapshot) and what source it imports (recorded with the results)."""

    command: list[str]
    env: dict[str, str]
    meta: dict[str, Any]


class Bench:
    """The upstream, the tools and the measurement of one tool run."""

    def __init__(
        self,
        args: argparse.Namespace,
        tokens: TokenServer,
        hub: HubRegistry,
        scratch: Path,
        tools: Sequence[str],
        mirrors: dict[str, MirrorSource],
    ) -> None:
        self.args = args
        self.tokens = tokens
        self.hub = hub
        self.scratch = scratch
        self.tools = list(tools)
        self.mirrors = mirrors
        self.hub_reader = hub.token_getter(HUB_USER)

    # -- per-run state --------------------------------------------------------------------

    @contextlib.contextmanager
    def tool_home(self, tool: str) -> Iterator[Path]:
        """A throwaway HOME with everything a tool reads: no real credentials or config.

        It lives for one tool run (first sync and its resyncs), like a machine's own state.
        """
        home = Path(tempfile.mkdtemp(prefix=f"{tool}-home-", dir=self.scratch))
        try:
            (home / ".docker").mkdir()
            (home / "mirror.toml").write_text(
                f'[registries."{self.hub.host}"]\n'
                f'username = "{HUB_USER}"\npassword_env = "BENCH_HUB_PASSWORD"\n'
            )
            (home / "policy.json").write_text(
                json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
            )
            (home / "auth.json").write_text("{}")
            (home / "registries.conf").write_text("")
            (home / "registries.d").mkdir()
            (home / "tmp").mkdir()
            yield home
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def env(self, tool: str, home: Path) -> dict[str, str]:
        if tool in MIRRORS:
            return clean_env(home, BENCH_HUB_PASSWORD=HUB_PASSWORD, **self.mirrors[tool].env)
        return clean_env(
            home,
            REGISTRY_AUTH_FILE=str(home / "auth.json"),
            CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"),
            XDG_RUNTIME_DIR=str(home / "run"),
            XDG_DATA_HOME=str(home / "share"),
            XDG_CONFIG_HOME=str(home / "config"),
            # As root, containers/image keeps its blob-info cache in /var/lib/containers;
            # a non-zero "rootless" uid puts it under XDG_DATA_HOME in this throwaway home.
            _CONTAINERS_ROOTLESS_UID="1000",
        )

    def mirror_sync(
        self, tool: str, home: Path, sources: Sequence[str], target: RegistryProcess
    ) -> list[str]:
        return [
            *self.mirrors[tool].command,
            "sync",
            *(f"{self.hub.host}/{s}" for s in sources),
            "--to",
            target.host,
            "--config",
            str(home / "mirror.toml"),
            "--json",
        ]

    def skopeo_sync(self, home: Path, src: list[str], dest: str) -> list[str]:
        return [
            SKOPEO,
            "--policy",
            str(home / "policy.json"),
            "--registries.d",
            str(home / "registries.d"),
            "--tmpdir",
            str(home / "tmp"),
            "sync",
            "--all",
            "--preserve-digests",
            *src,
            "--dest",
            "docker",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-creds",
            f"{HUB_USER}:{HUB_PASSWORD}",
            "--authfile",
            str(home / "auth.json"),
            dest,
        ]

    def skopeo_repos(self, home: Path, repos: Sequence[str], target: RegistryProcess) -> list[str]:
        """skopeo lands ``SRC/ns/name`` at ``DEST/name``: DEST is the target plus the namespace,
        so both tools write the same repositories. Several repositories go through a YAML
        source file (JSON is YAML)."""
        namespaces = {r.rsplit("/", 1)[0] for r in repos}
        assert len(namespaces) == 1, namespaces
        dest = f"{target.host}/{namespaces.pop()}"
        if len(repos) == 1:
            return self.skopeo_sync(home, ["--src", "docker", f"{self.hub.host}/{repos[0]}"], dest)
        source = home / "sync.yaml"
        source.write_text(
            json.dumps(
                {
                    self.hub.host: {
                        "images": {r: [] for r in repos},  # [] = every tag
                        "tls-verify": False,
                        "credentials": {"username": HUB_USER, "password": HUB_PASSWORD},
                    }
                }
            )
        )
        return self.skopeo_sync(home, ["--src", "yaml", str(source)], dest)

    def command(
        self, tool: str, home: Path, repos: Sequence[str], target: RegistryProcess
    ) -> list[str]:
        if tool in MIRRORS:
            return self.mirror_sync(tool, home, repos, target)
        return self.skopeo_repos(home, repos, target)

    # -- measuring -------------------------------------------------------------------------

    def measure(
        self,
        tool: str,
        run: int,
        argv: list[str],
        env: dict[str, str],
        target: RegistryProcess,
        timeout_s: float,
    ) -> RunRecord:
        """Run one tool process and read what it cost from the registries' own logs."""
        hub_mark, target_mark = self.hub.log_mark(), target.log_mark()
        tokens_before = len(self.tokens.requests())
        quiet = self.wait_quiet()
        with CpuAccount(self.hub, target) as cpu:
            # cwd is the throwaway home: ``python -m`` puts the cwd first on sys.path, and from
            # the checkout that would import its live mirror/ instead of the one chosen.
            measured = run_measured(argv, env, timeout_s=timeout_s, cwd=Path(env["HOME"]))
        upstream = log_entries(self.hub, hub_mark)
        downstream = log_entries(target, target_mark)
        token_requests = len(self.tokens.requests()) - tokens_before
        metrics = traffic_metrics(upstream, downstream, target)
        metrics.update(
            wall_s=measured.wall_s,
            peak_rss_mb=measured.peak_rss_mb,
            token_requests=token_requests,
            mb_per_s=(metrics["bytes_moved"] / 1e6 / measured.wall_s)
            if metrics["bytes_moved"]
            else None,
            **cpu.split(measured.cpu_s),
            machine_busy_before_pct=quiet,
        )
        error = None
        if measured.timed_out:
            error = f"timed out after {timeout_s:.0f} s"
        elif measured.returncode != 0:
            error = f"exit {measured.returncode}: {measured.stderr.strip()[-1500:]}"
        report = None
        if tool in MIRRORS and measured.stdout.strip():
            try:
                report = json.loads(measured.stdout)
                report.pop("tags", None)
            except ValueError:
                report = {"unparsed_stdout": measured.stdout[-2000:]}
        return RunRecord(tool, run, error is None, metrics, error, report)

    def wait_quiet(self) -> float:
        """Wait (up to ``--wait-quiet`` seconds) until the machine is mostly idle, since other
        work on a 2-core machine skews timings; return the last busy percentage seen."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            busy = machine_busy_pct(0.5)
            if busy <= QUIET_BUSY_PCT or time.monotonic() >= deadline:
                if busy > QUIET_BUSY_PCT:
                    print(f"    (machine still {busy:.0f}% busy after waiting; measuring anyway)")
                return busy
            time.sleep(1.0)

    def check_target(
        self, record: RunRecord, target: RegistryProcess, expected: dict[str, dict[str, str]]
    ) -> None:
        """The target must hold exactly the upstream's tags with the same digests."""
        if not record.ok:
            return
        found = all_tag_digests(target.url, list(expected), None)
        for repo, tags in expected.items():
            if found[repo] != tags:
                missing = sorted(set(tags) - set(found[repo]))
                wrong = sorted(t for t in tags if t in found[repo] and found[repo][t] != tags[t])
                extra = sorted(set(found[repo]) - set(tags))
                record.ok = False
                record.error = (
                    f"target {repo} differs from upstream: missing {missing[:5]}, "
                    f"wrong digest {wrong[:5]}, extra {extra[:5]}"
                )
                return

    def announce(self, phase: Phase, record: RunRecord) -> None:
        m = record.metrics
        status = "ok" if record.ok else f"FAILED: {record.error}"
        rate = f", {m['mb_per_s']:.1f} MB/s" if m.get("mb_per_s") else ""
        print(
            f"  {phase.label:<18} {record.tool:<7} run {record.run}: {m['wall_s']:7.2f} s"
            f"{rate}, RSS {m.get('peak_rss_mb') or 0:.0f} MB, "
            f"pulls {m['upstream_manifest_gets']}, req up/down "
            f"{m['upstream_requests']}/{m['target_requests']}, "
            f"moved {m['bytes_moved'] / 1e6:.1f} MB  {status}",
            flush=True,
        )

    def run_tool(
        self,
        tool: str,
        run: int,
        phase: Phase,
        home: Path,
        repos: Sequence[str],
        target: RegistryProcess,
        expected: dict[str, dict[str, str]],
        timeout_s: float,
    ) -> RunRecord:
        record = self.measure(
            tool,
            run,
            self.command(tool, home, repos, target),
            self.env(tool, home),
            target,
            timeout_s,
        )
        self.check_target(record, target, expected)
        phase.add(record)
        self.announce(phase, record)
        return record


def machine_busy_pct(window_s: float) -> float:
    """How busy the whole machine was over ``window_s``, as % of all its CPUs."""
    before, started = machine_busy_s(), time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    return 100 * (machine_busy_s() - before) / (elapsed * (os.cpu_count() or 1))


class CpuAccount:
    """Where the machine's CPU went while a tool ran: the tool, the two registries, this
    harness (the token server runs in it) and everything else on the machine."""

    def __init__(self, hub: RegistryProcess, target: RegistryProcess) -> None:
        # The registries' pids: tests.support keeps the process private; read-only use.
        self._pids = {r._proc.pid for r in (hub, target) if r._proc is not None}

    def __enter__(self) -> CpuAccount:
        self._registries = sum(process_cpu_s(p) for p in self._pids)
        self._harness = time.process_time()
        self._machine = machine_busy_s()
        self._others = others_cpu_s(self._pids)
        return self

    def __exit__(self, *exc: object) -> None:
        self.registries = sum(process_cpu_s(p) for p in self._pids) - self._registries
        self.harness = time.process_time() - self._harness
        self.machine = machine_busy_s() - self._machine
        others = others_cpu_s(self._pids)
        self.other_processes = others[0] - self._others[0]
        self.kernel_threads = others[1] - self._others[1]

    def split(self, tool_cpu_s: float) -> dict[str, float]:
        return {
            "tool_cpu_s": tool_cpu_s,
            "registries_cpu_s": self.registries,
            "harness_cpu_s": self.harness,
            "other_cpu_s": max(0.0, self.other_processes),
            "kernel_threads_cpu_s": max(0.0, self.kernel_threads),
            "machine_cpu_s": self.machine,
        }


def traffic_metrics(
    upstream: list[LogEntry], downstream: list[LogEntry], target: RegistryProcess
) -> dict[str, Any]:
    def count(entries: list[LogEntry], pred: Callable[[LogEntry], bool]) -> int:
        return sum(1 for e in entries if pred(e))

    def breakdown(entries: list[LogEntry]) -> dict[str, int]:
        """Requests by method, kind of endpoint and status, e.g. ``HEAD blobs 404``."""
        kinds: dict[str, int] = {}
        for e in entries:
            route = e.route
            kind = next(
                (k for k in ("manifests", "uploads", "blobs", "tags") if f"/{k}/" in route),
                "ping" if route.rstrip("/") == "/v2" else "other",
            )
            if kind == "uploads" and e.method == "POST" and "mount" in e.query:
                kind = "uploads?mount"
            key = f"{e.method} {kind} {e.status}"
            kinds[key] = kinds.get(key, 0) + 1
        return dict(sorted(kinds.items()))

    uploads = completed_uploads(downstream)
    sizes = []
    for digest in uploads:
        path = blob_data_path(target, digest)
        sizes.append(path.stat().st_size if path.exists() else 0)
    return {
        "upstream_manifest_gets": count(
            upstream, lambda e: e.method == "GET" and "/manifests/" in e.route and e.status == 200
        ),
        "upstream_manifest_heads": count(
            upstream, lambda e: e.method == "HEAD" and "/manifests/" in e.route
        ),
        "upstream_requests": len(upstream),
        "upstream_401": count(upstream, lambda e: e.status == 401),
        "upstream_blob_gets": count(
            upstream, lambda e: e.method == "GET" and "/blobs/" in e.route and e.status < 300
        ),
        "upstream_blob_bytes": sum(
            e.size
            for e in upstream
            if e.method == "GET" and "/blobs/" in e.route and e.status in (200, 206)
        ),
        "target_requests": len(downstream),
        "target_writes": count(downstream, lambda e: e.method in WRITE_METHODS),
        "target_manifest_puts": count(
            downstream, lambda e: e.method == "PUT" and "/manifests/" in e.route
        ),
        "blobs_uploaded": len(uploads),
        "blobs_mounted": completed_mounts(downstream),
        "bytes_moved": sum(sizes),
        "upstream_breakdown": breakdown(upstream),
        "target_breakdown": breakdown(downstream),
    }


# -- scenario: repo ---------------------------------------------------------------------------


@dataclass
class RepoFixture:
    images: dict[str, Image]
    release: Image  # the incremental phase's new version, 1.0.3 (alias 1.0 moves to it)
    release_new_bytes: int


def build_repo(sizes: Sizes) -> RepoFixture:
    seed = "bench-repo"
    base = make_layer(sizes.repo_base, seed=f"{seed}:base")

    def layer(name: str) -> Blob:
        return make_layer(sizes.repo_layer, seed=f"{seed}:{name}")

    def index(kind: str, name: str, shared: Sequence[Blob] = ()) -> Image:
        children = [
            build_image(kind, layers=[*shared, layer(f"{name}:{p}")], platform=p)  # type: ignore[arg-type]
            for p in (AMD64, ARM64)
        ]
        return build_index(kind, children=children)  # type: ignore[arg-type]

    images = {
        "1.0.2": build_image("docker", layers=[base, layer("1.0.2")]),
        "2.0.1": build_image("oci", layers=[layer("2.0.1:a"), layer("2.0.1:b")]),
        "3.0.1": index("docker", "3.0.1", shared=[base]),
        "3.1.0": index("docker", "3.1.0"),
        "4.0.1": index("oci", "4.0.1"),
        "edge": index("oci", "edge"),
    }
    for alias, version in REPO_ALIASES.items():
        images[alias] = images[version]
    new_layer = layer("1.0.3")
    release = build_image("docker", layers=[base, new_layer])
    assert release.config is not None
    return RepoFixture(images, release, new_layer.size + release.config.size)


def run_repo(bench: Bench, sizes: Sizes, runs: int) -> list[Phase]:
    """Every tool run gets its own upstream copy of the repository (``bench/app-N``), pushed
    before the run, so the incremental phase can change it without undoing anything after
    (the token server grants no ``delete``)."""
    fixture = build_repo(sizes)
    manifests = {m.digest for i in fixture.images.values() for m in i.all_manifests()}
    blobs = {d: b.size for i in fixture.images.values() for d, b in i.all_blobs().items()}
    print(
        f"repo: {len(fixture.images)} tags, {len(manifests)} distinct manifests, "
        f"{len(blobs)} blobs, {sum(blobs.values()) / 1e6:.1f} MB",
        flush=True,
    )
    phases = repo_phases("repo", fixture)
    copies = 0
    for run in range(1, runs + 1):
        for tool in bench.tools:
            copies += 1
            repo = push_repo_copy(bench, fixture, f"{REPO_NAME}-{copies}")
            repo_sequence(bench, tool, run, phases, fixture, repo)
    return list(phases)


def repo_phases(scenario: str, fixture: RepoFixture) -> tuple[Phase, Phase, Phase]:
    """The first, noop and incremental phases of the 12-tag repository, with what each
    should cost."""
    manifests = {m.digest for i in fixture.images.values() for m in i.all_manifests()}
    blobs = {d: b.size for i in fixture.images.values() for d, b in i.all_blobs().items()}
    first, noop, incremental = (Phase(scenario, n) for n in ("first", "noop", "incremental"))
    first.expected = {"pulls": len(manifests), "bytes": sum(blobs.values()), "tags": 12}
    noop.expected = {"pulls": 0, "bytes": 0, "target_writes": 0}
    incremental.expected = {"pulls": 1, "bytes": fixture.release_new_bytes}
    return first, noop, incremental


def push_repo_copy(bench: Bench, fixture: RepoFixture, repo: str) -> str:
    with Pusher(bench.hub.url, bench.hub_reader) as pusher:
        for tag, image in fixture.images.items():
            pusher.push(repo, image, tag)
    return repo


def push_release(bench: Bench, fixture: RepoFixture, repo: str) -> dict[str, dict[str, str]]:
    """The incremental change: version 1.0.3 pushed upstream and alias 1.0 moved to it; the
    upstream's tags and digests afterwards."""
    with Pusher(bench.hub.url, bench.hub_reader) as pusher:
        pusher.push(repo, fixture.release, "1.0.3", "1.0")
    return all_tag_digests(bench.hub.url, [repo], bench.hub_reader)


def deep_verify(
    bench: Bench, record: RunRecord, fixture: RepoFixture, target: RegistryProcess, repo: str
) -> None:
    """Read every blob of every tag back from the target (once per tool, after a first run)."""
    try:
        verify_same(
            (bench.hub.url, bench.hub_reader), (target.url, None), repo, sorted(fixture.images)
        )
    except AssertionError as exc:
        record.ok, record.error = False, f"deep verification: {exc}"
        print(f"    {record.error}")


def repo_sequence(
    bench: Bench,
    tool: str,
    run: int,
    phases: tuple[Phase, Phase, Phase],
    fixture: RepoFixture,
    repo: str,
) -> None:
    """One tool's first sync, no-op resync and incremental sync of ``repo`` (pushed already)
    into a fresh target: three whole processes."""
    first, noop, incremental = phases
    timeout = TIMEOUT_S["repo"]
    original = all_tag_digests(bench.hub.url, [repo], bench.hub_reader)
    with RegistryProcess() as target, bench.tool_home(tool) as home:
        record = bench.run_tool(tool, run, first, home, [repo], target, original, timeout)
        if record.ok and run == 1:  # read every blob back once per tool
            deep_verify(bench, record, fixture, target, repo)
        bench.run_tool(tool, run, noop, home, [repo], target, original, timeout)
        changed = push_release(bench, fixture, repo)
        bench.run_tool(tool, run, incremental, home, [repo], target, changed, timeout)


# -- scenario: daemon -------------------------------------------------------------------------

DAEMON_LEAD_S = 0.4  # the measured window opens about this long before a scheduled run
BUSY_PROBE_S = 1.0  # machine load sampled over this long, just before the window opens
PUSH_BUDGET_S = 2.5  # the incremental change is pushed only with this long left before a run


def daemon_config(hub_host: str, target_host: str, repo: str, interval_s: float) -> str:
    """One entry, scheduled every ``interval_s`` with no jitter; health and metrics on a free
    loopback port (the "daemon started" line names it); JSON log lines."""
    return (
        "\n".join(
            [
                f'target = "{target_host}"',
                f'[registries."{hub_host}"]',
                f'username = "{HUB_USER}"',
                'password_env = "BENCH_HUB_PASSWORD"',
                "[daemon]",
                'listen = "127.0.0.1:0"',
                'jitter = "0s"',
                'grace_period = "5s"',
                'log_format = "json"',
                "[[mirrors]]",
                f'source = "{hub_host}/{repo}"',
                f'interval = "{interval_s:g}s"',
            ]
        )
        + "\n"
    )


def run_daemon(bench: Bench, sizes: Sizes, runs: int) -> list[Phase]:
    """``mirror run`` with the repo scenario's repository as its one entry, beside skopeo.

    Per pair and mirror tool, one daemon process is started into a fresh target with the
    entry ``interval = --daemon-interval`` and ``jitter = "0s"``. APScheduler runs the entry
    at start-up (time c0) and then exactly at c0 + k * interval; a run still going at a fire
    time makes the scheduler skip that one. The harness reads consecutive "job run" lines:
    the start-up run is ``first``, the next scheduled run ``noop``; right after it the
    harness pushes 1.0.3 upstream (moving 1.0), and the next scheduled run is
    ``incremental``. A run's figure is the daemon's own ``seconds`` of that job run (from
    ``run_entry``'s start to its end: no scheduling delay, jitter or sleep between runs is
    in it), checked against the change of ``mirror_job_duration_seconds_sum``; beside it the
    harness's own clock from the scheduled fire time to reading the line (an upper bound),
    and for ``first`` the time from spawning the process (interpreter start-up included,
    comparable to a whole ``mirror sync``).

    Everything the harness does between runs (reading logs, checking the target, the push)
    ends before the next fire time, and the request counts, CPU and load of a run come from
    a window that opens just before its fire time; a run that overlapped the harness's work
    is marked failed. By default each scheduled run starts cold, as a production daemon's
    run hours apart does: the interval (8 s) outlasts mirror's 5 s keep-alive, so it opens
    new connections, and ``--daemon-token-lifetime`` (4 s) makes the token server's tokens
    expire between runs, so it logs in again. ``--daemon-token-lifetime 0`` keeps the token
    server's 300 s tokens (and an interval under 5 s keeps connections): the warm figures.
    skopeo's runs are whole processes, exactly as in ``repo``.
    """
    fixture = build_repo(sizes)
    phases = repo_phases("daemon", fixture)
    interval = bench.args.daemon_interval
    lifetime = bench.args.daemon_token_lifetime
    print(
        f"daemon: mirror run, entry every {interval:g} s, jitter 0, tokens valid "
        f"{lifetime or bench.tokens.lifetime_s} s; skopeo whole runs",
        flush=True,
    )
    saved_lifetime = bench.tokens.lifetime_s
    if lifetime:
        bench.tokens.lifetime_s = lifetime
    try:
        copies = 0
        for run in range(1, runs + 1):
            for tool in bench.tools:
                copies += 1
                repo = push_repo_copy(bench, fixture, f"{DAEMON_REPO}-{copies}")
                if tool in MIRRORS:
                    DaemonRuns(bench, tool, run, interval).sequence(phases, fixture, repo)
                else:
                    repo_sequence(bench, tool, run, phases, fixture, repo)
    finally:
        bench.tokens.lifetime_s = saved_lifetime
    return list(phases)


def job_started(line: LogEvent) -> float:
    """When the run that ``line`` reports began (wall time): its log timestamp less its
    seconds (the harness's reading time when the line has no timestamp, a later bound)."""
    seconds = float(line.fields.get("seconds", 0.0))
    stamp = line.fields.get("timestamp")
    try:
        logged = datetime.datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        logged = line.at_wall
    return logged - seconds


@dataclass
class _Window:
    """Where a daemon run is measured from: log marks, token count, CPU accounts, clocks."""

    hub_mark: int
    target_mark: int
    tokens: int
    cpu: CpuAccount
    tool_cpu: float
    perf: float
    wall: float
    busy_pct: float | None


class DaemonRuns:
    """One daemon process's three timed job runs (see ``run_daemon``)."""

    def __init__(self, bench: Bench, tool: str, run: int, interval: float) -> None:
        self.bench = bench
        self.tool = tool
        self.run = run
        self.interval = interval
        self.timeout = TIMEOUT_S["daemon"]
        self.daemon: DaemonProcess | None = None
        self.c0 = 0.0  # wall time of the start-up run's schedule; later runs at c0 + k*interval
        self.duration_sum = 0.0  # mirror_job_duration_seconds_sum after the last run
        self.metrics_text = ""  # the daemon's /metrics after the last run
        self.last_line = -1  # index of the last "job run" event read

    def sequence(self, phases: tuple[Phase, Phase, Phase], fixture: RepoFixture, repo: str) -> None:
        first, noop, incremental = phases
        bench = self.bench
        original = all_tag_digests(bench.hub.url, [repo], bench.hub_reader)
        with RegistryProcess() as target, bench.tool_home(self.tool) as home:
            config = home / "daemon.toml"
            config.write_text(daemon_config(bench.hub.host, target.host, repo, self.interval))
            argv = [*bench.mirrors[self.tool].command, "run", "--config", str(config)]
            records: list[RunRecord] = []
            try:
                record = self.start(first, target, argv, bench.env(self.tool, home), home)
                records.append(record)
                bench.check_target(record, target, original)
                if record.ok and self.run == 1:
                    deep_verify(bench, record, fixture, target, repo)
                self.announce(first, record)
                record = self.next_run(noop, target)
                records.append(record)
                bench.check_target(record, target, original)
                self.announce(noop, record)
                self.leave_room(min(PUSH_BUDGET_S, self.interval / 2))
                changed = push_release(bench, fixture, repo)
                record = self.next_run(incremental, target)
                records.append(record)
                bench.check_target(record, target, changed)
                self.announce(incremental, record)
            except (DaemonError, OSError, httpx.HTTPError) as exc:
                for phase in phases[len(records) :]:
                    failed = RunRecord(self.tool, self.run, False, {"wall_s": 0.0}, str(exc))
                    phase.add(failed)
                    print(f"  {phase.label:<18} {self.tool:<8} run {self.run}: FAILED: {exc}")
            finally:
                if self.daemon is not None:
                    code = self.daemon.stop()
                    if code != 0 and records:
                        records[-1].ok = False
                        records[-1].error = f"mirror run exited {code}: {self.daemon.tail()}"

    # -- the runs ---------------------------------------------------------------------------

    def start(
        self,
        phase: Phase,
        target: RegistryProcess,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
    ) -> RunRecord:
        """Start the daemon; its start-up run is ``phase`` (first)."""
        bench = self.bench
        busy = bench.wait_quiet()
        window = self.open_window(target, busy, tool_cpu=0.0)
        self.daemon = daemon = DaemonProcess(argv, env, cwd)
        started = daemon.wait_event("daemon started", timeout_s=self.timeout)
        daemon.serve_at(str(started.fields["listen"]))
        line = daemon.wait_event("job run", timeout_s=self.timeout)
        record = self.close_window(phase, target, window, line)
        added = metric_value(self.metrics_text, "mirror_job_added_timestamp_seconds")
        self.c0 = added if added else job_started(line)
        record.metrics["sched_to_line_s"] = line.at_wall - self.c0
        record.metrics["spawn_to_line_s"] = line.at_perf - daemon.started_perf
        return record

    def next_fire(self) -> float:
        """The wall time of the next scheduled run after now."""
        now = time.time()
        k = max(1, math.floor((now - self.c0) / self.interval) + 1)
        return self.c0 + k * self.interval

    def leave_room(self, needed_s: float) -> None:
        """Make sure at least ``needed_s`` is left before the next scheduled run; if not, let
        that run happen (it changes nothing: the upstream has not changed) and leave it out."""
        assert self.daemon is not None
        while self.next_fire() - time.time() < needed_s:
            fire = self.next_fire()
            line = self.daemon.wait_event("job run", after=self.last_line, timeout_s=self.timeout)
            self.last_line = line.index
            self.metrics_text = self.daemon.metrics()
            self.duration_sum = (
                metric_value(self.metrics_text, "mirror_job_duration_seconds_sum") or 0.0
            )
            print(
                f"    (a scheduled run at +{fire - self.c0:.1f} s came too soon after the last "
                f"one for the harness's work; it is left out)"
            )

    def next_run(self, phase: Phase, target: RegistryProcess) -> RunRecord:
        """Wait for the next scheduled run and measure it as ``phase``."""
        assert self.daemon is not None
        fire = self.next_fire()
        lead = fire - DAEMON_LEAD_S - time.time()
        if lead > BUSY_PROBE_S:
            time.sleep(lead - BUSY_PROBE_S)
        probe = min(BUSY_PROBE_S, fire - DAEMON_LEAD_S - time.time())
        busy = machine_busy_pct(probe) if probe > 0.1 else None
        window = self.open_window(target, busy, tool_cpu=self.daemon.cpu_s())
        overlap = self.daemon.named("job run", after=self.last_line)
        line = self.daemon.wait_event("job run", after=self.last_line, timeout_s=self.timeout)
        record = self.close_window(phase, target, window, line)
        record.metrics["sched_to_line_s"] = line.at_wall - fire
        if overlap or window.wall > fire or job_started(line) < window.wall:
            record.ok = False
            record.error = (
                f"the harness's work between runs overlapped the run scheduled at "
                f"+{fire - self.c0:.2f} s (window opened at +{window.wall - self.c0:.2f} s); "
                "try a longer --daemon-interval"
            )
        return record

    def open_window(
        self, target: RegistryProcess, busy: float | None, *, tool_cpu: float
    ) -> _Window:
        bench = self.bench
        hub_mark, target_mark = bench.hub.log_mark(), target.log_mark()
        tokens = len(bench.tokens.requests())
        cpu = CpuAccount(bench.hub, target).__enter__()
        return _Window(
            hub_mark, target_mark, tokens, cpu, tool_cpu, time.perf_counter(), time.time(), busy
        )

    def close_window(
        self, phase: Phase, target: RegistryProcess, window: _Window, line: LogEvent
    ) -> RunRecord:
        """The run that ``line`` reports, measured over ``window``: its own seconds, what the
        registries logged, what the CPU did."""
        assert self.daemon is not None
        tool_cpu = self.daemon.cpu_s() - window.tool_cpu
        rss = self.daemon.peak_rss_mb()
        window.cpu.__exit__(None, None, None)
        window_s = line.at_perf - window.perf
        self.last_line = line.index
        bench = self.bench
        upstream = log_entries(bench.hub, window.hub_mark)
        downstream = log_entries(target, window.target_mark)
        seconds = float(line.fields.get("seconds", 0.0))
        self.metrics_text = self.daemon.metrics()
        total = metric_value(self.metrics_text, "mirror_job_duration_seconds_sum") or 0.0
        from_metric, self.duration_sum = total - self.duration_sum, total
        metrics = traffic_metrics(upstream, downstream, target)
        metrics.update(
            wall_s=seconds,
            job_s_metric=from_metric,
            window_s=window_s,
            peak_rss_mb=rss,
            token_requests=len(bench.tokens.requests()) - window.tokens,
            mb_per_s=metrics["bytes_moved"] / 1e6 / seconds
            if metrics["bytes_moved"] and seconds
            else None,
            **window.cpu.split(tool_cpu),
            machine_busy_before_pct=window.busy_pct,
        )
        error = None
        outcome = line.fields.get("outcome")
        if outcome != "success":
            error = f"job run {outcome}: {line.fields.get('error') or self.daemon.tail()}"
        elif abs(from_metric - seconds) > 0.002:  # the log rounds to milliseconds
            error = (
                f"the log says {seconds:.3f} s, mirror_job_duration_seconds_sum grew by "
                f"{from_metric:.3f} s"
            )
        record = RunRecord(self.tool, self.run, error is None, metrics, error, dict(line.fields))
        phase.add(record)
        return record

    def announce(self, phase: Phase, record: RunRecord) -> None:
        m = record.metrics
        status = "ok" if record.ok else f"FAILED: {record.error}"
        extra = f", spawn->line {m['spawn_to_line_s']:.2f} s" if m.get("spawn_to_line_s") else ""
        print(
            f"  {phase.label:<18} {record.tool:<8} run {record.run}: job {m['wall_s']:7.3f} s "
            f"(metric {m['job_s_metric']:.3f}, sched->line {m['sched_to_line_s']:.3f}{extra}), "
            f"CPU {m['tool_cpu_s']:.2f} s, pulls {m['upstream_manifest_gets']}, tokens "
            f"{m['token_requests']}, req up/down {m['upstream_requests']}/"
            f"{m['target_requests']}, moved {m['bytes_moved'] / 1e6:.1f} MB  {status}",
            flush=True,
        )


# -- scenario: large --------------------------------------------------------------------------


def run_large(bench: Bench, sizes: Sizes, runs: int) -> list[Phase]:
    print(
        f"large: pushing {sizes.large / MIB:.0f} MiB and {sizes.large_small / MIB:.0f} MiB "
        "random layers ...",
        flush=True,
    )
    layers = {}
    with Pusher(bench.hub.url, bench.hub_reader) as pusher:
        for repo, size in ((LARGE_REPO, sizes.large), (SMALL_REPO, sizes.large_small)):
            digest = push_random_blob(bench.hub, repo, size)
            pusher.push(repo, single_layer_image(digest, size), "v1")
            layers[repo] = (digest, size)
    expected = all_tag_digests(bench.hub.url, [LARGE_REPO, SMALL_REPO], bench.hub_reader)
    big = Phase("large", f"{sizes.large // MIB}mib" if sizes.large < 1024 * MIB else "1gib")
    small = Phase("large", f"{sizes.large_small // MIB}mib")
    pipe = Phase("large", "curl-pipe")
    big.expected = {"bytes": sizes.large}
    small.expected = {"bytes": sizes.large_small}
    timeout = TIMEOUT_S["large"]
    for run in range(1, runs + 1):
        for tool in bench.tools:
            with RegistryProcess() as target, bench.tool_home(tool) as home:
                for phase, repo in ((big, LARGE_REPO), (small, SMALL_REPO)):
                    bench.run_tool(
                        tool, run, phase, home, [repo], target, {repo: expected[repo]}, timeout
                    )
        with RegistryProcess() as target:
            record = curl_pipe(bench, run, target, LARGE_REPO, *layers[LARGE_REPO])
            pipe.add(record)
            bench.announce(pipe, record)
    return [big, small, pipe]


def curl_pipe(
    bench: Bench, run: int, target: RegistryProcess, repo: str, digest: str, size: int
) -> RunRecord:
    """The physical reference: ``curl GET | curl PUT`` of one blob, token passed explicitly.

    The upload session is opened (POST) before the clock starts; the timed part is the two
    curls streaming the blob from the upstream into a monolithic PUT ``?digest=``.
    """
    token = bench.hub_reader([f"repository:{repo}:pull"])
    with http_client(timeout=30) as client:
        started = client.post(f"{target.url}/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = str(started.url.join(started.headers["location"]))
    upload = f"{location}{'&' if '?' in location else '?'}digest={digest}"
    script = (
        'curl -sS -f -H "Authorization: Bearer $BENCH_TOKEN" "$BENCH_SRC" | '
        'curl -sS -f -X PUT -T - -H "Content-Type: application/octet-stream" '
        '-H "Content-Length: $BENCH_SIZE" -H "Transfer-Encoding:" "$BENCH_DST" -o /dev/null'
    )
    env = dict(
        os.environ,
        BENCH_TOKEN=token,
        BENCH_SRC=f"{bench.hub.url}/v2/{repo}/blobs/{digest}",
        BENCH_DST=upload,
        BENCH_SIZE=str(size),
    )
    hub_mark, target_mark = bench.hub.log_mark(), target.log_mark()
    quiet = bench.wait_quiet()
    with CpuAccount(bench.hub, target) as cpu:
        measured = run_measured(
            ["bash", "-o", "pipefail", "-c", script],
            env,
            timeout_s=TIMEOUT_S["large"],
            cwd=bench.scratch,
        )
    metrics = traffic_metrics(
        log_entries(bench.hub, hub_mark), log_entries(target, target_mark), target
    )
    metrics.update(
        wall_s=measured.wall_s,
        peak_rss_mb=None,  # two processes; not comparable to one tool's RSS
        token_requests=0,
        mb_per_s=metrics["bytes_moved"] / 1e6 / measured.wall_s if metrics["bytes_moved"] else None,
        **cpu.split(measured.cpu_s),
        machine_busy_before_pct=quiet,
    )
    ok = measured.returncode == 0 and metrics["bytes_moved"] == size
    error = None if ok else f"exit {measured.returncode}: {measured.stderr.strip()[-500:]}"
    return RunRecord("curl", run, ok, metrics, error)


# -- scenario: scale --------------------------------------------------------------------------


def scale_repos(sizes: Sizes) -> list[str]:
    return [f"{SCALE_NS}/r{i:03d}" for i in range(1, sizes.scale_repos + 1)]


def fill_scale(bench: Bench, sizes: Sizes) -> tuple[int, int]:
    """Push every repository: a base layer all share, a layer per repository, one per tag.

    Even repositories are Docker v2 images, odd ones OCI; ``latest`` aliases the last
    version. Returns (tags, bytes of distinct blobs).
    """
    base = make_layer(sizes.scale_base, seed="scale:base")
    repos = scale_repos(sizes)

    def fill(index_repo: tuple[int, str]) -> dict[str, int]:
        index, repo = index_repo
        kind = "docker" if index % 2 == 0 else "oci"
        shared = make_layer(sizes.scale_repo_layer, seed=f"{repo}:shared")
        blobs: dict[str, int] = {}
        with Pusher(bench.hub.url, bench.hub_reader, timeout=120) as pusher:
            image = None
            for version in range(1, sizes.scale_versions + 1):
                own = make_layer(sizes.scale_tag_layer, seed=f"{repo}:v{version}")
                image = build_image(
                    kind,
                    layers=[base, shared, own],  # type: ignore[arg-type]
                    labels={"version": str(version)},
                )
                pusher.push(repo, image, f"v{version}")
                blobs.update({d: b.size for d, b in image.all_blobs().items()})
            assert image is not None
            pusher.push_manifest(repo, "latest", image)
        return blobs

    started = time.monotonic()
    distinct: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for blobs in pool.map(fill, enumerate(repos)):
            distinct.update(blobs)
    tags = len(repos) * (sizes.scale_versions + 1)
    print(
        f"scale: pushed {len(repos)} repositories, {tags} tags, {len(distinct)} distinct blobs "
        f"({sum(distinct.values()) / 1e6:.1f} MB) in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return tags, sum(distinct.values())


def run_scale(bench: Bench, sizes: Sizes, runs: int) -> list[Phase]:
    tags, distinct_bytes = fill_scale(bench, sizes)
    repos = scale_repos(sizes)
    expected = all_tag_digests(bench.hub.url, repos, bench.hub_reader)
    first, noop = Phase("scale", "first"), Phase("scale", "noop")
    versions = sizes.scale_versions
    first.expected = {"pulls": len(repos) * versions, "bytes": distinct_bytes, "tags": tags}
    noop.expected = {"pulls": 0, "bytes": 0, "target_writes": 0}
    timeout = TIMEOUT_S["scale"]
    for run in range(1, runs + 1):
        for tool in bench.tools:
            with RegistryProcess() as target, bench.tool_home(tool) as home:
                bench.run_tool(tool, run, first, home, repos, target, expected, timeout)
                bench.run_tool(tool, run, noop, home, repos, target, expected, timeout)
    return [first, noop]


# -- output -----------------------------------------------------------------------------------


METRICS: list[tuple[str, str, str]] = [
    # key, label, format
    ("wall_s", "wall s", "s"),  # a daemon run's: the job's own seconds (see run_daemon)
    ("wall_s_quiet", "wall s, quiet runs", "s"),
    ("job_s_metric", "job s, from /metrics", "s"),
    ("sched_to_line_s", "scheduled -> log line s", "s"),
    ("spawn_to_line_s", "spawn -> first job line s", "s"),
    ("tool_cpu_s", "CPU s (tool)", "{:.2f}"),
    ("registries_cpu_s", "CPU s (both registries)", "{:.2f}"),
    ("other_cpu_s", "CPU s (others' processes)", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("mb_per_s", "MB/s (moved/wall)", "{:.1f}"),
    ("upstream_manifest_gets", "upstream manifest GETs", "{:.0f}"),
    ("upstream_manifest_heads", "upstream manifest HEADs", "{:.0f}"),
    ("upstream_requests", "upstream requests", "{:.0f}"),
    ("upstream_401", "  of which 401", "{:.0f}"),
    ("token_requests", "token requests", "{:.0f}"),
    ("upstream_blob_bytes", "upstream blob MB read", "MB"),
    ("target_requests", "target requests", "{:.0f}"),
    ("target_writes", "target writes", "{:.0f}"),
    ("blobs_uploaded", "blobs uploaded", "{:.0f}"),
    ("blobs_mounted", "blobs mounted", "{:.0f}"),
    ("bytes_moved", "MB moved to target", "MB"),
]


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "MB":
        return f"{value / 1e6:.1f}"
    if spec == "s":  # seconds: milliseconds count below one
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return spec.format(value)


def ratio_columns(tools: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in RATIOS if a in tools and b in tools]


def ratio_name(num: str, den: str) -> str:
    return "b/a" if (num, den) == ("mirror-b", "mirror") else f"{num}/{den}"


def print_table(phases: list[Phase], tools: Sequence[str]) -> None:
    others = [
        t for t in ("mirror", "mirror-b", "skopeo", "curl") if any(t in p.runs for p in phases)
    ]
    ratios = ratio_columns(others)
    header = f"{'scenario':<18} {'metric':<26}" + "".join(f"{t:>26}" for t in others)
    header += "".join(f"{ratio_name(n, d):>16}" for n, d in ratios)
    print(header)
    print("-" * len(header))
    for phase in phases:
        for key, label, spec in METRICS:
            if key == "wall_s_quiet":
                values = {t: phase.quiet_median(t, "wall_s") for t in others}
                label = "wall s, quiet runs (n)"
            else:
                values = {t: phase.median(t, key) for t in others}
            if all(v is None for v in values.values()):
                continue
            cells = ""
            for t in others:
                cell = fmt(values[t], spec)
                if key == "wall_s_quiet" and values[t] is not None:
                    cell += f" ({phase.quiet_runs(t)})"
                spread = phase.spread(t, key) if key == "wall_s" else None
                if spread:
                    cell += f" [{fmt(spread[0], spec)}-{fmt(spread[1], spec)}]"
                cells += f"{cell:>26}"
            line = f"{phase.label:<18} {label:<26}{cells}"
            for num, den in ratios:
                a, b = values.get(num), values.get(den)
                line += f"{a / b:>16.2f}" if a is not None and b else f"{'-':>16}"
            print(line)
        print()
    if any(p.pair_ratios(n, d) for p in phases for n, d in ratios):
        print("per-pair ratios of wall s (pair: ratio), then their median:")
        for phase in phases:
            for num, den in ratios:
                pairs = phase.pair_ratios(num, den)
                if pairs:
                    listed = ", ".join(f"{run}: {r:.2f}" for run, r in pairs)
                    median = statistics.median(r for _, r in pairs)
                    print(
                        f"  {phase.label:<18} {ratio_name(num, den):<14} {listed}  "
                        f"(median {median:.2f})"
                    )
        print()


def check_targets(phases: list[Phase]) -> list[str]:
    """Issue 5's and issue 15's targets, each with the figures that decide it, and the A/B
    verdict of mirror-b against mirror."""
    by = {p.label: p for p in phases}
    notes: list[str] = []

    def mark(ok: bool) -> str:
        return "MEETS" if ok else "MISSES"

    def ratio_note(label: str, metric: str, bound: float, *, at_least: bool = False) -> None:
        phase = by.get(label)
        if phase is None:
            return
        m, s = phase.median("mirror", metric), phase.median("skopeo", metric)
        if m is None or s is None or not s:
            return
        ratio = m / s
        ok = ratio >= bound if at_least else ratio <= bound
        op = ">=" if at_least else "<="
        notes.append(
            f"{mark(ok)} {label}: {metric} mirror {m:.2f} / skopeo {s:.2f} = "
            f"{ratio:.2f} (target {op} {bound})"
        )

    for label in ("repo first", "repo noop", "repo incremental"):
        ratio_note(label, "wall_s", TARGET_REPO_RATIO)
    for label in ("scale first", "scale noop"):
        ratio_note(label, "wall_s", TARGET_SCALE_RATIO)
    for label in (
        "repo first",
        "repo incremental",
        "scale first",
        "daemon first",
        "daemon incremental",
    ):
        phase = by.get(label)
        if phase and phase.median("mirror", "upstream_manifest_gets") is not None:
            pulls = phase.median("mirror", "upstream_manifest_gets")
            want = phase.expected["pulls"]
            skopeo = phase.median("skopeo", "upstream_manifest_gets")
            notes.append(
                f"{mark(pulls == want)} {label}: mirror pulls {pulls:.0f} (distinct "
                f"manifests to fetch: {want}; skopeo {fmt(skopeo, '{:.0f}')})"
            )
    for label in ("repo noop", "scale noop", "daemon noop"):
        phase = by.get(label)
        if phase and phase.median("mirror", "wall_s") is not None:
            pulls = phase.median("mirror", "upstream_manifest_gets")
            writes = phase.median("mirror", "target_writes")
            notes.append(
                f"{mark(pulls == 0 and writes == 0)} {label}: mirror pulls {pulls:.0f}, "
                f"target writes {writes:.0f} (target 0 and 0)"
            )
    for label in (
        "repo first",
        "repo incremental",
        "scale first",
        "daemon first",
        "daemon incremental",
    ):
        phase = by.get(label)
        if phase and phase.median("mirror", "bytes_moved") is not None:
            moved = phase.median("mirror", "bytes_moved")
            want = phase.expected["bytes"]
            notes.append(
                f"{mark(moved == want)} {label}: mirror moved {moved:,.0f} bytes; "
                f"distinct blob bytes needed {want:,}"
                + (
                    f" (skopeo {phase.median('skopeo', 'bytes_moved'):,.0f})"
                    if phase.median("skopeo", "bytes_moved") is not None
                    else ""
                )
            )
    scale = by.get("scale first")
    if scale and scale.median("mirror", "token_requests") is not None:
        tokens = scale.median("mirror", "token_requests")
        notes.append(
            f"{mark(tokens < scale.expected['tags'] / 2)} scale first: mirror made "
            f"{tokens:.0f} token requests for {scale.expected['tags']} tags "
            f"(skopeo {fmt(scale.median('skopeo', 'token_requests'), '{:.0f}')})"
        )
    large = [p for p in phases if p.scenario == "large" and p.name != "curl-pipe"]
    if large:
        big, small = large[0], large[1]
        ratio_note(big.label, "mb_per_s", TARGET_LARGE_THROUGHPUT_RATIO, at_least=True)
        rss_big, rss_small = (
            big.median("mirror", "peak_rss_mb"),
            small.median("mirror", "peak_rss_mb"),
        )
        if rss_big is not None and rss_small is not None:
            notes.append(
                f"{mark(rss_big <= TARGET_LARGE_RSS_MB)} {big.label}: mirror peak RSS "
                f"{rss_big:.1f} MB (target <= {TARGET_LARGE_RSS_MB:.0f}); {small.label}: "
                f"{rss_small:.1f} MB (should be about the same)"
            )
        pipe = by.get("large curl-pipe")
        curl = pipe.median("curl", "mb_per_s") if pipe else None
        if curl:
            for tool in ("mirror", "skopeo"):
                rate = big.median(tool, "mb_per_s")
                if rate:
                    notes.append(
                        f"INFO {big.label}: {tool} {rate:.0f} MB/s = {rate / curl:.2f} "
                        f"of the raw curl pipe ({curl:.0f} MB/s)"
                    )
    for name, bound in TARGET_DAEMON_RATIO.items():
        phase = by.get(f"daemon {name}")
        if phase is None:
            continue
        job, whole = phase.median("mirror", "wall_s"), phase.median("skopeo", "wall_s")
        if job is None or not whole:
            continue
        pairs = [r for _, r in phase.pair_ratios("mirror", "skopeo")]
        per_pair = ", ".join(f"{r:.2f}" for r in pairs)
        notes.append(
            f"{mark(job / whole <= bound)} {phase.label}: mirror run's job {job:.3f} s "
            f"(median) / skopeo's whole run {whole:.2f} s = {job / whole:.2f} (target <= "
            f"{bound}; per pair {per_pair}, their median "
            f"{statistics.median(pairs) if pairs else float('nan'):.2f}; {len(pairs)} pairs)"
        )
    for phase in phases:
        pairs = [r for _, r in phase.pair_ratios("mirror-b", "mirror")]
        a, b = phase.median("mirror", "wall_s"), phase.median("mirror-b", "wall_s")
        if not pairs or a is None or b is None or not a:
            continue
        ratio = b / a
        verdict = (
            f"b within {100 * (AB_TOLERANCE - 1):.0f} % or faster"
            if ratio <= AB_TOLERANCE
            else f"b slower by {100 * (ratio - 1):.0f} %"
        )
        throughput = ""
        ma, mb = phase.median("mirror", "mb_per_s"), phase.median("mirror-b", "mb_per_s")
        if phase.scenario == "large" and ma and mb:
            throughput = f"; throughput b/a {mb / ma:.2f} ({mb:.0f} / {ma:.0f} MB/s)"
        notes.append(
            f"A/B {phase.label}: wall b/a = {b:.3f} / {a:.3f} s = {ratio:.3f}: {verdict} "
            f"(per pair {', '.join(f'{r:.2f}' for r in pairs)}, their median "
            f"{statistics.median(pairs):.2f}; {len(pairs)} pairs{throughput})"
        )
    return notes


# -- machine and versions ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    for name, argv in (
        ("skopeo", [SKOPEO, "--version"]),
        ("docker_registry", ["/usr/bin/docker-registry", "--version"]),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info[name] = subprocess.run(
                argv, capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return info


def source_fingerprint(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_mirror(mode: str, scratch: Path, name: str = "mirror") -> MirrorSource:
    """The command that starts mirror, its extra environment, and what source it runs.

    ``name`` is the tool (``mirror`` or ``mirror-b``): each gets its own snapshot directory.
    """
    git = ["git", "-C", str(ROOT)]
    meta: dict[str, Any] = {"mode": mode}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        meta["git_head"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        meta["git_dirty"] = subprocess.run(
            [*git, "status", "--porcelain", "--", "mirror"], capture_output=True, text=True
        ).stdout.split("\n")
        meta["git_dirty"] = [line for line in meta["git_dirty"] if line]
    if mode == "live":
        meta["source"] = str(ROOT / "mirror")
        meta["fingerprint"] = source_fingerprint(ROOT / "mirror")
        command, extra_env, package = mirror_argv(), {}, ROOT / "mirror"
    else:
        src = scratch / f"{name}-src"
        src.mkdir()
        if mode == "snapshot":
            shutil.copytree(
                ROOT / "mirror", src / "mirror", ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            rev = "HEAD" if mode == "head" else mode.removeprefix("git:")
            meta["git_rev"] = subprocess.run(
                [*git, "rev-parse", "--short", rev], capture_output=True, text=True, check=True
            ).stdout.strip()
            archive = subprocess.run(
                [*git, "archive", rev, "mirror"], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "mirror")], check=True)
        meta["source"] = f"{mode} of {ROOT / 'mirror'}"
        meta["fingerprint"] = source_fingerprint(src / "mirror")
        command, extra_env, package = (
            [sys.executable, "-m", "mirror"],
            {"PYTHONPATH": str(src)},
            src / "mirror",
        )
    # Check which mirror a run really imports (from a neutral cwd, as the runs are started).
    probe = subprocess.run(
        [sys.executable, "-c", "import mirror; print(mirror.__file__)"],
        env=clean_env(scratch, **extra_env),
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = Path(probe.stdout.strip()).parent
    if imported != package:
        raise SystemExit(f"runs would import mirror from {imported}, not {package}")
    meta["imported_from"] = str(imported)
    return MirrorSource(command, extra_env, meta)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario", choices=["repo", "large", "scale", "daemon", "all"], default="all"
    )
    parser.add_argument("--runs", type=int, help="runs per tool (default 3; 1 with --quick)")
    parser.add_argument("--large-runs", type=int, help="runs per tool for large (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--tools",
        default="mirror,skopeo",
        help="comma-separated, from mirror, mirror-b, skopeo (default mirror,skopeo); they "
        "alternate in that order",
    )
    parser.add_argument(
        "--mirror-src",
        default="live",
        metavar="live|snapshot|head|git:REV",
        help="which mirror/ to run: the checkout as it is (default), a copy taken at start, "
        "or a commit",
    )
    parser.add_argument(
        "--mirror-b-src",
        metavar="live|snapshot|head|git:REV",
        help="the mirror/ that tool mirror-b runs (an A/B against --mirror-src); adds "
        "mirror-b to --tools when it is not there",
    )
    parser.add_argument(
        "--daemon-interval",
        type=float,
        default=8.0,
        metavar="S",
        help="daemon scenario: the entry's interval (default 8: longer than mirror's 5 s "
        "keep-alive, so every run opens its connections as a run hours apart does)",
    )
    parser.add_argument(
        "--daemon-token-lifetime",
        type=int,
        default=4,
        metavar="S",
        help="daemon scenario: the token server's token lifetime (default 4, so every "
        "scheduled run logs in again as a run hours apart does; 0 keeps its 300 s)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        metavar="S",
        help="before each run wait up to S seconds for the machine to be "
        f"under {QUIET_BUSY_PCT:.0f}%% busy (default 60)",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--mirror-src", args.mirror_src), ("--mirror-b-src", args.mirror_b_src)):
        if (
            value is not None
            and value not in ("live", "snapshot", "head")
            and not (value.startswith("git:"))
        ):
            parser.error(f"{flag}: live, snapshot, head or git:REV")
    if args.daemon_interval <= 0 or args.daemon_token_lifetime < 0:
        parser.error("--daemon-interval must be positive, --daemon-token-lifetime 0 or more")

    sizes = Sizes.quick() if args.quick else Sizes.full()
    runs = args.runs or (1 if args.quick else 3)
    large_runs = args.large_runs or (1 if args.quick else min(runs, 2))
    tools = [t for t in args.tools.split(",") if t]
    if args.mirror_b_src is not None and "mirror-b" not in tools:
        tools.insert(tools.index("mirror") + 1 if "mirror" in tools else 0, "mirror-b")
    if "mirror-b" in tools and args.mirror_b_src is None:
        parser.error("--tools mirror-b needs --mirror-b-src (which mirror/ it runs)")
    notes: list[str] = []
    if "skopeo" in tools and not Path(SKOPEO).exists():
        tools.remove("skopeo")
        notes.append(f"{SKOPEO} is not installed: mirror only, no ratios")
    if not set(tools) <= set(TOOLS) or not tools:
        parser.error(f"--tools: choose from {', '.join(TOOLS)}")
    scenarios = ["repo", "large", "scale", "daemon"] if args.scenario == "all" else [args.scenario]
    if "large" in scenarios:
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if free < 3 * sizes.large:
            parser.error(
                f"large needs about {3 * sizes.large / 1e9:.1f} GB free in "
                f"{tempfile.gettempdir()}; {free / 1e9:.1f} GB free"
            )

    phases: list[Phase] = []
    started = time.time()
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compare-")))
        mirrors = {
            tool: prepare_mirror(src, scratch, tool)
            for tool, src in (("mirror", args.mirror_src), ("mirror-b", args.mirror_b_src))
            if tool in tools and src is not None
        }
        tokens = stack.enter_context(TokenServer())
        hub = stack.enter_context(HubRegistry(tokens))
        bench = Bench(args, tokens, hub, scratch, tools, mirrors)
        print(f"upstream {hub.host} (token auth, user {HUB_USER}); tools {', '.join(tools)}")
        for tool, source in mirrors.items():
            print(
                f"  {tool}: {' '.join(source.command)} ({source.meta['source']}"
                f"{', ' + source.meta['git_rev'] if 'git_rev' in source.meta else ''}, "
                f"{source.meta['fingerprint']})",
                flush=True,
            )
        runners = {
            "repo": (run_repo, runs),
            "large": (run_large, large_runs),
            "scale": (run_scale, runs),
            "daemon": (run_daemon, runs),
        }
        for scenario in scenarios:
            runner, count = runners[scenario]
            phases.extend(runner(bench, sizes, count))
    elapsed = time.time() - started

    print()
    print_table(phases, tools)
    failed = [
        f"{p.label} {r.tool} run {r.run}: {r.error}"
        for p in phases
        for records in p.runs.values()
        for r in records
        if not r.ok
    ]
    notes += check_targets(phases)
    if any(p.scenario == "daemon" for p in phases):
        notes.append(
            "daemon phases: mirror's (and mirror-b's) wall s is the job run's own seconds from "
            'the daemon\'s "job run" line (no process start-up; first includes connecting '
            "and logging in), equal to the growth of mirror_job_duration_seconds_sum; "
            "skopeo's is its whole process. spawn -> first job line is mirror's whole first "
            "run, start-up included"
        )
    for p in phases:
        for records in p.runs.values():
            for r in records:
                if not r.metrics.get("wall_s") and not r.metrics.get("window_s"):
                    continue  # a run that never happened (its daemon failed before it)
                share = others_share(r)
                if share > NOISY_SHARE:
                    notes.append(
                        f"NOISY {p.label} {r.tool} run {r.run}: other processes on "
                        f"the machine used {100 * share:.0f}% of its CPU during the run"
                    )
    notes += [f"FAILED RUN {f}" for f in failed]
    notes.append(
        "counts come from the registries' access logs; bytes moved = sizes of blobs whose "
        "upload the target completed (PUT ?digest= 201); medians over successful runs"
    )
    print("notes:")
    for note in notes:
        print(f"  - {note}")

    document = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(elapsed, 1),
        "machine": machine(),
        "mirror": mirrors["mirror"].meta if "mirror" in mirrors else None,
        "mirror_b": mirrors["mirror-b"].meta if "mirror-b" in mirrors else None,
        "sizes": sizes.__dict__,
        "runs": {"repo": runs, "scale": runs, "large": large_runs, "daemon": runs},
        "daemon": {
            "interval_s": args.daemon_interval,
            "token_lifetime_s": args.daemon_token_lifetime or None,
        },
        "notes": notes,
        "phases": [
            {
                "scenario": p.scenario,
                "phase": p.name,
                "expected": p.expected,
                "medians": {
                    t: {
                        k: p.quiet_median(t, "wall_s") if k == "wall_s_quiet" else p.median(t, k)
                        for k, _, _ in METRICS
                    }
                    for t in p.runs
                },
                "runs": [r.__dict__ for records in p.runs.values() for r in records],
            }
            for p in phases
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str))
    print(f"\nresults written to {args.out} ({elapsed:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
