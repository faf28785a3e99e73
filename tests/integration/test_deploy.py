"""The deployment files in ``deploy/`` agree with the code and with each other.

Mostly static: the systemd unit passes ``systemd-analyze verify`` (and a broken copy does
not), every YAML file parses, every embedded config loads with ``mirror.config``, and the
probe paths, port, config path, grace periods, secret paths, image tags and shard count line up
across the unit, the Dockerfile, Compose and Kubernetes. Command lines in the manifests are
parsed with the real CLI parser, and the probe paths are checked against a real
``HealthServer``. Where ``kubectl`` is installed, the kustomizations are built with it and the
output is checked (the shard count above all); where ``promtool`` is, the alert rules and the
dashboard's queries are checked and the alerts are unit-tested with it. One test runs
``mirror run`` the way ``mirror.service`` does (notify socket, watchdog, credentials directory,
MemoryDenyWriteExecute where the kernel can impose it) for a second or two.
``test_deploy_metrics.py`` checks every metric the dashboard and the alerts query against a
real daemon's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from mirror import __version__
from mirror.cli import build_parser
from mirror.config import Config, DaemonSettings, load_config, parse_duration
from mirror.daemon import Shard
from mirror.health import HealthServer, Metrics
from tests.integration.helpers import MIRROR, MirrorProcess, Run, run_mirror, wait_until
from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
KUBE_CONFIG = KUBE / "config" / "config.toml"  # made into the ConfigMap by config/
CRONJOB_DIR = KUBE / "cronjob"
MONITORING = KUBE / "monitoring"
UNIT = DEPLOY / "mirror.service"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
RULES = DEPLOY / "prometheus" / "mirror.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "mirror.json"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")

CONFIG_PATH = "/etc/mirror/config.toml"  # where every deployment puts the config
VERSION = __version__  # pyproject.toml takes the package's version from it
IMAGE = f"mirror:{VERSION}"  # every deployment pins the release it ships with
DEFAULT_GRACE_S = DaemonSettings().grace_period
DEFAULT_PORT = DaemonSettings().listen_port
SHARD_PLACEHOLDER = "$(POD_INDEX)/N"  # statefulset.yaml's --shard before kustomize fills in N


# --- reading the files ----------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}, repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            assert current is not None, f"{line!r} outside a section"
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def unit_value(section: list[tuple[str, str]], key: str) -> str:
    values = unit_values(section, key)
    assert values, f"{key}= is missing"
    return values[-1]


def unit_values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line:
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The build stages, each from its FROM to the next."""
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return [
        instructions[a:b] for a, b in zip(starts, [*starts[1:], len(instructions)], strict=True)
    ]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return stages(instructions)[-1]


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(name: str) -> dict[str, Any]:
    """One manifest under deploy/kubernetes/, by its path there."""
    (document,) = yaml_documents(KUBE / name)
    assert isinstance(document, dict)
    return document


def kustomization(directory: Path) -> dict[str, Any]:
    (document,) = yaml_documents(directory / "kustomization.yaml")
    assert isinstance(document, dict)
    return document


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl apply -k DIRECTORY`` would apply, as kubectl's kustomize builds it."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the static tests check the kustomizations")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def load_text_config(text: str, tmp_path: Path, name: str = "config.toml") -> Config:
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def configmap_config_text() -> str:
    return KUBE_CONFIG.read_text()


def parse_cli(argv: list[str]) -> Any:
    """Parse a deployment's command line with mirror's own parser (argparse exits on error)."""
    return build_parser().parse_args(argv)


def duration(value: str | int | float) -> float:
    return parse_duration(value)


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def mirror_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "mirror"]
    return dict(container)


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(found)


