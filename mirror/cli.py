"""The ``mirror`` command: argument parsing, exit codes, progress display and output.

The only module that calls ``asyncio.run``. Exit codes: 0 every selected tag is in sync,
1 something failed (one line per failure on stderr), 2 usage or config errors. Heavy imports
wait until a command runs, so ``mirror --help`` and no-op syncs start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirror.copy import CopyReport
    from mirror.jobs import SyncRequest
    from mirror.reference import Digest

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror",
        description="Mirror container images into a local registry, copying only what is missing.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sync = commands.add_parser(
        "sync",
        help="copy images once, now",
        description=(
            "Copy images into the target registry. REF without a tag means every tag of that "
            "repository; with a tag, that tag; with a digest, that manifest."
        ),
    )
    sync.add_argument("refs", nargs="+", metavar="REF", help="e.g. diamol/golang, golang:1.22")
    sync.add_argument(
        "--to",
        metavar="TARGET",
        help="a registry (localhost:5000: repository paths kept) or one repository "
        "(registry.local:5000/gallery/ui); default: the config's target, else localhost:5000",
    )
    sync.add_argument("--config", metavar="FILE", help="TOML config (default: $MIRROR_CONFIG)")
    sync.add_argument("--dry-run", action="store_true", help="report what would move; move nothing")
    sync.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sync.add_argument(
        "--concurrency", type=int, metavar="N", help="blob transfers at once (default 4)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mirror.errors import MirrorError

    try:
        if args.command == "sync":
            return asyncio.run(_sync(args))
    except MirrorError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted; tags already written are complete, nothing else was tagged")
        return 130
    return EXIT_USAGE


def resolve_requests(refs: list[str], target_text: str) -> list[SyncRequest]:
    """Pair each source REF with its target repository.

    TARGET that names only a registry keeps each source's repository path; TARGET naming a
    repository takes exactly one REF. Raises InvalidReference or ConfigError (exit code 2).
    """
    from mirror.errors import ConfigError
    from mirror.jobs import SyncRequest
    from mirror.reference import (
        is_registry_host,
        parse_reference,
        parse_repository,
        validate_registry,
    )

    sources = [parse_reference(ref) for ref in refs]
    if "/" not in target_text and is_registry_host(target_text):
        validate_registry(target_text, target_text)
        registry = target_text
        return [SyncRequest(s, parse_repository(f"{registry}/{s.repository}")) for s in sources]
    target = parse_repository(target_text)
    if "/" not in target_text:
        raise ConfigError(
            f"target {target_text!r} is neither a registry (host:port) nor a repository "
            "(host:port/path)"
        )
    if len(sources) > 1:
        raise ConfigError(
            f"target {target_text} is one repository; give one REF, or a registry as the target"
        )
    return [SyncRequest(sources[0], target)]


async def _sync(args: argparse.Namespace) -> int:
    from mirror.config import config_path, load_config
    from mirror.copy import Copier, CopyReport
    from mirror.errors import MirrorError
    from mirror.jobs import Clients, sync

    config = load_config(config_path(args.config))
    requests = resolve_requests(args.refs, args.to or config.target)
    concurrency = config.concurrency if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise MirrorError("--concurrency must be at least 1")

    started = time.monotonic()
    clients = Clients(config)
    report = CopyReport(dry_run=args.dry_run)
    show_progress = sys.stderr.isatty() and not args.json
    display = _ProgressDisplay() if show_progress else None
    try:
        if failure := await _preflight(clients, requests):
            _error(failure)
            return EXIT_FAILED
        for source_name, target_name in sorted(
            {(r.source.registry, r.target.registry) for r in requests}
        ):
            copier = Copier(
                clients.get(source_name),
                clients.get(target_name),
                concurrency=concurrency,
                dry_run=args.dry_run,
                progress=display,
                report=report,
            )
            batch = [
                r
                for r in requests
                if (r.source.registry, r.target.registry) == (source_name, target_name)
            ]
            if display:
                display.start()
            try:
                await asyncio.gather(*(sync(copier, r) for r in batch))
            finally:
                if display:
                    display.stop()
    finally:
        await clients.aclose()
    elapsed = time.monotonic() - started

    if args.json:
        document = report.as_dict()
        document["seconds"] = round(elapsed, 3)
        print(json.dumps(document))
    else:
        _print_report(report, elapsed)
    for result in report.tags:
        if result.status == "failed":
            _error(f"{result.source}: {result.error}")
    return EXIT_FAILED if report.tags_failed else EXIT_OK


async def _preflight(clients: Any, requests: list[SyncRequest]) -> str | None:
    """Ping every registry involved once, so an unreachable one is one line, not one per tag."""
    from mirror.errors import MirrorError

    names = sorted({r.source.registry for r in requests} | {r.target.registry for r in requests})
    outcomes = await asyncio.gather(
        *(clients.get(name).ping() for name in names), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, MirrorError):
            return str(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
    return None


def _print_report(report: CopyReport, elapsed: float) -> None:
    verb = {"copied": "copied", "skipped": "in sync", "failed": "FAILED", "planned": "would copy"}
    for result in report.tags:
        line = f"{verb[result.status]:<10} {result.source} -> {result.target}"
        if result.digest:
            line += f"  {result.digest[:19]}"
        if result.status in ("copied", "planned") and (
            result.blobs_missing or result.bytes_missing
        ):
            line += f"  {result.blobs_missing} blobs, {_size(result.bytes_missing)}"
        print(line)
    would = "would be " if report.dry_run else ""
    print(
        f"{report.tags_checked} tags: {report.tags_copied} {would}copied, "
        f"{report.tags_skipped} in sync, {report.tags_failed} failed; "
        f"blobs: {report.blobs_copied} {would}copied ({_size(report.bytes_copied)}), "
        f"{report.blobs_mounted} mounted, {report.blobs_present} already present; "
        f"{report.manifests_pushed} manifests {would}pushed; "
        f"{report.upstream_manifest_gets} upstream manifest GETs; {elapsed:.1f} s"
    )


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _error(message: str) -> None:
    print(f"mirror: error: {message}", file=sys.stderr)


class _ProgressDisplay:
    """Progress bars on a terminal (rich), one per blob in flight and one for the total."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def blob_started(self, digest: Digest, size: int) -> None:
        self._tasks[digest] = self._progress.add_task(digest.hex[:12], total=size)

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.advance(task, nbytes)

    def blob_finished(self, digest: Digest) -> None:
        task = self._tasks.pop(digest, None)
        if task is not None:
            self._progress.remove_task(task)
