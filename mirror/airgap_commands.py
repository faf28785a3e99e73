"""What the air gap's commands do: ``mirror inventory``, ``sync --have`` and the layouts of
an ``oci:DIR`` as REFs.

Owns reading an inventory file for ``--have`` (and readying the target layouts with it),
turning a namespace REF (``oci:DIR``: every layout in it) into one request per repository,
and ``mirror inventory``'s choice of repositories. The walking and checking are
``mirror.airgap``'s; ``mirror.commands`` calls these from ``sync``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mirror.output import error

if TYPE_CHECKING:
    from mirror.jobs import SyncRequest

EXIT_OK, EXIT_FAILED = 0, 1  # as mirror.commands has them (it sits above this module)


async def inventory_command(args: argparse.Namespace) -> int:
    """``mirror inventory REGISTRY [REPOSITORY...]``: the tags, manifests and blobs a registry
    holds, as one JSON document on stdout (``mirror.bundle`` describes it), for ``sync --have``.
    Without repositories: those the config's entries copy into it, else its whole catalog."""
    from mirror.airgap import take_inventory
    from mirror.clients import Clients
    from mirror.config import config_path, load_config
    from mirror.errors import ConfigError, MirrorError
    from mirror.reference import is_layout, layout_name, names_registry, parse_repository

    config = load_config(config_path(args.config))
    registries, repositories = set(), []
    for text in args.refs:
        if names_registry(text):
            registries.add(layout_name(text) if is_layout(text) else text)
        else:
            reference = parse_repository(text)
            registries.add(reference.registry)
            repositories.append(reference.repository)
    if len(registries) != 1:
        raise ConfigError(f"inventory: give one registry (and its repositories), not {args.refs}")
    registry = registries.pop()
    clients = Clients(config)
    try:
        store = clients.get(registry)
        if not repositories:
            repositories = await _configured_repositories(config, store, registry)
        inventory = await take_inventory(store, sorted(set(repositories)))
    except MirrorError as exc:
        error(str(exc))
        return EXIT_FAILED
    finally:
        await clients.aclose()
    print(json.dumps(inventory.as_json(), indent=1))
    return EXIT_OK


async def _configured_repositories(config: Any, store: Any, registry: str) -> list[str]:
    """The repositories of ``registry`` the config's entries copy into; its catalog when
    none does."""
    found: list[str] = []
    for entry in config.mirrors:
        if entry.is_namespace:
            _, namespace = entry.namespaces(config.target)
            if namespace.registry == registry:
                found += await store.list_repositories(namespace.path)
        else:
            _, target = entry.endpoints(config.target)
            if target.registry == registry:
                found.append(target.repository)
    return found or list(await store.list_repositories(""))


async def namespace_requests(
    clients: Any, namespaces: list[str], target_text: str
) -> list[SyncRequest]:
    """One request per repository of each namespace REF (``oci:DIR``: every layout in DIR),
    each into the target with its path kept below the namespace."""
    from mirror.errors import ConfigError
    from mirror.jobs import SyncRequest
    from mirror.reference import Reference, names_registry, parse_namespace, resolve_target

    if namespaces and not names_registry(target_text):
        raise ConfigError(f"target {target_text} is one repository; a namespace needs a registry")
    found = []
    for text in namespaces:
        namespace = parse_namespace(text)
        for repository in await clients.get(namespace.registry).list_repositories(namespace.path):
            source = Reference(namespace.registry, repository)
            found.append(SyncRequest(source, resolve_target(source, target_text)))
    return found


def expect_inventory(clients: Any, have: str | None, targets: set[str]) -> list[Any]:
    """``--have FILE``: every target, a layout, writes only what that inventory lacks; the
    layouts that then write a bundle file (none without ``--have``)."""
    from pathlib import Path

    from mirror.bundle import Inventory
    from mirror.errors import ConfigError
    from mirror.reference import is_layout

    if have is None:
        return []
    if not targets or not all(is_layout(t) for t in targets):
        raise ConfigError("--have writes a delta bundle: the target must be oci:DIR")
    try:
        text = Path(have).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--have {have}: {exc.strerror}") from None
    inventory = Inventory.from_json(text, have)
    layouts = [clients.get(t) for t in sorted(targets)]
    for layout in layouts:
        layout.expect(inventory)
    return layouts
