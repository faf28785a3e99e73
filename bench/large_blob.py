"""Benchmark: copy one image with a large incompressible layer; print wall time, MB/s, peak RSS.

Starts the same real registries the integration tests use (a Docker-Hub-like upstream with
token auth, a plain local target), pushes an image whose layer is LAYER_MIB of random bytes,
then runs ``mirror sync`` in a subprocess and reads its peak RSS from the kernel
(``getrusage(RUSAGE_CHILDREN)``), so the figure is the whole process, interpreter included.

    .venv/bin/python bench/large_blob.py [--layer-mib 512] [--runs 1]

Needs Debian's docker-registry (``bash tests/run`` installs it) and about 3x the layer size
of free disk in /tmp.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import Blob, Pusher, build_image
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry, TokenServer

MIB = 1024 * 1024
RSS_LIMIT_MB = 100  # issue 2's bar for a 512 MiB layer


def random_layer(size: int) -> Blob:
    """A layer of ``size`` random bytes (incompressible), as a Blob."""
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Blob(data=data, digest=digest, diff_id=digest)  # an uncompressed layer


def push_streaming(hub: HubRegistry, repo: str, layer: Blob) -> None:
    """Push the big layer in 8 MiB PATCH chunks, so the fixture's own memory stays sane."""
    token = hub.token_getter("tester")([f"repository:{repo}:pull,push"])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=hub.url, headers=headers, timeout=300) as client:
        started = client.post(f"/v2/{repo}/blobs/uploads/")
        location = started.headers["location"]
        view = memoryview(layer.data)
        for offset in range(0, len(view), 8 * MIB):
            chunk = view[offset : offset + 8 * MIB]
            response = client.patch(
                location,
                content=bytes(chunk),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
            )
            response.raise_for_status()
            location = response.headers["location"]
        separator = "&" if "?" in location else "?"
        done = client.put(f"{location}{separator}digest={layer.digest}")
        done.raise_for_status()


def peak_rss_mb(pid: int, stop: threading.Event, result: list[float]) -> None:
    """Poll the child's VmHWM (its own peak RSS) until it exits.

    Not ``wait4``'s ru_maxrss: Linux carries the parent's high-water mark across fork/vfork
    and exec into the child, so that figure would include this script's own memory.
    """
    peak = 0
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        stop.wait(0.02)
    result.append(peak / 1024)


def run_sync(source: str, target: str, home: Path) -> tuple[float, float, dict[str, object]]:
    """Run ``mirror sync`` once; return (wall seconds, peak RSS in MB, the JSON report)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env.update(HOME=str(home), DOCKER_CONFIG=str(home / ".docker"))
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "mirror", "sync", source, "--to", target, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=peak_rss_mb, args=(child.pid, stop, peak))
    watcher.start()
    out, err = child.communicate()
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    if child.returncode != 0:
        raise SystemExit(f"mirror sync failed ({child.returncode}): {err.decode()}")
    return wall, peak[0], json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp:
        home = Path(tmp)
        with TokenServer() as tokens, HubRegistry(tokens) as hub:
            print(f"pushing a {args.layer_mib} MiB random layer to the hub at {hub.host} ...")
            layer = random_layer(args.layer_mib * MIB)
            image = build_image("oci", layers=[layer])
            push_streaming(hub, "bench/large", layer)
            with Pusher(hub.url, hub.token_getter("tester")) as pusher:
                pusher.push("bench/large", image, "v1")
            del layer, image  # the benchmark's own process should not hold the layer

            for run in range(1, args.runs + 1):
                with RegistryProcess() as local:
                    wall, rss, report = run_sync(f"{hub.host}/bench/large:v1", local.host, home)
                mb = float(report["bytes_copied"]) / 1e6  # type: ignore[arg-type]
                print(
                    f"run {run}: {mb:.1f} MB in {wall:.2f} s = {mb / wall:.1f} MB/s wall, "
                    f"peak RSS {rss:.1f} MB (limit {RSS_LIMIT_MB} MB)"
                )
                if rss > RSS_LIMIT_MB:
                    print(f"FAIL: peak RSS {rss:.1f} MB is over {RSS_LIMIT_MB} MB")
                    return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
