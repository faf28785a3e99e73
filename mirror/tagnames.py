"""What a tag's name says: its version, its variant, and its kind among a repository's tags.

Owns the reading of tag names as Docker Hub's official images write them (``VERSION``,
``VERSION-VARIANT``, a bare ``VARIANT``, ``latest``) and which of them are full versions,
moving aliases, pre-releases or other tags. Decides nothing about what to mirror (that is
``mirror.selection``'s) and talks to no registry. Pure.

Versions are read with ``packaging``: ``2.1.106``, ``v2.1``, ``16.4``; a suffix PEP 440 or
SemVer reads as a pre-release stays part of the version (``1.23rc2``, ``1.2.3-rc.1``,
``2.0-beta``). Any other suffix is a variant: ``1.22.5-alpine3.20`` is version ``1.22.5`` of
variant ``alpine3.20``, ``1.22.5-windowsservercore-ltsc2022`` of ``windowsservercore-ltsc2022``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from packaging.version import VERSION_PATTERN, InvalidVersion, Version

LATEST = "latest"
Kind = Literal["full", "alias", "pre-release", "other"]
FULL: Final = "full"
ALIAS: Final = "alias"
PRERELEASE: Final = "pre-release"
OTHER: Final = "other"

# cosign's and the OCI referrers tag schema's tags (sha256-<hex>, .sig, .att, .sbom): they
# describe another manifest and are neither versions nor variants.
_DIGEST_TAG = re.compile(r"sha256-[0-9a-f]{64}(\.[A-Za-z0-9_-]+)?")
_PEP440 = re.compile(r"\s*" + VERSION_PATTERN + r"\s*", re.VERBOSE | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class TagName:
    """One tag read in the light of the repository's other tags.

    ``version``: what it names (``1.22.5`` for ``1.22.5-alpine``), None for ``latest``,
    ``alpine`` or ``edge``; ``version_text`` is that part as written (``v1.2``).
    ``variant``: ``alpine`` for ``1.22-alpine`` and for a bare ``alpine``; None for tags of the
    plain line (``1.22.5``, ``latest``) and for tags that are neither (``edge``).
    ``kind``: ``full`` (a version no other tag of its variant extends: ``1.22.5``, postgres's
    ``16.4``), ``alias`` (a version that is extended, ``1.22`` or ``16``; ``latest``; a bare
    variant, which is that variant's ``latest``), ``pre-release``, or ``other``.
    """

    tag: str
    version: Version | None
    version_text: str | None
    variant: str | None
    kind: Kind


def parse_version(tag: str) -> Version | None:
    """The version a tag names (``2.1.106``, ``v2.1``), or None (``latest``, ``1.22-alpine``)."""
    if not _PEP440.fullmatch(tag):
        return None  # spares the exception: most tags are tried more than once
    try:
        version = Version(tag)
    except InvalidVersion:
        return None
    return None if version.local else version  # 1.0+build is a build label, not an order


@functools.lru_cache(maxsize=16384)  # a run reads each tag up to 3 times; a daemon, every run
def split_tag(tag: str) -> tuple[str | None, Version | None, str | None]:
    """``VERSION-VARIANT`` as (version as written, version, variant), from the tag alone.

    The longest leading part that is a version wins, so a pre-release stays in the version
    (``1.23.0-rc.1-alpine`` is ``1.23.0-rc.1`` of ``alpine``). ``(None, None, None)`` for a
    tag that does not start with a version (``alpine``, ``latest``, ``sha256-...``).
    """
    if _DIGEST_TAG.fullmatch(tag):
        return None, None, None
    version = parse_version(tag)
    if version is not None:
        return tag, version, None
    for cut in _dashes_from_the_right(tag):
        head, variant = tag[:cut], tag[cut + 1 :]
        if variant and (version := parse_version(head)) is not None:
            return head, version, variant
    return None, None, None


def read_tags(tags: Iterable[str]) -> dict[str, TagName]:
    """Every tag of a repository read against the others, in the order given (deduplicated).

    A bare word is a variant only when some ``VERSION-WORD`` tag exists (``alpine`` beside
    ``1.22-alpine``); without one (``edge``) it is another tag of the plain line. A tag that is
    not a version but ends in a known variant (nginx's ``mainline-alpine``) belongs to that
    variant, as ``other``.
    """
    split = {tag: split_tag(tag) for tag in dict.fromkeys(tags)}
    variants = {v for _, version, v in split.values() if version is not None and v is not None}
    # Per variant (None: the plain line), the release prefixes stable versions extend.
    extended: dict[str | None, set[tuple[int, ...]]] = {}
    for _, version, variant in split.values():
        if version is not None and not version.is_prerelease:
            release = version.release
            extended.setdefault(variant, set()).update(release[:k] for k in range(1, len(release)))
    names: dict[str, TagName] = {}
    for tag, (text, version, variant) in split.items():
        kind: Kind
        if version is None:
            variant, kind = _unversioned(tag, variants)
        elif version.is_prerelease:
            kind = PRERELEASE
        elif version.release in extended.get(variant, ()):
            kind = ALIAS
        else:
            kind = FULL
        names[tag] = TagName(tag, version, text, variant, kind)
    return names


def pinned_variants(variants: Iterable[str]) -> frozenset[str]:
    """The variants no other variant extends: ``alpine3.20`` and ``bookworm`` are pinned,
    ``alpine`` is not while ``alpine3.20`` exists (``1.22.5-alpine`` moves to the next Alpine
    release when one comes out, while ``1.22.5-alpine3.20`` stays on 3.20)."""
    known = set(variants)
    return frozenset(v for v in known if not any(w != v and w.startswith(v) for w in known))


def _unversioned(tag: str, variants: set[str]) -> tuple[str | None, Kind]:
    """The variant and kind of a tag that is not a version."""
    if _DIGEST_TAG.fullmatch(tag):
        return None, OTHER
    if tag == LATEST:
        return None, ALIAS
    if tag in variants:
        return tag, ALIAS  # the bare variant: that variant's latest
    for cut in reversed(list(_dashes_from_the_right(tag))):  # longest known suffix first
        if tag[cut + 1 :] in variants:
            return tag[cut + 1 :], OTHER
    return None, OTHER


def _dashes_from_the_right(tag: str) -> Iterator[int]:
    """The positions of ``-`` in ``tag``, right-most first."""
    cut = tag.rfind("-")
    while cut > 0:
        yield cut
        cut = tag.rfind("-", 0, cut)
