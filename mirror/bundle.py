"""The two documents that cross an air gap: the inside registry's inventory, and the bundle
file a delta run leaves beside its layouts.

Owns their JSON formats, versioned, and reading them back with one line naming the file
and what is wrong. Plain data: gathering an inventory and checking a bundle against a
registry are ``mirror.airgap``'s; writing layouts is ``mirror.layout``'s.

An inventory (``mirror inventory``; read by ``mirror sync --have``)::

    {"kind": "mirror-inventory", "version": 1, "registry": "registry.local:5000",
     "created": "2026-11-29T17:00:00Z",
     "repositories": {"diamol/golang": {"tags": {"2.1": "sha256:..."},
                                        "manifests": ["sha256:..."],
                                        "blobs": ["sha256:..."],
                                        "indexes": {"sha256:...": "{...}"}}}}

``indexes`` holds the bytes of the indexes mirror made by keeping some platforms (they carry
``io.mirror.source.digest``): a run with platforms reads one to know its source is unchanged.

A bundle file (``DIR/mirror-bundle.json``, written by ``mirror sync --to oci:DIR --have``;
a run without ``--have`` leaves one with ``"inventory": null`` and nothing expected)::

    {"kind": "mirror-bundle", "version": 1, "created": "...",
     "inventory": {"registry": "registry.local:5000", "created": "..."},
     "expects": {"diamol/golang": {"sha256:...": ["diamol/golang"]}}}

``expects`` lists, per repository of the bundle, each blob its manifests need that the
bundle leaves out because the inventory said the inside holds it, with the inside's
repositories that held it (an import mounts it from there).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mirror.errors import InvalidReference, MirrorError
from mirror.reference import Digest

INVENTORY_KIND, BUNDLE_KIND = "mirror-inventory", "mirror-bundle"
FORMAT_VERSION = 1  # of both documents; a reader refuses a version it does not know


def now() -> str:
    """The current UTC time as the documents write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(slots=True)
class Holdings:
    """What one repository of the inside registry holds: tags, manifests and blobs."""

    tags: dict[str, Digest] = field(default_factory=dict)
    manifests: set[Digest] = field(default_factory=set)
    blobs: set[Digest] = field(default_factory=set)
    indexes: dict[Digest, str] = field(default_factory=dict)  # platform-filtered ones' bytes


@dataclass(slots=True)
class Inventory:
    """The digests a registry holds, repository by repository, at ``created``."""

    registry: str
    repositories: dict[str, Holdings] = field(default_factory=dict)
    created: str = field(default_factory=now)
    _homes: dict[Digest, list[str]] | None = None

    def tag(self, repository: str, tag: str) -> Digest | None:
        holdings = self.repositories.get(repository)
        return holdings.tags.get(tag) if holdings else None

    def index(self, repository: str, digest: Digest) -> bytes | None:
        """The bytes of a platform-filtered index the repository holds, if recorded."""
        holdings = self.repositories.get(repository)
        text = holdings.indexes.get(digest) if holdings else None
        return text.encode() if text is not None else None

    def tags(self, repository: str) -> list[str]:
        holdings = self.repositories.get(repository)
        return list(holdings.tags) if holdings else []

    def blob_homes(self, digest: Digest) -> list[str]:
        """The repositories that hold blob ``digest`` (none: the inside lacks it)."""
        if self._homes is None:
            self._homes = {}
            for name, holdings in sorted(self.repositories.items()):
                for blob in holdings.blobs:
                    self._homes.setdefault(blob, []).append(name)
        return self._homes.get(digest, [])

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": INVENTORY_KIND,
            "version": FORMAT_VERSION,
            "registry": self.registry,
            "created": self.created,
            "repositories": {
                name: {
                    "tags": dict(sorted(h.tags.items())),
                    "manifests": sorted(h.manifests),
                    "blobs": sorted(h.blobs),
                    "indexes": dict(sorted(h.indexes.items())),
                }
                for name, h in sorted(self.repositories.items())
            },
        }

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Inventory:
        """Read an inventory; MirrorError naming ``where`` and the fault when it is not one."""
        data = _document(text, where, INVENTORY_KIND)
        try:
            repositories = {
                str(name): Holdings(
                    tags={str(t): Digest.parse(d) for t, d in (body.get("tags") or {}).items()},
                    manifests={Digest.parse(d) for d in body.get("manifests") or []},
                    blobs={Digest.parse(d) for d in body.get("blobs") or []},
                    indexes={
                        Digest.parse(d): str(text)
                        for d, text in (body.get("indexes") or {}).items()
                    },
                )
                for name, body in data["repositories"].items()
            }
            return cls(str(data["registry"]), repositories, str(data.get("created", "")))
        except (KeyError, TypeError, AttributeError, InvalidReference) as exc:
            raise MirrorError(f"{where}: not a valid inventory: {_why(exc)}") from None


@dataclass(slots=True)
class Bundle:
    """A bundle file: the blobs each repository's manifests need that the bundle expects to
    find inside already, with the inside repositories that held each."""

    registry: str | None  # the inventory's; None: made without one, relying on nothing
    inventory_created: str | None
    expects: dict[str, dict[Digest, list[str]]] = field(default_factory=dict)
    created: str = field(default_factory=now)

    def homes(self, repository: str, digest: Digest) -> list[str]:
        """The inside repositories ``digest`` is expected in, for ``repository``'s manifests
        (any repository the bundle names, when ``repository``'s own entry does not list it)."""
        own = self.expects.get(repository, {}).get(digest)
        if own is not None:
            return own
        return sorted({r for blobs in self.expects.values() for r in blobs.get(digest, [])})

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": BUNDLE_KIND,
            "version": FORMAT_VERSION,
            "created": self.created,
            "inventory": (
                {"registry": self.registry, "created": self.inventory_created}
                if self.registry is not None
                else None
            ),
            "expects": {
                repo: {str(d): homes for d, homes in sorted(blobs.items())}
                for repo, blobs in sorted(self.expects.items())
            },
        }

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Bundle:
        data = _document(text, where, BUNDLE_KIND)
        try:
            expects = {
                str(repo): {Digest.parse(d): [str(h) for h in homes] for d, homes in blobs.items()}
                for repo, blobs in data["expects"].items()
            }
            inventory = data.get("inventory")
            return cls(
                str(inventory["registry"]) if inventory else None,
                str(inventory.get("created", "")) if inventory else None,
                expects,
                str(data.get("created", "")),
            )
        except (KeyError, TypeError, AttributeError, InvalidReference) as exc:
            raise MirrorError(f"{where}: not a valid bundle file: {_why(exc)}") from None


def _document(text: str | bytes, where: str, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MirrorError(f"{where}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise MirrorError(f'{where}: not a {kind} document (its "kind" is not {kind!r})')
    if data.get("version") != FORMAT_VERSION:
        raise MirrorError(
            f"{where}: {kind} version {data.get('version')!r}; this mirror reads {FORMAT_VERSION}"
        )
    return data


def _why(exc: BaseException) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
