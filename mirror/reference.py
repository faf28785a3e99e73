"""Image references and digests: parsing, Docker Hub normalisation, canonical text.

Owns the grammar of distribution's ``reference`` package (registry, repository path, tag,
digest), Docker's naming rules (``docker.io``, ``library/``, ``latest``) and ``oci:DIR``
references to OCI image layouts on disk (where DIR stands in for a registry, and one look
at the file system tells a layout from a directory of them). Knows nothing of HTTP: which
endpoint serves ``docker.io`` is the registry client's business, reading a layout the
``mirror.layout`` store's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from mirror.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
OFFICIAL_NAMESPACE = "library"  # Docker Hub keeps official images here: golang = library/golang
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255  # distribution's NameTotalLengthMax
LAYOUT_PREFIX = "oci:"  # as skopeo spells an OCI image layout: oci:DIR[:TAG]
LAYOUT_FILE = "oci-layout"  # image-spec: the file that makes a directory an image layout
BUNDLE_FILE = "mirror-bundle.json"  # at the top of a directory of layouts a delta run wrote

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\]")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<hex>[a-f0-9]+)")


def is_tag(text: str) -> bool:
    """Whether ``text`` is a valid tag (as the distribution spec has it), not a digest."""
    return _TAG.fullmatch(text) is not None


class Digest(str):
    """A content digest such as ``sha256:9f86d08...``; a ``str`` so it serialises as itself."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Return ``text`` as a Digest, or raise InvalidReference saying what is wrong with it."""
        match = _DIGEST.fullmatch(text)
        if match is None:
            raise InvalidReference(text, "a digest is ALGORITHM:HEX, e.g. sha256:<64 hex digits>")
        algorithm, hexpart = match["algorithm"], match["hex"]
        expected = _DIGEST_HEX_LENGTH.get(algorithm)
        if expected is None:
            raise InvalidReference(text, f"unsupported digest algorithm {algorithm!r}")
        if len(hexpart) != expected:
            raise InvalidReference(text, f"a {algorithm} digest has {expected} hex digits")
        return cls(text)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The sha256 digest of ``data``."""
        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm, to check content as it streams."""
        return hashlib.new(self.algorithm)


def is_registry_host(component: str) -> bool:
    """Whether the first path component of a reference names a registry (Docker's rule)."""
    return "." in component or ":" in component or component == "localhost"


