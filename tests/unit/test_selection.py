"""Tag rules on the seed's scheme: full versions, moving aliases, and tags that are neither."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from mirror.errors import ConfigError
from mirror.selection import TagRules, is_full_version, parse_range, parse_version, select

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
