"""Which tags to mirror: regular-expression allow/deny, version ranges, newest N, aliases.

Owns the rules and the decision, with a reason for every tag (``mirror tags`` shows them).
Versions are read with ``packaging`` (``2.1.106``, ``v2.1``; ``1.2.3-rc.1`` is a pre-release).
Ranges are PEP 440 specifiers (``">=2.1, <4"``, ``"==2.*"``, ``"~=2.1.0"``) or the npm/Cargo
spellings, translated to PEP 440 (``parse_range``): ``^1.2``, ``~1.2.3``, ``1.2.x``, ``*``,
``=1.2.3``, space-separated terms (``">=1.2 <2"``) and ``||`` between alternatives.
Pure: no I/O, no registry.

The seed's tagging scheme: full versions ``X.Y.Z`` never move; aliases ``X``, ``X.Y`` and
``latest`` move to the newest version below them. Following ``2.1`` means patch updates;
following ``2`` means minor updates too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from mirror.errors import ConfigError

# Full versions (X.Y.Z, optional leading v) name one build forever: once on the target they
# need no upstream check. Moving aliases (latest, 2, 2.1) are checked every run.
DEFAULT_IMMUTABLE = r"v?\d+\.\d+\.\d+"
LATEST = "latest"

# A range term: an operator (or none) and a version, blanks allowed between (">= 2.1", "2.x").
_TERM = re.compile(r"(?P<op>[<>=!~^]*)\s*(?P<version>[^\s,<>=!~^]*)")
_PEP440_OPERATORS = frozenset({"===", "==", "~=", "!=", "<=", ">=", "<", ">"})
_WILDCARDS = frozenset({"x", "X", "*"})  # npm writes 1.2.x, 1.2.X and 1.2.* alike


@dataclass(frozen=True, slots=True)
class TagRules:
    """The tag rules of a mirror entry (or of ``mirror sync``/``mirror tags`` flags).

    ``allow``/``deny``: regular expressions matched against the whole tag; deny wins.
    ``versions``: a range such as ``">=2.1, <4"`` or ``"^2.1 || ^3"`` (see ``parse_range``);
    tags that are not versions are left out.
    ``prereleases``: let ``1.2.3-rc.1`` and the like through a range or ``newest``.
    ``newest``: keep only the N highest full versions.
    ``aliases``: also keep the moving aliases (``2``, ``2.1``, ``latest``) whose newest
    version is selected, so a consumer following ``2.1`` finds it in the mirror.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    versions: str | None = None
    prereleases: bool = False
    newest: int | None = None
    aliases: bool = False

    def __post_init__(self) -> None:
        for kind, patterns in (("allow", self.allow), ("deny", self.deny)):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"tags.{kind}: bad regular expression {pattern!r}: {exc}"
                    ) from None
        if self.versions is not None:
            parse_range(self.versions)
        if self.newest is not None and self.newest < 1:
            raise ConfigError(f"tags.newest: must be at least 1, not {self.newest}")

    @property
    def selects_everything(self) -> bool:
        return self == TagRules()


@dataclass(frozen=True, slots=True)
class Decision:
    """One tag's fate and why."""

    tag: str
    selected: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of applying rules to a repository's tags, in a stable order."""

    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def tags(self) -> list[str]:
        return [d.tag for d in self.decisions if d.selected]

    def reason(self, tag: str) -> str:
        return next(d.reason for d in self.decisions if d.tag == tag)


def parse_version(tag: str) -> Version | None:
    """The version a tag names (``2.1.106``, ``v2.1``), or None (``latest``, ``1.22-alpine``)."""
    try:
        version = Version(tag)
    except InvalidVersion:
        return None
    return None if version.local else version  # 1.0+build is a build label, not an order


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


def is_full_version(tag: str, immutable: str = DEFAULT_IMMUTABLE) -> bool:
    """Whether ``tag`` names one build forever (default: ``X.Y.Z`` with an optional ``v``)."""
    return re.fullmatch(immutable, tag) is not None


