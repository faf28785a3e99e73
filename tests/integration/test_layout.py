"""Air-gapped networks against real registries: a Hub-like registry copied to ``oci:DIR``, the
layouts read by skopeo and imported into a second registry, digests equal throughout; and
delta bundles written for an inside registry's inventory, checked whole before any tag moves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import HUB_PASSWORD, Run, hub_config, run_mirror, writes
from tests.support.images import (
    Image,
    Pusher,
    build_image,
    build_index,
    list_tags,
    make_layer,
    verify_same,
)
from tests.support.registry import RegistryProcess
from tests.support.tokenserver import HubRegistry

SKOPEO = shutil.which("skopeo")


def mirror(home: Path, *args: str) -> Run:
    return run_mirror(*args, home=home, env={"HUB_PW": HUB_PASSWORD})


def files_under(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime (ns): a change shows what a run wrote."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bytes_on_disk(root: Path) -> int:
    """What a directory takes to carry: each file once (hard links counted once)."""
    inodes = {p.stat().st_ino: p.stat().st_size for p in root.rglob("*") if p.is_file()}
    return sum(inodes.values())


def blob_file(root: Path, repo: str, digest: str) -> Path:
    return root / repo / "blobs" / "sha256" / digest.split(":")[1]


@pytest.fixture
def release(hub: HubRegistry, hub_pusher: Pusher, unique_repo: str) -> dict[str, Image]:
    """Four tags on the hub, all four media types, a base layer shared by three."""
    base = make_layer(20_000, seed=f"{unique_repo}:base")
    images = {
        "1.0": build_image("docker", layers=[base, make_layer(3000, seed=f"{unique_repo}:a")]),
        "2.0": build_image("oci", seed=f"{unique_repo}:oci"),
        "3.0": build_index("docker", seed=f"{unique_repo}:list", shared_layers=[base]),
        "4.0": build_index("oci", seed=f"{unique_repo}:index"),
    }
    for tag, image in images.items():
        hub_pusher.push(unique_repo, image, tag)
    return images


def test_hub_to_layout_to_a_second_registry_keeps_every_digest(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    make_registry: Callable[..., RegistryProcess],
    release: dict[str, Image],
    unique_repo: str,
) -> None:
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"

    out = mirror(
        tmp_path, "sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{disk}", "--json",
        "--config", str(config),
    )  # fmt: skip
    back = mirror(tmp_path, "sync", f"oci:{disk}", "--to", local.host, "--json")

    assert out.code == 0, out.describe()
    assert out.report["tags_copied"] == 4
    assert back.code == 0, back.describe()
    assert back.report["tags_copied"] == 4 and back.report["tags_failed"] == 0
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, sorted(release))
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]

    # As a configured entry (`source = "oci:DIR"`, every layout in it), into another registry.
    other = make_registry()
    entry = tmp_path / "inside.toml"
    entry.write_text(f'target = "{other.host}"\n[[mirrors]]\nsource = "oci:{disk}"\n')
    job = mirror(tmp_path, "sync", "--all", "--config", str(entry), "--json")

    assert job.code == 0, job.describe()
    verify_same((hub.url, hub.token_getter()), (other.url, None), unique_repo, sorted(release))


@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (Debian package skopeo)")
def test_skopeo_reads_the_layouts(
    tmp_path: Path, hub: HubRegistry, release: dict[str, Image], unique_repo: str
) -> None:
    assert SKOPEO is not None
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"
    run = mirror(
        tmp_path, "sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{disk}",
        "--config", str(config),
    )  # fmt: skip
    assert run.code == 0, run.describe()

    # skopeo 1.9 (Debian 12) looks up only OCI media types in index.json; Docker-typed tags
    # are kept as they are (their digests depend on it) and other readers (regclient) find them.
    oci = {tag: image for tag, image in release.items() if "oci" in image.media_type}
    assert sorted(oci) == ["2.0", "4.0"]
    for tag, image in oci.items():
        raw = subprocess.run(
            [SKOPEO, "inspect", "--raw", f"oci:{disk}/{unique_repo}:{tag}"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert raw == image.raw, f"skopeo reads other bytes for {tag}"
    copied = tmp_path / "copied"
    subprocess.run(
        [SKOPEO, "--insecure-policy", "copy", "--preserve-digests",
         f"oci:{disk}/{unique_repo}:2.0", f"dir:{copied}"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    for blob in release["2.0"].blobs:
        assert (copied / blob.digest.split(":")[1]).read_bytes() == blob.data


def test_a_no_op_run_writes_nothing_and_an_incremental_one_only_the_new(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    release: dict[str, Image],
    unique_repo: str,
) -> None:
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"
    args = ("sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{disk}", "--json")
    assert mirror(tmp_path, *args, "--config", str(config)).code == 0
    before = files_under(disk)

    again = mirror(tmp_path, *args, "--config", str(config))

    assert again.code == 0, again.describe()
    assert again.report["tags_skipped"] == 4
    assert files_under(disk) == before

    old = release["1.0"]
    new = build_image("docker", layers=[old.layers[0], make_layer(4000, seed=f"{unique_repo}:n")])
    hub_pusher.push(unique_repo, new, "1.1")

    more = mirror(tmp_path, *args, "--config", str(config))

    assert more.code == 0, more.describe()
    after = files_under(disk)
    changed = sorted(f for f in after if before.get(f) != after[f])
    fresh = [new.digest, *(b.digest for b in new.blobs if b.digest not in old.blob_digests)]
    assert changed == sorted(
        [f"{unique_repo}/index.json"]
        + [f"{unique_repo}/blobs/sha256/{d.split(':')[1]}" for d in fresh]
    )


@pytest.fixture
def inside(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
) -> tuple[Path, Image]:
    """The inside registry (``local``) holds 1.0 of a repository; the hub has moved on to 1.1,
    which shares 1.0's large base layer. Returns the config both sides use, and 1.1."""
    base = make_layer(400_000, seed=f"{unique_repo}:base")
    old = build_image("docker", layers=[base, make_layer(2000, seed=f"{unique_repo}:old")])
    new = build_image("docker", layers=[base, make_layer(6000, seed=f"{unique_repo}:new")])
    hub_pusher.push(unique_repo, old, "1.0")
    registries = hub_config(tmp_path, hub).read_text()
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'target = "{local.host}"\n{registries}[[mirrors]]\nsource = "{hub.host}/{unique_repo}"\n'
    )
    first = mirror(tmp_path, "sync", "--all", "--config", str(config), "--json")
    assert first.code == 0, first.describe()
    hub_pusher.push(unique_repo, new, "1.1")
    return config, new


