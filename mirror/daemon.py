"""``mirror run``: the long-running service that keeps the target in step on a schedule.

Owns the APScheduler wiring (one job per configured entry, never two runs of one entry at
once, missed runs coalesced, jitter), the start-up pass, signals (SIGTERM/SIGINT stop with a
grace period, SIGHUP reloads the config), sharding across replicas, and systemd's notify
protocol and watchdog. Copying is ``jobs``' business; HTTP serving is ``health``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from mirror.clients import Clients
from mirror.config import DEFAULT_INTERVAL_S, Config, MirrorEntry, load_config
from mirror.errors import ConfigError, MirrorError
from mirror.health import HealthServer, Metrics
from mirror.jobs import JobResult, Outcome, run_entry
from mirror.notify import FLUSH_S, Notifier, last_statuses
from mirror.prune import log_result, prune_entry
from mirror.records import status_document

STARTUP_SPREAD_S = 5.0  # the start-up pass spreads its first runs over at most this long
MIN_WATCHDOG_PING_S = 0.5  # systemd's WatchdogSec= is whole seconds or more in practice
log = structlog.get_logger("mirror")


@dataclass(frozen=True, slots=True)
class Shard:
    """``--shard I/N``: this replica runs the entries whose stable hash is I modulo N."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, slash, count = text.partition("/")
        if not slash or not index.isdigit() or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--shard {text!r}: write it as I/N, e.g. 0/3 (I from 0 to N-1)")
        if int(index) >= int(count):
            raise ConfigError(f"--shard {text!r}: I must be less than N (shards count from 0)")
        return cls(int(index), int(count))

    def owns(self, job_id: str) -> bool:
        return shard_of(job_id, self.count) == self.index


def shard_of(job_id: str, count: int) -> int:
    """A stable shard number for a job: the same on every replica and every restart."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % count


def watchdog_period(environ: dict[str, str] | os._Environ[str] = os.environ) -> float | None:
    """How often to send ``WATCHDOG=1``: half of systemd's ``WatchdogSec=`` (WATCHDOG_USEC),
    when it is set for this process; None when no watchdog is armed."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return max(int(usec) / 1_000_000 / 2, MIN_WATCHDOG_PING_S)


