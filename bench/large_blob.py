"""Benchmark: copy one image with a large incompressible layer; print wall time, MB/s, peak RSS.

Starts the same real registries the integration tests use (a Docker-Hub-like upstream with
token auth, a plain local target), pushes an image whose layer is LAYER_MIB of random bytes
(generated and pushed in chunks, never held in memory), then runs ``mirror sync`` in a
subprocess and polls its VmHWM (the process's own peak RSS), so the figure is the whole
process, interpreter included.

    .venv/bin/python bench/large_blob.py [--layer-mib 512] [--runs 1]

Needs Debian's docker-registry (``bash tests/run`` installs it) and about 3x the layer size
of free disk in /tmp. ``bench/compare.py`` runs the same copy side by side with skopeo.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HUB_USER,
    MIB,
    clean_env,
    mirror_argv,
    push_random_blob,
    run_measured,
    single_layer_image,
)
from tests.support.images import Pusher
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry, TokenServer

RSS_LIMIT_MB = 100  # issue 2's bar for a 512 MiB layer
RUN_TIMEOUT_S = 1800


def run_sync(source: str, target: str, home: Path) -> tuple[float, float, dict[str, object]]:
    """Run ``mirror sync`` once; return (wall seconds, peak RSS in MB, the JSON report)."""
    run = run_measured(
        [*mirror_argv(), "sync", source, "--to", target, "--json"],
        clean_env(home),
        timeout_s=RUN_TIMEOUT_S,
    )
    if run.returncode != 0:
        raise SystemExit(f"mirror sync failed ({run.returncode}): {run.stderr}")
    return run.wall_s, run.peak_rss_mb, json.loads(run.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp:
        home = Path(tmp)
        with TokenServer() as tokens, HubRegistry(tokens) as hub:
            print(f"pushing a {args.layer_mib} MiB random layer to the hub at {hub.host} ...")
            size = args.layer_mib * MIB
            digest = push_random_blob(hub, "bench/large", size)
            with Pusher(hub.url, hub.token_getter(HUB_USER)) as pusher:
                pusher.push("bench/large", single_layer_image(digest, size), "v1")

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