def test_a_delta_bundle_carries_only_what_the_inside_lacks_and_imports_whole(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    inside: tuple[Path, Image],
    unique_repo: str,
) -> None:
    config, new = inside
    full, delta = tmp_path / "full", tmp_path / "delta"

    inventory = mirror(tmp_path, "inventory", local.host, "--config", str(config))
    assert inventory.code == 0, inventory.describe()
    have = tmp_path / "have.json"
    have.write_text(inventory.stdout)
    whole = mirror(tmp_path, "sync", "--all", "--to", f"oci:{full}", "--config", str(config))
    part = mirror(
        tmp_path, "sync", "--all", "--to", f"oci:{delta}", "--have", str(have),
        "--config", str(config),
    )  # fmt: skip

    assert whole.code == 0, whole.describe()
    assert part.code == 0, part.describe()
    full_bytes, delta_bytes = bytes_on_disk(full), bytes_on_disk(delta)
    print(f"\nbundle sizes: full {full_bytes} bytes, delta {delta_bytes} bytes")
    assert delta_bytes * 10 < full_bytes
    assert json.loads(inventory.stdout)["version"] == 1
    bundle = json.loads((delta / "mirror-bundle.json").read_text())
    assert list(bundle["expects"][unique_repo]) == [new.layers[0].digest]

    imported = mirror(tmp_path, "sync", f"oci:{delta}", "--to", local.host, "--json")

    assert imported.code == 0, imported.describe()
    assert imported.report["tags_copied"] == 1  # 1.1; 1.0 was never in the bundle
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, ["1.0", "1.1"])


