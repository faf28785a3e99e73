"""``mirror status`` and ``mirror history`` documents, from a state filled by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.config import Config
from mirror.errors import ConfigError
from mirror.records import history_document, history_lines, status_document, status_lines
from mirror.state import FILENAME, State, TagRecord

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 10
        return self.now


def config(**entry: object) -> Config:
    return Config.model_validate(
        {"target": "registry.local:5000", "mirrors": [{"source": "golang", **entry}]}
    )


def golang(tag: str, status: str, digest: str | None) -> TagRecord:
    return TagRecord(
        "registry.local:5000",
        "library/golang",
        tag,
        f"docker.io/library/golang:{tag}",
        status,
        source_digest=digest,
        target_digest=digest,
    )


JOB = "docker.io/library/golang -> registry.local:5000/library/golang"


def test_status_counts_the_last_check_of_each_tag_and_estimates_the_next_run(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / FILENAME, clock=Clock())
    run = state.start_run(JOB)
    state.record_tags(
        run,
        JOB,
        [
            golang("1.22", "copied", D1),
            golang("1.21", "failed", None),
            golang("1", "deferred", None),
        ],
    )
    state.finish_run(run, "partial", {"tags_checked": 3, "tags_failed": 1}, None)

    document = status_document(config(interval="1h"), state, now=T0 + 60)

    [entry] = document["entries"]
    assert entry["tags"] == {
        "in_sync": 1,
        "behind": 2,
        "failed": 1,
        "deferred": 1,
        "missing_upstream": 0,
    }
    assert entry["behind_since"] == "2027-01-15T08:00:20Z"
    assert entry["last_run"]["outcome"] == "partial" and entry["last_success"] is None
    assert entry["next_run"] == "2027-01-15T09:00:10Z" and entry["next_run_estimated"]
    lines = status_lines(document)
    assert lines[0] == f"{JOB}  (every 1h)"
    assert "1 in sync, 2 behind (1 failed, 1 deferred) since 2027-01-15 08:00:20 UTC" in lines[2]
    assert (
        lines[4]
        == "  next run      about 2027-01-15 09:00:10 UTC (from the schedule; a daemon adds jitter)"
    )


def test_a_cron_entry_s_next_run_is_its_next_time_and_a_daemon_s_is_the_scheduler_s(
    tmp_path: Path,
) -> None:
    state = State(tmp_path / FILENAME)

    cron = status_document(config(cron="0 3 * * *"), state, now=T0)
    daemon = status_document(config(), state, next_runs={JOB: T0 + 5}, now=T0)

    assert cron["entries"][0]["next_run"] == "2027-01-16T03:00:00Z"
    assert daemon["entries"][0]["next_run"] == "2027-01-15T08:00:05Z"
    assert not daemon["entries"][0]["next_run_estimated"]
    assert cron["entries"][0]["last_run"] is None
    assert status_lines(cron)[1] == "  last run      never"


def test_history_answers_for_the_source_and_the_target_name_alike(tmp_path: Path) -> None:
    state = State(tmp_path / FILENAME, clock=Clock())
    state.record_tags(1, JOB, [golang("1.22", "copied", D1)])
    state.record_tags(2, JOB, [golang("1.22", "copied", D2)])
    state.record_pruned("registry.local:5000", "library/golang", "1.22", D2)

    by_source = history_document(state, "golang:1.22")
    by_target = history_document(state, "registry.local:5000/library/golang:1.22")

    assert by_source["tags"] == [], "a pruned tag has no source any more"
    [tag] = by_target["tags"]
    assert [(c["from"], c["to"]) for c in tag["changes"]] == [(None, D1), (D1, D2), (D2, None)]
    assert tag["status"] == "pruned"
    assert history_lines(by_target)[-1].endswith(f"{D2} -> deleted by mirror prune")
    with pytest.raises(ConfigError, match="digest"):
        history_document(state, f"golang@{D1}")
