"""Notifications from real runs: a webhook receiver (a threaded HTTP server in the test) gets
each event kind from `mirror run`; a receiver that hangs holds up neither copying nor the exit
of `mirror sync --all` beyond its short flush; a receiver's URL never shows in the output."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mirror import notify
from tests.integration.helpers import HUB_ENV, HUB_USER, Daemon, run_mirror
from tests.support.images import Pusher, build_image, manifest_digest
from tests.support.proxy import RegistryProxy
from tests.support.ratelimit import PullLimit
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

HANG_S = 60.0


class Receiver:
    """A webhook receiver on 127.0.0.1: records each JSON body; answers ``status``, or with
    ``hang`` never answers (until the test ends)."""

    def __init__(self, status: int = 204, *, hang: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                if hang:
                    receiver.release.wait(HANG_S)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [b for b in list(self.bodies) if b.get("event") == kind]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(status: int = 204, *, hang: bool = False) -> Receiver:
        started.append(Receiver(status, hang=hang))
        return started[-1]

    yield make
    for receiver in started:
        receiver.close()


def registry_block(host: str, **extra: Any) -> str:
    lines = [f'[registries."{host}"]', f'username = "{HUB_USER}"', 'password_env = "HUB_PW"']
    return "\n".join(lines + [f"{k} = {v}" for k, v in extra.items()]) + "\n"


def notify_block(url: str, **extra: str) -> str:
    return f'[[notify]]\nurl = "{url}"\n' + "".join(f"{k} = {v}\n" for k, v in extra.items())


def test_a_webhook_gets_each_event_kind_from_the_daemons_runs(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
    receivers: Callable[..., Receiver],
    start_daemon: Callable[..., Daemon],
) -> None:
    moving, missing, limited = (f"{unique_repo}-{n}" for n in ("moving", "missing", "limited"))
    old = hub_pusher.push(moving, build_image("docker", seed=f"{moving}:1"), "latest")
    for version in ("1.0.1", "1.0.2", "1.0.3"):
        hub_pusher.push(limited, build_image("docker", seed=f"{limited}:{version}"), version)
    quota = make_proxy(hub.url, rules=[PullLimit(limit=2)])  # one pull, one kept in reserve
    hook = receivers()
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'target = "{local.host}"\n[daemon]\nlisten = "127.0.0.1:{port}"\njitter = "0s"\n'
        + registry_block(hub.host)
        + registry_block(quota.host, pull_reserve=1)
        + '[defaults]\ninterval = "1s"\n'
        + f'[[mirrors]]\nsource = "{hub.host}/{moving}:latest"\n'
        + f'[[mirrors]]\nsource = "{hub.host}/{missing}:v1"\n'
        + f'[[mirrors]]\nsource = "{quota.host}/{limited}"\n'
        + notify_block(f"{hook.url}/hooks/mirror")
    )
    daemon = start_daemon(config, port)
    jobs = {
        "moving": f"{hub.host}/{moving}:latest -> {local.host}/{moving}",
        "missing": f"{hub.host}/{missing}:v1 -> {local.host}/{missing}",
        "limited": f"{quota.host}/{limited} -> {local.host}/{limited}",
    }

    daemon.wait_for("a failure and a deferral", lambda: hook.events("entry.deferred"))
    daemon.wait_for("a failure", lambda: hook.events("tag.failed"))
    daemon.wait_for("the first copy", lambda: manifest_digest(local.url, moving, "latest"))
    new = hub_pusher.push(moving, build_image("oci", seed=f"{moving}:2"), "latest")
    hub_pusher.push(missing, build_image("docker", seed=f"{missing}:1"), "v1")
    daemon.wait_for("the move", lambda: hook.events("tag.moved"))
    daemon.wait_for("the recovery", lambda: hook.events("entry.recovered"))

    for body in hook.bodies:
        assert body["version"] == 1 and body["at"].endswith("Z") and body["text"]
    assert hook.paths[0] == "/hooks/mirror"
    (moved,) = hook.events("tag.moved")
    assert moved["job"] == jobs["moving"]
    assert (moved["old_digest"], moved["new_digest"]) == (old.digest, new.digest)
    assert moved["source"] == f"{hub.host}/{moving}:latest"
    assert moved["target"] == f"{local.host}/{moving}:latest"
    failed = hook.events("tag.failed")[0]
    assert failed["job"] == jobs["missing"] and "does not exist" in failed["error"]
    (recovered,) = hook.events("entry.recovered")
    assert recovered["job"] == jobs["missing"] and recovered["previous_outcome"] == "failed"
    deferred = hook.events("entry.deferred")[0]
    assert deferred["job"] == jobs["limited"] and deferred["tags_deferred"] >= 1
    assert "pull" in deferred["reason"]
    assert daemon.stop() == 0


def test_a_hanging_receiver_slows_nothing_and_no_receiver_url_is_shown(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    receivers: Callable[..., Receiver],
) -> None:
    hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "latest")
    good, hanging, refusing = receivers(), receivers(hang=True), receivers(status=403)
    through_apprise = receivers(status=200)
    secret_path, secret_query = "T0KEN-IN-THE-PATH", "T0KEN-IN-THE-QUERY"
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'target = "{local.host}"\n'
        + registry_block(hub.host)
        + f'[[mirrors]]\nsource = "{hub.host}/{unique_repo}:latest"\n'
        + notify_block(f"{good.url}/{secret_path}")
        + notify_block(f"{hanging.url}/hook", timeout='"50s"')
        + notify_block(f"{refusing.url}/hook/{secret_path}?token={secret_query}")
        + notify_block(through_apprise.url.replace("http://", "json://") + "/apprise")
    )
    args = ("sync", "--all", "--config", str(config))
    assert run_mirror(*args, home=tmp_path, env=HUB_ENV).code == 0
    hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:2"), "latest")

    started = time.monotonic()
    run = run_mirror(*args, home=tmp_path, env=HUB_ENV)
    seconds = time.monotonic() - started

    assert run.code == 0, run.describe()
    assert [b["event"] for b in good.bodies] == ["tag.moved"]  # the others held up nothing
    assert [b["event"] for b in hanging.bodies] == ["tag.moved"]  # it got it, never answered
    (job,) = [json.loads(line) for line in run.stdout.splitlines() if '"job run"' in line]
    print(f"\nnotify: job {job['seconds']:.2f} s, whole run {seconds:.2f} s, one receiver hanging")
    assert job["seconds"] < 3.0  # copying waits for no receiver
    assert seconds < job["seconds"] + notify.FLUSH_S + 4.0 < HANG_S  # nor the exit, past a flush
    (sent,) = through_apprise.bodies  # apprise's own JSON form, from its json:// service
    assert sent["title"] == "mirror: tag moved" and unique_repo in sent["message"]
    output = run.stdout + run.stderr
    assert "notification failed" in output and "HTTP 403" in output
    assert f"{refusing.url}/..." in output  # named by scheme and host only
    assert secret_path not in output and secret_query not in output
    shown = run_mirror("config", "--config", str(config), home=tmp_path, env=HUB_ENV)
    assert shown.code == 0 and secret_path not in shown.stdout and "********" in shown.stdout
