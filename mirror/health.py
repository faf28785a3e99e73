"""What the daemon shows the outside: Prometheus metrics and the health endpoint.

Owns the metric definitions (``prometheus-client``, one registry per daemon) and a small
asyncio HTTP server for ``/healthz``, ``/readyz``, ``/metrics`` and ``/status`` (JSON). Does not
decide health nor compose the status: the daemon passes in the checks and the document. Kept
apart from ``daemon`` because it is the one module that speaks HTTP as a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

if TYPE_CHECKING:
    from mirror.jobs import JobResult
    from mirror.quota import RateLimit

MAX_REQUEST_HEAD_BYTES = 8 * 1024  # a probe's request line and headers; anything larger is not
REQUEST_TIMEOUT_S = 5.0
DURATION_BUCKETS_S = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)

Check = Callable[[], tuple[bool, str]]
StatusDocument = Callable[[], dict[str, Any]]
log = structlog.get_logger("mirror")


class Metrics:
    """The daemon's metrics, in Prometheus exposition format through ``render``.

    Series are labelled ``entry`` (``source -> target``), not ``job``: Prometheus sets its
    own ``job`` label on every scraped series and would rename ours.
    """

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise here
        self.registry = CollectorRegistry()
        self._scheduled: set[str] = set()
        r = self.registry
        self.job_runs = Counter(
            "mirror_job_runs",
            "Job runs by outcome (success, partial, failed)",
            ["entry", "outcome"],
            registry=r,
        )
        self.tags = Counter(
            "mirror_tags",
            "Tags checked, by result (copied, skipped, failed, deferred, unsupported)",
            ["entry", "result"],
            registry=r,
        )
        self.blobs = Counter(
            "mirror_blobs",
            "Blobs by what happened (copied, mounted, present)",
            ["entry", "result"],
            registry=r,
        )
        self.referrers = Counter(
            "mirror_referrers",
            "Signatures, attestations and referrers carried with their images, by result "
            "(copied, skipped, failed, deferred)",
            ["entry", "result"],
            registry=r,
        )
        self.bytes_copied = Counter(
            "mirror_bytes_copied", "Blob bytes copied from the source", ["entry"], registry=r
        )
        self.manifest_gets = Counter(
            "mirror_upstream_manifest_gets",
            "Manifest GETs sent to the source registry (what Docker Hub counts as pulls)",
            ["entry"],
            registry=r,
        )
        self.last_success = Gauge(
            "mirror_last_success_timestamp_seconds",
            "When the job last ran without a failed tag (Unix time)",
            ["entry"],
            registry=r,
        )
        self.duration = Histogram(
            "mirror_job_duration_seconds",
            "How long job runs take",
            ["entry"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "mirror_upstream_ratelimit_remaining",
            "Pulls left in the source registry's window, where it says (ratelimit-remaining)",
            ["registry"],
            registry=r,
        )
        self.ratelimit_limit = Gauge(
            "mirror_upstream_ratelimit_limit",
            "The source registry's pull limit per window, where it says (ratelimit-limit)",
            ["registry"],
            registry=r,
        )
        self.jobs = Gauge("mirror_jobs", "Mirror entries scheduled in this process", registry=r)
        self.interval = Gauge(
            "mirror_job_interval_seconds",
            "The entry's schedule period (for cron, the gap between its next two runs)",
            ["entry"],
            registry=r,
        )
        self.added = Gauge(
            "mirror_job_added_timestamp_seconds",
            "When this process scheduled the entry (Unix time): the age of 'no success yet'",
            ["entry"],
            registry=r,
        )
        self.pull_reserve = Gauge(
            "mirror_upstream_pull_reserve",
            "Pulls of the source registry's window that mirror leaves for people (pull_reserve)",
            ["registry"],
            registry=r,
        )

    def scheduled(self, job: str, interval_s: float, at: float) -> None:
        """An entry was scheduled (or rescheduled) with this period."""
        self.interval.labels(job).set(interval_s)
        if job not in self._scheduled:
            self._scheduled.add(job)
            self.added.labels(job).set(at)
            # Every series an alert counts from exists at 0 from the start, so `increase()`
            # sees the first run's failures too, not only those after a second sample.
            for outcome in ("success", "partial", "failed"):
                self.job_runs.labels(job, outcome)
            for result in ("copied", "skipped", "failed", "deferred"):
                self.tags.labels(job, result)

    def record(
        self, result: JobResult, rate_limit: RateLimit | None, pull_reserve: int = 0
    ) -> None:
        """Count one finished job run."""
        job, report = result.job, result.report
        self.job_runs.labels(job, result.outcome).inc()
        self.tags.labels(job, "copied").inc(report.tags_copied)
        self.tags.labels(job, "skipped").inc(report.tags_skipped)
        self.tags.labels(job, "failed").inc(report.tags_failed)
        self.tags.labels(job, "deferred").inc(report.tags_deferred)
        self.tags.labels(job, "unsupported").inc(report.tags_unsupported)
        self.blobs.labels(job, "copied").inc(report.blobs_copied)
        self.blobs.labels(job, "mounted").inc(report.blobs_mounted)
        self.blobs.labels(job, "present").inc(report.blobs_present)
        self.referrers.labels(job, "copied").inc(report.referrers_copied)
        self.referrers.labels(job, "skipped").inc(report.referrers_skipped)
        self.referrers.labels(job, "failed").inc(report.referrers_failed)
        self.referrers.labels(job, "deferred").inc(report.referrers_deferred)
        self.bytes_copied.labels(job).inc(report.bytes_copied)
        self.manifest_gets.labels(job).inc(report.upstream_manifest_gets)
        self.duration.labels(job).observe(result.seconds)
        if result.outcome == "success":
            self.last_success.labels(job).set(result.finished_at)
        if rate_limit is not None:
            self.ratelimit_remaining.labels(result.source_registry).set(rate_limit.remaining)
            self.ratelimit_limit.labels(result.source_registry).set(rate_limit.limit)
            self.pull_reserve.labels(result.source_registry).set(pull_reserve)

    def forget(self, job: str) -> None:
        """Drop a removed job's series, so /metrics shows only jobs that exist."""
        self._scheduled.discard(job)
        for metric in (self.job_runs, self.tags, self.blobs, self.referrers):
            for labels in list(metric._metrics):
                if labels[0] == job:
                    metric.remove(*labels)
        for single in (
            self.bytes_copied,
            self.manifest_gets,
            self.last_success,
            self.duration,
            self.interval,
            self.added,
        ):
            with contextlib.suppress(KeyError):
                single.remove(job)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """``GET /healthz`` (alive), ``/readyz`` (ready), ``/metrics`` and ``/status`` (what
    ``mirror status --json`` prints, with the scheduler's next runs) on one address.

    Plain HTTP/1.1, one request per connection: probes and Prometheus scrapes need no more.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        *,
        alive: Check,
        ready: Check,
        status: StatusDocument | None = None,
    ):
        self.host, self.port = host, port
        self._metrics = metrics
        self._status = status
        self._checks = {"/healthz": alive, "/readyz": ready}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, path = _request_line(head)
            status, content_type, body = self._answer(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics.render()
        if path == "/status" and self._status is not None:
            body = json.dumps(self._status()).encode() + b"\n"
            return 200, "application/json", body
        check = self._checks.get(path)
        if check is None:
            return 404, "text/plain", b"not found: try /healthz, /readyz, /metrics or /status\n"
        ok, detail = check()
        return (200 if ok else 503), "text/plain", (detail.rstrip("\n") + "\n").encode()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_REQUEST_HEAD_BYTES:
        raise ValueError("request head too large")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, path, _version = line.split(" ", 2)
    return method, path