def mounted_file(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """Which volume serves file ``path`` in the container, and the key within that volume."""
    target = PurePosixPath(path)
    for mount in container["volumeMounts"]:
        base = PurePosixPath(mount["mountPath"])
        if target.parent == base and "subPath" not in mount:
            return mount["name"], target.name
        if target == base and "subPath" in mount:
            return mount["name"], mount["subPath"]
    raise AssertionError(f"nothing is mounted at {path}")


def volume(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec["volumes"] if v["name"] == name]
    return dict(found)


def field(document: Any, path: str) -> Any:
    """A kustomize fieldPath (``a.b.[name=x].c.4``) looked up in a parsed manifest."""
    for part in path.split("."):
        if part.startswith("[") and part.endswith("]"):
            key, _, value = part[1:-1].partition("=")
            (document,) = [item for item in document if item.get(key) == value]
        elif part.isdigit():
            document = document[int(part)]
        else:
            document = document[part]
    return document


def container_configs() -> list[Any]:
    """(name, TOML text) of the configs that run inside containers."""
    return [
        pytest.param("compose", (DEPLOY / "compose.config.toml").read_text(), id="compose"),
        pytest.param("kubernetes", configmap_config_text(), id="kubernetes"),
    ]


# --- systemd ----------------------------------------------------------------------------------


def systemd_verify(unit_text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Run ``systemd-analyze verify`` on a copy of the unit whose ExecStart binary exists here.

    Returns the exit status and every complaint about the unit. systemd-analyze 252 exits 0
    for an unknown key or a bad value (it only warns), so the complaints are what count.
    """
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip(f"{SYSTEMD_ANALYZE} is not installed (Debian package systemd)")
    here = shutil.which("mirror", path=str(Path(sys.executable).parent)) or sys.executable
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    copy = unit_dir / UNIT.name
    copy.write_text(unit_text.replace("/opt/mirror/bin/mirror", here))
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in output if UNIT.name in line]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    status, complaints = systemd_verify(UNIT.read_text(), tmp_path)

    assert complaints == []
    assert status == 0


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("DynamicUser=yes", "DynamikUser=yes"), "DynamikUser"),
        (("Type=notify", "Type=notfy"), "notfy"),
        (("ProtectSystem=strict", "ProtectSystem=stricter"), "stricter"),
        (("WatchdogSec=60s", "WatchdogSec=soon"), "soon"),
        (("/opt/mirror/bin/mirror run", "/opt/mirror/bin/nonexistent run"), "nonexistent"),
    ],
    ids=["misspelt key", "bad Type", "bad value", "bad duration", "missing binary"],
)
def test_systemd_analyze_verify_catches_a_broken_unit(
    tmp_path: Path, change: tuple[str, str], complaint: str
) -> None:
    text = UNIT.read_text()
    assert change[0] in text
    broken = text.replace(change[0], change[1], 1)

    _, complaints = systemd_verify(broken, tmp_path)

    assert any(complaint in line for line in complaints), complaints


def test_the_unit_runs_mirror_as_a_notify_service_with_a_credential() -> None:
    sections = unit_entries(UNIT.read_text())
    service = sections["Service"]

    assert unit_value(service, "Type") == "notify"
    assert unit_value(service, "NotifyAccess") == "main"
    assert unit_value(service, "DynamicUser") == "yes"
    assert unit_value(service, "Restart") == "on-failure"
    assert unit_value(service, "StateDirectory") == "mirror"
    assert unit_value(service, "LoadCredential") == "hub-token:/etc/mirror/hub-token"
    assert unit_value(sections["Install"], "WantedBy") == "multi-user.target"

    binary, *argv = shlex.split(unit_value(service, "ExecStart"))
    assert binary == "/opt/mirror/bin/mirror"
    args = parse_cli(argv)
    assert (args.command, args.config, args.shard) == ("run", CONFIG_PATH, None)

    config = load_config(DEPLOY / "config.toml")
    grace = max(config.daemon.grace_period, DEFAULT_GRACE_S)
    assert duration(unit_value(service, "TimeoutStopSec")) > grace
    # Exit status 2 is a config error: restarting cannot fix it.
    assert "2" in unit_value(service, "RestartPreventExitStatus").split()


def test_the_unit_checks_the_config_before_starting_and_reloading() -> None:
    sections = unit_entries(UNIT.read_text())
    service = sections["Service"]
    checks = [
        unit_value(service, "ExecStartPre"),
        *unit_values(service, "ExecReload")[:-1],
    ]

    for line in checks:
        binary, *argv = shlex.split(line)
        args = parse_cli(argv)
        assert binary == "/opt/mirror/bin/mirror"
        assert (args.command, args.check, args.config) == ("config", True, CONFIG_PATH)
    assert len(checks) == 2, "ExecStartPre= and the first ExecReload= check the config"
    # The reload's last step signals the daemon, only once the check has passed.
    assert unit_values(service, "ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    # RestartPreventExitStatus= does not cover ExecStartPre= (systemd/systemd#11868): a start
    # limit stops a bad config from being retried every RestartSec forever.
    unit = sections["Unit"]
    burst = int(unit_value(unit, "StartLimitBurst"))
    window = duration(unit_value(unit, "StartLimitIntervalSec").replace("min", "m"))
    assert burst * duration(unit_value(service, "RestartSec")) < window


def test_the_unit_has_a_watchdog_and_resource_limits() -> None:
    service = unit_entries(UNIT.read_text())["Service"]

    # mirror pings at half the period: long enough for a busy loop, short enough to matter.
    assert 10 <= duration(unit_value(service, "WatchdogSec")) <= 300
    assert re.fullmatch(r"\d+[KMG]", unit_value(service, "MemoryMax"))
    memory = unit_value(service, "MemoryMax")
    megabytes = int(memory[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024}[memory[-1]]
    assert 128 <= megabytes <= 2048, "measured peak RSS is ~50 MB; leave room, stop a leak"
    assert 16 <= int(unit_value(service, "TasksMax")) <= 512


def test_the_unit_is_hardened() -> None:
    service = dict(unit_entries(UNIT.read_text())["Service"])
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
    }

    assert {key: service.get(key) for key in expected} == expected


def test_the_service_config_reads_the_token_systemd_hands_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    credential, _, _source = unit_value(service, "LoadCredential").partition(":")
    (tmp_path / credential).write_text("hub-token-value\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))

    config = load_config(DEPLOY / "config.toml")
    credentials = config.credentials("docker.io")

    assert config.registry("docker.io").password_file == f"${{CREDENTIALS_DIRECTORY}}/{credential}"
    assert credentials is not None and credentials.password == "hub-token-value"
    assert config.mirrors, "mirror run refuses a config without [[mirrors]] entries"


# --- configs ----------------------------------------------------------------------------------


def every_yaml_file() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in every_yaml_file()}

    assert {
        "compose.yaml",
        "kubernetes/kustomization.yaml",
        "kubernetes/config/kustomization.yaml",
        "kubernetes/secret.example.yaml",
        "kubernetes/statefulset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/cronjob/kustomization.yaml",
        "kubernetes/cronjob/cronjob.yaml",
        "kubernetes/monitoring/kustomization.yaml",
        "kubernetes/monitoring/servicemonitor.yaml",
        "kubernetes/monitoring/prometheusrule.yaml",
        "prometheus/mirror.rules.yml",
    } <= names


@pytest.mark.parametrize("path", every_yaml_file(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    documents = yaml_documents(path)

    assert documents and all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize(
    "name",
    [
        "deploy/config.toml",
        "deploy/compose.config.toml",
        "deploy/kubernetes/config/config.toml",
        "config.example.toml",
    ],
)
def test_every_shipped_config_loads(name: str, tmp_path: Path) -> None:
    config = load_text_config((ROOT / name).read_text(), tmp_path)

    assert config.mirrors, "mirror run refuses a config without [[mirrors]] entries"


@pytest.mark.parametrize(("name", "text"), container_configs())
def test_container_configs_listen_on_every_interface(name: str, text: str, tmp_path: Path) -> None:
    config = load_text_config(text, tmp_path)

    assert config.daemon.listen_host in ("0.0.0.0", "::"), (
        f"{name}: probes from outside the container cannot reach {config.daemon.listen}"
    )
    assert config.daemon.listen_port == DEFAULT_PORT
    assert config.daemon.log_format in ("json", "auto")


def test_the_service_config_listens_on_loopback_at_the_default_port(tmp_path: Path) -> None:
    config = load_config(DEPLOY / "config.toml")

    assert (config.daemon.listen_host, config.daemon.listen_port) == ("127.0.0.1", DEFAULT_PORT)
    assert DEFAULT_PORT != 9090, "9090 is Prometheus's own port"


@pytest.mark.parametrize(("name", "text"), container_configs())
def test_container_configs_mark_the_plain_http_target_insecure(
    name: str, text: str, tmp_path: Path
) -> None:
    config = load_text_config(text, tmp_path)

    for entry in config.mirrors:
        _, target = entry.endpoints(config.target)
        assert config.registry(target.registry).insecure, f"{name}: {target.registry}"


def test_no_deploy_file_mentions_the_old_port() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "hub-token"]

    stale = [p.relative_to(DEPLOY).as_posix() for p in files if "9090" in p.read_text()]

    assert stale == [], "mirror listens on 9755; 9090 is Prometheus's port"


# --- the probe paths against the real health server -------------------------------------------


async def probe_statuses(paths: set[str], *, alive: bool, ready: bool) -> dict[str, int]:
    server = HealthServer(
        "127.0.0.1",
        0,
        Metrics(),
        alive=lambda: (alive, "alive" if alive else "not alive"),
        ready=lambda: (ready, "ready" if ready else "not ready"),
    )
    await server.start()
    statuses = {}
    try:
        for path in sorted(paths):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            await writer.drain()
            answer = await reader.read()
            writer.close()
            statuses[path] = int(answer.split(b" ", 2)[1])
    finally:
        await server.stop()
    return statuses


async def test_the_liveness_probe_asks_the_alive_check_of_the_real_server() -> None:
    pod = pod_spec(manifest("statefulset.yaml"))
    path = mirror_container(pod)["livenessProbe"]["httpGet"]["path"]
    assert path == "/healthz"

    dead = await probe_statuses({path}, alive=False, ready=True)
    alive = await probe_statuses({path}, alive=True, ready=False)

    assert dead[path] == 503, "a liveness path must fail when the daemon is not alive"
    assert alive[path] == 200, "a liveness path must not wait for readiness"


async def test_the_readiness_probe_asks_the_ready_check_of_the_real_server() -> None:
    pod = pod_spec(manifest("statefulset.yaml"))
    path = mirror_container(pod)["readinessProbe"]["httpGet"]["path"]
    assert path == "/readyz"

    waiting = await probe_statuses({path}, alive=True, ready=False)
    ready = await probe_statuses({path}, alive=True, ready=True)

    assert (waiting[path], ready[path]) == (503, 200)


async def test_the_scrape_path_serves_metrics() -> None:
    annotations = manifest("service.yaml")["metadata"]["annotations"]
    path = annotations["prometheus.io/path"]
    (endpoint,) = manifest("monitoring/servicemonitor.yaml")["spec"]["endpoints"]

    statuses = await probe_statuses({path, endpoint["path"]}, alive=False, ready=False)

    assert set(statuses.values()) == {200}


# --- Dockerfile -------------------------------------------------------------------------------

DIGEST_PINNED = re.compile(r"python:(\d+)\.(\d+)-slim@sha256:[0-9a-f]{64}")


def dockerfile_labels(stage: list[tuple[str, str]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for word, rest in stage:
        if word == "LABEL":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                labels[key] = value
    return labels


def dockerfile_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for word, rest in stage:
        if word == "ARG":
            name, _, default = rest.partition("=")
            found[name] = shlex.split(default)[0] if default.strip() else ""
    return found


def test_the_image_runs_mirror_as_a_non_root_user_with_a_healthcheck() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    words = [word for word, _ in stage]
    args = {word: rest for word, rest in stage}  # the last of each, as Docker takes it

    user = args["USER"].split(":")[0]
    assert user not in ("root", "0", ""), "the image must not run as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert f"MIRROR_CONFIG={CONFIG_PATH}" in args["ENV"].split()
    assert args["EXPOSE"].split() == [str(DEFAULT_PORT)]
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(args["ENTRYPOINT"]) == ["mirror"]
    command = json.loads(args["CMD"])
    assert parse_cli(command).command == "run"


def test_the_healthcheck_asks_mirror_healthcheck_whatever_the_listen_address() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    (healthcheck,) = [rest for word, rest in stage if word == "HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    timings = dict(o.removeprefix("--").split("=") for o in options.split())

    argv = json.loads(command)  # exec form: no shell in the way
    assert argv[0] == "mirror"
    args = parse_cli(argv[1:])
    # No --config: the image's MIRROR_CONFIG, the same config `mirror run` reads.
    assert (args.command, args.config) == ("healthcheck", None)
    assert duration(timings["timeout"]) > 4, "mirror healthcheck gives the request 4 s"
    # Compose leaves the image's check alone rather than repeat it.
    assert "healthcheck" not in yaml_documents(COMPOSE)[0]["services"]["mirror"]


def test_the_base_image_is_pinned_by_digest_on_every_stage() -> None:
    bases = [
        rest.split()[0]
        for word, rest in dockerfile_instructions(DOCKERFILE.read_text())
        if word == "FROM"
    ]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert floor, f"requires-python {requires!r}: expected >=X.Y"
    minimum = (int(floor.group(1)), int(floor.group(2)))

    assert len(bases) >= 2, "build the venv in one stage, copy it into a clean one"
    for base in bases:
        match = DIGEST_PINNED.fullmatch(base)
        assert match, f"{base}: pin python:X.Y-slim@sha256:<digest>"
        assert tuple(map(int, match.groups())) >= minimum
    # The venv's python is a symlink into the base image: both stages must be the same one.
    assert len(set(bases)) == 1, bases


def test_the_image_carries_oci_labels_with_the_package_s_version_and_license() -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    labels = dockerfile_labels(stage)
    args = dockerfile_args(stage)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "org.opencontainers.image."

    assert {f"{prefix}{k}" for k in ("title", "description", "source", "licenses", "version")} <= (
        set(labels)
    )
    assert labels[f"{prefix}title"] == project["name"]
    assert labels[f"{prefix}licenses"] == project["license"]["text"]
    assert labels[f"{prefix}version"] == "${VERSION}" and args["VERSION"] == VERSION
    assert labels[f"{prefix}source"] == "${SOURCE}" and "SOURCE" in args


def build_stage_runs() -> list[str]:
    build = stages(dockerfile_instructions(DOCKERFILE.read_text()))[0]
    return [rest for word, rest in build if word == "RUN"]


def test_the_build_stage_installs_plainly_and_checks_what_it_installed() -> None:
    runs = build_stage_runs()
    joined = "\n".join(runs)

    assert "/opt/mirror/bin/pip install .\n" in joined + "\n", "a plain `pip install .`"
    (check,) = [r for r in runs if "walk_packages" in r]
    assert "mirror config --config" in check and "config.example.toml" in check
    assert "mirror --version" in check
    assert runs.index(check) > next(i for i, r in enumerate(runs) if "pip install" in r)


def test_the_build_stage_check_passes_against_an_installed_mirror(tmp_path: Path) -> None:
    """The check RUN line, run as the build runs it but with this suite's installed mirror:
    every module imports from outside the source tree and the example config loads."""
    (check,) = [r for r in build_stage_runs() if "walk_packages" in r]
    build = stages(dockerfile_instructions(DOCKERFILE.read_text()))[0]
    workdir = [rest for word, rest in build if word == "WORKDIR"][-1]
    src = tmp_path / workdir.strip("/")
    src.mkdir(parents=True)
    shutil.copy(ROOT / "config.example.toml", src)
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "mirror").exists(), "the suite's venv has the mirror command"
    command = check.replace("/opt/mirror/bin/", f"{bin_dir}/").replace(f"{workdir}/", f"{src}/")
    command = re.sub(r"\bcd / ", f"cd {tmp_path} ", command)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "HUB_"))}

    done = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=120, env=env
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert VERSION in done.stdout


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes ``path``: the last pattern that matches it or one of
    its parent directories decides (``!`` re-includes), as Docker reads them."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_build_copies_and_no_secrets() -> None:
    ignore = DEPLOY / f"{DOCKERFILE.name}.dockerignore"
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = [
        rest.split()[:-1]
        for word, rest in dockerfile_instructions(DOCKERFILE.read_text())
        if word == "COPY" and "--from" not in rest
    ]
    sources = {source for sources in copied for source in sources}
    needed = [
        "pyproject.toml",
        project["readme"],
        "config.example.toml",
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "mirror").glob("*.py")),
    ]

    assert {"pyproject.toml", project["readme"], "config.example.toml", "mirror"} <= sources
    for path in needed:
        assert not dockerignore_excludes(path, patterns), f"{path} is not in the build context"
    for path in [".git/config", ".venv/bin/python", "deploy/hub-token", "mirror/__pycache__/x.pyc"]:
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the builder"


# --- Compose ----------------------------------------------------------------------------------


def test_compose_runs_the_registry_and_mirror_beside_it(tmp_path: Path) -> None:
    compose = yaml_documents(COMPOSE)[0]
    registry, mirror = compose["services"]["registry"], compose["services"]["mirror"]
    config = load_text_config((DEPLOY / "compose.config.toml").read_text(), tmp_path)

    assert registry["image"] == "registry:2"
    assert registry["restart"] == "always"
    assert "5000:5000" in registry["ports"]
    (data,) = registry["volumes"]
    assert data.split(":")[0] in compose["volumes"], "the registry's data is a named volume"
    # mirror copies into the registry service, by its Compose name.
    assert {e.endpoints(config.target)[1].registry for e in config.mirrors} == {"registry:5000"}

    build = mirror["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert mirror["image"] == IMAGE
    assert mirror["restart"] == "unless-stopped"
    assert f"./compose.config.toml:{CONFIG_PATH}:ro" in mirror["volumes"]
    args = parse_cli(mirror["command"])
    assert (args.command, args.config) == ("run", CONFIG_PATH)
    assert f"127.0.0.1:{DEFAULT_PORT}:{config.daemon.listen_port}" in mirror["ports"]
    assert duration(mirror["stop_grace_period"]) > config.daemon.grace_period


def test_compose_hands_the_token_over_as_a_secret(tmp_path: Path) -> None:
    compose = yaml_documents(COMPOSE)[0]
    config = load_text_config((DEPLOY / "compose.config.toml").read_text(), tmp_path)
    (secret,) = compose["services"]["mirror"]["secrets"]
    name = secret if isinstance(secret, str) else secret["source"]
    target = name if isinstance(secret, str) else secret.get("target", name)

    assert config.registry("docker.io").password_file == f"/run/secrets/{target}"
    assert "file" in compose["secrets"][name]
    assert compose["secrets"][name]["file"].lstrip("./") in (DEPLOY / ".gitignore").read_text()


# --- Kubernetes -------------------------------------------------------------------------------


def workloads() -> list[dict[str, Any]]:
    return [manifest("statefulset.yaml"), manifest("cronjob/cronjob.yaml")]


def shard_replacement() -> dict[str, Any]:
    """The replacements entry that copies the StatefulSet's replicas into --shard's N."""
    (replacement,) = kustomization(KUBE)["replacements"]
    return dict(replacement)


def test_every_manifest_pins_the_release_image() -> None:
    images = {mirror_container(pod_spec(w))["image"] for w in workloads()}
    settings = [kustomization(KUBE)["images"], kustomization(CRONJOB_DIR)["images"]]

    # A release tag, never latest (nor no tag, which means latest): with IfNotPresent a node
    # would run whichever latest it pulled first.
    assert images == {IMAGE}
    for (setting,) in settings:
        assert (setting["name"], setting["newTag"]) == ("mirror", VERSION)


def test_kustomize_builds_pin_the_release_image() -> None:
    for directory in (KUBE, CRONJOB_DIR):
        for document in kustomize(directory):
            if document["kind"] in ("StatefulSet", "CronJob"):
                container = mirror_container(pod_spec(document))
                assert container["image"] == IMAGE
                assert container["imagePullPolicy"] == "IfNotPresent"


def test_the_shard_count_is_written_once_and_copied_into_the_shard_argument() -> None:
    statefulset = manifest("statefulset.yaml")
    container = mirror_container(pod_spec(statefulset))
    replacement = shard_replacement()
    (target,) = replacement["targets"]
    (path,) = target["fieldPaths"]

    # The one place: the StatefulSet's replicas, copied by kustomize into the N of --shard.
    assert replacement["source"] == {
        "kind": "StatefulSet",
        "name": statefulset["metadata"]["name"],
        "fieldPath": "spec.replicas",
    }
    assert target["select"] == {"kind": "StatefulSet", "name": statefulset["metadata"]["name"]}
    assert path.startswith("spec.template.spec.containers.[name=mirror].args.")
    argument = field(statefulset, path)
    assert container["args"][container["args"].index("--shard") + 1] == argument
    # Split at "/" and replace the part after it: the argument stays a string.
    assert target["options"] == {"delimiter": "/", "index": 1}
    assert argument == SHARD_PLACEHOLDER, "N comes from replicas, never written by hand"
    # No other file carries a count of its own.
    for path_ in KUBE.rglob("*.yaml"):
        assert not re.search(r"\$\(POD_INDEX\)/\d", path_.read_text()), path_


def check_shards(statefulset: dict[str, Any], replicas: int) -> None:
    """Every replica's command line parses and names its own shard of ``replicas``."""
    container = mirror_container(pod_spec(statefulset))
    assert statefulset["spec"]["replicas"] == replicas
    assert all(isinstance(a, str) for a in container["args"]), container["args"]
    for ordinal in range(replicas):
        argv = [a.replace("$(POD_INDEX)", str(ordinal)) for a in container["args"]]
        args = parse_cli(argv)
        assert (args.command, args.config) == ("run", CONFIG_PATH)
        assert Shard.parse(args.shard) == Shard(ordinal, replicas)


def test_kustomize_gives_one_replica_the_whole_of_the_work() -> None:
    statefulset = only(kustomize(KUBE), "StatefulSet")

    check_shards(statefulset, 1)
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    (index_env,) = [
        e for e in mirror_container(pod_spec(statefulset))["env"] if e["name"] == "POD_INDEX"
    ]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )


def copy_of_the_manifests(tmp_path: Path) -> Path:
    base = tmp_path / "kubernetes"
    shutil.copytree(KUBE, base)
    return base


def test_changing_replicas_in_the_one_place_changes_the_shard_count(tmp_path: Path) -> None:
    base = copy_of_the_manifests(tmp_path)
    path = base / "statefulset.yaml"
    text = path.read_text()
    assert text.count("replicas: 1\n") == 1
    path.write_text(text.replace("replicas: 1\n", "replicas: 3\n"))

    check_shards(only(kustomize(base), "StatefulSet"), 3)


def test_an_overlay_that_changes_replicas_repeats_the_replacement(tmp_path: Path) -> None:
    """What kustomization.yaml's comment says: a base's replacements run when the base is
    built, before an overlay's `replicas:`, so an overlay must list the replacement again."""
    base = copy_of_the_manifests(tmp_path)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    settings = {
        "resources": [os.path.relpath(base, overlay)],
        "replicas": [{"name": "mirror", "count": 3}],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(settings))
    without = only(kustomize(overlay), "StatefulSet")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({**settings, "replacements": [shard_replacement()]})
    )
    with_it = only(kustomize(overlay), "StatefulSet")

    assert "$(POD_INDEX)/1" in mirror_container(pod_spec(without))["args"]
    check_shards(with_it, 3)


