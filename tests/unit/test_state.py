"""The state database: a record that never stands in the way of a run."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from mirror.state import FILENAME, MIGRATIONS, State, TagRecord, default_path

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def record(status: str, digest: str | None, **extra: object) -> TagRecord:
    return TagRecord(
        "registry.local:5000",
        "library/golang",
        "1.22",
        "docker.io/library/golang:1.22",
        status,
        source_digest=digest,
        target_digest=digest,
        **extra,  # type: ignore[arg-type]
    )


def test_three_runs_with_a_moved_tag_leave_its_history(tmp_path: Path) -> None:
    state = State(tmp_path / FILENAME, clock=Clock())
    for status, digest in (("copied", D1), ("skipped", D1), ("copied", D2)):
        run = state.start_run("golang")
        state.record_tags(run, "golang", [record(status, digest, bytes=10)])
        state.finish_run(run, "success", {"tags_checked": 1, "bytes": 10}, None)

    history = state.history("registry.local:5000", "library/golang", "1.22")
    assert [(h["old_digest"], h["new_digest"]) for h in history] == [(None, D1), (D1, D2)]
    [tag] = state.tags("golang")
    assert tag["target_digest"] == tag["written_digest"] == D2
    assert tag["changed"] == history[-1]["at"]
    runs = state.runs("golang")
    assert [r["outcome"] for r in runs] == ["success"] * 3 and runs[0]["id"] > runs[-1]["id"]
    assert state.last_runs()["golang"]["last_success"] == runs[0]["finished"]


def test_a_failed_check_marks_the_tag_behind_since_its_first_failure(tmp_path: Path) -> None:
    state = State(tmp_path / FILENAME, clock=Clock())
    state.record_tags(1, "golang", [record("copied", D1)])
    state.record_tags(2, "golang", [record("failed", None, error="boom")])
    first = state.tags()[0]["behind_since"]
    state.record_tags(3, "golang", [record("deferred", None)])
    [tag] = state.tags()
    assert tag["behind_since"] == first is not None
    assert tag["target_digest"] == D1  # what the target holds is still known
    state.record_tags(4, "golang", [record("skipped", D1)])
    assert state.tags()[0]["behind_since"] is None


def test_a_tag_mirror_did_not_write_is_not_marked_written(tmp_path: Path) -> None:
    state = State(tmp_path / FILENAME)
    state.record_tags(None, "golang", [record("skipped", D1)])
    assert state.tags()[0]["written_digest"] is None


def test_uploads_in_flight_are_kept_until_forgotten(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    State(path).save_upload("t", "repo", D1, "http://t/v2/repo/blobs/uploads/u1", 512, 1024)
    again = State(path)  # a new process
    pending = again.pending_upload("t", "repo", D1)
    assert pending is not None and (pending.url, pending.offset, pending.size) == (
        "http://t/v2/repo/blobs/uploads/u1",
        512,
        1024,
    )
    again.forget_upload("t", "repo", D1)
    assert again.pending_upload("t", "repo", D1) is None


def test_a_corrupt_file_is_set_aside_with_one_line_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(b"this is not a database" * 100)
    lines: list[str] = []
    state = State(path, warn=lines.append)
    assert state.available
    [line] = lines
    assert "corrupt" in line and "set aside" in line
    [aside] = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside.read_bytes().startswith(b"this is not a database")
    state.record_tags(1, "golang", [record("copied", D1)])
    assert len(State(path).tags()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_directory_costs_one_line_and_nothing_else(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    lines: list[str] = []
    try:
        state = State(locked / "sub" / FILENAME, warn=lines.append)
        assert not state.available and state.problem == lines[0]
        assert state.start_run("golang") is None
        state.record_tags(None, "golang", [record("copied", D1)])
        assert state.tags() == [] and len(lines) == 1
    finally:
        locked.chmod(0o700)


def test_a_write_that_finds_the_database_locked_is_dropped_not_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mirror.state.BUSY_TIMEOUT_MS", 50)
    path = tmp_path / FILENAME
    lines: list[str] = []
    state = State(path, warn=lines.append)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    state.record_tags(1, "golang", [record("copied", D1)])
    other.execute("ROLLBACK")
    other.close()
    assert len(lines) == 1 and "locked" in lines[0]
    state.record_tags(2, "golang", [record("copied", D2)])
    assert state.available and state.tags()[0]["target_digest"] == D2


def test_a_newer_schema_is_refused_not_downgraded(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    lines: list[str] = []
    state = State(path, warn=lines.append)
    assert not state.available and "newer" in lines[0]
    assert path.exists() and not [p for p in tmp_path.iterdir() if "corrupt" in p.name]


def test_default_path_follows_systemd_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_path({"STATE_DIRECTORY": "/var/lib/mirror:/x"}) == Path(
        "/var/lib/mirror/state.db"
    )
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_path({"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path("/s/mirror/state.db")
    assert default_path({"HOME": "/h"}) == Path("/h/.local/state/mirror/state.db")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_path({"HOME": "/root"}) == Path("/var/lib/mirror/state.db")


def test_a_path_that_cannot_be_made_costs_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    lines: list[str] = []
    state = State(tmp_path / "file" / FILENAME, warn=lines.append)
    assert not state.available and state.start_run("golang") is None
    [line] = lines
    assert line.startswith(f"state {tmp_path / 'file' / FILENAME}:")


def test_a_tag_re_pointed_by_hand_between_runs_shows_in_its_history(tmp_path: Path) -> None:
    D3 = "sha256:" + "3" * 64
    state = State(tmp_path / FILENAME, clock=Clock())
    state.record_tags(1, "golang", [record("copied", D1)])
    # Someone pushed D3 under the tag; the next run found it there and wrote D1 back.
    state.record_tags(2, "golang", [record("copied", D1, previous=D3)])

    history = state.history("registry.local:5000", "library/golang", "1.22")
    assert [(h["old_digest"], h["new_digest"]) for h in history] == [
        (None, D1),
        (D1, D3),
        (D3, D1),
    ]


def test_prune_bookkeeping_keeps_the_first_time_a_tag_went_missing(tmp_path: Path) -> None:
    state = State(tmp_path / FILENAME, clock=Clock())
    state.record_tags(1, "golang", [record("copied", D1)])
    key = ("registry.local:5000", "library/golang", "1.22")
    first = state.mark_missing(*key, "unselected")
    assert first is not None and state.mark_missing(*key, "deleted") == first
    assert state.tag(*key)["missing_reason"] == "deleted"  # type: ignore[index]
    state.clear_missing(*key)
    assert state.tag(*key)["missing_since"] is None  # type: ignore[index]
    state.record_pruned(*key, D1)
    assert state.tag(*key) is None
    assert state.history(*key)[-1]["old_digest"] == D1
    assert state.history(*key)[-1]["new_digest"] is None


def test_processes_opening_a_new_file_at_once_create_its_tables_once(tmp_path: Path) -> None:
    import threading

    path, lines = tmp_path / FILENAME, []
    start = threading.Barrier(6)

    def open_it() -> None:
        start.wait()
        State(path, warn=lines.append).close()

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert lines == []
    assert State(path).start_run("golang") == 1


def test_a_run_whose_process_died_reads_as_interrupted_not_running(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / FILENAME
    killed = (
        "import sys, pathlib, mirror.state as m; "
        "m.State(pathlib.Path(sys.argv[1])).start_run('gone')"  # then exits: never finished
    )
    subprocess.run([sys.executable, "-c", killed, str(path)], check=True)
    state = State(path)
    here = state.start_run("here")  # this process: still running

    last = state.last_runs()
    assert last["gone"]["outcome"] == "interrupted"
    assert last["here"]["outcome"] is None
    assert [r["outcome"] for r in state.runs()] == [None, "interrupted"]
    state.finish_run(here, "success", {}, None)
    assert state.last_runs()["here"]["outcome"] == "success"


def test_a_database_of_the_first_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO runs (job, started, outcome) VALUES ('old', 1, 'success')")
    db.commit()
    db.close()

    state = State(path)

    assert state.available and state.last_runs()["old"]["outcome"] == "success"
    assert state.start_run("new") == 2
