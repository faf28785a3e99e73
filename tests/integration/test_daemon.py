"""`mirror run` as a user runs it: a subprocess with a config, against real registries.

The daemon's JSON log lines, its /healthz, /readyz and /metrics, and the registries' own
content are what the tests look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import (
    HUB_PASSWORD,
    HUB_USER,
    Daemon,
    MirrorProcess,
    metric,
    run_mirror,
)
from tests.support.images import Pusher, build_image, manifest_digest, verify_same
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry


def config_text(
    hub: HubRegistry, local: RegistryProcess, port: int, entries: list[str], **daemon: str
) -> str:
    settings = {"listen": f"127.0.0.1:{port}", "jitter": "0s", "grace_period": "10s", **daemon}
    lines = [f'target = "{local.host}"', "[daemon]"]
    lines += [f'{key} = "{value}"' for key, value in settings.items()]
    lines += [
        f'[registries."{hub.host}"]',
        f'username = "{HUB_USER}"',
        'password_env = "HUB_PW"',
        "[defaults]",
        'interval = "1s"',
    ]
    for source in entries:
        lines += ["[[mirrors]]", f'source = "{hub.host}/{source}"']
    return "\n".join(lines) + "\n"


def test_daemon_keeps_the_target_in_step_and_reports_it(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "1.0")
    hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:2"), "2.0")
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, port, [unique_repo]))

    daemon = start_daemon(config, port)
    job = f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"

    daemon.wait_for("the first run", lambda: daemon.events("job run", job=job))
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, ["1.0", "2.0"])
    assert daemon.get("/healthz").status_code == 200
    assert daemon.wait_for("readiness", lambda: daemon.get("/readyz").status_code == 200)
    synced = {e["target"] for e in daemon.events("tag synced", job=job)}
    assert synced == {f"{local.host}/{unique_repo}:1.0", f"{local.host}/{unique_repo}:2.0"}

    # A tag pushed upstream afterwards appears on a later run.
    hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:3"), "3.0")
    daemon.wait_for("the new tag", lambda: manifest_digest(local.url, unique_repo, "3.0"))
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, ["3.0"])

    text = daemon.wait_for(
        "metrics of two or more runs",
        lambda: (
            (t := daemon.get("/metrics").text)
            and metric(t, "mirror_job_runs_total", entry=job, outcome="success") >= 2
            and metric(t, "mirror_tags_total", entry=job, result="copied") >= 3
            and t
        ),
    )
    assert metric(text, "mirror_tags_total", entry=job, result="copied") == 3
    assert metric(text, "mirror_tags_total", entry=job, result="failed") == 0
    assert metric(text, "mirror_bytes_copied_total", entry=job) > 0
    assert metric(text, "mirror_last_success_timestamp_seconds", entry=job) > time.time() - 60
    assert metric(text, "mirror_jobs") == 1
    # Each job run is one canonical line with its counts; no run overlaps another.
    runs = daemon.events("job run", job=job)
    assert all({"tags_checked", "bytes", "seconds", "outcome"} <= set(r) for r in runs)

    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert daemon.events("daemon stopped")
    assert HUB_PASSWORD not in daemon.output


def test_sighup_adds_an_entry_and_a_bad_config_is_rejected(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    first, second = f"{unique_repo}-a", f"{unique_repo}-b"
    hub_pusher.push(first, build_image("oci", seed=first), "v1")
    hub_pusher.push(second, build_image("oci", seed=second), "v1")
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, port, [first]))
    daemon = start_daemon(config, port)
    daemon.wait_for("the first entry", lambda: manifest_digest(local.url, first, "v1"))

    config.write_text(config_text(hub, local, port, [first]) + "[[mirrors]]\nbogus = 1\n")
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_for("the rejection", lambda: daemon.events("config reload rejected"))
    assert "mirrors[1]" in rejected[0]["error"]

    config.write_text(config_text(hub, local, port, [first, second]))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("the added entry", lambda: manifest_digest(local.url, second, "v1"))
    assert daemon.events("config reloaded")
    assert daemon.get("/metrics").status_code == 200
    assert metric(daemon.get("/metrics").text, "mirror_jobs") == 2
    assert daemon.stop() == 0


def test_sigterm_during_a_large_blob_stops_in_the_grace_period_and_moves_no_tag(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    from tests.support.images import make_layer

    big = make_layer(96 * 1024 * 1024, seed=unique_repo)  # random, so it stays this big
    image = build_image("oci", layers=[big])
    hub_pusher.push(unique_repo, image, "big")
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, port, [unique_repo], grace_period="0.2s"))
    mark = local.log_mark()
    daemon = start_daemon(config, port)
    daemon.wait_for(
        "an upload to start",
        lambda: any(e.method == "POST" for e in local.requests_since(mark)),
    )

    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    assert manifest_digest(local.url, unique_repo, "big") is None


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('[defaults]\ninterval = "1h"\ncron = "0 * * * *"', "defaults"),
        ('[[mirrors]]\nsource = "a/b"\ncron = "61 * * * *"', "mirrors[0].cron"),
        ('[[mirrors]]\nsource = "a/b"\ninterval = "soon"', "mirrors[0].interval"),
        ('[[mirrors]]\nsource = "a/b"\nintervall = "1h"', "mirrors[0].intervall"),
        ('[daemon]\nlisten = "nowhere"', "daemon.listen"),
    ],
)
def test_config_errors_exit_2_naming_the_key(tmp_path: Path, table: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(table + "\n")

    run = run_mirror("run", "--config", str(config), home=tmp_path, timeout=30)

    assert run.code == 2
    assert named in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_sync_all_runs_every_entry_once_and_exits(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    first, second = f"{unique_repo}-a", f"{unique_repo}-b"
    hub_pusher.push(first, build_image("oci", seed=first), "v1")
    hub_pusher.push(second, build_image("docker", seed=second), "v1")
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, free_port(), [first, second]))

    run = run_mirror(
        "sync",
        "--all",
        "--config",
        str(config),
        "--json",
        home=tmp_path,
        env={"HUB_PW": HUB_PASSWORD},
    )

    assert run.code == 0, run.stderr
    jobs = {j["job"]: j for j in json.loads(run.stdout)["jobs"]}
    assert {j["outcome"] for j in jobs.values()} == {"success"}
    assert len(jobs) == 2
    verify_same((hub.url, hub.token_getter()), (local.url, None), first, ["v1"])
    verify_same((hub.url, hub.token_getter()), (local.url, None), second, ["v1"])


def test_a_job_that_cannot_read_its_credentials_fails_visibly_and_the_daemon_goes_on(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    unique_repo: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    port = free_port()
    config = tmp_path / "mirror.toml"
    text = config_text(hub, local, port, [unique_repo]).replace("HUB_PW", "NOT_SET_ANYWHERE")
    config.write_text(text)
    daemon = start_daemon(config, port)
    job = f"{hub.host}/{unique_repo} -> {local.host}/{unique_repo}"

    runs = daemon.wait_for("a failed run", lambda: daemon.events("job run", outcome="failed"))
    assert "NOT_SET_ANYWHERE" in runs[0]["error"] and "password_env" in runs[0]["error"]
    text = daemon.wait_for(
        "the failure in /metrics",
        lambda: (
            (t := daemon.get("/metrics").text)
            and metric(t, "mirror_job_runs_total", entry=job, outcome="failed") >= 1
            and t
        ),
    )
    assert daemon.get("/healthz").status_code == 200
    # Ready all the same: one entry failing forever must not hold up a rollout. Its staleness
    # is for the alert on mirror_last_success_timestamp_seconds.
    ready = daemon.get("/readyz")
    assert ready.status_code == 200 and "without a good run yet" in ready.text
    assert metric(text, "mirror_last_success_timestamp_seconds", entry=job) == 0
    assert metric(text, "mirror_job_added_timestamp_seconds", entry=job) > time.time() - 60
    assert metric(text, "mirror_job_interval_seconds", entry=job) == 1
    assert not daemon.events("job crashed")
    assert daemon.stop() == 0


def test_a_listen_address_in_use_is_one_line_and_exit_2(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, unique_repo: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "mirror.toml"
        config.write_text(config_text(hub, local, port, [unique_repo]))

        run = run_mirror("run", "--config", str(config), home=tmp_path, timeout=30)

    assert run.code == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert f"[daemon] listen 127.0.0.1:{port}" in line and "in use" in line


def test_healthcheck_asks_the_daemon_at_its_listen_address(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    unique_repo: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, port, [unique_repo]).replace("127.0.0.1", "0.0.0.0"))
    daemon = start_daemon(config, port)

    alive = run_mirror("healthcheck", "--config", str(config), home=tmp_path, timeout=30)
    assert daemon.stop() == 0
    gone = run_mirror("healthcheck", "--config", str(config), home=tmp_path, timeout=30)

    assert alive.code == 0, alive.stderr
    assert gone.code == 1 and f"127.0.0.1:{port}/healthz" in gone.stderr


def test_the_daemon_feeds_systemds_watchdog(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, unique_repo: str
) -> None:
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, port, [unique_repo]))
    address = f"mirror-watchdog-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + address)
        notify.settimeout(0.2)
        env = {"NOTIFY_SOCKET": "@" + address, "WATCHDOG_USEC": "1000000", "HUB_PW": "x"}
        daemon = MirrorProcess("run", "--config", str(config), home=tmp_path, env=env)
        messages: list[str] = []

        def three_pings() -> bool:
            with contextlib.suppress(TimeoutError):
                messages.extend(notify.recv(4096).decode().splitlines())
            return messages.count("WATCHDOG=1") >= 3

        try:
            started = time.monotonic()
            daemon.wait_for("three watchdog pings", three_pings, timeout=10)
            elapsed = time.monotonic() - started
        finally:
            daemon.stop()

    assert messages.count("WATCHDOG=1") >= 3, messages
    assert elapsed < 3  # every half of WatchdogSec=1s


def test_under_systemd_each_line_carries_its_priority_so_the_journal_can_filter(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    good, missing = f"{unique_repo}-good", f"{unique_repo}-missing:v1"
    hub_pusher.push(good, build_image("oci", seed=good), "v1")
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, free_port(), [good, missing]))
    journal = tmp_path / "journal"
    with journal.open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}", "HUB_PW": HUB_PASSWORD}
        args = ("sync", "--all", "--config", str(config))
        code = run_mirror(*args, home=tmp_path, env=env, stdout=stream, timeout=60).code

    assert code == 1
    by_priority: dict[str, list[str]] = {}
    for line in journal.read_text().splitlines():
        assert line[:1] == "<" and line[2:3] == ">", line
        by_priority.setdefault(line[1], []).append(json.loads(line[3:])["event"])
    # What `journalctl -p warning` shows (priorities 0-4) is the failure and nothing else.
    failures = [e for p, events in by_priority.items() if int(p) <= 4 for e in events]
    assert sorted(failures) == ["job run", "tag failed"]
    assert by_priority["6"].count("job run") == 1 and "tag synced" in by_priority["6"]


def test_quiet_sync_all_writes_nothing_when_every_entry_is_in_sync(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    hub_pusher.push(unique_repo, build_image("oci", seed=unique_repo), "v1")
    config = tmp_path / "mirror.toml"
    config.write_text(config_text(hub, local, free_port(), [unique_repo]))
    args = ("sync", "--all", "--config", str(config))
    env = {"HUB_PW": HUB_PASSWORD}

    quiet = run_mirror(*args, "-q", home=tmp_path, env=env)
    chatty = run_mirror(*args, home=tmp_path, env=env)

    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, "", "")
    assert chatty.code == 0 and '"event": "job run"' in chatty.stdout
