"""Shared pieces of the fault tests: ``sync`` (``mirror sync`` run with ``helpers.run_mirror``,
timed, its peak memory measured and its output searched for secrets), images with a large
layer, and the invariant check.

The invariant, checked on the real target after every fault with ``tests.support.images``
(which knows nothing of mirror): every tag the target holds is complete and intact (its
manifest, child manifests and blobs exist and hash to their digests), and each tag is either
where it was before the run or at the source's new content, never anywhere else.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.integration.helpers import HUB_ENV, HUB_PASSWORD, HUB_USER, HasHost, Run, run_mirror
from tests.support.images import (
    MANIFEST_ACCEPT,
    Blob,
    Image,
    Pusher,
    build_image,
    build_index,
    list_tags,
    make_layer,
    manifest_digest,
    verify_repository,
)
from tests.support.registry import RegistryProcess, http_client
from tests.support.tokenserver import TokenServer

MIB = 1024 * 1024
BIG_LAYER_BYTES = 5 * MIB  # over mirror's 4 MiB line: streamed through a resumable session
RUN_TIMEOUT_S = 60.0  # no single run in these tests comes near this; a hang fails, not blocks
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


@functools.cache
def big_layer(seed: str = "faults:big") -> Blob:
    """A gzip'd tar layer of BIG_LAYER_BYTES random bytes (built once per seed)."""
    return make_layer(BIG_LAYER_BYTES, seed=seed)


def big_image(name: str, seed: str = "faults:big") -> Image:
    """A Docker image whose first layer is ``big_layer(seed)``, plus a small one of its own."""
    return build_image("docker", layers=[big_layer(seed), make_layer(3000, seed=f"{name}:small")])


def small_image(name: str, layer_size: int = 20_000) -> Image:
    """A Docker image with two random layers of ``layer_size`` bytes of its own."""
    return build_image("docker", seed=name, layer_size=layer_size)


ALIASES = {"1.0": "1.0.2", "1": "1.0.2", "2.0": "2.0.1", "3.0": "3.0.1", "4": "4.0.1"}


def dozen(repo: str) -> dict[str, Image]:
    """Twelve tags like the seed's: Docker v2, OCI, a Docker list and an OCI index (shared
    layers), moving aliases, and ``edge``/``latest`` with a large layer."""
    base = make_layer(6000, seed=f"{repo}:base")
    images = {
        "1.0.1": build_image("docker", layers=[base, make_layer(3000, seed=f"{repo}:a")]),
        "1.0.2": build_image("docker", layers=[base, make_layer(3000, seed=f"{repo}:b")]),
        "2.0.1": build_image("oci", seed=f"{repo}:oci"),
        "3.0.1": build_index("docker", seed=f"{repo}:list", shared_layers=[base]),
        "4.0.1": build_index("oci", seed=f"{repo}:index"),
        "edge": big_image(repo),
    }
    for alias, version in ALIASES.items():
        images[alias] = images[version]
    images["latest"] = images["edge"]
    return images


def mixed(repo: str) -> dict[str, Image]:
    """One tag of each kind: Docker v2, OCI, an OCI index of two platforms, a large layer."""
    return {
        "docker": build_image("docker", seed=f"{repo}:docker"),
        "oci": build_image("oci", seed=f"{repo}:oci"),
        "index": build_index("oci", seed=f"{repo}:index"),
        "big": big_image(repo),
    }


def push_all(pusher: Pusher, repo: str, images: Mapping[str, Image]) -> None:
    for tag, image in images.items():
        pusher.push(repo, image, tag)


def push_small(pusher: Pusher, repo: str, tags: Iterable[str]) -> dict[str, Image]:
    """Push a ``small_image`` of its own under each tag; returns tag -> image."""
    images = {tag: small_image(f"{repo}:{tag}") for tag in tags}
    push_all(pusher, repo, images)
    return images


# -- secrets ---------------------------------------------------------------------------------


