"""Benchmark: how long ``mirror sync`` takes from being started to its first request.

A stub registry on loopback answers every request with 404 and notes when the first one of
each run arrives; ``mirror sync`` is spawned against it, with and without a config file (a
config brings in pydantic), and the time from ``Popen`` to that first request is the
figure: interpreter start-up, imports, config and TLS set-up included. Prints the median and
best of N runs, and the slowest imports of one run (``python -X importtime``).

    .venv/bin/python bench/startup.py [--runs 15] [--mirror-src live|git:REV]
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent


class _FirstRequest(http.server.BaseHTTPRequestHandler):
    arrivals: ClassVar[list[float]] = []

    def _answer(self) -> None:
        _FirstRequest.arrivals.append(time.monotonic())
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        return None


def measure(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds from spawning ``argv`` to the stub's first request."""
    _FirstRequest.arrivals.clear()
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proc.wait(30)
    if not _FirstRequest.arrivals:
        raise SystemExit(f"{' '.join(argv)} made no request")
    return _FirstRequest.arrivals[0] - started


def source_tree(spec: str, scratch: Path) -> Path:
    """The directory whose ``mirror/`` is imported: the checkout, or a commit's copy."""
    if spec == "live":
        return ROOT
    rev = spec.removeprefix("git:")
    target = scratch / f"src-{rev}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "mirror"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--mirror-src", default="live")
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FirstRequest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        src = source_tree(args.mirror_src, scratch)
        config = scratch / "mirror.toml"
        config.write_text(
            f'target = "{host}"\n[registries."{host}"]\nusername = "u"\npassword_env = "PW"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "DOCKER_"))}
        env.update(HOME=str(scratch), PYTHONPATH=str(src), PW="x", PYTHONDONTWRITEBYTECODE="")
        base = [sys.executable, "-m", "mirror", "sync", f"{host}/team/app:v1", "--to", host]
        cases = {"no config": base, "with a config": [*base, "--config", str(config)]}
        measure(base, env, scratch)  # warm the page cache and the .pyc files
        print(f"mirror from {args.mirror_src}; {args.runs} runs each; spawn -> first request")
        for name, argv in cases.items():
            times = [measure(argv, env, scratch) for _ in range(args.runs)]
            print(
                f"  {name:<14} median {statistics.median(times):.3f} s, "
                f"best {min(times):.3f} s, worst {max(times):.3f} s"
            )
        bare = [
            measure(
                [sys.executable, "-c", f"import urllib.request as u; u.urlopen('http://{host}/')"],
                env,
                scratch,
            )
            for _ in range(args.runs)
        ]
        print(f"  {'python + urllib':<14} median {statistics.median(bare):.3f} s (the floor)")
        report = subprocess.run(
            [sys.executable, "-X", "importtime", *cases["with a config"][1:]],
            env=env,
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=30,
        ).stderr
        rows = []
        for line in report.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), parts[2].rstrip()))
        print("  slowest imports (cumulative ms, with a config):")
        tops = [r for r in rows if not r[1].startswith("   ")]  # top-level imports only
        for cumulative, name in sorted(tops, reverse=True)[:8]:
            print(f"    {cumulative / 1000:7.1f}  {name.strip()}")
    server.shutdown()


if __name__ == "__main__":
    main()