def test_the_configmap_is_generated_from_the_config_file_for_both_ways_of_running() -> None:
    generator = kustomization(KUBE / "config")["configMapGenerator"]
    (configmap,) = generator

    assert configmap["name"] == "mirror-config"
    assert configmap["files"] == [KUBE_CONFIG.name]
    assert "config" in kustomization(KUBE)["resources"]
    assert "../config" in kustomization(CRONJOB_DIR)["resources"]
    for workload in workloads():
        pod = pod_spec(workload)
        name, key = mounted_file(pod, mirror_container(pod), CONFIG_PATH)
        assert volume(pod, name)["configMap"]["name"] == configmap["name"]
        assert key == KUBE_CONFIG.name


def test_kustomize_mounts_the_hash_named_configmap_so_an_edit_rolls_the_pods() -> None:
    names = set()
    for directory in (KUBE, CRONJOB_DIR):
        documents = kustomize(directory)
        configmap = only(documents, "ConfigMap")
        workload = next(d for d in documents if d["kind"] in ("StatefulSet", "CronJob"))
        pod = pod_spec(workload)
        volume_name, key = mounted_file(pod, mirror_container(pod), CONFIG_PATH)

        assert re.fullmatch(r"mirror-config-[a-z0-9]{10}", configmap["metadata"]["name"])
        assert volume(pod, volume_name)["configMap"]["name"] == configmap["metadata"]["name"]
        assert configmap["data"][key] == KUBE_CONFIG.read_text()
        names.add(configmap["metadata"]["name"])
    assert len(names) == 1, "the daemon and the CronJob share one config"


