"""TLS registries: verified against a CA file when one is given, as Docker does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import run_mirror
from tests.support.images import Pusher, verify_repository
from tests.support.registry import RegistryProcess
from tests.support.tls import make_certificates


@pytest.fixture
def tls_registry(
    tmp_path: Path, make_registry: Callable[..., RegistryProcess]
) -> tuple[RegistryProcess, Path]:
    """A registry serving HTTPS with a certificate from a throwaway CA; returns it and the CA."""
    certs = make_certificates(tmp_path / "certs")
    registry = make_registry(
        extra_config={
            "http": {"tls": {"certificate": str(certs.cert_file), "key": str(certs.key_file)}}
        },
        scheme="https",
        ca_file=certs.ca_file,
    )
    return registry, certs.ca_file


def write_config(tmp_path: Path, registry: RegistryProcess, **settings: str | bool) -> Path:
    lines = [f'[registries."{registry.host}"]', f'endpoint = "https://{registry.host}"']
    for key, value in settings.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    path = tmp_path / "tls.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tls_target_verified_with_its_ca_file(
    tmp_path: Path,
    tls_registry: tuple[RegistryProcess, Path],
    local: RegistryProcess,
    local_pusher: Pusher,
) -> None:
    registry, ca_file = tls_registry
    image = local_pusher.push_image("gallery/ui", "v1", "oci", seed="tls")
    config = write_config(tmp_path, registry, ca_file=str(ca_file))

    run = run_mirror(
        "sync",
        f"{local.host}/gallery/ui:v1",
        "--to",
        registry.host,
        "--config",
        str(config),
        home=tmp_path,
    )

    assert run.code == 0, run.stderr
    verify_repository(registry.url, "gallery/ui", "v1", expected_digest=image.digest)


def test_wrong_ca_file_is_refused_in_one_line(
    tmp_path: Path,
    tls_registry: tuple[RegistryProcess, Path],
    local: RegistryProcess,
    local_pusher: Pusher,
) -> None:
    registry, _ = tls_registry
    other_ca = make_certificates(tmp_path / "other", ca_name="somebody else").ca_file
    local_pusher.push_image("gallery/ui", "v1", "oci", seed="tls")
    config = write_config(tmp_path, registry, ca_file=str(other_ca))

    run = run_mirror(
        "sync",
        f"{local.host}/gallery/ui:v1",
        "--to",
        registry.host,
        "--config",
        str(config),
        home=tmp_path,
    )

    assert run.code == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and registry.host in lines[0] and "CERTIFICATE_VERIFY_FAILED" in lines[0]
    assert "Traceback" not in run.stderr


def test_insecure_registry_accepts_an_unknown_certificate(
    tmp_path: Path,
    tls_registry: tuple[RegistryProcess, Path],
    local: RegistryProcess,
    local_pusher: Pusher,
) -> None:
    registry, _ = tls_registry
    local_pusher.push_image("gallery/ui", "v1", "oci", seed="tls")
    config = write_config(tmp_path, registry, insecure=True)

    run = run_mirror(
        "sync",
        f"{local.host}/gallery/ui:v1",
        "--to",
        registry.host,
        "--config",
        str(config),
        home=tmp_path,
    )

    assert run.code == 0, run.stderr
