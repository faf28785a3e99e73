"""Secrets under faults: the Hub password and the bearer tokens mirror is given never show in
anything it prints (human output, ``--json``, ``sync --all`` and daemon log lines, error
messages, ``mirror config``), however the run goes wrong.

Every ``mirror`` run in the fault suites is searched the same way (``Secrets.checked``); the
tests here drive the paths most likely to carry a credential into a message: failures of
every kind in one run, the daemon's logs, a registry that echoes the credentials it was
sent, and the resolved config.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import faultkit as kit
from tests.integration.helpers import HUB_ENV, HUB_PASSWORD, HUB_USER, Daemon, Run, run_mirror
from tests.support import faults
from tests.support.images import Image, Pusher
from tests.support.proxy import RegistryProxy
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

MIB = kit.MIB


def troubled_repo(pusher: Pusher, repo: str, source: RegistryProxy) -> dict[str, Image]:
    """Tags that each meet a different fault on ``source``: a cut large blob (recovers),
    a corrupt blob, a manifest that is not JSON, plus 503s here and there (recover)."""
    images = {
        "big": kit.big_image(repo),
        "corrupt": kit.small_image(f"{repo}:corrupt"),
        "garbage": kit.small_image(f"{repo}:garbage"),
        "fine": kit.small_image(f"{repo}:fine"),
    }
    kit.push_all(pusher, repo, images)
    source.add_rule(faults.cut_blob(images["big"].layers[0].digest, after=3 * MIB + 1))
    corrupt = images["corrupt"].layers[0]
    source.add_rule(faults.corrupt_blob(corrupt.digest, at=corrupt.size // 2))
    source.add_rule(faults.FakeManifest(repo, "garbage", b"<html>oops</html>", "text/html"))
    source.add_rule(faults.Unavailable(every=5, once_each=True))
    return images


def test_no_output_of_a_run_full_of_faults_shows_a_password_or_token(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    images = troubled_repo(hub_pusher, unique_repo, source)
    config = kit.write_config(
        tmp_path,
        source,
        target=local.host,
        body=f'[[mirrors]]\nsource = "{source.host}/{unique_repo}"\n',
    )
    ref = f"{source.host}/{unique_repo}"

    def run(*args: str) -> Run:
        return secrets.checked(
            run_mirror(*args, "--config", str(config), home=tmp_path, env=HUB_ENV)
        )

    runs = [  # human output and error lines; then --json with JSON log lines on stderr
        run("sync", ref, "--to", local.host),
        run("sync", "--all", "--json"),
    ]

    assert [r.code for r in runs] == [1, 1], [r.describe() for r in runs]
    text = "".join(r.stdout + r.stderr for r in runs)
    assert "digest mismatch" in text and "not JSON" in text  # the failures were reported
    assert '"event": "tag failed"' in runs[1].stderr  # and logged
    issued = hub.token_server.issued_tokens()
    assert len(issued) >= 2  # there were tokens to leak
    assert all(r.username == "tester" for r in hub.token_server.requests())  # and a password
    for r in runs:
        secrets.check(r.stdout, r.stderr)
    found = kit.check_target(local, unique_repo, before={}, upstream=images)
    assert found == {"big": images["big"].digest, "fine": images["fine"].digest}


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_a_registry_that_echoes_the_credentials_in_its_error_does_not_make_mirror_print_them(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
    make_registry: Callable[..., RegistryProcess],
    secrets: kit.Secrets,
    scheme: str,
) -> None:
    images = {tag: kit.small_image(f"{unique_repo}:{tag}") for tag in ("good", "bad")}
    if scheme == "basic":  # a plain registry behind Basic auth, as many private ones are
        plain = make_registry()
        with Pusher(plain.url) as pusher:
            kit.push_all(pusher, unique_repo, images)
        source = make_proxy(plain.url)
    else:
        kit.push_all(hub_pusher, unique_repo, images)
        source = make_proxy(hub.url)
    echo = faults.EchoAuthorization(faults.is_manifest("GET", unique_repo, images["bad"].digest))
    source.add_rule(echo)  # before the gate: it answers requests that carry credentials
    if scheme == "basic":
        source.add_rule(faults.BasicAuthGate({HUB_USER: HUB_PASSWORD}))
    config = kit.write_config(tmp_path, source)
    args = ["sync", f"{source.host}/{unique_repo}", "--to", local.host, "--json"]

    run = run_mirror(*args, "--config", str(config), home=tmp_path, env=HUB_ENV)

    assert run.code == 1, run.describe()
    assert echo.echoed and echo.echoed[0].lower().startswith(scheme)
    assert run.statuses() == {"good": "copied", "bad": "failed"}
    assert "access denied" in run.stderr
    output = run.stdout + run.stderr
    secrets.check(output)
    # Not even part of a credential: a short opaque token would fit whole.
    for credential in echo.echoed:
        value = credential.split(" ", 1)[1]
        assert value[:24] not in output, f"{scheme} credentials in the output:\n{output}"


def test_the_daemons_logs_show_no_secret_and_sigterm_stops_it_within_the_grace_period(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    source: RegistryProxy,
    secrets: kit.Secrets,
) -> None:
    troubled, slow = f"{unique_repo}-a", f"{unique_repo}-b"
    images = troubled_repo(hub_pusher, troubled, source)
    big = {"big": kit.big_image(slow, seed="secrets:daemon")}
    kit.push_all(hub_pusher, slow, big)
    before = kit.seed_target(local_pusher, slow, ["big"])
    pause = faults.stall_blob(big["big"].layers[0].digest, after=2 * MIB, stall_s=20)
    source.add_rule(pause)
    config = kit.write_config(
        tmp_path,
        source,
        target=local.host,
        body=(
            f'[daemon]\nlisten = "127.0.0.1:{free_port()}"\ngrace_period = "1s"\n'
            'jitter = "0s"\nlog_format = "json"\n[defaults]\ninterval = "1h"\n'
            f'[[mirrors]]\nsource = "{source.host}/{troubled}"\n'
            f'[[mirrors]]\nsource = "{source.host}/{slow}"\n'
        ),
    )
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("the troubled entry's run", lambda: daemon.events("job run"))
        assert pause.stalled.wait(20), "the slow entry never started its large blob"
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        stopped = daemon.wait(timeout=15)
        took = time.monotonic() - signalled
    finally:
        pause.release.set()
        daemon.kill()

    secrets.check(stopped.stdout, stopped.stderr)
    assert stopped.code == 0, stopped.describe()
    assert took < 1.0 + 4.0  # the grace period, and a little
    failed = daemon.events("tag failed")
    assert {e["target"].rsplit(":", 1)[1] for e in failed} == {"corrupt", "garbage"}
    assert daemon.events("daemon stopped")
    found = kit.check_target(local, troubled, before={}, upstream=images)
    assert found == {"big": images["big"].digest, "fine": images["fine"].digest}
    assert kit.check_target(local, slow, before=before, upstream=big) == before  # not moved


def test_mirror_config_masks_the_password_from_a_file_or_the_environment(
    tmp_path: Path, hub: HubRegistry, local: RegistryProcess, secrets: kit.Secrets
) -> None:
    from_env = kit.write_config(tmp_path, hub, target=local.host, name="env.toml")
    password_file = tmp_path / "hub-token"
    password_file.write_text(HUB_PASSWORD + "\n")
    from_file = tmp_path / "file.toml"
    from_file.write_text(
        f'target = "{local.host}"\n[registries."{hub.host}"]\nusername = "tester"\n'
        f'password_file = "{password_file}"\n'
    )

    for config in (from_env, from_file):
        shown = secrets.checked(
            run_mirror("config", "--config", str(config), home=tmp_path, env=HUB_ENV)
        )
        assert shown.code == 0, shown.describe()
        assert hub.host in shown.stdout and "tester" in shown.stdout
