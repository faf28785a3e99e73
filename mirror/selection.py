"""Which tags to mirror: regular-expression allow/deny, variants, version ranges, newest N,
aliases.

Owns the rules and the decision, with a reason for every tag (``mirror tags`` shows them).
How a tag reads (version, variant, full or alias) is ``mirror.tagnames``'; ranges are PEP 440
specifiers (``">=2.1, <4"``, ``"==2.*"``, ``"~=2.1.0"``) or the npm/Cargo spellings,
translated to PEP 440 (``parse_range``): ``^1.2``, ``~1.2.3``, ``1.2.x``, ``*``, ``=1.2.3``,
space-separated terms (``">=1.2 <2"``) and ``||`` between alternatives. Pure: no I/O, no
registry.

The seed's tagging scheme: full versions ``X.Y.Z`` never move; aliases ``X``, ``X.Y`` and
``latest`` move to the newest version below them. Following ``2.1`` means patch updates;
following ``2`` means minor updates too. Docker Hub's official images repeat that scheme once
per variant: ``1.22-alpine`` follows ``1.22.5-alpine``, and a bare ``alpine`` is the alpine
variant's ``latest``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mirror.errors import ConfigError
from mirror.tagnames import (
    ALIAS,
    FULL,
    PRERELEASE,
    Kind,
    TagName,
    pinned_variants,
    read_tags,
    split_tag,
)
from mirror.tagnames import parse_version as parse_version  # re-exported: callers use it here

# Full versions (X.Y.Z, optional leading v) name one build forever: once on the target they
# need no upstream check. Moving aliases (latest, 2, 2.1) are checked every run.
DEFAULT_IMMUTABLE = r"v?\d+\.\d+\.\d+"
# In tags.variants, the tags without a variant (1.22.5, 1.22, latest). Not a glob: "<" and ">"
# cannot appear in a tag, so no variant is ever called that.
NO_VARIANT = "<none>"

# A range term: an operator (or none) and a version, blanks allowed between (">= 2.1", "2.x").
_TERM = re.compile(r"(?P<op>[<>=!~^]*)\s*(?P<version>[^\s,<>=!~^]*)")
_PEP440_OPERATORS = frozenset({"===", "==", "~=", "!=", "<=", ">=", "<", ">"})
_WILDCARDS = frozenset({"x", "X", "*"})  # npm writes 1.2.x, 1.2.X and 1.2.* alike
# A variant glob: what a tag may hold (letters, digits, _ . -) plus * ? and [...] classes.
_VARIANT_GLOB = re.compile(r"(?:[A-Za-z0-9_.*?-]|\[!?[A-Za-z0-9_.-]+\])+")
_MOVING = "a moving alias, not a full version"


@dataclass(frozen=True, slots=True)
class TagRules:
    """The tag rules of a mirror entry (or of ``mirror sync``/``mirror tags`` flags).

    ``allow``/``deny``: regular expressions matched against the whole tag; deny wins.
    ``variants``: shell-style globs on a tag's variant (``alpine`` for ``1.22-alpine`` and
    ``alpine``; ``alpine*``; ``NO_VARIANT`` for tags without one): only those variants' tags.
    Without it, a range or ``newest`` considers only the tags without a variant.
    ``versions``: a range such as ``">=2.1, <4"`` or ``"^2.1 || ^3"`` (see ``parse_range``);
    tags that are not versions are left out.
    ``prereleases``: let ``1.2.3-rc.1`` and the like through a range or ``newest``.
    ``newest``: keep only the N highest full versions of each variant.
    ``aliases``: also keep the moving aliases (``2``, ``2.1``, ``latest``; ``1.22-alpine``,
    ``alpine``) whose newest version is selected, so a consumer following ``2.1`` finds it.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    versions: str | None = None
    prereleases: bool = False
    newest: int | None = None
    aliases: bool = False
    variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind, patterns in (("allow", self.allow), ("deny", self.deny)):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"tags.{kind}: bad regular expression {pattern!r}: {exc}"
                    ) from None
        for pattern in self.variants:
            if pattern != NO_VARIANT and not _VARIANT_GLOB.fullmatch(pattern):
                raise ConfigError(
                    f"tags.variants: bad variant {pattern!r}: name one as it ends a tag "
                    '("alpine" for 1.22-alpine), or a shell-style glob ("alpine*"), or '
                    f'"{NO_VARIANT}" for the tags without a variant'
                )
        if self.versions is not None:
            parse_range(self.versions)
        if self.newest is not None and self.newest < 1:
            raise ConfigError(f"tags.newest: must be at least 1, not {self.newest}")

    @property
    def selects_everything(self) -> bool:
        return self == TagRules()


