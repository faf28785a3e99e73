"""Tag rules on the seed's scheme: full versions, moving aliases, and tags that are neither."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from mirror.errors import ConfigError
from mirror.selection import (
    NO_VARIANT,
    TagRules,
    is_full_version,
    newest_first,
    parse_range,
    parse_version,
    select,
)

SEED_TAGS = [
    "2.1.106",
    "2.1.114",
    "2.2.11",
    "3.0.42",  # full versions
    "2",
    "2.1",
    "2.2",
    "3",
    "3.0",
    "latest",  # moving aliases
    "2.2.12-rc.1",
    "edge",
    "windowsservercore",  # a pre-release and non-versions
]


def selected(rules: TagRules, tags: list[str] = SEED_TAGS) -> set[str]:
    return set(select(tags, rules).tags)


def test_no_rules_select_every_tag() -> None:
    assert selected(TagRules()) == set(SEED_TAGS)


def test_a_range_selects_full_versions_only() -> None:
    assert selected(TagRules(versions=">=2.1, <3")) == {"2.1.106", "2.1.114", "2.2.11"}


def test_aliases_follow_the_versions_they_stand_for() -> None:
    # 2 -> 2.2.11 and 2.1 -> 2.1.114 and 2.2 -> 2.2.11 are selected; 3 and latest -> 3.0.42 not.
    assert selected(TagRules(versions=">=2.1, <3", aliases=True)) == {
        "2.1.106",
        "2.1.114",
        "2.2.11",
        "2",
        "2.1",
        "2.2",
    }


def test_following_a_minor_line() -> None:
    assert selected(TagRules(versions="==2.1.*", aliases=True)) == {"2.1.106", "2.1.114", "2.1"}


def test_an_alias_whose_newest_version_is_left_out_is_left_out() -> None:
    # 2.1 stands for 2.1.114; pinning 2.1.106 alone must not drag 2.1 (a different build) in.
    assert selected(TagRules(versions="==2.1.106", aliases=True)) == {"2.1.106"}


def test_latest_goes_with_the_newest_version() -> None:
    assert "latest" in selected(TagRules(newest=1, aliases=True))
    assert selected(TagRules(newest=1)) == {"3.0.42"}


def test_newest_n_counts_full_versions() -> None:
    assert selected(TagRules(newest=2)) == {"3.0.42", "2.2.11"}


def test_prereleases_only_when_asked() -> None:
    assert "2.2.12-rc.1" not in selected(TagRules(versions=">=2"))
    assert "2.2.12-rc.1" in selected(TagRules(versions=">=2", prereleases=True))


def test_deny_wins_over_allow_and_over_aliases() -> None:
    rules = TagRules(allow=(r"2(\..*)?",), deny=(r"2\.1(\..*)?",), aliases=True)
    assert selected(rules) == {"2", "2.2", "2.2.11", "2.2.12-rc.1"}
    assert "2" not in selected(TagRules(versions=">=2", aliases=True, deny=("2",)))


def test_patterns_match_the_whole_tag() -> None:
    assert selected(TagRules(allow=("2",))) == {"2"}


def test_leading_v_is_tolerated() -> None:
    assert selected(TagRules(versions=">=1.2"), ["v1.1.0", "v1.2.0", "v1.3.1"]) == {
        "v1.2.0",
        "v1.3.1",
    }


def test_every_tag_has_a_reason() -> None:
    selection = select(SEED_TAGS, TagRules(versions=">=2.1, <3", aliases=True))
    reasons = {d.tag: d.reason for d in selection.decisions}
    assert reasons["3.0.42"] == "outside >=2.1, <3"
    assert reasons["2.1"] == "alias of 2.1.114"
    assert reasons["edge"] == "not a version"
    assert reasons["2.2.12-rc.1"] == "pre-release"
    assert len(selection.decisions) == len(SEED_TAGS)


@pytest.mark.parametrize(
    "rules",
    [{"versions": "~>2.1"}, {"allow": ("(",)}, {"deny": ("[",)}, {"newest": 0}],
)
def test_bad_rules_are_config_errors(rules: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TagRules(**rules)  # type: ignore[arg-type]


def test_full_versions_are_immutable_aliases_are_not() -> None:
    assert is_full_version("2.1.106") and is_full_version("v1.2.3")
    assert not any(is_full_version(t) for t in ("2", "2.1", "latest", "2.1.106-rc.1"))


def test_parse_version() -> None:
    assert parse_version("v2.1") is not None and parse_version("latest") is None
    assert parse_version("1.22-alpine") is None and parse_version("1.0+build") is None


@given(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True), max_size=40))
def test_selection_is_a_subset_with_one_decision_per_tag(tags: list[str]) -> None:
    for rules in (TagRules(), TagRules(newest=3, aliases=True), TagRules(versions=">=1")):
        selection = select(tags, rules)
        assert set(selection.tags) <= set(tags)
        assert sorted(d.tag for d in selection.decisions) == sorted(set(tags))


# Ranges as npm, Cargo and semver tools spell them, beside PEP 440. A library's tags: full
# versions on three major lines, a pre-release, and moving aliases (never selected by a range).
LIBRARY_TAGS = [
    "0.0.3",
    "0.0.4",
    "0.3.0",
    "0.3.4",
    "0.4.0",
    "1.21.0",
    "1.21.13",
    "1.22.0",
    "1.22.5",
    "1.23.0",
    "2.0.0-rc.1",
    "2.0.1",
    "latest",
    "1.22",
    "1",
]
ONE_X = {"1.21.0", "1.21.13", "1.22.0", "1.22.5", "1.23.0"}
EVERY_RELEASE = {"0.0.3", "0.0.4", "0.3.0", "0.3.4", "0.4.0", *ONE_X, "2.0.1"}


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        # caret: the left-most non-zero component stays fixed
        ("^1.22", {"1.22.0", "1.22.5", "1.23.0"}),
        ("^1.22.5", {"1.22.5", "1.23.0"}),
        ("^1", ONE_X),
        ("^0.3", {"0.3.0", "0.3.4"}),
        ("^0.3.1", {"0.3.4"}),
        ("^0.0.3", {"0.0.3"}),
        ("^v1.22", {"1.22.0", "1.22.5", "1.23.0"}),
        # tilde: patch updates, or minor ones when only the major is given
        ("~1.22.1", {"1.22.5"}),
        ("~1.22", {"1.22.0", "1.22.5"}),
        ("~1", ONE_X),
        ("~0.3", {"0.3.0", "0.3.4"}),
        # wildcards
        ("1.22.x", {"1.22.0", "1.22.5"}),
        ("1.22.*", {"1.22.0", "1.22.5"}),
        ("1.22.X", {"1.22.0", "1.22.5"}),
        ("1.x", ONE_X),
        ("*", EVERY_RELEASE),
        ("x", EVERY_RELEASE),
        # exact, space-separated terms, and PEP 440 terms among them
        ("=1.22.5", {"1.22.5"}),
        (">=1.22 <2", {"1.22.0", "1.22.5", "1.23.0"}),
        (">= 1.22 < 2", {"1.22.0", "1.22.5", "1.23.0"}),
        (">=1.21.1 <1.23 !=1.22.0", {"1.21.13", "1.22.5"}),
        ("^1.21 <1.22", {"1.21.0", "1.21.13"}),
        # PEP 440, as before
        (">=1.22, <2", {"1.22.0", "1.22.5", "1.23.0"}),
        ("==1.*", ONE_X),
        ("~=1.22.0", {"1.22.0", "1.22.5"}),
        ("!=1.22.5, ==1.22.*", {"1.22.0"}),
        ("", EVERY_RELEASE),
    ],
)
def test_each_range_spelling_selects_exactly_its_versions(
    versions: str, expected: set[str]
) -> None:
    assert selected(TagRules(versions=versions), LIBRARY_TAGS) == expected


@pytest.mark.parametrize(
    ("npm", "pep440"),
    [
        ("^1.22", ">=1.22, <2"),
        ("^1.22.5", ">=1.22.5, <2"),
        ("^0.3", ">=0.3, <0.4"),
        ("^0.3.1", ">=0.3.1, <0.4"),
        ("^0.0.3", ">=0.0.3, <0.0.4"),
        ("^1", ">=1, <2"),
        ("^0", ">=0, <1"),
        ("^0.0", ">=0.0, <0.1"),
        ("^1.x", ">=1, <2"),
        ("~1.22.1", ">=1.22.1, <1.23"),
        ("~1.22", ">=1.22, <1.23"),
        ("~1", ">=1, <2"),
        ("1.22.x", "==1.22.*"),
        ("1.x.x", "==1.*"),
        ("!=1.22.x", "!=1.22.*"),
        ("*", ""),
        ("=1.2.3", "==1.2.3"),
        ("^v1.2", ">=1.2, <2"),
        (">=1.2 <2", ">=1.2, <2"),
        ("~=2.1.0", "~=2.1.0"),  # PEP 440's compatible release, not npm's tilde
    ],
)
def test_npm_spellings_translate_to_pep440(npm: str, pep440: str) -> None:
    assert parse_range(npm).alternatives == (SpecifierSet(pep440),)


@pytest.mark.parametrize(
    ("npm", "pep440"),
    [
        ("^1.22", ">=1.22, <2"),
        ("~1.22.1", "~=1.22.1"),
        ("1.22.x", "==1.22.*"),
        ("=1.22.5", "==1.22.5"),
        (">=1.21.1 <1.23", ">=1.21.1, <1.23"),
        ("*", ""),
    ],
)
def test_npm_and_pep440_spellings_of_a_range_select_the_same_tags(npm: str, pep440: str) -> None:
    assert selected(TagRules(versions=npm), LIBRARY_TAGS) == selected(
        TagRules(versions=pep440), LIBRARY_TAGS
    )


def test_alternatives_are_a_union() -> None:
    assert selected(TagRules(versions="^1.22 || ^2"), LIBRARY_TAGS) == {
        "1.22.0",
        "1.22.5",
        "1.23.0",
        "2.0.1",
    }
    assert selected(TagRules(versions="~0.3 || =1.21.0 || >=2, <3"), LIBRARY_TAGS) == {
        "0.3.0",
        "0.3.4",
        "1.21.0",
        "2.0.1",
    }
    assert selected(TagRules(versions="^0.4 || ^0.4"), LIBRARY_TAGS) == {"0.4.0"}


def test_alternatives_keep_aliases_and_reasons() -> None:
    selection = select(LIBRARY_TAGS, TagRules(versions="~1.22 || ^2", aliases=True))
    assert set(selection.tags) == {"1.22.0", "1.22.5", "1.22", "2.0.1", "latest"}
    assert selection.reason("1.22.5") == "in ~1.22 || ^2"
    assert selection.reason("1.23.0") == "outside ~1.22 || ^2"


def test_prereleases_in_npm_ranges_follow_pep440() -> None:
    # A caret's upper bound leaves out the next major's pre-releases, as npm's does.
    with_rc = TagRules(versions="^1.22 || ^2", prereleases=True)
    assert "2.0.0-rc.1" not in selected(with_rc, LIBRARY_TAGS)
    assert "2.0.0-rc.1" not in selected(TagRules(versions="^2.0.0-rc.1"), LIBRARY_TAGS)
    assert selected(TagRules(versions="^2.0.0-rc.1", prereleases=True), LIBRARY_TAGS) == {
        "2.0.0-rc.1",
        "2.0.1",
    }
    assert "2.0.0-rc.1" in selected(TagRules(versions="2.x", prereleases=True), LIBRARY_TAGS)


@pytest.mark.parametrize(
    "versions",
    [
        "^",
        "~",
        "1.2.x.y",
        "~>",
        "~>1.2",  # Ruby's pessimistic operator
        ">>1",
        "=>1",
        ">=1.x",  # npm reads it as >=1.0.0; spell that out
        "1.2",  # bare: 1.2.x to npm, ^1.2 to Cargo
        "1.2 - 2.0",  # npm hyphen ranges are not taken
        "^1 ||",
        "||",
        "^1 | ^2",
        "^*",
        "!=*",
        "~=2",
        "latest",
    ],
)
def test_garbage_ranges_are_config_errors_naming_tags_versions(versions: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TagRules(versions=versions)
    message = str(caught.value)
    assert message.startswith(f"tags.versions: bad version range {versions!r}")
    assert '">=2.1, <4"' in message and '"^2.1' in message  # both spellings shown
    assert "\n" not in message


@given(st.text(alphabet="0123456789.vxX*^~=<>!|, -rc", max_size=24))
def test_any_text_is_a_range_or_a_config_error(text: str) -> None:
    try:
        version_range = parse_range(text)
    except ConfigError:
        return
    assert version_range.alternatives


# Docker Hub's official images, as they tag: each version again per variant, a bare variant
# as that variant's latest, pre-releases with and without a variant, and Windows variants.
GOLANG_TAGS = [
    "1.23rc2",
    "1.23rc2-alpine",
    "1.23rc2-bookworm",
    "1.22.5",
    "1.22.5-alpine3.20",
    "1.22.5-alpine3.19",
    "1.22.5-alpine",
    "1.22.5-bookworm",
    "1.22.5-windowsservercore-ltsc2022",
    "1.22.5-windowsservercore",
    "1.22.4",
    "1.22.4-alpine3.20",
    "1.22.4-alpine",
    "1.22.4-bookworm",
    "1.22",
    "1.22-alpine3.20",
    "1.22-alpine",
    "1.22-bookworm",
    "1.22-windowsservercore-ltsc2022",
    "1.21.12",
    "1.21.12-alpine3.20",
    "1.21.12-alpine",
    "1.21.12-bookworm",
    "1.21",
    "1.21-alpine",
    "1.21-bookworm",
    "1",
    "1-alpine",
    "1-bookworm",
    "latest",
    "alpine",
    "alpine3.20",
    "alpine3.19",
    "bookworm",
    "windowsservercore-ltsc2022",
    "windowsservercore",
    "sha256-" + "a" * 64 + ".sig",  # cosign's: carried with their subjects, never versions
    "sha256-" + "b" * 64,
]
# postgres: the full version has two parts (16.4; there is no 16.4.x) and 16 is its alias.
POSTGRES_TAGS = [
    "15.8",
    "15",
    "15.8-alpine",
    "15-alpine",
    "16.3",
    "16.4",
    "16",
    "16.4-alpine",
    "16.3-alpine",
    "16-alpine",
    "16.4-bookworm",
    "16-bookworm",
    "17rc1",
    "17rc1-alpine",
    "17.0",
    "17",
    "17.0-alpine",
    "17-alpine",
    "17.0-bookworm",
    "17-bookworm",
    "latest",
    "alpine",
    "bookworm",
]


def golang(**rules: object) -> set[str]:
    return selected(TagRules(**rules), GOLANG_TAGS)  # type: ignore[arg-type]


def postgres(**rules: object) -> set[str]:
    return selected(TagRules(**rules), POSTGRES_TAGS)  # type: ignore[arg-type]


def test_each_tag_reads_as_version_variant_and_kind() -> None:
    decisions = {d.tag: d for d in select(GOLANG_TAGS, TagRules()).decisions}
    read = {t: (d.version, d.variant, d.kind) for t, d in decisions.items()}
    assert read["1.22.5-alpine3.20"] == ("1.22.5", "alpine3.20", "full")
    assert read["1.22.5-alpine"] == ("1.22.5", "alpine", "full")
    assert read["1.22-alpine"] == ("1.22", "alpine", "alias")
    assert read["1-alpine"] == ("1", "alpine", "alias")
    assert read["alpine"] == (None, "alpine", "alias")  # the variant's latest
    assert read["alpine3.20"] == (None, "alpine3.20", "alias")
    assert read["1.22.5"] == ("1.22.5", None, "full")
    assert read["1.22"] == ("1.22", None, "alias")
    assert read["latest"] == (None, None, "alias")
    assert read["1.23rc2"] == ("1.23rc2", None, "pre-release")
    assert read["1.23rc2-alpine"] == ("1.23rc2", "alpine", "pre-release")
    assert read["1.22.5-windowsservercore-ltsc2022"] == (
        "1.22.5",
        "windowsservercore-ltsc2022",
        "full",
    )
    assert read["sha256-" + "a" * 64 + ".sig"] == (None, None, "other")
    assert read["sha256-" + "b" * 64] == (None, None, "other")


def test_semver_and_pep440_prerelease_suffixes_stay_prereleases() -> None:
    tags = ["1.2.3", "1.2.4-rc.1", "1.2.4-beta", "2.0-alpha", "1.3.0-rc.1-alpine", "1.2.3-alpine"]
    read = {d.tag: (d.version, d.variant, d.kind) for d in select(tags, TagRules()).decisions}
    assert read["1.2.4-rc.1"] == ("1.2.4-rc.1", None, "pre-release")
    assert read["1.2.4-beta"] == ("1.2.4-beta", None, "pre-release")
    assert read["2.0-alpha"] == ("2.0-alpha", None, "pre-release")
    assert read["1.3.0-rc.1-alpine"] == ("1.3.0-rc.1", "alpine", "pre-release")


def test_a_version_is_full_when_no_tag_of_its_variant_extends_it() -> None:
    kinds = {d.tag: d.kind for d in select(POSTGRES_TAGS, TagRules()).decisions}
    assert {t for t, k in kinds.items() if k == "full"} == {
        "15.8",
        "15.8-alpine",
        "16.3",
        "16.4",
        "16.3-alpine",
        "16.4-alpine",
        "16.4-bookworm",
        "17.0",
        "17.0-alpine",
        "17.0-bookworm",
    }
    assert kinds["16"] == kinds["16-alpine"] == kinds["bookworm"] == "alias"
    assert kinds["17rc1-alpine"] == "pre-release"


def test_without_variants_version_rules_see_only_the_plain_line() -> None:
    assert golang(versions=">=1.21") == {"1.21.12", "1.22.4", "1.22.5"}
    assert golang(versions=">=1.22", aliases=True) == {"1.22.4", "1.22.5", "1.22", "1", "latest"}
    reasons = {d.tag: d.reason for d in select(GOLANG_TAGS, TagRules(versions=">=1")).decisions}
    assert reasons["1.22.5-alpine"] == "variant alpine not selected"
    assert reasons["alpine"] == "variant alpine not selected"
    assert reasons["sha256-" + "a" * 64 + ".sig"] == "not a version"


def test_no_rules_and_regexes_alone_still_see_every_tag() -> None:
    assert golang() == set(GOLANG_TAGS)
    assert golang(allow=(r".*-alpine",)) == {t for t in GOLANG_TAGS if t.endswith("-alpine")}


def test_one_variant_with_its_aliases() -> None:
    assert golang(variants=("alpine",), versions=">=1.22", aliases=True) == {
        "1.22.4-alpine",
        "1.22.5-alpine",
        "1.22-alpine",  # -> 1.22.5-alpine
        "1-alpine",  # -> 1.22.5-alpine
        "alpine",  # the variant's latest -> 1.22.5-alpine
    }


def test_a_variant_alone_selects_every_tag_of_it() -> None:
    assert golang(variants=("bookworm",)) == {
        "1.23rc2-bookworm",
        "1.22.5-bookworm",
        "1.22.4-bookworm",
        "1.22-bookworm",
        "1.21.12-bookworm",
        "1.21-bookworm",
        "1-bookworm",
        "bookworm",
    }


def test_several_variants_and_globs() -> None:
    assert golang(variants=("alpine3.*",), versions="==1.22.*") == {
        "1.22.5-alpine3.20",
        "1.22.5-alpine3.19",
        "1.22.4-alpine3.20",
    }
    assert golang(variants=("alpine*", "bookworm"), newest=1) == {
        "1.22.5-alpine",
        "1.22.5-alpine3.20",
        "1.22.5-alpine3.19",
        "1.22.5-bookworm",
    }
    assert golang(variants=("windowsservercore-*",), versions=">=1.22", aliases=True) == {
        "1.22.5-windowsservercore-ltsc2022",
        "1.22-windowsservercore-ltsc2022",
        "windowsservercore-ltsc2022",
    }
    # A glob matches the whole variant: alpine is not alpine3.20.
    assert golang(variants=("alpine",), versions="==1.22.5") == {"1.22.5-alpine"}


def test_the_plain_line_beside_a_variant() -> None:
    assert golang(variants=(NO_VARIANT, "alpine"), versions="==1.22.5", aliases=True) == {
        "1.22.5",
        "1.22",
        "1",
        "latest",
        "1.22.5-alpine",
        "1.22-alpine",
        "1-alpine",
        "alpine",
    }
    assert NO_VARIANT == "<none>"


def test_newest_counts_within_each_variant() -> None:
    selection = select(GOLANG_TAGS, TagRules(variants=("alpine", "bookworm"), newest=2))
    assert set(selection.tags) == {
        "1.22.5-alpine",
        "1.22.4-alpine",
        "1.22.5-bookworm",
        "1.22.4-bookworm",
    }
    assert selection.reason("1.22.5-alpine") == "newest 2 of alpine: #1"
    assert selection.reason("1.21.12-bookworm") == "not among the newest 2 of bookworm (#3)"


def test_an_alias_follows_the_newest_version_of_its_own_variant() -> None:
    # 1.22.5-alpine3.19 is the newest of alpine3.19, but 1.22-alpine3.20 only follows 3.20.
    assert golang(variants=("alpine3.*",), versions="==1.22.4", aliases=True) == {
        "1.22.4-alpine3.20"
    }
    assert golang(variants=("alpine3.*",), versions="==1.22.5", aliases=True) == {
        "1.22.5-alpine3.20",
        "1.22.5-alpine3.19",
        "1.22-alpine3.20",
        "alpine3.20",
        "alpine3.19",
    }


def test_prereleases_stay_apart_within_a_variant() -> None:
    assert golang(variants=("alpine",), versions=">=1.23.0a0") == set()
    assert golang(variants=("alpine",), versions=">=1.23.0a0", prereleases=True) == {
        "1.23rc2-alpine"
    }
    # A pre-release is never what an alias points to.
    assert "alpine" not in golang(variants=("alpine",), newest=1, prereleases=True, aliases=True)


def test_postgres_full_versions_have_no_patch() -> None:
    assert postgres(versions=">=16") == {"16.3", "16.4", "17.0"}
    assert postgres(versions=">=16", aliases=True) == {"16.3", "16.4", "16", "17.0", "17", "latest"}
    assert postgres(versions="^16", variants=("alpine",), aliases=True) == {
        "16.3-alpine",
        "16.4-alpine",
        "16-alpine",
    }
    assert postgres(newest=1, variants=("alpine", "bookworm"), aliases=True) == {
        "17.0-alpine",
        "17-alpine",
        "alpine",
        "17.0-bookworm",
        "17-bookworm",
        "bookworm",
    }


def test_deny_still_wins_over_variants_and_aliases() -> None:
    assert golang(variants=("alpine",), versions=">=1.22", aliases=True, deny=("alpine",)) == {
        "1.22.4-alpine",
        "1.22.5-alpine",
        "1.22-alpine",
        "1-alpine",
    }


@pytest.mark.parametrize("variant", ["", " ", "alp ine", "alpine[", "alpine/3", "<none", "a:b"])
def test_bad_variants_are_one_line_config_errors(variant: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TagRules(variants=(variant,))
    message = str(caught.value)
    assert message.startswith(f"tags.variants: bad variant {variant!r}")
    assert "\n" not in message


def test_variant_tags_whose_variant_is_pinned_are_immutable_like_their_version() -> None:
    pinned = select(GOLANG_TAGS, TagRules()).pinned_variants
    assert {"alpine3.20", "alpine3.19", "bookworm", "windowsservercore-ltsc2022"} <= pinned
    assert "alpine" not in pinned and "windowsservercore" not in pinned
    assert is_full_version("1.22.5-alpine3.20", pinned=pinned)
    assert is_full_version("1.22.5-bookworm", pinned=pinned)
    # alpine floats to the next Alpine release; alone, a tag's variant is never trusted.
    assert not is_full_version("1.22.5-alpine", pinned=pinned)
    assert not is_full_version("1.22.5-alpine3.20")
    # Conservative: versions without a patch, bare variants and pre-releases are not fixed.
    postgres_pinned = select(POSTGRES_TAGS, TagRules()).pinned_variants
    for tag in ("16.4", "16.4-bookworm", "alpine3.20", "bookworm", "1.23rc2-alpine3.20"):
        assert not is_full_version(tag, pinned=postgres_pinned | pinned), tag


def test_newest_first_reads_the_version_of_a_variant_tag() -> None:
    assert newest_first(["1.21.12-alpine", "alpine", "1.22.5-alpine", "1.22.5", "edge"]) == [
        "1.22.5",
        "1.22.5-alpine",
        "1.21.12-alpine",
        "alpine",
        "edge",
    ]


@given(
    st.lists(
        st.from_regex(
            r"(v?[0-9]{1,2}(\.[0-9]{1,2}){0,2}(rc[0-9])?-)?[a-z]{1,6}[0-9.]{0,3}", fullmatch=True
        ),
        max_size=40,
    ),
    st.lists(st.sampled_from(["alpine", "alp*", "b?", NO_VARIANT, "*"]), max_size=3),
)
def test_variant_selection_is_a_subset_with_one_decision_per_tag(
    tags: list[str], variants: list[str]
) -> None:
    for rules in (
        TagRules(variants=tuple(variants)),
        TagRules(variants=tuple(variants), newest=2, aliases=True),
        TagRules(variants=tuple(variants), versions=">=1", prereleases=True),
    ):
        selection = select(tags, rules)
        assert set(selection.tags) <= set(tags)
        assert sorted(d.tag for d in selection.decisions) == sorted(set(tags))


def test_a_variant_nothing_extends_is_pinned() -> None:
    # An image that only ever says -alpine makes the same promise with it as without.
    pinned = select(["2.1.3", "2.1.3-alpine", "2.1-alpine"], TagRules()).pinned_variants
    assert pinned == {"alpine"} and is_full_version("2.1.3-alpine", pinned=pinned)


def test_a_word_before_a_known_variant_belongs_to_that_variant() -> None:
    # nginx: mainline-alpine is no version, but it is of the alpine variant.
    tags = ["1.27.1-alpine", "1.27-alpine", "mainline-alpine", "alpine", "mainline", "stable"]
    read = {d.tag: (d.variant, d.kind) for d in select(tags, TagRules()).decisions}
    assert read["mainline-alpine"] == ("alpine", "other")
    assert read["mainline"] == read["stable"] == (None, "other")
    assert set(select(tags, TagRules(variants=("alpine",))).tags) == {
        "1.27.1-alpine",
        "1.27-alpine",
        "mainline-alpine",
        "alpine",
    }
