"""The deployment files in ``deploy/`` agree with the code and with each other.

Mostly static: the systemd unit passes ``systemd-analyze verify`` (and a broken copy does
not), every YAML file parses, every embedded config loads with ``mirror.config``, and the
probe paths, port, config path, grace periods, secret paths and shard count line up across the
unit, the Dockerfile, Compose and Kubernetes. Command lines in the manifests are parsed with the
real CLI parser, and the probe paths are checked against a real ``HealthServer``. One test runs
``mirror run`` the way ``mirror.service`` does (notify socket, credentials directory,
MemoryDenyWriteExecute where the kernel can impose it) for a second or two.
"""

from __future__ import annotations

import asyncio
import ctypes
import fnmatch
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
from typing import Any, NoReturn

import pytest
import yaml

from mirror.cli import build_parser
from mirror.config import Config, DaemonSettings, load_config, parse_duration
from mirror.daemon import Shard
from mirror.health import HealthServer, Metrics
from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
UNIT = DEPLOY / "mirror.service"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

CONFIG_PATH = "/etc/mirror/config.toml"  # where every deployment puts the config
IMAGE = "mirror:latest"
DEFAULT_GRACE_S = DaemonSettings().grace_period
DEFAULT_PORT = DaemonSettings().listen_port


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
    values = [v for k, v in section if k == key]
    assert values, f"{key}= is missing"
    return values[-1]


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


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(name: str) -> dict[str, Any]:
    (document,) = yaml_documents(KUBE / name)
    assert isinstance(document, dict)
    return document


def load_text_config(text: str, tmp_path: Path, name: str = "config.toml") -> Config:
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def configmap_config_text() -> str:
    data = manifest("configmap.yaml")["data"]
    key = PurePosixPath(CONFIG_PATH).name
    assert key in data, f"the ConfigMap has no {key} key"
    text: str = data[key]
    return text


def parse_cli(argv: list[str]) -> Any:
    """Parse a deployment's command line with mirror's own parser (argparse exits on error)."""
    return build_parser().parse_args(argv)


def duration(value: str | int | float) -> float:
    return parse_duration(value)


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
        (("/opt/mirror/bin/mirror run", "/opt/mirror/bin/nonexistent run"), "nonexistent"),
    ],
    ids=["misspelt key", "bad Type", "bad value", "missing binary"],
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
    assert unit_value(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
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
        "kubernetes/configmap.yaml",
        "kubernetes/secret.example.yaml",
        "kubernetes/statefulset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/cronjob.yaml",
    } <= names


