"""Namespaces: parsing ``diamol/*`` and listing repositories (catalog, or Docker Hub's API)."""

from __future__ import annotations

import httpx
import pytest

from mirror.config import Config
from mirror.errors import InvalidReference, RegistryError
from mirror.reference import Namespace, parse_namespace
from mirror.registry import Registry


@pytest.mark.parametrize(
    ("text", "registry", "path"),
    [
        ("diamol/*", "docker.io", "diamol"),  # no library/ for a namespace
        ("ghcr.io/org/team/*", "ghcr.io", "org/team"),
        ("localhost:5000/*", "localhost:5000", ""),
        ("index.docker.io/diamol/*", "docker.io", "diamol"),
    ],
)
def test_parse_namespace(text: str, registry: str, path: str) -> None:
    assert parse_namespace(text) == Namespace(registry, path)


@pytest.mark.parametrize("text", ["diamol", "Diamol/*", "a//*", "localhost:99999/*"])
def test_bad_namespaces(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_namespace(text)


def test_namespace_maps_repositories() -> None:
    source, target = parse_namespace("diamol/*"), parse_namespace("reg:5000/mirror/diamol/*")
    assert (
        target.repository(source.relative("diamol/golang")).name == "reg:5000/mirror/diamol/golang"
    )
    assert source.contains("diamol/golang") and not source.contains("diamolx/golang")


def test_entry_without_target_keeps_the_namespace_path() -> None:
    config = Config.model_validate(
        {"target": "registry.local:5000", "mirrors": [{"source": "diamol/*"}]}
    )
    assert config.mirrors[0].job_id(config.target) == (
        "docker.io/diamol/* -> registry.local:5000/diamol/*"
    )


def test_namespace_source_with_a_plain_repository_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target ending /"):
        Config.model_validate({"mirrors": [{"source": "diamol/*", "target": "reg:5000/x"}]})


async def test_catalog_pages_are_followed_and_filtered() -> None:
    pages = {
        None: (["diamol/golang", "other/x"], '</v2/_catalog?last=other%2Fx&n=1000>; rel="next"'),
        "other/x": (["diamol/nginx"], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        repos, link = pages[request.url.params.get("last")]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json={"repositories": repos}, headers=headers)

    async with Registry("reg.example:5000", transport=httpx.MockTransport(handler)) as client:
        assert await client.list_repositories("diamol") == ["diamol/golang", "diamol/nginx"]


async def test_docker_hub_namespaces_come_from_hubs_api() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.params.get("page") == "2":
            return httpx.Response(200, json={"next": None, "results": [{"name": "nginx"}]})
        nxt = "https://hub.docker.com/v2/namespaces/diamol/repositories?page=2&page_size=100"
        return httpx.Response(200, json={"next": nxt, "results": [{"name": "golang"}]})

    async with Registry("docker.io", transport=httpx.MockTransport(handler)) as client:
        assert await client.list_repositories("diamol") == ["diamol/golang", "diamol/nginx"]
    assert all(url.startswith("https://hub.docker.com/v2/namespaces/diamol/") for url in seen)


async def test_docker_hub_cannot_list_everything() -> None:
    async with Registry(
        "docker.io", transport=httpx.MockTransport(lambda r: httpx.Response(500))
    ) as client:
        with pytest.raises(RegistryError, match="one account"):
            await client.list_repositories("")