def test_a_bundle_missing_a_blob_is_refused_before_any_tag_moves(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    inside: tuple[Path, Image],
    unique_repo: str,
) -> None:
    config, new = inside
    delta, have = tmp_path / "delta", tmp_path / "have.json"
    inventory = mirror(tmp_path, "inventory", f"{local.host}/{unique_repo}")
    have.write_text(inventory.stdout)
    part = mirror(
        tmp_path, "sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{delta}",
        "--have", str(have), "--config", str(config),
    )  # fmt: skip
    assert part.code == 0, part.describe()
    lost = new.layers[1]
    blob_file(delta, unique_repo, lost.digest).unlink()
    tags_before = list_tags(local.url, unique_repo)
    since = local.log_mark()

    imported = mirror(tmp_path, "sync", f"oci:{delta}", "--to", local.host)

    assert imported.code == 1, imported.describe()
    lines = imported.error_lines()
    assert any(lost.digest in line and "neither the bundle nor" in line for line in lines), lines
    assert "no tag was imported" in lines[-1]
    assert list_tags(local.url, unique_repo) == tags_before == ["1.0"]
    assert writes(local, since) == []

    # The same import as a configured entry (what the service runs): refused the same way.
    entry = tmp_path / "inside.toml"
    entry.write_text(f'target = "{local.host}"\n[[mirrors]]\nsource = "oci:{delta}"\n')
    job = mirror(tmp_path, "sync", "--all", "--config", str(entry), "--json")

    assert job.code == 1, job.describe()
    (result,) = job.report["jobs"]
    assert result["outcome"] == "failed" and lost.digest in result["error"]
    assert list_tags(local.url, unique_repo) == ["1.0"]
    assert writes(local, since) == []


def test_a_dry_run_to_a_layout_writes_nothing_and_predicts_the_run(
    tmp_path: Path, hub: HubRegistry, release: dict[str, Image], unique_repo: str
) -> None:
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"
    args = ("sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{disk}", "--json")

    dry = mirror(tmp_path, *args, "--dry-run", "--config", str(config))
    written = disk.exists()
    real = mirror(tmp_path, *args, "--config", str(config))

    assert dry.code == 0, dry.describe()
    assert not written
    assert dry.report["tags_copied"] == real.report["tags_copied"] == 4
    assert dry.report["bytes_copied"] == real.report["bytes_copied"]


def test_a_layout_edited_by_hand_is_one_line_naming_the_file(
    tmp_path: Path,
    hub: HubRegistry,
    local: RegistryProcess,
    release: dict[str, Image],
    unique_repo: str,
) -> None:
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"
    run = mirror(
        tmp_path, "sync", f"{hub.host}/{unique_repo}", "--to", f"oci:{disk}",
        "--config", str(config),
    )  # fmt: skip
    assert run.code == 0, run.describe()
    index = disk / unique_repo / "index.json"
    index.write_text(index.read_text()[:-20])
    since = local.log_mark()

    back = mirror(tmp_path, "sync", f"oci:{disk}", "--to", local.host)

    assert back.code == 1, back.describe()
    (line,) = back.error_lines()
    assert f"{index} is not a valid OCI image index" in line
    assert writes(local, since) == []


def test_a_large_layer_crosses_the_disk_both_ways_intact(
    tmp_path: Path, hub: HubRegistry, hub_pusher: Pusher, local: RegistryProcess, unique_repo: str
) -> None:
    big = build_image("oci", layers=[make_layer(6 * 1024 * 1024, seed=f"{unique_repo}:big")])
    hub_pusher.push(unique_repo, big, "big")
    config, disk = hub_config(tmp_path, hub), tmp_path / "usb"

    out = mirror(
        tmp_path, "sync", f"{hub.host}/{unique_repo}:big", "--to", f"oci:{disk}",
        "--config", str(config),
    )  # fmt: skip
    back = mirror(tmp_path, "sync", f"oci:{disk}/{unique_repo}:big", "--to", local.host)

    assert out.code == 0, out.describe()
    assert back.code == 0, back.describe()  # one layout, named by its path below DIR
    verify_same((hub.url, hub.token_getter()), (local.url, None), unique_repo, ["big"])
