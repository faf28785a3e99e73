"""mirror as a user installs it: a fresh venv, ``pip install <checkout>``, no extras.

The suite's own venv has the test extras, which bring in packages a user's install does not
(``packaging`` came in through pytest while pyproject.toml did not declare it, and every
command but ``--help`` crashed for users). Here a venv is built outside the source tree, every
module of the installed package is imported in it, and the installed ``mirror`` command runs
each of its commands against the suite's real registries. Run from a directory outside the
checkout, so the checkout's ``mirror/`` can never be the one imported.
"""

from __future__ import annotations

import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import (
    HUB_PASSWORD,
    HUB_USER,
    Daemon,
    Run,
    manifest_gets,
    run_mirror,
    writes,
)
from tests.support.images import Pusher, build_image, build_index, verify_same
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT_S = 600  # downloads the runtime dependencies from the package index

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, mirror
names = sorted(m.name for m in pkgutil.walk_packages(mirror.__path__, "mirror."))
for name in names:
    if name != "mirror.__main__":  # runs the command line; the commands below run it
        importlib.import_module(name)
print(mirror.__file__)
print(" ".join(names))
"""


class UserInstall:
    """A venv with mirror installed from the checkout, as README tells users to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        self.mirror = root / "bin" / "mirror"
        self.workdir = root / "work"  # where commands run: outside the checkout

    def install(self) -> None:
        venv.EnvBuilder(with_pip=True).create(self.root)
        self.workdir.mkdir()
        completed = subprocess.run(
            [str(self.python), "-m", "pip", "install", "--quiet", str(ROOT)],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
            cwd=self.workdir,
        )
        assert completed.returncode == 0, f"pip install failed:\n{completed.stderr[-4000:]}"

    def run(self, *args: str, home: Path, env: dict[str, str] | None = None) -> Run:
        return run_mirror(
            *args,
            home=home,
            env={"HUB_PW": HUB_PASSWORD, **(env or {})},
            program=(str(self.mirror),),
            cwd=self.workdir,
        )


@pytest.fixture(scope="module")
def user_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserInstall]:
    install = UserInstall(tmp_path_factory.mktemp("user-venv"))
    assert ROOT not in install.root.parents
    install.install()
    yield install


@pytest.fixture
def config(tmp_path: Path, hub: HubRegistry, local: RegistryProcess, unique_repo: str) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(
        f'target = "{local.host}"\n'
        f'[registries."{hub.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        f'[daemon]\nlisten = "127.0.0.1:{free_port()}"\njitter = "0s"\n'
        f'[[mirrors]]\nsource = "{hub.host}/{unique_repo}"\n'
        'tags = { versions = ">=1" }\n'
    )
    return path


@pytest.fixture
def upstream(hub_pusher: Pusher, unique_repo: str) -> str:
    hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "1.0.1")
    hub_pusher.push(unique_repo, build_index("oci", seed=f"{unique_repo}:2"), "2.0.1")
    hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:e"), "edge")
    return unique_repo


def test_every_module_imports_from_a_plain_install(user_install: UserInstall) -> None:
    completed = subprocess.run(
        [str(user_install.python), "-I", "-c", IMPORT_EVERY_MODULE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=user_install.workdir,
    )

    assert completed.returncode == 0, completed.stderr
    location, names = completed.stdout.splitlines()
    assert Path(location).is_relative_to(user_install.root)  # the installed copy, not ours
    assert {"mirror.cli", "mirror.selection", "mirror.daemon", "mirror.copy"} <= set(names.split())


def test_installed_mirror_copies_then_does_nothing(
    user_install: UserInstall,
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    upstream: str,
    config: Path,
) -> None:
    ref = f"{hub.host}/{upstream}"

    first = user_install.run("sync", ref, "--config", str(config), "--json", home=tmp_path)

    assert first.code == 0, first.stderr
    assert first.report["tags_copied"] == 3
    verify_same((hub.url, hub.token_getter()), (local.url, None), upstream, ["1.0.1", "2.0.1"])
    hub_since, local_since = hub.log_mark(), local.log_mark()

    again = user_install.run("sync", ref, "--config", str(config), "--json", home=tmp_path)

    assert again.code == 0, again.stderr
    assert (again.report["tags_skipped"], again.report["tags_copied"]) == (3, 0)
    assert manifest_gets(hub, hub_since) == 0
    assert writes(local, local_since) == []


def test_installed_mirror_dry_run_tags_plan_and_config(
    user_install: UserInstall,
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    upstream: str,
    config: Path,
) -> None:
    ref = f"{hub.host}/{upstream}"
    local_since = local.log_mark()

    dry = user_install.run("sync", ref, "--config", str(config), "--dry-run", home=tmp_path)
    tags = user_install.run(
        "tags", ref, "--config", str(config), "--versions", ">=1", "--selected", home=tmp_path
    )
    plan = user_install.run("plan", "--config", str(config), home=tmp_path)
    shown = user_install.run("config", "--config", str(config), home=tmp_path)

    assert dry.code == 0, dry.stderr
    assert "3 tags: 3 would be copied" in dry.stdout
    assert writes(local, local_since) == []
    assert tags.code == 0, tags.stderr
    assert tags.stdout.split() == ["1.0.1", "2.0.1"]
    assert plan.code == 0, plan.stderr
    assert "copy" in plan.stdout and "2 to copy" in plan.stdout
    assert shown.code == 0, shown.stderr
    assert HUB_PASSWORD not in shown.stdout and '"username": "tester"' in shown.stdout


def test_installed_mirror_runs_as_a_service_until_sigterm(
    user_install: UserInstall, tmp_path: Path, hub: HubRegistry, upstream: str, config: Path
) -> None:
    port = int(config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    daemon = Daemon(
        config, tmp_path, port, program=(str(user_install.mirror),), cwd=user_install.workdir
    )
    try:
        daemon.wait_for("/healthz to answer", lambda: _answers(daemon))
        daemon.wait_for("the first run", lambda: daemon.events("job run"))
    finally:
        code = daemon.stop(30)

    assert code == 0, daemon.output
    assert daemon.events("daemon stopped")


def _answers(daemon: Daemon) -> bool:
    try:
        return daemon.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