def test_the_kustomizations_apply_what_they_say_and_no_example_secret() -> None:
    daemon = kustomization(KUBE)["resources"]
    cronjob = kustomization(CRONJOB_DIR)["resources"]

    assert all((KUBE / r).exists() for r in daemon)
    assert all((CRONJOB_DIR / r).exists() for r in cronjob)
    assert {"config", "service.yaml", "statefulset.yaml", "pdb.yaml"} <= set(daemon)
    assert "secret.example.yaml" not in daemon + cronjob, "it would overwrite the real token"
    # The CronJob is the alternative to the StatefulSet: never both from one apply.
    assert not any("cronjob" in r for r in daemon)
    assert not any("statefulset" in r for r in cronjob)


def test_kustomize_builds_the_daemon_and_the_cronjob_apart() -> None:
    daemon = {d["kind"] for d in kustomize(KUBE)}
    cronjob = {d["kind"] for d in kustomize(CRONJOB_DIR)}

    assert daemon == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    assert cronjob == {"ConfigMap", "CronJob"}


def test_the_statefulset_probes_and_stops_like_the_daemon() -> None:
    pod = pod_spec(manifest("statefulset.yaml"))
    container = mirror_container(pod)
    config = Config.model_validate(tomllib.loads(configmap_config_text()))

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert container_port(container, get["port"]) == config.daemon.listen_port
    assert config.daemon.listen_port == DEFAULT_PORT
    assert pod["terminationGracePeriodSeconds"] > config.daemon.grace_period
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["memory"]