def select(tags: Iterable[str], rules: TagRules) -> Selection:
    """Apply ``rules`` to ``tags``; every tag gets a decision and a reason."""
    tags = sorted(set(tags), key=_display_order)
    versions = {t: v for t in tags if (v := parse_version(t)) is not None}
    full = _full_versions(versions)
    version_range = parse_range(rules.versions) if rules.versions is not None else None
    decisions: dict[str, Decision] = {}

    def decide(tag: str, selected: bool, reason: str) -> None:
        decisions[tag] = Decision(tag, selected, reason)

    candidates: list[str] = []
    for tag in tags:
        denied = next((p for p in rules.deny if re.fullmatch(p, tag)), None)
        if denied is not None:
            decide(tag, False, f"denied by {denied!r}")
            continue
        if rules.allow and not any(re.fullmatch(p, tag) for p in rules.allow):
            decide(tag, False, "matches no allow pattern")
            continue
        version = versions.get(tag)
        if version_range is not None or rules.newest is not None:
            if version is None:
                decide(tag, False, "not a version")
                continue
            if version.is_prerelease and not rules.prereleases:
                decide(tag, False, "pre-release")
                continue
            if tag not in full:
                decide(tag, False, "a moving alias, not a full version")
                continue
            if version_range is not None and not version_range.contains(version, prereleases=True):
                decide(tag, False, f"outside {rules.versions}")
                continue
        candidates.append(tag)

    if rules.newest is not None:
        ranked = sorted(candidates, key=lambda t: versions[t], reverse=True)
        keep = set(ranked[: rules.newest])
        for rank, tag in enumerate(ranked, 1):
            if tag in keep:
                decide(tag, True, f"newest {rules.newest}: #{rank}")
            else:
                decide(tag, False, f"not among the newest {rules.newest} (#{rank})")
    else:
        for tag in candidates:
            decide(tag, True, _why(rules, tag))

    if rules.aliases:
        chosen = {t for t, d in decisions.items() if d.selected and t in full}
        for alias, target in _alias_targets(tags, versions, full, rules.prereleases).items():
            if target in chosen and not decisions[alias].selected:
                denied_alias = any(re.fullmatch(p, alias) for p in rules.deny)
                if not denied_alias:
                    decide(alias, True, f"alias of {target}")
    return Selection(tuple(decisions[t] for t in tags))


def newest_first(tags: Iterable[str]) -> list[str]:
    """Versions from the highest down, then other tags: the order to spend a tight pull budget
    in, so the newest builds arrive first when not everything fits."""

    def key(tag: str) -> tuple[int, object, str]:
        version = parse_version(tag)
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


def _why(rules: TagRules, tag: str) -> str:
    if rules.versions is not None:
        return f"in {rules.versions}"
    if rules.allow:
        return "allowed"
    return "all tags"


def _full_versions(versions: dict[str, Version]) -> set[str]:
    """Versions that are not an alias of another tag: ``2.1`` is an alias when ``2.1.x`` exists."""
    prefixes = {v.release[:k] for v in versions.values() for k in range(1, len(v.release))}
    return {t for t, v in versions.items() if v.release not in prefixes}


def _alias_targets(
    tags: Sequence[str], versions: dict[str, Version], full: set[str], prereleases: bool
) -> dict[str, str]:
    """Each moving alias and the full version it stands for now: ``2.1`` -> newest ``2.1.x``;
    ``latest`` -> the newest version of all."""
    stable = {
        t: v for t, v in versions.items() if t in full and (prereleases or not v.is_prerelease)
    }
    targets: dict[str, str] = {}
    for tag in tags:
        if tag in full:
            continue
        if tag == LATEST:
            pool = list(stable)
        elif tag in versions:
            prefix = versions[tag].release
            pool = [t for t, v in stable.items() if v.release[: len(prefix)] == prefix]
        else:
            continue
        if pool:
            targets[tag] = max(pool, key=lambda t: stable[t])
    return targets


def _display_order(tag: str) -> tuple[int, object, str]:
    version = parse_version(tag)
    if version is None:
        return (1, (), tag)
    return (0, version, tag)
