"""Log lines under systemd: each carries its syslog priority, so `journalctl -p warning`
shows failures and nothing else; anywhere else lines are left as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog

from mirror.logs import configure_logging, journal_prefix


def journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, ours: bool = True) -> Path:
    """A file standing in for the journal's stream; JOURNAL_STREAM names it (or another)."""
    path = tmp_path / "journal"
    path.touch()
    status = os.stat(path if ours else tmp_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    return path


def log_lines(path: Path) -> list[str]:
    with path.open("w") as stream:
        configure_logging("json", stream=stream)
        log = structlog.get_logger("mirror")
        log.info("job run", outcome="success")
        log.warning("job run", outcome="partial")
        log.error("tag failed", error="boom")
        log.debug("not written at info")
    return path.read_text().splitlines()


def test_lines_to_the_journal_carry_their_syslog_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = log_lines(journal_file(tmp_path, monkeypatch))

    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert json.loads(lines[2][3:])["event"] == "tag failed"


def test_lines_elsewhere_are_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = log_lines(journal_file(tmp_path, monkeypatch, ours=False))

    assert [json.loads(line)["level"] for line in lines] == ["info", "warning", "error"]


def test_without_journal_stream_there_is_no_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    path = tmp_path / "out"

    with path.open("w") as stream:
        assert journal_prefix(stream, "error") == ""


def test_an_error_line_of_the_command_gets_the_error_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = journal_file(tmp_path, monkeypatch)

    with path.open("w") as stream:
        assert journal_prefix(stream, "error") == "<3>"
        assert journal_prefix(stream, "info") == "<6>"
