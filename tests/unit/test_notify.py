"""Notifications: which events a run gives, the payload, delivery with retries and back-off
off the copy path (a bounded queue per receiver), and receiver URLs never shown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import structlog
from pydantic import ValidationError

from mirror import notify
from mirror.config import Config, NotifySettings, describe_validation_error
from mirror.errors import ConfigError
from mirror.jobs import JobResult
from mirror.notify import Event, Notifier, events_for, last_statuses, shown
from mirror.report import CopyReport, TagResult
from tests.unit.conftest import RecordingSleep

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
JOB = "docker.io/library/app -> registry.local:5000/library/app"


def tag(name: str, status: str, **fields: Any) -> TagResult:
    return TagResult(
        source=f"docker.io/library/app:{name}",
        target=f"registry.local:5000/library/app:{name}",
        status=status,  # type: ignore[arg-type]
        **fields,
    )


def result(*tags: TagResult, outcome: str = "success") -> JobResult:
    report = CopyReport()
    for t in tags:
        report.add(t)
    return JobResult(JOB, "docker.io", outcome, report, 1.0)  # type: ignore[arg-type]


# --- which events -------------------------------------------------------------------------------


def test_a_tag_that_points_elsewhere_now_is_a_move_a_new_or_equal_one_is_not() -> None:
    run = result(
        tag("latest", "copied", digest=NEW, previous=OLD, backup="latest-prev"),
        tag("1.0", "copied", digest=NEW),  # first copy
        tag("2.0", "skipped", digest=OLD, previous=OLD),
    )

    (moved,) = events_for(run, previous=None)

    assert moved.kind == "tag.moved"
    body = moved.body()
    assert body["version"] == notify.PAYLOAD_VERSION == 1
    assert body["event"] == "tag.moved" and body["job"] == JOB
    assert (body["old_digest"], body["new_digest"], body["backup"]) == (OLD, NEW, "latest-prev")
    assert body["target"] == "registry.local:5000/library/app:latest"
    assert body["at"].endswith("Z") and "latest-prev" in body["text"]
    json.dumps(body)


def test_failures_deferrals_and_a_recovery() -> None:
    failing = result(tag("1", "failed", error="HTTP 500"), outcome="partial")
    deferred = result(
        tag("1", "deferred", error="pull limit"), tag("2", "deferred", error="pull limit")
    )
    fine = result(tag("1", "skipped"))

    assert [(e.kind, e.fields["error"]) for e in events_for(failing, None)] == [
        ("tag.failed", "HTTP 500")
    ]
    (waiting,) = events_for(deferred, "success")
    assert waiting.kind == "entry.deferred" and waiting.fields["tags_deferred"] == 2
    for before in ("failed", "partial", "deferred"):
        (back,) = events_for(fine, before)
        assert back.kind == "entry.recovered" and back.fields["previous_outcome"] == before
    assert events_for(fine, "success") == events_for(fine, None) == []
    assert events_for(deferred, "deferred")[0].kind == "entry.deferred"  # not a recovery


def test_the_notifier_remembers_how_each_entry_was_left() -> None:
    notifier = Notifier(
        [], previous=last_statuses({JOB: {"outcome": "success", "tags_deferred": 2}})
    )
    assert notifier.last == {JOB: "deferred"}

    notifier.job_finished(result(tag("1", "skipped")))

    assert notifier.last == {JOB: "success"}


# --- delivery -------------------------------------------------------------------------------


def hook(**settings: Any) -> NotifySettings:
    return NotifySettings(url="https://hooks.test/T0KEN/x?key=S3CRET", **settings)


async def deliver(
    answers: list[httpx.Response | Exception], sent: list[Event], **settings: Any
) -> tuple[list[httpx.Request], RecordingSleep, list[dict[str, Any]]]:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        reply = answers.pop(0) if answers else httpx.Response(204)
        if isinstance(reply, Exception):
            raise reply
        return reply

    sleeps = RecordingSleep()
    notifier = Notifier(
        [("https://hooks.test/T0KEN/x?key=S3CRET", hook(**settings))],
        sleep=sleeps,
        transport=httpx.MockTransport(answer),
    )
    with structlog.testing.capture_logs() as logs:
        for event in sent:
            for receiver in notifier.receivers:
                receiver.put(event)
        await notifier.aclose(5.0)
    return requests, sleeps, logs


def moved() -> Event:
    return Event("tag.moved", JOB, {"target": "t:latest", "old_digest": OLD, "new_digest": NEW})


async def test_a_webhook_gets_the_json_and_errors_are_tried_again_with_back_off() -> None:
    requests, sleeps, logs = await deliver(
        [
            httpx.Response(503),
            httpx.ConnectError("refused"),
            httpx.Response(429, headers={"Retry-After": "7"}),
        ],
        [moved()],
    )

    assert len(requests) == 4
    assert json.loads(requests[-1].content)["event"] == "tag.moved"
    assert requests[-1].headers["Content-Type"] == "application/json"
    assert sleeps.calls == [0.25, 0.5, 7.0]
    assert logs == []


async def test_a_refusal_is_not_tried_again_and_the_log_never_shows_the_url() -> None:
    requests, sleeps, logs = await deliver([httpx.Response(403)], [moved()])

    assert len(requests) == 1 and sleeps.calls == []
    (line,) = logs
    assert line["event"] == "notification failed" and line["error"] == "HTTP 403"
    assert line["receiver"] == "https://hooks.test/..."
    assert "T0KEN" not in str(logs) and "S3CRET" not in str(logs)


async def test_a_receiver_that_never_answers_is_given_up_on_each_try() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError

    sleeps = RecordingSleep()
    notifier = Notifier(
        [("https://hooks.test/x", hook(timeout=0.01))],
        sleep=sleeps,
        transport=httpx.MockTransport(never),
    )
    with structlog.testing.capture_logs() as logs:
        notifier.receivers[0].put(moved())
        await notifier.aclose(5.0)

    assert len(sleeps.calls) == notify.ATTEMPTS - 1
    assert logs[0]["error"] == "no answer within 0.01 s" and logs[0]["attempts"] == notify.ATTEMPTS


async def test_events_a_receiver_did_not_ask_for_are_not_sent() -> None:
    failed = Event("tag.failed", JOB, {"target": "t:1", "error": "x"})

    requests, _, _ = await deliver([], [moved(), failed], events=["tag.failed"])

    assert [json.loads(r.content)["event"] for r in requests] == ["tag.failed"]


async def test_a_full_queue_drops_its_oldest_event_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(notify, "QUEUE_SIZE", 2)
    release = asyncio.Event()
    bodies: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        bodies.append(json.loads(request.content)["job"])
        return httpx.Response(204)

    notifier = Notifier([("https://hooks.test/x", hook())], transport=httpx.MockTransport(slow))
    receiver = notifier.receivers[0]
    with structlog.testing.capture_logs() as logs:
        for job in ("a", "b", "c", "d"):
            receiver.put(Event("tag.failed", job, {"target": "t", "error": "x"}))
            await asyncio.sleep(0)  # "a" is taken off the queue and in flight
        release.set()
        await notifier.aclose(5.0)

    assert bodies == ["a", "c", "d"]
    assert [(line["event"], line["job"]) for line in logs] == [("notification dropped", "b")]


# --- configuration --------------------------------------------------------------------------------


def test_receivers_are_named_by_scheme_and_host_only() -> None:
    assert (
        shown("https://user:pw@hooks.test:8443/services/T0KEN?k=v") == "https://hooks.test:8443/..."
    )
    assert shown("slack://T1/B2/C3") == "slack://..."


def test_a_receiver_url_is_never_shown_in_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as caught:
        Config(notify=[{"url": "https://hooks.test/T0KEN", "url_env": "X"}])
    message = describe_validation_error(caught.value)
    assert message.startswith("notify[0]: ") and "T0KEN" not in message
    with pytest.raises(ConfigError, match=r"notify\[0\]: apprise does not take nosuch://") as bad:
        NotifySettings(url="nosuch://T0KEN").resolved_url("notify[0]")
    assert "T0KEN" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"notify\[1\]: not a scheme://"):
        NotifySettings(url="T0KEN").resolved_url("notify[1]")
    with pytest.raises(ConfigError, match=r"notify\[0\].url_env: environment variable"):
        NotifySettings(url_env="MIRROR_TEST_HOOK").resolved_url("notify[0]")
    monkeypatch.setenv("MIRROR_TEST_HOOK", "https://hooks.test/T0KEN")
    assert (
        NotifySettings(url_env="MIRROR_TEST_HOOK").resolved_url("k") == "https://hooks.test/T0KEN"
    )


def test_no_notify_tables_no_notifier() -> None:
    assert Notifier.from_config(Config()) is None
