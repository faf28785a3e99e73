"""Notifications: a tag moved, a tag failed, an entry deferred by the pull limit, an entry
recovered; sent as JSON to webhooks and, through apprise, to Slack, Teams, e-mail and the rest.

Owns turning a job's result into events, the payload (``PAYLOAD_VERSION``, documented in the
README), and delivery off the copy path: each receiver has a bounded queue drained by a
background task, with retries, back-off and a timeout per try, so a slow or dead receiver
delays nothing but its own queue. A receiver's URL often holds a token: it is never logged
(``shown`` names it by scheme and host). Does not copy, schedule, or decide outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from mirror import __version__
from mirror.config import Config, NotifySettings
from mirror.jobs import JobResult
from mirror.output import iso
from mirror.retry import MAX_RETRY_WAIT_S, Sleep, backoff

PAYLOAD_VERSION = 1  # bumped when a field changes meaning or goes; new fields do not bump it
QUEUE_SIZE = 1000  # events waiting per receiver; past this the oldest is dropped, with a warning
ATTEMPTS = 5  # tries per event and receiver (0.25 s doubling between them, or Retry-After)
FLUSH_S = 3.0  # how long `mirror sync --all` and a stopping daemon wait for queued events
NOT_IN_STEP = ("failed", "partial", "deferred")  # a run after one of these that succeeds recovers
log = structlog.get_logger("mirror")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing worth telling: ``kind`` is one of ``mirror.config.NOTIFY_EVENTS``."""

    kind: str
    job: str
    fields: dict[str, Any] = field(default_factory=dict)
    at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def text(self) -> str:
        """One line for people (the apprise body, and ``text`` in the JSON)."""
        f = self.fields
        if self.kind == "tag.moved":
            kept = f" (old one kept as {f['backup']})" if f.get("backup") else ""
            return f"{f['target']} moved from {f['old_digest']} to {f['new_digest']}{kept}"
        if self.kind == "tag.failed":
            return f"{f['target']} failed: {f['error']}"
        if self.kind == "entry.deferred":
            return f"{self.job}: {f['tags_deferred']} tags deferred by the pull limit"
        return f"{self.job} is in step again after a {f['previous_outcome']} run"

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        at = iso(self.at.timestamp())
        return {"version": PAYLOAD_VERSION, "event": self.kind, "at": at, "job": self.job}

    def body(self) -> dict[str, Any]:
        return {**self.payload(), **self.fields, "text": self.text}


def run_status(result: JobResult) -> str:
    """How a run left its entry: failed, partial, deferred (some tags wait for the pull
    window) or success."""
    return _status(result.outcome, result.report.tags_deferred)


def _status(outcome: str, tags_deferred: int | None) -> str:
    """A success that left tags for the pull window counts as deferred."""
    return "deferred" if outcome == "success" and tags_deferred else outcome


def events_for(result: JobResult, previous: str | None) -> list[Event]:
    """The events one run of an entry gives, ``previous`` being how its last run left it."""
    events = []
    for tag in result.report.tags:
        where = {"source": tag.source, "target": tag.target}
        if tag.status == "copied" and tag.previous is not None and tag.previous != tag.digest:
            moved = {"old_digest": tag.previous, "new_digest": tag.digest, "backup": tag.backup}
            events.append(Event("tag.moved", result.job, where | moved))
        elif tag.status == "failed":
            events.append(Event("tag.failed", result.job, where | {"error": tag.error}))
    deferred = [t for t in result.report.tags if t.status == "deferred"]
    if deferred:
        fields = {"tags_deferred": len(deferred), "reason": deferred[0].error}
        events.append(Event("entry.deferred", result.job, fields))
    if previous in NOT_IN_STEP and run_status(result) == "success":
        fields = {"previous_outcome": previous, "tags_checked": result.report.tags_checked}
        events.append(Event("entry.recovered", result.job, fields))
    return events