def test_the_statefulset_runs_non_root_on_a_read_only_root() -> None:
    pod = pod_spec(manifest("statefulset.yaml"))
    container = mirror_container(pod)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_pdb_covers_the_pods_and_never_blocks_a_drain() -> None:
    pdb = manifest("pdb.yaml")
    statefulset = manifest("statefulset.yaml")
    cronjob = manifest("cronjob/cronjob.yaml")
    selector = pdb["spec"]["selector"]["matchLabels"]
    spec = pdb["spec"]

    assert selector.items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= (
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
    )
    # One replica may always go (maxUnavailable 1, never minAvailable 1), and an unready one
    # too: a drain never waits on mirror.
    assert "minAvailable" not in spec
    assert spec["maxUnavailable"] == 1
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("name", ["statefulset.yaml", "cronjob/cronjob.yaml"])
def test_pods_mount_the_config_and_the_secret_where_the_config_says(name: str) -> None:
    pod = pod_spec(manifest(name))
    container = mirror_container(pod)
    config = Config.model_validate(tomllib.loads(configmap_config_text()))

    password_file = config.registry("docker.io").password_file
    assert password_file is not None
    secret_volume, secret_key = mounted_file(pod, container, password_file)
    example = manifest("secret.example.yaml")
    assert volume(pod, secret_volume)["secret"]["secretName"] == "mirror-hub-token"
    assert example["metadata"]["name"] == "mirror-hub-token"
    assert secret_key in example["stringData"]