def sd_notify(message: str) -> None:
    """Tell systemd about our state (``READY=1``, ``STOPPING=1``) when run as Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


class Daemon:
    """Runs every configured entry on its schedule until told to stop."""

    def __init__(self, config: Config, config_path: Path | None, *, shard: Shard | None = None):
        self.config = config
        self.config_path = config_path
        self.shard = shard
        self.metrics = Metrics()
        self.clients = Clients(config)
        self._retired_clients: list[Clients] = []
        self._entries: dict[str, MirrorEntry] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._ever_ok: set[str] = set()
        self._running: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self.notifier: Notifier | None = None
        self._scheduler = AsyncIOScheduler(timezone=datetime.UTC)
        self.health = HealthServer(
            config.daemon.listen_host,
            config.daemon.listen_port,
            self.metrics,
            alive=self._alive,
            ready=self._ready,
            status=self._status,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code (0 after a clean stop)."""
        loop = asyncio.get_running_loop()
        if self.config.notify:  # a URL that cannot be read stops the start, as a config error
            self.notifier = Notifier.from_config(
                self.config, previous=last_statuses(self.clients.state.last_runs())
            )
        try:
            await self.health.start()
        except OSError as exc:
            # One line and exit 2 (systemd does not restart it): a restart loop fixes nothing.
            raise ConfigError(
                f"[daemon] listen {self.config.daemon.listen}: cannot serve health and metrics "
                f"there: {(os.strerror(exc.errno) if exc.errno else str(exc)).lower()}"
            ) from None
        self._scheduler.start()
        self._apply(self.config, first=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        log.info(
            "daemon started",
            jobs=len(self._entries),
            listen=f"{self.health.host}:{self.health.port}",
            shard=f"{self.shard.index}/{self.shard.count}" if self.shard else None,
            config=str(self.config_path) if self.config_path else None,
        )
        sd_notify("READY=1\nSTATUS=mirroring")
        period = watchdog_period()
        if period is not None:
            self._watchdog = asyncio.ensure_future(self._feed_watchdog(period))
        await self._stop.wait()
        await self._shutdown()
        return 0

    def request_stop(self, signum: int | None = None) -> None:
        if not self._stop.is_set():
            name = signal.Signals(signum).name if signum else "request"
            log.info(
                "stopping",
                signal=name,
                running_jobs=len(self._running),
                grace_period_s=self.config.daemon.grace_period,
            )
            self._stop.set()

    async def _shutdown(self) -> None:
        """Stop scheduling, let running copies finish within the grace period, then cancel.

        A cancelled copy never leaves a tag pointing at missing content: tags are written last.
        """
        sd_notify("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._scheduler.shutdown(wait=False)
        running = set(self._running)
        if running:
            _, pending = await asyncio.wait(running, timeout=self.config.daemon.grace_period)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("grace period over, cancelling", jobs=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self.health.stop()
        if self.notifier is not None:
            await self.notifier.aclose(FLUSH_S)
        for clients in (*self._retired_clients, self.clients):
            await clients.aclose()
        log.info("daemon stopped")

    async def _feed_watchdog(self, period: float) -> None:
        """Tell systemd every ``period`` that the event loop turns and the scheduler runs; a
        loop stuck in a blocking call stops the pings, and systemd restarts the service."""
        while True:
            alive, _ = self._alive()
            if alive:
                sd_notify("WATCHDOG=1")
            await asyncio.sleep(period)

    async def reload(self) -> None:
        """SIGHUP: read the config again; jobs are added, removed and rescheduled to match.

        A config that does not load is rejected with a logged error; the old one stays.
        """
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_config(self.config_path)
            notifier = self._renotify(new)
        except MirrorError as exc:
            log.error("config reload rejected", error=str(exc))
        else:
            if notifier is not self.notifier:
                old, self.notifier = self.notifier, notifier
                if old is not None:
                    await old.aclose(FLUSH_S)  # what it has queued, within the bound
            if new.daemon != self.config.daemon:
                log.info("config reload: [daemon] settings take effect at the next restart")
            if (new.registries, new.target) != (self.config.registries, self.config.target):
                self._retired_clients.append(self.clients)
                self.clients = Clients(new)
            self._apply(new, first=False)
            self.config = new
            log.info("config reloaded", jobs=len(self._entries))
        sd_notify("READY=1")

    def _renotify(self, new: Config) -> Notifier | None:
        """The notifier for a reloaded config: the same one unless ``[[notify]]`` changed
        (then a new one, which knows how each entry's last run ended)."""
        if new.notify == self.config.notify:
            return self.notifier
        previous = self.notifier.last if self.notifier is not None else {}
        return Notifier.from_config(new, previous=previous)

    # --- jobs ---------------------------------------------------------------------------

    def _apply(self, config: Config, *, first: bool) -> None:
        """Make the scheduled jobs match ``config``: new entries run at once (with a little
        spread), changed ones get their new schedule, removed ones go."""
        wanted = {
            entry.job_id(config.target): entry
            for entry in config.mirrors
            if self.shard is None or self.shard.owns(entry.job_id(config.target))
        }
        for job_id in set(self._entries) - set(wanted):
            self._scheduler.remove_job(job_id)
            del self._entries[job_id]
            self._outcomes.pop(job_id, None)
            self._ever_ok.discard(job_id)
            self.metrics.forget(job_id)
            log.info("job removed", job=job_id)
        jitter = config.daemon.jitter
        spread = min(jitter, STARTUP_SPREAD_S)
        now = datetime.datetime.now(datetime.UTC)
        for job_id, entry in wanted.items():
            old = self._entries.get(job_id)
            self._entries[job_id] = entry
            if old == entry:
                continue
            trigger = _trigger(entry, jitter)
            self.metrics.scheduled(job_id, _period(entry), time.time())
            if old is None:
                self._scheduler.add_job(
                    self._run_job,
                    trigger,
                    args=[job_id],
                    id=job_id,
                    name=job_id,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=None,
                    next_run_time=now + datetime.timedelta(seconds=random.uniform(0, spread)),
                )
                if not first:
                    log.info("job added", job=job_id, schedule=entry.schedule)
            elif (old.interval, old.cron) != (entry.interval, entry.cron):
                self._scheduler.reschedule_job(job_id, trigger=trigger)
                log.info("job rescheduled", job=job_id, schedule=entry.schedule)
        self.metrics.jobs.set(len(self._entries))

    async def _run_job(self, job_id: str) -> None:
        """One scheduled run. Whatever happens stays inside this job: the daemon goes on."""
        entry = self._entries.get(job_id)
        if entry is None:
            return
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            result = await run_entry(entry, self.clients)
            if entry.prune is not None and result.outcome != "failed":
                log_result(await prune_entry(entry, self.clients))
        except Exception as exc:  # a bug, not a registry's doing: log it and carry on
            log.exception("job crashed", job=job_id, error=str(exc))
            self._outcomes[job_id] = "failed"
            return
        finally:
            self._running.discard(task)
        self._record(result)

    def _record(self, result: JobResult) -> None:
        if result.job not in self._entries:
            return  # removed by a reload while it ran
        source = self.clients.peek(result.source_registry)
        self.metrics.record(
            result,
            source.rate_limit if source is not None else None,
            source.budget.reserve if source is not None else 0,
        )
        self._outcomes[result.job] = result.outcome
        if result.outcome != "failed":
            self._ever_ok.add(result.job)
        if self.notifier is not None:
            self.notifier.job_finished(result)

    # --- health ---------------------------------------------------------------------------

    def _alive(self) -> tuple[bool, str]:
        if self._scheduler.running and not self._stop.is_set():
            return True, "ok"
        return False, "scheduler not running"

    def _status(self) -> dict[str, Any]:
        """``GET /status``: ``mirror status --json`` for this daemon's entries, with the
        scheduler's own next run times."""
        next_runs: dict[str, float | None] = {}
        for job_id in self._entries:
            job = self._scheduler.get_job(job_id)
            upcoming = getattr(job, "next_run_time", None)
            next_runs[job_id] = upcoming.timestamp() if upcoming is not None else None
        return status_document(
            self.config, self.clients.state, entries=self._entries.values(), next_runs=next_runs
        )

    def _ready(self) -> tuple[bool, str]:
        """Ready while the scheduler runs a config that loaded. Not "every job succeeded": one
        entry failing forever must not hold up a rollout; freshness is for metrics and alerts
        (``mirror_last_success_timestamp_seconds``)."""
        alive, why = self._alive()
        if not alive:
            return False, why
        waiting = sorted(set(self._entries) - self._ever_ok)
        detail = f"ready: {len(self._entries)} jobs scheduled"
        if waiting:
            detail += f", {len(waiting)} without a good run yet:\n" + "\n".join(waiting)
        return True, detail


def _period(entry: MirrorEntry) -> float:
    """Seconds between two runs of ``entry``: its interval, or the gap between the next two
    times its cron expression fires (what an alert on "no success for two runs" needs)."""
    if entry.cron is None:
        return entry.interval or float(DEFAULT_INTERVAL_S)
    trigger = _trigger(entry, jitter=0)
    now = datetime.datetime.now(datetime.UTC)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + datetime.timedelta(seconds=1))
    if first is None or second is None:
        return 0.0
    return float((second - first).total_seconds())


def _trigger(entry: MirrorEntry, jitter: float) -> IntervalTrigger | CronTrigger:
    # Jitter never exceeds a tenth of the interval, so short intervals stay short.
    if entry.cron is not None:
        minute, hour, day, month, day_of_week = entry.cron.split()
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            jitter=int(jitter) or None,
            timezone=datetime.UTC,
        )
    interval = entry.interval or 0.0
    return IntervalTrigger(
        seconds=interval, jitter=int(min(jitter, interval / 10)) or None, timezone=datetime.UTC
    )


class _StructlogHandler(logging.Handler):
    """Routes stdlib logging (APScheduler's warnings) into the same structured stream."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        extra = {}
        if record.exc_info and record.exc_info[1] is not None:
            extra["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        getattr(log, level if level in ("warning", "error", "critical") else "info")(
            record.getMessage(), logger=record.name, **extra
        )


def route_stdlib_logging() -> None:
    handler = _StructlogHandler()
    logger = logging.getLogger("apscheduler")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False


async def serve(config_path: Path | None, *, shard: Shard | None = None) -> int:
    """Load the config and run the daemon until it is told to stop."""
    config = load_config(config_path)
    if not config.mirrors:
        raise ConfigError(
            f"config {config_path or 'environment'}: no [[mirrors]] entries, nothing to run"
        )
    route_stdlib_logging()
    return await Daemon(config, config_path, shard=shard).run()
