"""mirror behind an HTTP proxy, as a company network has it: Debian's tinyproxy on loopback.

HTTP_PROXY sends the Hub-like upstream (and its token server) through the proxy; NO_PROXY keeps
the local target direct, as curl reads both. The proxy's own log says which requests crossed it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import HUB_PASSWORD, hub_config, run_mirror, wait_until
from tests.support.images import Pusher, build_image, build_index, verify_same
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class Tinyproxy:
    """tinyproxy in the foreground on a free loopback port, logging every request it relays."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "tinyproxy.log"
        config = workdir / "tinyproxy.conf"
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 64\n"
            f'LogFile "{self.log}"\nLogLevel Connect\nDisableViaHeader Yes\n'
        )
        self.proc = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            f"tinyproxy to start on 127.0.0.1:{self.port}",
            self._answers,
            timeout=10,
            still_running=lambda: self.proc.poll() is None,
        )

    def _answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/", timeout=1)
        except httpx.TransportError:
            return False
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def relayed(self, host: str) -> list[str]:
        """Requests the proxy relayed to ``host`` (host:port)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if f"http://{host}/" in line]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    if not Path(TINYPROXY).exists():
        pytest.fail(
            f"{TINYPROXY} is missing: this test needs Debian's tinyproxy (tests/run installs it)",
            pytrace=False,
        )
    started = Tinyproxy(tmp_path)
    yield started
    started.stop()


def test_the_upstream_goes_through_the_proxy_and_no_proxy_stays_direct(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    proxy: Tinyproxy,
) -> None:
    hub_pusher.push(unique_repo, build_image("docker", seed=unique_repo), "1.0")
    hub_pusher.push(unique_repo, build_index("oci", seed=f"{unique_repo}:i"), "2.0")
    token_host = httpx.URL(hub.token_server.url).netloc.decode()
    env = {"HUB_PW": HUB_PASSWORD, "HTTP_PROXY": proxy.url, "NO_PROXY": local.host}

    run = run_mirror(
        "sync",
        f"{hub.host}/{unique_repo}",
        "--to",
        local.host,
        "--config",
        str(hub_config(tmp_path, hub)),
        home=tmp_path,
        env=env,
    )

    assert run.code == 0, run.stderr
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, ["1.0", "2.0"])
    crossed = proxy.relayed(hub.host)
    assert any("/manifests/" in line for line in crossed), crossed
    assert any("/blobs/" in line for line in crossed), crossed
    assert proxy.relayed(token_host), "the token server is reached through the proxy too"
    assert proxy.relayed(local.host) == [], "NO_PROXY keeps the target direct"


def test_no_proxy_for_every_host_sends_nothing_through_it(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    proxy: Tinyproxy,
) -> None:
    hub_pusher.push(unique_repo, build_image("oci", seed=unique_repo), "1.0")
    env = {"HUB_PW": HUB_PASSWORD, "http_proxy": proxy.url, "no_proxy": "127.0.0.0/8"}

    run = run_mirror(
        "sync", f"{hub.host}/{unique_repo}", "--to", local.host, home=tmp_path, env=env
    )

    assert run.code == 0, run.stderr
    assert proxy.relayed(hub.host) == [] and proxy.relayed(local.host) == []