def shown(url: str) -> str:
    """A receiver as logs may name it: ``https://hooks.example/...``, ``slack://...``."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https"):
        return f"{scheme}://..."
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/..."


class _Failed(Exception):
    """A try that may go better later (an error status, no answer, apprise said no)."""

    def __init__(self, why: str, *, retry: bool = True, wait: float | None = None) -> None:
        super().__init__(why)
        self.retry = retry
        self.wait = wait


class Receiver:
    """One ``[[notify]]`` receiver: its queue, and the task that delivers from it."""

    def __init__(
        self,
        url: str,
        settings: NotifySettings,
        client: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.url = url
        self.shown = shown(url)
        self.events = set(settings.events)
        self.timeout = settings.timeout
        self.webhook = url.lower().startswith(("http://", "https://"))
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._client = client
        self._sleep = sleep
        self._apprise: Any = None
        self._task: asyncio.Task[None] | None = None

    def put(self, event: Event) -> None:
        """Queue ``event`` if this receiver wants it; never waits (a full queue drops its
        oldest event)."""
        if event.kind not in self.events:
            return
        if self.queue.full():
            dropped = self.queue.get_nowait()
            self.queue.task_done()
            log.warning(
                "notification dropped",
                receiver=self.shown,
                kind=dropped.kind,
                job=dropped.job,
                queued=QUEUE_SIZE,
            )
        self.queue.put_nowait(event)
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self._deliver(event)
            except Exception as exc:  # a bug here must not stop this receiver's queue
                log.error("notification failed", receiver=self.shown, error=type(exc).__name__)
            finally:
                self.queue.task_done()

    async def _deliver(self, event: Event) -> None:
        """Send ``event``, trying again with back-off; one warning when it cannot be sent."""
        why = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await asyncio.wait_for(self._send(event), self.timeout)
                return
            except TimeoutError:
                failure = _Failed(f"no answer within {self.timeout:g} s")
            except httpx.TimeoutException:
                failure = _Failed("timed out")
            except httpx.HTTPError as exc:
                failure = _Failed(f"cannot reach it ({type(exc).__name__})")
            except _Failed as exc:
                failure = exc
            except Exception as exc:  # e.g. apprise raising: its kind, never its words (the URL)
                failure = _Failed(f"failed ({type(exc).__name__})")
            why = str(failure)
            if not failure.retry or attempt == ATTEMPTS:
                break
            wait = failure.wait if failure.wait is not None else backoff(None, attempt)
            await self._sleep(min(wait, MAX_RETRY_WAIT_S))
        log.warning(
            "notification failed",
            receiver=self.shown,
            kind=event.kind,
            job=event.job,
            attempts=attempt,
            error=why,
        )

    async def _send(self, event: Event) -> None:
        if self.webhook:
            response = await self._client.post(self.url, json=event.body())
            if response.is_success:
                return
            status = response.status_code
            after = response.headers.get("Retry-After", "")
            raise _Failed(
                f"HTTP {status}",
                retry=status >= 500 or status in (408, 429),
                wait=float(after) if after.isdigit() else None,
            )
        if self._apprise is None:
            import apprise  # only for a receiver that needs it: it takes a while to import

            logging.getLogger("apprise").disabled = True  # its lines may show the URL
            self._apprise = apprise.Apprise()
            self._apprise.add(self.url)
        title = f"mirror: {event.kind.replace('.', ' ')}"
        sent = await _in_thread(lambda: self._apprise.notify(title=title, body=event.text))
        if not sent:
            raise _Failed("apprise could not deliver it")

    async def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the queue to empty, then stop; the events left unsent."""
        if self._task is None:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.queue.qsize()


class Notifier:
    """Every configured receiver; ``job_finished`` hands each the events of a run.

    Remembers how each entry's last run left it (seeded with ``previous``, e.g. the state's
    last runs), so a run that follows a failed, partial or deferred one and succeeds is an
    ``entry.recovered``.
    """

    def __init__(
        self,
        receivers: Iterable[tuple[str, NotifySettings]],
        *,
        previous: Mapping[str, str] | None = None,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=None,  # each try is bounded by its receiver's timeout as a whole
            headers={"User-Agent": f"mirror/{__version__}"},
        )
        self.receivers = [Receiver(u, s, self._client, sleep=sleep) for u, s in receivers]
        self.last: dict[str, str] = dict(previous or {})  # job -> how its last run left it

    @classmethod
    def from_config(cls, config: Config, **options: Any) -> Notifier | None:
        """The config's receivers (None when it has none); a URL that cannot be read or
        that no receiver takes is a ConfigError naming its key, never showing the URL."""
        if not config.notify:
            return None
        receivers = [
            (settings.resolved_url(f"notify[{index}]"), settings)
            for index, settings in enumerate(config.notify)
        ]
        return cls(receivers, **options)

    def job_finished(self, result: JobResult) -> None:
        """Queue the events of a finished run; returns at once, never raises."""
        previous = self.last.get(result.job)
        self.last[result.job] = run_status(result)
        for event in events_for(result, previous):
            for receiver in self.receivers:
                receiver.put(event)

    async def aclose(self, timeout: float = FLUSH_S) -> None:
        """Deliver what is queued within ``timeout`` (every receiver at once), then stop."""
        unsent = await asyncio.gather(*(r.close(timeout) for r in self.receivers))
        await self._client.aclose()
        for receiver, count in zip(self.receivers, unsent, strict=True):
            if count:
                log.warning("notifications unsent", receiver=receiver.shown, events=count)


def _in_thread(call: Callable[[], bool]) -> asyncio.Future[bool]:
    """``call()`` (apprise's blocking send) in a daemon thread of its own: a receiver that
    hangs holds neither the event loop, nor a shared pool, nor the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool, error: BaseException | None) -> None:
        if future.done():
            return  # given up on already (the try's timeout)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = call(), None
        except Exception as exc:
            result, error = False, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="mirror-notify", daemon=True).start()
    return future


def last_statuses(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """How each job's last recorded run left it (``State.last_runs()`` rows)."""
    statuses = {}
    for job, run in runs.items():
        outcome = run.get("outcome")
        if outcome:
            statuses[job] = _status(str(outcome), run.get("tags_deferred"))
    return statuses