def test_the_headless_service_exposes_metrics_for_the_statefulset() -> None:
    service = manifest("service.yaml")
    statefulset = manifest("statefulset.yaml")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    container = mirror_container(pod_spec(statefulset))
    (port,) = service["spec"]["ports"]
    annotations = service["metadata"]["annotations"]

    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (port["name"], port["port"]) == ("metrics", DEFAULT_PORT)
    assert container_port(container, port["targetPort"]) == DEFAULT_PORT
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == DEFAULT_PORT


def test_the_cronjob_runs_every_entry_once_and_takes_deferral_as_success() -> None:
    cronjob = manifest("cronjob/cronjob.yaml")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    container = mirror_container(pod_spec(cronjob))

    args = parse_cli(container["args"])

    assert (args.command, args.all, args.config, args.shard) == ("sync", True, CONFIG_PATH, None)
    # Exit 3 (tags deferred to spare the pull limit) would fail the Job and retry it at once.
    assert args.deferred_ok is True
    assert cronjob["spec"]["schedule"] == "0 */6 * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    # A config error (exit 2) fails the Job without a retry that would fail the same way.
    (config_error,) = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert config_error["action"] == "FailJob"
    assert config_error["onExitCodes"]["values"] == [2]
    assert config_error["onExitCodes"]["containerName"] == container["name"]
    assert pod_spec(cronjob)["restartPolicy"] == "Never", "podFailurePolicy requires it"


# --- Prometheus: the ServiceMonitor, the rules, the dashboard -----------------------------------


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml_documents(RULES)[0]["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def test_the_servicemonitor_scrapes_the_service_s_metrics_port() -> None:
    monitor = manifest("monitoring/servicemonitor.yaml")
    service = manifest("service.yaml")
    (endpoint,) = monitor["spec"]["endpoints"]

    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"]


def test_the_operator_rules_are_the_plain_rules() -> None:
    rule = manifest("monitoring/prometheusrule.yaml")

    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == rule_groups()
    assert set(kustomization(MONITORING)["resources"]) == {
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    }
    assert not any("monitoring" in r for r in kustomization(KUBE)["resources"]), (
        "the operator's CRDs may not exist: monitoring/ is applied on its own"
    )


def test_kustomize_builds_the_monitoring_resources() -> None:
    kinds = {d["kind"] for d in kustomize(MONITORING)}

    assert kinds == {"ServiceMonitor", "PrometheusRule"}


def test_the_alerts_watch_freshness_the_pull_budget_and_failures() -> None:
    found = alerts()
    expressions = {name: " ".join(rule["expr"].split()) for name, rule in found.items()}

    stale = expressions["MirrorEntryNotSyncing"]
    assert "mirror_last_success_timestamp_seconds or mirror_job_added_timestamp_seconds" in stale
    assert stale.endswith("> 2 * mirror_job_interval_seconds")
    assert expressions["MirrorUpstreamPullBudgetAtReserve"] == (
        "mirror_upstream_ratelimit_remaining <= mirror_upstream_pull_reserve"
    )
    assert re.fullmatch(
        r'increase\(mirror_tags_total\{result="failed"\}\[\w+\]\) > 0',
        expressions["MirrorTagsFailing"],
    )
    for rule in found.values():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))

    assert done.returncode == 0, done.stdout + done.stderr