class Secrets:
    """What must never show in mirror's output: the Hub password (raw and as Basic
    credentials) and every bearer token the token server issued, or anything shaped like a
    JWT at all."""

    def __init__(self, token_server: TokenServer, password: str = HUB_PASSWORD) -> None:
        self.token_server = token_server
        self.password = password
        self.basic = base64.b64encode(f"{HUB_USER}:{password}".encode()).decode()

    def leaks(self, text: str) -> list[str]:
        found = []
        if self.password in text:
            found.append("the Hub password")
        if self.basic in text:
            found.append("the Basic credentials")
        for token in self.token_server.issued_tokens():
            if token in text or token.rsplit(".", 1)[-1] in text:
                found.append(f"an issued token ({token[:12]}...)")
                break
        match = _JWT.search(text)
        if match:
            found.append(f"a JWT ({match.group()[:16]}...)")
        return found

    def check(self, *texts: str) -> None:
        for text in texts:
            leaks = self.leaks(text)
            assert not leaks, f"output shows {', '.join(leaks)}:\n{text[:3000]}"

    def checked(self, run: Run) -> Run:
        """``run``, once its output is found to show no secret and no traceback."""
        self.check(run.stdout, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout, run.describe()
        return run


# -- syncing -------------------------------------------------------------------------------


def write_config(
    tmp_path: Path,
    source: HasHost,
    *,
    read_timeout: str | None = None,
    target: str | None = None,
    body: str = "",
    name: str = "mirror.toml",
) -> Path:
    """A config logging in to ``source`` as the test user (password from $HUB_PW)."""
    lines = [f'target = "{target}"'] if target else []
    lines += [
        f'[registries."{source.host}"]',
        f'username = "{HUB_USER}"',
        'password_env = "HUB_PW"',
    ]
    if read_timeout is not None:
        lines.append(f'read_timeout = "{read_timeout}"')
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + body)
    return path


def sync(
    tmp_path: Path,
    source: HasHost,
    repo: str,
    target: HasHost,
    secrets: Secrets,
    *extra: str,
    tag: str | None = None,
    read_timeout: str | None = None,
) -> Run:
    """``mirror sync SOURCE/REPO[:TAG] --to TARGET --json`` with the test user's login."""
    config = write_config(tmp_path, source, read_timeout=read_timeout)
    ref = f"{source.host}/{repo}" + (f":{tag}" if tag else "")
    finished = run_mirror(
        "sync",
        ref,
        "--to",
        target.host,
        "--json",
        "--config",
        str(config),
        *extra,
        home=tmp_path,
        env=HUB_ENV,
        timeout=RUN_TIMEOUT_S,
        measure=True,
    )
    return secrets.checked(finished)


# -- the invariant -------------------------------------------------------------------------


def seed_target(pusher: Pusher, repo: str, tags: Iterable[str]) -> dict[str, str]:
    """Give the target an older image under each tag, as a previous run would have left
    it; returns tag -> digest there."""
    before = {}
    for tag in tags:
        image = build_image("docker", seed=f"{repo}:{tag}:old", layer_size=2000)
        pusher.push(repo, image, tag)
        before[tag] = image.digest
    return before


def check_target(
    target: RegistryProcess,
    repo: str,
    *,
    before: Mapping[str, str],
    upstream: Mapping[str, Image],
) -> dict[str, str]:
    """The invariant; returns tag -> digest of every tag the target holds.

    Each tag verifies independently (manifest, children and every blob read back and
    hashed), and points either where it pointed before the run or at the source's content.
    """
    found = {}
    for tag in list_tags(target.url, repo):
        digest = verify_repository(target.url, repo, tag)
        allowed = {before.get(tag)} | ({upstream[tag].digest} if tag in upstream else set())
        assert digest in allowed, (
            f"{repo}:{tag} points at {digest}, neither its old content {before.get(tag)} "
            f"nor the source's {upstream[tag].digest if tag in upstream else None}"
        )
        found[tag] = digest
    return found


def absent(target: RegistryProcess, repo: str, blob: str, manifests: Iterable[str]) -> None:
    """Nothing that refers to ``blob`` reached the target: the blob, the manifests naming it."""
    with http_client(timeout=10.0) as client:
        response = client.head(f"{target.url}/v2/{repo}/blobs/{blob}")
    assert response.status_code == 404, f"{blob} is on the target"
    for digest in manifests:
        assert manifest_digest(target.url, repo, digest) is None, f"{digest} is on the target"


def blob_exists(target: RegistryProcess, repo: str, digest: str) -> bool:
    with http_client(timeout=10.0) as client:
        return client.head(f"{target.url}/v2/{repo}/blobs/{digest}").status_code == 200


def manifest_status(target: RegistryProcess, repo: str, reference: str) -> int:
    """The status of a GET of manifest ``repo:reference`` on a registry without auth."""
    with http_client(timeout=10.0) as client:
        response = client.get(
            f"{target.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
    return response.status_code


def one_line_errors(run: Run, count: int | None = None) -> list[str]:
    """mirror's failure lines on stderr: each one line, ``mirror: error: ...``."""
    lines = run.error_lines()
    assert all(line.startswith("mirror: error: ") for line in lines), run.describe()
    if count is not None:
        assert len(lines) == count, run.describe()
    return lines