@pytest.mark.parametrize("path", every_yaml_file(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    documents = yaml_documents(path)

    assert documents and all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize(
    "name",
    ["deploy/config.toml", "deploy/compose.config.toml", "configmap.yaml", "config.example.toml"],
)
def test_every_shipped_config_loads(name: str, tmp_path: Path) -> None:
    text = configmap_config_text() if name == "configmap.yaml" else (ROOT / name).read_text()

    config = load_text_config(text, tmp_path)

    assert config.mirrors, "mirror run refuses a config without [[mirrors]] entries"


@pytest.mark.parametrize(("name", "text"), container_configs())
def test_container_configs_listen_on_every_interface(name: str, text: str, tmp_path: Path) -> None:
    config = load_text_config(text, tmp_path)

    assert config.daemon.listen_host in ("0.0.0.0", "::"), (
        f"{name}: probes from outside the container cannot reach {config.daemon.listen}"
    )
    assert config.daemon.listen_port == DEFAULT_PORT
    assert config.daemon.log_format in ("json", "auto")


@pytest.mark.parametrize(("name", "text"), container_configs())
def test_container_configs_mark_the_plain_http_target_insecure(
    name: str, text: str, tmp_path: Path
) -> None:
    config = load_text_config(text, tmp_path)

    for entry in config.mirrors:
        _, target = entry.endpoints(config.target)
        assert config.registry(target.registry).insecure, f"{name}: {target.registry}"


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


def liveness_paths() -> dict[str, str]:
    """Every liveness check in deploy/, by where it is: the path it GETs."""
    found = {}
    for word, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if word == "HEALTHCHECK":
            found["Dockerfile HEALTHCHECK"] = url_path(rest)
    compose = yaml_documents(COMPOSE)[0]
    found["compose healthcheck"] = url_path(
        " ".join(compose["services"]["mirror"]["healthcheck"]["test"])
    )
    pod = manifest("statefulset.yaml")["spec"]["template"]["spec"]
    found["StatefulSet livenessProbe"] = mirror_container(pod)["livenessProbe"]["httpGet"]["path"]
    return found


def url_path(command: str) -> str:
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[A-Za-z0-9_/-]*)", command)
    assert match, f"no http://127.0.0.1:PORT/PATH in {command!r}"
    assert int(match.group(1)) == DEFAULT_PORT
    return match.group(2)


async def test_liveness_checks_ask_the_alive_check_of_the_real_server() -> None:
    paths = liveness_paths()
    assert set(paths.values()) == {"/healthz"}, paths

    dead = await probe_statuses(set(paths.values()), alive=False, ready=True)
    alive = await probe_statuses(set(paths.values()), alive=True, ready=False)

    assert set(dead.values()) == {503}, "a liveness path must fail when the daemon is not alive"
    assert set(alive.values()) == {200}, "a liveness path must not wait for readiness"


async def test_the_readiness_probe_asks_the_ready_check_of_the_real_server() -> None:
    pod = manifest("statefulset.yaml")["spec"]["template"]["spec"]
    path = mirror_container(pod)["readinessProbe"]["httpGet"]["path"]
    assert path == "/readyz"

    waiting = await probe_statuses({path}, alive=True, ready=False)
    ready = await probe_statuses({path}, alive=True, ready=True)

    assert (waiting[path], ready[path]) == (503, 200)


async def test_the_scrape_path_serves_metrics() -> None:
    annotations = manifest("service.yaml")["metadata"]["annotations"]
    path = annotations["prometheus.io/path"]

    statuses = await probe_statuses({path}, alive=False, ready=False)

    assert statuses[path] == 200


# --- Dockerfile -------------------------------------------------------------------------------


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
    assert "/healthz" in args["HEALTHCHECK"]
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(args["ENTRYPOINT"]) == ["mirror"]
    command = json.loads(args["CMD"])
    assert parse_cli(command).command == "run"


def test_the_image_uses_a_python_the_package_supports() -> None:
    stages = [
        rest for word, rest in dockerfile_instructions(DOCKERFILE.read_text()) if word == "FROM"
    ]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert floor, f"requires-python {requires!r}: expected >=X.Y"
    minimum = (int(floor.group(1)), int(floor.group(2)))

    assert len(stages) >= 2, "build the venv in one stage, copy it into a clean one"
    for base in stages:
        match = re.match(r"python:(\d+)\.(\d+)-slim", base)
        assert match, base
        assert tuple(map(int, match.groups())) >= minimum


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
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "mirror").glob("*.py")),
    ]

    assert {"pyproject.toml", project["readme"], "mirror"} <= sources
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
    assert any(p.endswith(f":{config.daemon.listen_port}") for p in mirror["ports"])
    assert duration(mirror["stop_grace_period"]) > config.daemon.grace_period
    assert "/healthz" in " ".join(mirror["healthcheck"]["test"])


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