def is_loopback_host(registry: str) -> bool:
    """Whether ``registry`` (host[:port]) is on this machine; Docker allows plain HTTP there.

    Only ``localhost`` and literal loopback addresses count: a DNS name that merely starts
    with ``127.`` is somebody else's host.
    """
    if registry.startswith("["):
        host = registry[1 : registry.find("]")]
    else:
        host = registry.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference: ``registry/repository[:tag][@digest]`` with Docker Hub normalised.

    ``tag`` and ``digest`` are both None when the text named only a repository; callers decide
    whether that means ``latest`` (``with_default_tag``) or every tag (``mirror sync``).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str | None:
        """What goes in ``/v2/<name>/manifests/<reference>``: the digest if any, else the tag."""
        return self.digest or self.tag

    def with_default_tag(self) -> Reference:
        """This reference, with ``latest`` when it names neither a tag nor a digest."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag``."""
        if _TAG.fullmatch(tag) is None:
            raise InvalidReference(
                tag, "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -"
            )
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository at ``digest``."""
        return replace(self, tag=None, digest=Digest.parse(digest))

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference the way ``docker pull`` does.

    ``golang`` is ``docker.io/library/golang``; ``diamol/golang`` is ``docker.io/diamol/golang``;
    a first component with a dot, a colon or ``localhost`` is a registry. Raises InvalidReference
    naming the text and what is wrong with it. ``oci:DIR[:TAG][@DIGEST]`` names one OCI image
    layout (see ``parse_layout_reference``).
    """
    if is_layout(text):
        return parse_layout_reference(text)
    if not text:
        raise InvalidReference(text, "empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(text, "a reference contains no spaces")

    remainder, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidReference as exc:
            raise InvalidReference(text, exc.reason) from None

    # A tag is after the last colon that comes after the last slash (a port's colon is before it).
    name, tag = remainder, None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        name, tag = remainder[:colon], remainder[colon + 1 :]
        if _TAG.fullmatch(tag) is None:
            raise InvalidReference(
                text, f"bad tag {tag!r}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
            )

    registry, repository = _split_name(text, name)
    if len(repository) > MAX_NAME_LENGTH:
        raise InvalidReference(text, f"repository name longer than {MAX_NAME_LENGTH} characters")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def parse_repository(text: str) -> Reference:
    """Parse text that must name a repository only (no tag, no digest)."""
    ref = parse_reference(text)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidReference(text, "expected a repository without tag or digest")
    return ref


def names_registry(target: str) -> bool:
    """Whether a copy target names a whole registry (``localhost:5000``), not one repository.

    ``oci:DIR`` as a target always does: each repository gets its own layout under DIR."""
    return is_layout(target) or ("/" not in target and is_registry_host(target))


def resolve_target(source: Reference, target: str) -> Reference:
    """The repository ``source`` is copied into.

    A target naming a registry keeps the source's repository path (``diamol/golang`` into
    ``localhost:5000`` is ``localhost:5000/diamol/golang``); a target naming a repository
    (``registry.local:5000/gallery/ui``) is that repository.
    """
    if is_layout(target):
        return Reference(layout_name(target), source.repository)
    if names_registry(target):
        validate_registry(target, target)
        return parse_repository(f"{target}/{source.repository}")
    if "/" not in target:
        raise InvalidReference(
            target, "a target is a registry (host:port) or a repository (host:port/path)"
        )
    return parse_repository(target)


def normalize_registry(host: str) -> str:
    """The canonical name of a registry host: Docker Hub's aliases all become ``docker.io``."""
    return DOCKER_HUB if host.lower() in DOCKER_HUB_ALIASES else host


def validate_registry(text: str, registry: str) -> None:
    """Raise InvalidReference unless ``registry`` is ``host[:port]`` with a port in 1..65535
    (or ``oci:DIR``, which stands in for one)."""
    if is_layout(registry):
        return
    if registry.startswith("["):
        host, bracket, after = registry.partition("]")
        host += bracket
        port = after[1:] if after.startswith(":") else None
        if not bracket or (after and port is None):
            raise InvalidReference(text, f"bad registry host {registry!r}")
    else:
        host, colon, port_text = registry.rpartition(":")
        host, port = (host, port_text) if colon else (registry, None)
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidReference(text, f"bad port {port!r} in registry {registry!r}: must be 1-65535")
    if _HOST.fullmatch(host) is None:
        raise InvalidReference(text, f"bad registry host {registry!r}")


@dataclass(frozen=True, slots=True)
class Namespace:
    """``diamol/*``: every repository under a path prefix of a registry (empty: all of it)."""

    registry: str
    path: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}/*" if self.path else f"{self.registry}/*"

    def contains(self, repository: str) -> bool:
        return not self.path or repository.startswith(self.path + "/")

    def relative(self, repository: str) -> str:
        """``diamol/golang`` in ``diamol/*`` is ``golang``."""
        return repository[len(self.path) + 1 :] if self.path else repository

    def repository(self, relative: str) -> Reference:
        """The repository ``relative`` names inside this namespace."""
        path = f"{self.path}/{relative}" if self.path else relative
        return Reference(self.registry, path)


def is_namespace(text: str) -> bool:
    """``diamol/*``; or ``oci:DIR`` where DIR is not itself a layout (every layout under it)."""
    if is_layout(text) and not text.endswith("/*"):
        path, tag, digest = _split_layout(text)
        return tag is None and digest is None and not (path / LAYOUT_FILE).is_file()
    return text.endswith("/*")


def parse_namespace(text: str) -> Namespace:
    """Parse ``diamol/*``, ``ghcr.io/org/*`` or ``localhost:5000/*`` (no library/ added).

    ``oci:DIR`` and ``oci:DIR/*`` are every layout under DIR, repositories named by their
    paths below it."""
    if not is_namespace(text):
        raise InvalidReference(text, "a namespace ends with /*")
    if is_layout(text):
        return Namespace(layout_name(text.removesuffix("/*")), "")
    prefix = text[:-2]
    if "/" not in prefix and is_registry_host(prefix):
        validate_registry(text, prefix)
        return Namespace(normalize_registry(prefix), "")
    registry, path = _split_name(text, prefix, official=False)
    return Namespace(registry, path)


def _split_name(text: str, name: str, *, official: bool = True) -> tuple[str, str]:
    if not name:
        raise InvalidReference(text, "empty repository name")
    first, slash, rest = name.partition("/")
    if slash and is_registry_host(first):
        validate_registry(text, first)
        registry, path = normalize_registry(first), rest
    else:
        registry, path = DOCKER_HUB, name
    if not path:
        raise InvalidReference(text, "empty repository name")
    for component in path.split("/"):
        if not component:
            raise InvalidReference(text, "empty path component (doubled or trailing '/')")
        if _COMPONENT.fullmatch(component) is None:
            why = "must be lower case" if component.lower() != component else "has a bad character"
            raise InvalidReference(
                text,
                f"path component {component!r} {why}: "
                "use [a-z0-9] separated by '.', '_', '__' or '-'",
            )
    if official and registry == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return registry, path


def is_layout(text: str) -> bool:
    """Whether ``text`` names an OCI image layout on disk (``oci:DIR...``), not a registry."""
    return text.startswith(LAYOUT_PREFIX)


def layout_name(text: str) -> str:
    """The canonical name of a directory of layouts: ``oci:`` and its absolute path."""
    path = text.removeprefix(LAYOUT_PREFIX)
    if not path:
        raise InvalidReference(text, "oci: needs a directory, as in oci:/media/usb")
    return LAYOUT_PREFIX + os.path.abspath(path)


def parse_layout_reference(text: str) -> Reference:
    """Parse ``oci:DIR[:TAG][@DIGEST]``, where DIR holds one OCI image layout.

    Its repository is its path below the nearest directory above it that holds a
    ``mirror-bundle.json`` (a bundle mirror wrote: ``oci:/media/usb/diamol/golang`` is
    ``diamol/golang`` of ``oci:/media/usb``), else its last path component.
    """
    path, tag, digest = _split_layout(text)
    if not (path / LAYOUT_FILE).is_file():
        raise InvalidReference(
            text, f"{path} is not an OCI image layout (it has no {LAYOUT_FILE} file)"
        )
    root = next((p for p in path.parents if (p / BUNDLE_FILE).is_file()), path.parent)
    repository = path.relative_to(root).as_posix()
    for component in repository.split("/"):
        if _COMPONENT.fullmatch(component) is None:
            raise InvalidReference(
                text,
                f"layout directory {component!r} is not a repository name: "
                "use [a-z0-9] separated by '.', '_', '__' or '-'",
            )
    return Reference(layout_name(str(root)), repository, tag, digest)


def _split_layout(text: str) -> tuple[Path, str | None, Digest | None]:
    """``oci:DIR[:TAG][@DIGEST]`` -> (absolute DIR, tag, digest), as skopeo splits it."""
    rest = text.removeprefix(LAYOUT_PREFIX)
    digest = None
    if "@" in rest:
        rest, _, digest_text = rest.rpartition("@")
        try:
            digest = Digest.parse(digest_text)
        except InvalidReference as exc:
            raise InvalidReference(text, exc.reason) from None
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if _TAG.fullmatch(tag) is None:
            raise InvalidReference(text, f"bad tag {tag!r}")
    if not rest:
        raise InvalidReference(text, "oci: needs a directory, as in oci:/media/usb")
    return Path(os.path.abspath(rest)), tag, digest