@dataclass(frozen=True, slots=True)
class Decision:
    """One tag's fate and why, with how the tag reads (see ``mirror.tagnames.TagName``)."""

    tag: str
    selected: bool
    reason: str
    version: str | None = None  # as written: 1.22.5 for 1.22.5-alpine
    variant: str | None = None
    kind: Kind = "other"


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of applying rules to a repository's tags, in a stable order.

    ``pinned_variants``: the variants whose full versions may be trusted like plain ones (see
    ``is_full_version``).
    """

    decisions: tuple[Decision, ...] = field(default_factory=tuple)
    pinned_variants: frozenset[str] = frozenset()

    @property
    def tags(self) -> list[str]:
        return [d.tag for d in self.decisions if d.selected]

    def reason(self, tag: str) -> str:
        return next(d.reason for d in self.decisions if d.tag == tag)


@dataclass(frozen=True, slots=True)
class VersionRange:
    """A parsed ``tags.versions``: PEP 440 specifier sets, any one of which admits a version."""

    text: str
    alternatives: tuple[SpecifierSet, ...]

    def contains(self, version: Version, prereleases: bool | None = None) -> bool:
        """Whether any alternative admits ``version``; ``prereleases`` as in ``SpecifierSet``."""
        return any(s.contains(version, prereleases=prereleases) for s in self.alternatives)


def parse_range(text: str) -> VersionRange:
    """The range ``text`` spells, in PEP 440 or npm/Cargo syntax; ConfigError if in neither.

    ``||`` separates alternatives. Within one, terms are separated by commas or blanks and all
    must hold. PEP 440 terms are kept as written; the others are translated:

    - ``^1.2`` -> ``>=1.2, <2``; ``^0.3`` -> ``>=0.3, <0.4``: the left-most non-zero
      component is fixed, as npm and Cargo have it.
    - ``~1.2.3`` and ``~1.2`` -> ``>=1.2.3, <1.3`` and ``>=1.2, <1.3``; ``~1`` -> ``>=1, <2``.
    - ``1.2.x``, ``1.2.X``, ``1.2.*`` -> ``==1.2.*``; ``*`` and ``x`` -> any version.
    - ``=1.2.3`` -> ``==1.2.3``.

    A bare version (``1.2``) is refused: npm reads it as ``1.2.x``, Cargo as ``^1.2``.
    """
    alternatives = text.split("||")
    try:
        if len(alternatives) > 1 and not all(a.strip() for a in alternatives):
            raise ValueError("empty alternative")  # npm reads it as "any": surely a slip here
        sets = tuple(SpecifierSet(_to_pep440(a)) for a in alternatives)
    except ValueError:  # InvalidSpecifier and InvalidVersion are ValueErrors too
        raise ConfigError(
            f"tags.versions: bad version range {text!r}; write it like "
            '">=2.1, <4" or "==2.*" (PEP 440), or "^2.1 || ~3.0.1", ">=2.1 <4", "2.x", '
            '"=2.1.3" (npm, Cargo)'
        ) from None
    return VersionRange(text, sets)


def _to_pep440(alternative: str) -> str:
    """One ``||`` alternative as a PEP 440 specifier string ("" admits any version)."""
    terms = (_term(m["op"], m["version"]) for m in _TERM.finditer(alternative) if m[0].strip())
    return ", ".join(t for t in terms if t)


def _term(op: str, version: str) -> str:
    """One term in PEP 440 ("" for any version); ValueError when it is in neither syntax."""
    if op in ("^", "~"):
        return _caret_or_tilde(op, version)
    prefix, wildcard = _strip_wildcards(version)
    if op == "=" or (op == "" and wildcard):  # npm: =1.2.3 is exact, 1.2.x a wildcard
        op = "=="
    if wildcard and op == "==" and not prefix:
        return ""  # *, x
    if wildcard and op in ("==", "!=") and prefix:
        version = f"{prefix}.*"
    if op not in _PEP440_OPERATORS:
        # "" too: a bare 1.2 is 1.2.x to npm and ^1.2 to Cargo, so neither is guessed.
        raise ValueError(f"operator {op!r}")
    return f"{op}{version}"


def _caret_or_tilde(op: str, version: str) -> str:
    """``^V`` or ``~V`` as ``>=V, <U``: U raises the last component that V keeps fixed."""
    lower = Version(_strip_wildcards(version)[0])  # ^1.x is ^1, as in npm
    release = lower.release
    if op == "^":
        # The left-most non-zero component, or the last one given when all are zero (^0.0).
        fixed = next((i for i, n in enumerate(release) if n), len(release) - 1) + 1
    else:
        fixed = min(len(release), 2)  # ~1.2.3 and ~1.2 allow patches, ~1 minor versions
    upper = (*release[: fixed - 1], release[fixed - 1] + 1)
    return f">={lower}, <{'.'.join(map(str, upper))}"


def _strip_wildcards(version: str) -> tuple[str, bool]:
    """``1.2.x`` -> ``("1.2", True)``; ``1.x.x`` -> ``("1", True)``; ``*`` -> ``("", True)``."""
    parts = version.split(".")
    kept = list(parts)
    while kept and kept[-1] in _WILDCARDS:
        kept.pop()
    return ".".join(kept), len(kept) < len(parts)


def is_full_version(
    tag: str, immutable: str = DEFAULT_IMMUTABLE, pinned: frozenset[str] = frozenset()
) -> bool:
    """Whether ``tag`` names one build forever: it matches ``immutable`` (default: ``X.Y.Z``
    with an optional ``v``), or it is ``VERSION-VARIANT`` whose version does and whose variant
    is in ``pinned`` (``Selection.pinned_variants``).

    So ``1.22.5-alpine3.20`` and ``1.22.5-bookworm`` are trusted as ``1.22.5`` is: each pins
    both Go and the distribution release. ``1.22.5-alpine`` is not while ``alpine3.20`` exists
    beside it: it moves to the next Alpine release when Go 1.22.5 is rebuilt on one. Kept on
    the safe side, where a wrong guess costs one HEAD (no pull) and never leaves a stale copy:
    ``16.4`` (postgres's full version, but rebuilt in place) and ``16.4-alpine3.20`` do not
    match ``X.Y.Z``; a bare ``alpine3.20`` names no version; and without the tags list
    (``pinned`` empty, a single-tag sync) no variant tag is trusted.
    """
    if re.fullmatch(immutable, tag) is not None:
        return True
    text, _, variant = split_tag(tag)
    return (
        variant is not None
        and variant in pinned
        and text is not None
        and re.fullmatch(immutable, text) is not None
    )


def select(tags: Iterable[str], rules: TagRules) -> Selection:
    """Apply ``rules`` to ``tags``; every tag gets a decision and a reason.

    Variants first: with ``rules.variants`` only those variants' tags are in play; without
    them a range or ``newest`` considers the plain line only (tags without a variant). Then,
    within each variant on its own: the range, the newest N, and the aliases.
    """
    names = read_tags(tags)
    order = sorted(names.values(), key=_display_order)
    version_range = parse_range(rules.versions) if rules.versions is not None else None
    by_version = version_range is not None or rules.newest is not None
    decisions: dict[str, Decision] = {}

    def decide(name: TagName, selected: bool, reason: str) -> None:
        decisions[name.tag] = Decision(
            name.tag, selected, reason, name.version_text, name.variant, name.kind
        )

    candidates: list[TagName] = []
    for name in order:
        tag, version = name.tag, name.version
        denied = next((p for p in rules.deny if re.fullmatch(p, tag)), None)
        if denied is not None:
            decide(name, False, f"denied by {denied!r}")
            continue
        if rules.allow and not any(re.fullmatch(p, tag) for p in rules.allow):
            decide(name, False, "matches no allow pattern")
            continue
        if rules.variants and not _variant_matches(name.variant, rules.variants):
            decide(name, False, f"{_variant_of(name)} not selected")
            continue
        if not rules.variants and by_version and name.variant is not None:
            decide(name, False, f"{_variant_of(name)} not selected")
            continue
        if by_version:
            if version is None:
                decide(name, False, _MOVING if name.kind == ALIAS else "not a version")
                continue
            if name.kind == PRERELEASE and not rules.prereleases:
                decide(name, False, "pre-release")
                continue
            if name.kind == ALIAS:
                decide(name, False, _MOVING)
                continue
            if version_range is not None and not version_range.contains(version, prereleases=True):
                decide(name, False, f"outside {rules.versions}")
                continue
        candidates.append(name)

    if rules.newest is not None:
        lines: dict[str | None, list[TagName]] = {}
        for name in candidates:
            lines.setdefault(name.variant, []).append(name)
        for variant, line in lines.items():
            ranked = sorted(line, key=_version, reverse=True)
            of = "" if variant is None else f" of {variant}"
            for rank, name in enumerate(ranked, 1):
                if rank <= rules.newest:
                    decide(name, True, f"newest {rules.newest}{of}: #{rank}")
                else:
                    decide(name, False, f"not among the newest {rules.newest}{of} (#{rank})")
    else:
        for name in candidates:
            decide(name, True, _why(rules, name))

    if rules.aliases:
        chosen = {t for t, d in decisions.items() if d.selected and names[t].kind == FULL}
        for alias, target in _alias_targets(names).items():
            if target in chosen and not decisions[alias].selected:
                denied_alias = any(re.fullmatch(p, alias) for p in rules.deny)
                if not denied_alias:
                    decide(names[alias], True, f"alias of {target}")
    pinned = pinned_variants(n.variant for n in names.values() if n.variant is not None)
    return Selection(tuple(decisions[n.tag] for n in order), pinned)


def newest_first(tags: Iterable[str]) -> list[str]:
    """Versions from the highest down (``1.22.5-alpine`` as ``1.22.5``), then other tags: the
    order to spend a tight pull budget in, so the newest builds arrive first when not
    everything fits."""

    def key(tag: str) -> tuple[int, object, str]:
        version = split_tag(tag)[1]
        return (1, (), tag) if version is None else (0, _Descending(version), tag)

    return sorted(tags, key=key)


class _Descending:
    __slots__ = ("version",)

    def __init__(self, version: Version) -> None:
        self.version = version

    def __lt__(self, other: _Descending) -> bool:
        return self.version > other.version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.version == other.version

    __hash__ = None  # type: ignore[assignment]


def _variant_matches(variant: str | None, patterns: tuple[str, ...]) -> bool:
    if variant is None:
        return NO_VARIANT in patterns
    return any(p != NO_VARIANT and fnmatchcase(variant, p) for p in patterns)


def _why(rules: TagRules, name: TagName) -> str:
    if rules.versions is not None:
        return f"in {rules.versions}"
    if rules.allow:
        return "allowed"
    if rules.variants:
        return _variant_of(name)
    return "all tags"


def _variant_of(name: TagName) -> str:
    return f"variant {name.variant or NO_VARIANT}"  # as tags.variants would select it


def _version(name: TagName) -> Version:
    assert name.version is not None  # only versions are ranked
    return name.version


def _alias_targets(names: dict[str, TagName]) -> dict[str, str]:
    """Each moving alias and the full version it stands for now, within its variant:
    ``2.1`` -> the newest ``2.1.x``; ``latest`` -> the newest plain version; ``1.22-alpine``
    -> the newest ``1.22.x-alpine``; ``alpine`` -> the newest alpine version."""
    newest: dict[tuple[str | None, tuple[int, ...]], TagName] = {}
    for name in names.values():
        if name.kind != FULL:
            continue
        release = _version(name).release
        for k in range(len(release) + 1):  # every prefix, () for latest and bare variants
            key = (name.variant, release[:k])
            best = newest.get(key)
            if best is None or _version(name) > _version(best):
                newest[key] = name
    targets: dict[str, str] = {}
    for name in names.values():
        if name.kind != ALIAS:
            continue
        prefix = name.version.release if name.version is not None else ()
        target = newest.get((name.variant, prefix))
        if target is not None:
            targets[name.tag] = target.tag
    return targets


def _display_order(name: TagName) -> tuple[bool, str, int, object, str]:
    """The plain line first, then each variant; versions ascending, then the other tags."""
    variant = (name.variant is not None, name.variant or "")
    if name.version is None:
        return (*variant, 1, (), name.tag)
    return (*variant, 0, name.version, name.tag)
