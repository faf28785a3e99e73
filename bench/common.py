"""Shared pieces of the benchmarks: running a tool and measuring it, reading registry logs,
pushing large random blobs without holding them in memory.

Owns measurement plumbing only. It knows nothing of mirror's internals: tools are run as
subprocesses and judged by wall time, their own peak RSS and what the registries logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import OCI_CONFIG, OCI_MANIFEST, Blob, Image, make_config, sha256_digest
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import DEFAULT_USERS, HubRegistry

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
HUB_USER = "tester"
HUB_PASSWORD = DEFAULT_USERS[HUB_USER]
PUSH_CHUNK_BYTES = 8 * MIB  # PATCH size when pushing a generated large blob
RSS_POLL_S = 0.01  # VmHWM is a high-water mark: a poll can only miss the last few ms of growth
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: random bytes

# distribution's access log (combined log format); same shape tests.support.registry reads,
# plus the response size, which that module does not keep.
_ACCESS_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<proto>[^"]+)" '
    r"(?P<status>\d{3}) (?P<size>\S+)"
    r'(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)
_PROBE_AGENT = "tests-support-readiness-probe"


# -- registry logs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request from a registry's access log; ``size`` is the response body's bytes."""

    method: str
    path: str
    status: int
    size: int

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def route(self) -> str:
        return urlsplit(self.path).path


def log_entries(registry: RegistryProcess, since: int) -> list[LogEntry]:
    """Every request the registry logged after byte offset ``since`` (readiness probes left out).

    Settles the log first: distribution writes a line just after it answers.
    """
    registry.settle_log()
    with registry.access_log_path.open("rb") as fh:
        fh.seek(since)
        data = fh.read()
    entries = []
    for raw in data.split(b"\n")[:-1]:
        match = _ACCESS_LINE.match(raw.decode("utf-8", errors="replace"))
        if match is None or match["agent"] == _PROBE_AGENT:
            continue
        size = int(match["size"]) if match["size"].isdigit() else 0
        entries.append(LogEntry(match["method"], match["path"], int(match["status"]), size))
    return entries


def blob_data_path(registry: RegistryProcess, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    hexpart = digest.split(":", 1)[1]
    return registry.storage_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def completed_uploads(entries: Iterable[LogEntry]) -> list[str]:
    """Digests of blob uploads the registry completed (``PUT ...?digest=`` answered 201)."""
    digests = []
    for entry in entries:
        if entry.method == "PUT" and entry.status == 201 and "/blobs/uploads/" in entry.route:
            digest = entry.query.get("digest", [""])[0]
            if digest:
                digests.append(unquote(digest))
    return digests


def completed_mounts(entries: Iterable[LogEntry]) -> int:
    """Cross-repository mounts the registry performed (``POST ?mount=`` answered 201)."""
    return sum(1 for e in entries if e.method == "POST" and e.status == 201 and "mount" in e.query)


# -- running a tool ---------------------------------------------------------------------------


def _watch_peak_rss(pid: int, stop: threading.Event, result: list[float]) -> None:
    """Poll the process's VmHWM (its own peak RSS, in kB) until it exits.

    Not ``wait4``'s ru_maxrss: Linux carries the parent's high-water mark across fork/vfork
    and exec into the child, so that figure would include the benchmark's own memory.
    """
    peak = 0
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            break
        if stop.wait(RSS_POLL_S):
            break
    result.append(peak / 1024)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _stat_fields(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None


def others_cpu_s(exclude: set[int]) -> tuple[float, float]:
    """CPU seconds used so far by (user processes, kernel threads) other than ``exclude``,
    this process and its children.

    A process's own time plus its reaped children's, so work that a still-running parent
    (another session's pytest) spawned and reaped is counted too; differences of two calls
    are what ran in between. Kernel threads (writeback, journal) are reported apart: the
    registries' disk writes cause some of theirs.
    """
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == me:
            continue
        fields = _stat_fields(entry.name)
        if fields is None or int(fields[1]) == me:  # fields[1] is the parent's pid
            continue
        used = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        if entry.name == "2" or fields[1] == "2":
            kernel += used
        else:
            user += used
    return user / tick, kernel / tick


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot, all CPUs summed."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is already counted in user
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    """One tool run: wall seconds (start-up included), peak RSS in MB, CPU seconds (user +
    system, from the kernel's accounting of the reaped child), exit code and output."""

    argv: list[str]
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run_measured(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
) -> Measured:
    """Run ``argv`` once and measure it; on timeout kill its process group and say so."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,  # its own group, so a timeout can end it and its children
    )
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=_watch_peak_rss, args=(child.pid, stop, peak), daemon=True)
    watcher.start()
    timed_out = False
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop.set()
    watcher.join()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(
        list(argv),
        wall,
        peak[0] if peak else 0.0,
        cpu,
        child.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        timed_out,
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment minus anything that could point a tool at real credentials or
    config (MIRROR_*, DOCKER_*, REGISTRY_AUTH_FILE, XDG dirs), with a throwaway HOME."""
    dropped = ("MIRROR_", "DOCKER_", "REGISTRY_AUTH", "XDG_", "CONTAINERS_", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(HOME=str(home), DOCKER_CONFIG=str(home / ".docker"), **extra)
    return env


def mirror_argv() -> list[str]:
    """How to start mirror: the venv's console script next to this interpreter, as a user would."""
    script = Path(sys.executable).parent / "mirror"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mirror"]


# -- large random blobs -----------------------------------------------------------------------


def push_random_blob(
    hub: HubRegistry, repo: str, size: int, *, chunk: int = PUSH_CHUNK_BYTES
) -> str:
    """Push ``size`` random (incompressible) bytes as a blob in PATCH chunks; return its digest.

    The bytes are generated and hashed chunk by chunk, so the benchmark never holds the blob.
    """
    token = hub.token_getter(HUB_USER)([f"repository:{repo}:pull,push"])
    headers = {"Authorization": f"Bearer {token}"}
    hasher = hashlib.sha256()
    with httpx.Client(base_url=hub.url, headers=headers, timeout=300) as client:
        started = client.post(f"/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["location"]
        offset = 0
        while offset < size:
            data = os.urandom(min(chunk, size - offset))
            hasher.update(data)
            response = client.patch(
                location,
                content=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}",
                },
            )
            response.raise_for_status()
            location = response.headers["location"]
            offset += len(data)
        digest = "sha256:" + hasher.hexdigest()
        separator = "&" if "?" in location else "?"
        done = client.put(f"{location}{separator}digest={digest}")
        done.raise_for_status()
    return digest


def single_layer_image(layer_digest: str, layer_size: int) -> Image:
    """An OCI image manifest (with its config) for one uncompressed layer already pushed.

    Built by hand because ``tests.support.images.Blob`` holds its bytes; here only the
    layer's digest and size are known. The layer's diff_id is its digest (uncompressed).
    """
    stub = Blob(data=b"", digest=layer_digest, diff_id=layer_digest)  # make_config reads diff_id
    config = make_config([stub])
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": OCI_LAYER_TAR, "size": layer_size, "digest": layer_digest}],
    }
    raw = json.dumps(document, indent=3).encode()
    return Image(media_type=OCI_MANIFEST, raw=raw, digest=sha256_digest(raw), config=config)