def test_every_manifest_uses_the_same_image() -> None:
    images = set()
    for name in ("statefulset.yaml", "cronjob.yaml"):
        document = manifest(name)
        spec = document["spec"]
        if document["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        images |= {c["image"] for c in spec["template"]["spec"]["containers"]}

    assert images == {IMAGE}


def test_the_statefulset_shards_the_entries_over_its_replicas() -> None:
    statefulset = manifest("statefulset.yaml")
    pod = statefulset["spec"]["template"]["spec"]
    container = mirror_container(pod)
    replicas = statefulset["spec"]["replicas"]

    (index_env,) = [e for e in container.get("env", []) if e["name"] == "POD_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    for ordinal in range(replicas):
        argv = [a.replace("$(POD_INDEX)", str(ordinal)) for a in container["args"]]
        args = parse_cli(argv)
        assert (args.command, args.config) == ("run", CONFIG_PATH)
        assert Shard.parse(args.shard) == Shard(ordinal, replicas)
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_the_statefulset_probes_and_stops_like_the_daemon() -> None:
    statefulset = manifest("statefulset.yaml")
    pod = statefulset["spec"]["template"]["spec"]
    container = mirror_container(pod)
    config = Config.model_validate(tomllib.loads(configmap_config_text()))

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert container_port(container, get["port"]) == config.daemon.listen_port
    assert pod["terminationGracePeriodSeconds"] > config.daemon.grace_period
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["memory"]


def test_the_statefulset_runs_non_root_on_a_read_only_root() -> None:
    pod = manifest("statefulset.yaml")["spec"]["template"]["spec"]
    container = mirror_container(pod)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("name", ["statefulset.yaml", "cronjob.yaml"])
def test_pods_mount_the_configmap_and_the_secret_where_the_config_says(name: str) -> None:
    document = manifest(name)
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    container = mirror_container(pod)
    configmap = manifest("configmap.yaml")
    config = Config.model_validate(tomllib.loads(configmap_config_text()))

    config_volume, config_key = mounted_file(pod, container, CONFIG_PATH)
    assert volume(pod, config_volume)["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_key in configmap["data"]

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
    container = mirror_container(statefulset["spec"]["template"]["spec"])
    (port,) = service["spec"]["ports"]
    annotations = service["metadata"]["annotations"]

    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (port["name"], port["port"]) == ("metrics", DEFAULT_PORT)
    assert container_port(container, port["targetPort"]) == DEFAULT_PORT
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == DEFAULT_PORT


def test_the_cronjob_runs_every_entry_once_every_six_hours() -> None:
    cronjob = manifest("cronjob.yaml")
    container = mirror_container(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])

    args = parse_cli(container["args"])

    assert (args.command, args.all, args.config, args.shard) == ("sync", True, CONFIG_PATH, None)
    assert cronjob["spec"]["schedule"] == "0 */6 * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_kustomization_applies_the_daemon_but_not_the_example_secret() -> None:
    (kustomization,) = yaml_documents(KUBE / "kustomization.yaml")
    resources = kustomization["resources"]

    assert all((KUBE / r).exists() for r in resources)
    assert {"configmap.yaml", "service.yaml", "statefulset.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources, "applying it would overwrite the real token"
    assert "cronjob.yaml" not in resources, "the CronJob is the alternative to the StatefulSet"


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


def test_mirror_run_keeps_the_unit_s_promises(tmp_path: Path, empty_registry: str) -> None:
    """READY=1 once serving, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 and exit 0 on
    SIGTERM within TimeoutStopSec; the token from $CREDENTIALS_DIRECTORY; under
    MemoryDenyWriteExecute when the kernel can impose it."""
    service = unit_entries(UNIT.read_text())["Service"]
    credential = unit_value(service, "LoadCredential").partition(":")[0]
    stop_timeout = duration(unit_value(service, "TimeoutStopSec"))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / credential).write_text("token\n")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'target = "{empty_registry}"\n'
        f'[daemon]\nlisten = "127.0.0.1:{port}"\njitter = 0\n'
        f'[registries."docker.io"]\nendpoint = "http://{empty_registry}"\ninsecure = true\n'
        f'username = "u"\npassword_file = "${{CREDENTIALS_DIRECTORY}}/{credential}"\n'
        '[[mirrors]]\nsource = "diamol/golang"\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"mirror-test-{uuid.uuid4().hex}"
    notify.bind("\0" + address)  # abstract namespace, as systemd's NOTIFY_SOCKET may be
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRROR_", "DOCKER_"))}
    env.update(
        NOTIFY_SOCKET="@" + address,
        CREDENTIALS_DIRECTORY=str(credentials),
        HOME=str(tmp_path),
        DOCKER_CONFIG=str(tmp_path / ".docker"),
    )
    argv = [sys.executable, "-m", "mirror", "run", "--config", str(config)]
    if kernel_has_mdwe():
        argv = [sys.executable, "-c", MDWE_EXEC, *argv]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True)
    reader.start()

    def fail(message: str) -> NoReturn:
        proc.kill()
        reader.join(5)
        raise AssertionError(f"{message}; log:\n{''.join(output)}")

    def expect(message: str, timeout: float = 20.0) -> None:
        notify.settimeout(timeout)
        try:
            got = notify.recv(4096).decode()
        except TimeoutError:
            fail(f"no {message} on NOTIFY_SOCKET")
        assert message in got.splitlines(), got

    def job_runs() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in list(output) if line.startswith("{")]
        return [line for line in lines if line.get("event") == "job run"]

    try:
        expect("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 20
        while not job_runs() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not job_runs():
            fail("the start-up pass did not run the entry")
        # The token was read from $CREDENTIALS_DIRECTORY: the run got as far as the registry.
        assert "password_file" not in str(job_runs()[0].get("error")), job_runs()[0]
        proc.send_signal(signal.SIGHUP)
        expect("RELOADING=1")
        expect("READY=1")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        expect("STOPPING=1")
        assert proc.wait(timeout=stop_timeout) == 0
        assert time.monotonic() - started < stop_timeout
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert "Traceback" not in "".join(output)
