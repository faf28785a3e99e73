"""What the command line prints: the report of a run, sizes, error lines, progress bars.

Owns the words and layout a person reads on a terminal (and cron mails), and the progress
display drawn while blobs move; decides nothing about what happened. Error lines carry their
syslog priority when they go to the journal (``mirror.logs``).
"""

from __future__ import annotations

import datetime
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirror.reference import Digest
    from mirror.report import CopyReport


def print_report(report: CopyReport, elapsed: float) -> None:
    verb = {
        "copied": "copied",
        "skipped": "in sync",
        "failed": "FAILED",
        "planned": "would copy",
        "deferred": "deferred",
        "unsupported": "not copied",
    }
    for result in report.tags:
        line = f"{verb[result.status]:<10} {result.source} -> {result.target}"
        if result.digest:
            line += f"  {result.digest[:19]}"
        if result.source_digest:
            line += f" (from {result.source_digest[:19]})"
        if result.status in ("copied", "planned") and (
            result.blobs_missing or result.bytes_missing
        ):
            line += f"  {result.blobs_missing} blobs, {size(result.bytes_missing)}"
        if result.referrer_of:
            line += f"  (refers to {result.referrer_of[:19]})"
        if result.status == "unsupported":
            line += f": {result.error}"
        if result.note:
            line += f"; {result.note}"
        print(line)
    would = "would be " if report.dry_run else ""
    print(
        f"{report.tags_checked} tags: {report.tags_copied} {would}copied, "
        f"{report.tags_skipped} in sync, {report.tags_failed} failed"
        + (f", {report.tags_deferred} deferred" if report.tags_deferred else "")
        + (f", {report.tags_unsupported} not copied; " if report.tags_unsupported else "; ")
        + f"blobs: {report.blobs_copied} {would}copied ({size(report.bytes_copied)}), "
        f"{report.blobs_mounted} mounted, {report.blobs_present} already present; "
        f"{report.manifests_pushed} manifests {would}pushed; "
        f"{report.upstream_manifest_gets} upstream manifest GETs; "
        + _referrers_summary(report, would)
        + f"{elapsed:.1f} s"
    )


def _referrers_summary(report: CopyReport, would: str) -> str:
    """``referrers: 3 copied, 2 in sync; `` (nothing when the run met none)."""
    counts = (
        report.referrers_copied,
        report.referrers_skipped,
        report.referrers_failed,
        report.referrers_deferred,
    )
    if not any(counts):
        return ""
    text = f"referrers: {counts[0]} {would}copied, {counts[1]} in sync"
    text += f", {counts[2]} failed" if counts[2] else ""
    text += f", {counts[3]} deferred" if counts[3] else ""
    return text + "; "


def size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def error(message: str) -> None:
    from mirror.logs import journal_prefix

    print(f"{journal_prefix(sys.stderr, 'error')}mirror: error: {message}", file=sys.stderr)


def warning(message: str) -> None:
    from mirror.logs import journal_prefix

    print(f"{journal_prefix(sys.stderr, 'warning')}mirror: warning: {message}", file=sys.stderr)


class ProgressDisplay:
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


def iso(timestamp: float | None) -> str | None:
    """Unix time -> ``2026-11-29T16:30:01Z`` (None stays None)."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def utc(timestamp: float) -> str:
    """Unix time -> ``2026-11-29 16:30:01 UTC``, for a line a person reads."""
    return f"{iso(timestamp)}".replace("T", " ").replace("Z", " UTC")