ALERT_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Never succeeded, scheduled at 0 with a one-hour interval.
      - series: 'mirror_job_added_timestamp_seconds{entry="new -> t"}'
        values: '0x300'
      - series: 'mirror_job_interval_seconds{entry="new -> t"}'
        values: '3600x300'
      # Succeeded at 50 min (and scheduled at 0), one-hour interval.
      - series: 'mirror_job_added_timestamp_seconds{entry="ok -> t"}'
        values: '0x300'
      - series: 'mirror_last_success_timestamp_seconds{entry="ok -> t"}'
        values: '_x49 3000x250'
      - series: 'mirror_job_interval_seconds{entry="ok -> t"}'
        values: '3600x300'
      - series: 'mirror_upstream_ratelimit_remaining{registry="spent.io"}'
        values: '10x300'
      - series: 'mirror_upstream_pull_reserve{registry="spent.io"}'
        values: '10x300'
      - series: 'mirror_upstream_ratelimit_remaining{registry="fine.io"}'
        values: '11x300'
      - series: 'mirror_upstream_pull_reserve{registry="fine.io"}'
        values: '10x300'
      # Two tags fail at 30 min; another entry never fails.
      - series: 'mirror_tags_total{entry="bad -> t", result="failed"}'
        values: '0x29 2x270'
      - series: 'mirror_tags_total{entry="ok -> t", result="failed"}'
        values: '0x300'
    alert_rule_test:
      - alertname: MirrorEntryNotSyncing
        eval_time: 119m
        exp_alerts: []
      - alertname: MirrorEntryNotSyncing
        eval_time: 130m
        exp_alerts:
          - exp_labels: {severity: warning, entry: "new -> t"}
      - alertname: MirrorEntryNotSyncing
        eval_time: 180m
        exp_alerts:
          - exp_labels: {severity: warning, entry: "new -> t"}
          - exp_labels: {severity: warning, entry: "ok -> t"}
      - alertname: MirrorUpstreamPullBudgetAtReserve
        eval_time: 10m
        exp_alerts:
          - exp_labels: {severity: warning, registry: "spent.io"}
      - alertname: MirrorTagsFailing
        eval_time: 20m
        exp_alerts: []
      - alertname: MirrorTagsFailing
        eval_time: 1h
        exp_alerts:
          - exp_labels: {severity: warning, entry: "bad -> t", result: "failed"}
"""


def test_promtool_fires_each_alert_when_it_should(tmp_path: Path) -> None:
    # Without their annotations, which promtool would otherwise want spelt out in full
    # (`promtool check rules` has parsed their templates).
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "alerts.test.yml"
    tests.write_text(ALERT_TESTS.replace("RULES", json.dumps(str(rules))))

    done = promtool("test", "rules", str(tests), cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    panels = board["panels"]

    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    assert "id" not in board or board["id"] is None, "an exported id would clash on import"
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["entry"]["datasource"] == source
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert all(t["datasource"] == source and t["expr"] for t in panel["targets"])
    # Panels tile the grid (24 wide) without overlapping.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24
        area = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboard_shows_what_an_operator_asks_of_mirror() -> None:
    queries = " ".join(dashboard_queries())

    for metric in (
        'mirror_tags_total{entry=~"$entry", result="copied"}',
        'mirror_tags_total{entry=~"$entry", result="failed"}',
        "mirror_bytes_copied_total",
        "mirror_upstream_ratelimit_remaining",
        "mirror_upstream_ratelimit_limit",
        "mirror_upstream_pull_reserve",
        "mirror_upstream_manifest_gets_total",
        "mirror_job_duration_seconds_bucket",
        "mirror_last_success_timestamp_seconds",
    ):
        assert metric in queries, metric


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Grafana's variables given values, each query becomes a recording rule that promtool
    parses."""
    values = {"$__rate_interval": "2m", "$__range": "1d", "$__interval": "1m", "$entry": ".*"}
    rules = []
    for number, expr in enumerate(dashboard_queries()):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query{number}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    done = promtool("check", "rules", str(path))

    assert done.returncode == 0, done.stdout + done.stderr


# --- mirror run as systemd starts it ----------------------------------------------------------

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1  # linux/prctl.h, Linux 6.3+
# The kernel's own form of the rule MemoryDenyWriteExecute=yes imposes (no mapping both writable
# and executable, no writable mapping made executable). It is inherited across exec, so the
# daemon runs under it from its first instruction.
MDWE_EXEC = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""
WATCHDOG_TEST_USEC = 2_000_000  # the unit's 60 s would make a slow test: pings every second


def kernel_has_mdwe() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


class _NotFound(BaseHTTPRequestHandler):
    """A registry with nothing in it: every request is a 404, so a job fails at once."""

    def do_GET(self) -> None:
        body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def empty_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def daemon_config(path: Path, registry: str, listen: str, password_file: str) -> Path:
    path.write_text(
        f'target = "{registry}"\n'
        f'[daemon]\nlisten = "{listen}"\njitter = 0\n'
        f'[registries."docker.io"]\nendpoint = "http://{registry}"\ninsecure = true\n'
        f'username = "u"\npassword_file = "{password_file}"\n'
        '[[mirrors]]\nsource = "diamol/golang"\n'
    )
    return path


def unit_args(line: str, config: Path) -> list[str]:
    """The arguments of an Exec*= line of the unit, for this suite's own mirror: a test
    config in place of the unit's."""
    binary, *argv = shlex.split(line)
    assert binary == "/opt/mirror/bin/mirror"
    return [str(config) if a == CONFIG_PATH else a for a in argv]


