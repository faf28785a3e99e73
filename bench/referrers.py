"""Benchmark: what carrying signatures costs a run, in requests, pulls and time.

A plain source registry holds N multi-platform indexes (two images each), every index signed
and attested and every image signed as ``cosign sign --recursive`` leaves them
(``sha256-<hex>.sig``/``.att``: 4 referrer tags a tag). ``mirror sync`` copies the repository
into a fresh target twice (a first run, then a no-op run), with referrers carried and with
``--no-referrers``; the registries' access logs give the requests and manifest GETs (what
Docker Hub counts as pulls).

    .venv/bin/python bench/referrers.py [--tags 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import clean_env, mirror_argv
from tests.support.artifacts import cosign_attestation, cosign_signature, schema_tag
from tests.support.images import Pusher, build_index
from tests.support.registry import RegistryProcess


def fill(source: RegistryProcess, repo: str, tags: int) -> int:
    """Push ``tags`` signed indexes; the number of referrer tags pushed."""
    referrers = 0
    with Pusher(source.url) as pusher:
        for i in range(tags):
            index = pusher.push(repo, build_index("oci", seed=f"{repo}:{i}"), f"1.{i}.0")
            pusher.push(
                repo, cosign_signature(index.digest, f"s{i}"), schema_tag(index.digest) + ".sig"
            )
            pusher.push(
                repo, cosign_attestation(index.digest, f"a{i}"), schema_tag(index.digest) + ".att"
            )
            for child in index.children:
                pusher.push(
                    repo,
                    cosign_signature(child.digest, child.digest),
                    schema_tag(child.digest) + ".sig",
                )
            referrers += 2 + len(index.children)
    return referrers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=10)
    args = parser.parse_args()
    repo = "bench/signed"
    with tempfile.TemporaryDirectory() as home, RegistryProcess() as source:
        referrers = fill(source, repo, args.tags)
        print(f"{args.tags} tags, {referrers} referrer tags")
        print(
            f"{'mode':16}{'run':8}{'source req':>11}{'HEAD':>6}{'pulls':>7}"
            f"{'target req':>12}{'target GET':>12}{'carried':>9}{'seconds':>9}"
        )
        for mode, extra in (("referrers", []), ("--no-referrers", ["--no-referrers"])):
            with RegistryProcess() as target:
                for run in ("first", "no-op"):
                    hub_since, local_since = source.log_mark(), target.log_mark()
                    began = time.monotonic()
                    done = subprocess.run(
                        [
                            *mirror_argv(),
                            "sync",
                            f"{source.host}/{repo}",
                            "--to",
                            target.host,
                            "--json",
                            *extra,
                        ],
                        env=clean_env(Path(home)),
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    seconds = time.monotonic() - began
                    report = json.loads(done.stdout)
                    print(
                        f"{mode:16}{run:8}{len(source.requests_since(hub_since)):>11}"
                        f"{source.count_requests('HEAD', since=hub_since):>6}"
                        f"{source.count_requests('GET', '/manifests/', since=hub_since):>7}"
                        f"{len(target.requests_since(local_since)):>12}"
                        f"{target.count_requests('GET', '/manifests/', since=local_since):>12}"
                        f"{report['referrers_copied']:>9}{seconds:>9.2f}"
                    )


if __name__ == "__main__":
    main()
