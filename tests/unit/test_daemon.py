"""The daemon's pure parts: shards, schedules, durations, defaults merging."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.config import Config, MirrorEntry, format_duration, parse_duration
from mirror.daemon import Daemon, Shard, _period, _trigger, shard_of, watchdog_period
from mirror.errors import ConfigError


@given(st.sets(st.text(min_size=1, max_size=40), min_size=1, max_size=60), st.integers(1, 9))
def test_every_entry_is_in_exactly_one_shard(jobs: set[str], count: int) -> None:
    shards = [Shard(i, count) for i in range(count)]
    for job in jobs:
        assert sum(shard.owns(job) for shard in shards) == 1


def test_shard_of_is_stable_across_processes() -> None:
    # sha256-based, not Python's salted hash(): replicas and restarts agree.
    assert shard_of("docker.io/diamol/golang -> localhost:5000/diamol/golang", 3) == shard_of(
        "docker.io/diamol/golang -> localhost:5000/diamol/golang", 3
    )
    assert {shard_of(f"job-{i}", 3) for i in range(50)} == {0, 1, 2}


@pytest.mark.parametrize("text", ["3", "1/0", "3/3", "a/3", "-1/3", "1/3/4", ""])
def test_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        Shard.parse(text)


def test_shard_parse() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("6h", 21600),
        ("1h30m", 5400),
        ("45s", 45),
        ("1d", 86400),
        ("500ms", 0.5),
        (90, 90),
        ("2h 15m", 8100),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "h", "-5m", "0s", "1h-5m", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for seconds in (45, 1800, 5400, 86400 + 60):
        assert parse_duration(format_duration(seconds)) == seconds


def test_defaults_merge_into_entries_and_an_entry_schedule_replaces_the_default() -> None:
    config = Config.model_validate(
        {
            "defaults": {"interval": "6h", "concurrency": 2},
            "mirrors": [
                {"source": "diamol/golang", "interval": "30m"},
                {"source": "golang", "cron": "0 */6 * * *"},
                {"source": "alpine"},
            ],
        }
    )
    by_source = {m.source: m for m in config.mirrors}
    assert by_source["diamol/golang"].interval == 1800 and by_source["diamol/golang"].cron is None
    assert by_source["golang"].cron == "0 */6 * * *" and by_source["golang"].interval is None
    assert by_source["alpine"].interval == 21600
    assert {m.concurrency for m in config.mirrors} == {2}


def test_an_entry_without_any_schedule_runs_every_six_hours() -> None:
    config = Config.model_validate({"mirrors": [{"source": "alpine"}]})
    assert config.mirrors[0].interval == 6 * 3600


def test_entry_target_defaults_to_the_config_target_plus_the_source_path() -> None:
    config = Config.model_validate(
        {"target": "registry.local:5000", "mirrors": [{"source": "diamol/golang"}]}
    )
    source, target = config.mirrors[0].endpoints(config.target)
    assert (str(source), target.name) == (
        "docker.io/diamol/golang",
        "registry.local:5000/diamol/golang",
    )


def test_two_entries_for_the_same_job_are_refused() -> None:
    with pytest.raises(ValueError, match=r"mirrors\[1\] repeats mirrors\[0\]"):
        Config.model_validate(
            {"mirrors": [{"source": "alpine"}, {"source": "docker.io/library/alpine"}]}
        )


def test_interval_trigger_jitter_stays_within_a_tenth_of_the_interval() -> None:
    entry = MirrorEntry.model_validate({"source": "alpine", "interval": "10s"})
    trigger = _trigger(entry, jitter=30)
    now = datetime.datetime.now(datetime.UTC)
    for _ in range(50):
        fire = trigger.get_next_fire_time(None, now)
        assert now + datetime.timedelta(seconds=10) <= fire <= now + datetime.timedelta(seconds=11)


def test_cron_trigger_follows_the_crontab() -> None:
    entry = MirrorEntry.model_validate({"source": "alpine", "cron": "15 */6 * * *"})
    trigger = _trigger(entry, jitter=0)
    start = datetime.datetime(2026, 1, 1, 0, 20, tzinfo=datetime.UTC)
    assert trigger.get_next_fire_time(None, start) == datetime.datetime(
        2026, 1, 1, 6, 15, tzinfo=datetime.UTC
    )


# --- systemd's watchdog, readiness, schedule periods -------------------------------------------


def test_watchdog_pings_at_half_of_watchdog_sec_for_this_process_only() -> None:
    import os

    assert watchdog_period({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30
    assert watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None


def test_period_of_an_interval_and_of_a_cron_schedule() -> None:
    config = Config.model_validate(
        {
            "mirrors": [
                {"source": "a/b", "interval": "30m"},
                {"source": "c/d", "cron": "0 3 * * *"},
                {"source": "e/f", "cron": "*/15 * * * *"},
                {"source": "g/h"},
            ]
        }
    )

    assert [_period(e) for e in config.mirrors] == [1800, 86400, 900, 6 * 3600]


async def test_ready_while_the_scheduler_runs_even_when_no_job_has_succeeded() -> None:
    config = Config.model_validate(
        {"daemon": {"listen": "127.0.0.1:0"}, "mirrors": [{"source": "a/b"}]}
    )
    daemon = Daemon(config, None)
    assert daemon._ready()[0] is False  # the scheduler has not started

    daemon._scheduler.start(paused=True)
    daemon._apply(config, first=True)
    try:
        ready, detail = daemon._ready()
        assert ready, detail
        assert "1 without a good run yet" in detail
        daemon.request_stop()
        assert daemon._ready()[0] is False
    finally:
        daemon._scheduler.shutdown(wait=False)
        await daemon.clients.aclose()