def test_the_unit_s_config_check_refuses_a_credential_it_cannot_read(
    tmp_path: Path, empty_registry: str
) -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    credential = unit_value(service, "LoadCredential").partition(":")[0]
    config = daemon_config(
        tmp_path / "config.toml",
        empty_registry,
        "127.0.0.1:9",
        f"${{CREDENTIALS_DIRECTORY}}/{credential}",
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    check = unit_args(unit_value(service, "ExecStartPre"), config)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}

    missing = run_mirror(*check, home=tmp_path, env=env, timeout=60)
    (credentials / credential).write_text("token\n")
    present = run_mirror(*check, home=tmp_path, env=env, timeout=60)

    assert missing.code == 2, missing.stdout + missing.stderr
    (problem,) = (missing.stdout + missing.stderr).splitlines()
    assert f"{credentials}/{credential}" in problem
    assert present.code == 0, present.stdout + present.stderr
    assert present.stdout + present.stderr == ""


def test_mirror_run_keeps_the_unit_s_promises(tmp_path: Path, empty_registry: str) -> None:
    """READY=1 once serving, WATCHDOG=1 every half of WATCHDOG_USEC, ready although its one
    entry fails, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 and exit 0 on SIGTERM within
    TimeoutStopSec; the token from $CREDENTIALS_DIRECTORY; under MemoryDenyWriteExecute when
    the kernel can impose it."""
    service = unit_entries(UNIT.read_text())["Service"]
    credential = unit_value(service, "LoadCredential").partition(":")[0]
    stop_timeout = duration(unit_value(service, "TimeoutStopSec"))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / credential).write_text("token\n")
    port = free_port()
    config = daemon_config(
        tmp_path / "config.toml",
        empty_registry,
        f"127.0.0.1:{port}",
        f"${{CREDENTIALS_DIRECTORY}}/{credential}",
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"mirror-test-{uuid.uuid4().hex}"
    notify.bind("\0" + address)  # abstract namespace, as systemd's NOTIFY_SOCKET may be
    notify.settimeout(0.05)
    env = {
        "NOTIFY_SOCKET": "@" + address,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "WATCHDOG_USEC": str(WATCHDOG_TEST_USEC),
    }
    program = (sys.executable, "-c", MDWE_EXEC, *MIRROR) if kernel_has_mdwe() else MIRROR
    args = unit_args(unit_value(service, "ExecStart"), config)
    daemon = MirrorProcess(*args, home=tmp_path, env=env, program=program, port=port)
    datagrams: list[tuple[float, list[str]]] = []  # (when, lines) of each notify datagram
    seen = 0  # how many of them expect() has gone past

    def receive() -> None:
        """Take the datagram waiting on the socket, if one comes within its timeout."""
        with contextlib.suppress(TimeoutError):
            datagram = notify.recv(4096).decode()
            datagrams.append((time.monotonic(), datagram.splitlines()))

    def listen(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            receive()

    def next_message() -> list[str] | None:
        """The lines of the next datagram but watchdog pings, once there is one."""
        nonlocal seen
        receive()
        while seen < len(datagrams) and datagrams[seen][1] == ["WATCHDOG=1"]:
            seen += 1
        if seen == len(datagrams):
            return None
        seen += 1
        return datagrams[seen - 1][1]

    def expect(message: str) -> None:
        """The next datagram but watchdog pings carries ``message``."""
        lines = wait_until(
            f"{message} on NOTIFY_SOCKET",
            next_message,
            still_running=daemon.running,
            context=lambda: f"notify: {datagrams}\n{daemon.output_tail()}",
        )
        assert message in lines, (message, lines)

    def job_runs() -> list[dict[str, Any]]:
        receive()  # the watchdog pings are timed as they come
        return daemon.events("job run")

    try:
        expect("READY=1")
        assert daemon.get("/healthz").status_code == 200
        runs = daemon.wait_for("the start-up pass to run the entry", job_runs)
        # The token was read from $CREDENTIALS_DIRECTORY: the run got as far as the registry.
        assert "password_file" not in str(runs[0].get("error")), runs[0]
        # Its only entry failed, and it is ready all the same: a rollout never waits on a copy.
        assert runs[0]["outcome"] == "failed"
        ready = daemon.get("/readyz")
        assert ready.status_code == 200, ready.text
        # Pings every half of WATCHDOG_USEC (1 s here), from the event loop.
        listen(2.5)
        pings = [when for when, lines in datagrams if "WATCHDOG=1" in lines]
        assert len(pings) >= 2, datagrams
        assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_TEST_USEC / 1e6
        daemon.signal(signal.SIGHUP)
        expect("RELOADING=1")
        expect("READY=1")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        expect("STOPPING=1")
        assert daemon.wait(timeout=stop_timeout).code == 0
        assert time.monotonic() - started < stop_timeout
    finally:
        notify.close()
        daemon.kill()
    assert "Traceback" not in daemon.output


def test_the_image_healthcheck_asks_the_daemon_listening_on_every_interface(
    tmp_path: Path, empty_registry: str
) -> None:
    """The HEALTHCHECK's command with the image's MIRROR_CONFIG: 0 while `mirror run` serves
    on 0.0.0.0 (asked on 127.0.0.1), 1 once it has stopped."""
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
    (healthcheck,) = [rest for word, rest in stage if word == "HEALTHCHECK"]
    argv = json.loads(healthcheck.partition("CMD ")[2])
    port = free_port()
    config = daemon_config(
        tmp_path / "config.toml", empty_registry, f"0.0.0.0:{port}", str(tmp_path / "token")
    )
    (tmp_path / "token").write_text("token\n")
    env = {"MIRROR_CONFIG": str(config)}
    daemon = MirrorProcess("run", home=tmp_path, env=env)

    def check_health() -> Run:
        return run_mirror(*argv[1:], home=tmp_path, env=env, timeout=30)

    try:
        daemon.wait_for("the healthcheck to pass", lambda: check_health().code == 0)
        assert daemon.stop(timeout=30) == 0
        stopped = check_health()
    finally:
        daemon.kill()

    assert stopped.code == 1, stopped.stdout + stopped.stderr
    assert f"127.0.0.1:{port}" in stopped.stderr
